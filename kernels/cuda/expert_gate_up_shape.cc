#include "kernels/cuda/expert_gate_up.h"

namespace flotilla::kernels::cuda {

const char* CheckExpertGateUp(const ExpertGateUpParams& p) {
  if (!p.x || !p.x_scale || !p.w1 || !p.w1_scale || !p.w3 || !p.w3_scale || !p.group_offsets ||
      !p.h || !p.h_scale) {
    return "expert gate/up: x, x_scale, w1, w1_scale, w3, w3_scale, group_offsets, h and h_scale "
           "must all be set";
  }
  if (p.hidden <= 0 || p.hidden % 128 != 0) return "expert gate/up: hidden must be a positive multiple of 128";
  if (p.inter <= 0 || p.inter % 128 != 0) return "expert gate/up: inter must be a positive multiple of 128";
  if (p.num_experts <= 0 || p.num_experts > 65535) return "expert gate/up: num_experts must be in [1, 65535]";
  if (!(p.limit > 0.0f)) return "expert gate/up: limit must be positive";
  if (reinterpret_cast<uintptr_t>(p.x) % 4 != 0 || reinterpret_cast<uintptr_t>(p.w1) % 2 != 0 ||
      reinterpret_cast<uintptr_t>(p.w3) % 2 != 0 || reinterpret_cast<uintptr_t>(p.h) % 2 != 0) {
    return "expert gate/up: x must be 4-byte, w1, w3 and h 2-byte aligned";
  }
  return nullptr;
}

uint32_t ExpertGateUpGridX(const ExpertGateUpParams& p) { return uint32_t(p.inter / 128); }

}  // namespace flotilla::kernels::cuda
