// Run-time choice of the SIMD path of the CPU backend (internal to kernels/cpu and its tests).
//
// The AVX2 path (AVX2 + FMA + F16C, compiled per function with target attributes) is used when
// the CPU has it, unless FLOTILLA_SIMD=scalar (read once, at the first kernel call). Both paths
// produce bit-identical results; the scalar path is the readable statement of each op.
#pragma once

namespace flotilla::kernels::cpu {

enum class Simd { kScalar, kAvx2 };

// The path kernels use now.
Simd ActiveSimd();
inline bool UseAvx2() { return ActiveSimd() == Simd::kAvx2; }

// Whether this CPU can run the AVX2 path at all.
bool CpuHasAvx2();

// Tests only: force a path (kAvx2 is ignored on CPUs without it). Not thread-safe with
// concurrent kernel calls.
void SetSimdForTesting(Simd simd);

}  // namespace flotilla::kernels::cpu
