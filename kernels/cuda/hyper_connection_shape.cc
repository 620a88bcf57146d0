#include <algorithm>

#include "kernels/cuda/hyper_connection.h"

namespace flotilla::kernels::cuda {

const char* CheckHcPre(const HcPreParams& p) {
  if (p.m < 0 || p.d <= 0) return "hc_pre: m must be >= 0 and d positive";
  if (p.hc <= 0 || p.hc > kHcMaxStreams) return "hc_pre: hc must be 1 to 8";
  if (p.sinkhorn_iters < 0) return "hc_pre: sinkhorn_iters must be >= 0";
  if (p.m > 0 && (!p.h || !p.fn || !p.scale || !p.base || !p.x || !p.post || !p.comb)) {
    return "hc_pre: h, fn, scale, base, x, post and comb must be set";
  }
  if (p.m > 0x7fffffff) return "hc_pre: too many tokens for one launch";
  return nullptr;
}

const char* CheckHcPost(const HcPostParams& p) {
  if (p.m < 0 || p.d < 0) return "hc_post: m and d must be >= 0";
  if (p.hc <= 0 || p.hc > kHcMaxStreams) return "hc_post: hc must be 1 to 8";
  if (p.m > 0 && p.d > 0 && (!p.x || !p.res || !p.post || !p.comb || !p.h_out)) {
    return "hc_post: x, res, post, comb and h_out must be set";
  }
  return nullptr;
}

const char* CheckHcHead(const HcHeadParams& p) {
  if (p.m < 0 || p.d <= 0) return "hc_head: m must be >= 0 and d positive";
  if (p.hc <= 0 || p.hc > kHcMaxStreams) return "hc_head: hc must be 1 to 8";
  if (p.m > 0 && (!p.h || !p.fn || !p.scale || !p.base || !p.y)) {
    return "hc_head: h, fn, scale, base and y must be set";
  }
  if (p.m > 0x7fffffff) return "hc_head: too many tokens for one launch";
  return nullptr;
}

int64_t HcPostBlocks(const HcPostParams& p) {
  const int64_t n = p.m * p.hc * p.d;
  return std::min<int64_t>((n + kHcPostThreads - 1) / kHcPostThreads, 65536);
}

}  // namespace flotilla::kernels::cuda
