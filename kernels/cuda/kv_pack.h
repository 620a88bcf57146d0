// The QAT round trips (kernels::Fp8SimulateInPlace / Fp4SimulateInPlace, spec §2.6) and the packed
// KV layout (PackKvEntries / UnpackKvEntries, PackIndexerKeys / UnpackIndexerKeys, spec §8.2) on
// the GPU, bit for bit with the CPU backend: groups, scales and codes come from the same
// FLOTILLA_HD functions (kernels/cpu/group_quant.h, common/dtype.h). Plain C++ header.
#pragma once

#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace flotilla::kernels::cuda {

enum class SimulateFormat { kFp8, kFp4 };

struct SimulateParams {
  bf16* x = nullptr;  // [rows, ld] device; elements [0, n) of each row rounded in place
  int64_t rows = 0, ld = 0, n = 0;
  int64_t block = 64;  // group size; a shorter last group is its own group
  SimulateFormat format = SimulateFormat::kFp8;
};

// Pack: x [rows, nope + rope] (row stride ldx) -> entries [rows, entry_bytes]; Unpack back.
// Indexer keys: nope = dim (a multiple of 32), rope = 0.
struct KvPackParams {
  int64_t rows = 0, nope = 0, rope = 0;
  int64_t entry_bytes = 0;
  const bf16* x = nullptr;  // device
  int64_t ldx = 0;
  uint8_t* entries = nullptr;  // device
};
struct KvUnpackParams {
  int64_t rows = 0, nope = 0, rope = 0;
  int64_t entry_bytes = 0;
  const uint8_t* entries = nullptr;  // device
  bf16* x = nullptr;                 // device
  int64_t ldx = 0;
};

// Simulate: a thread per (row, group), grid-stride. Pack / unpack: a block per row (grid-stride
// over rows), threads over its groups, elements and padding bytes.
constexpr int kSimulateThreads = 256;
constexpr int kKvPackThreads = 128;
constexpr int64_t kIndexerKeyMaxDim = 8192;  // a scale per 32 in shared memory

const char* CheckSimulate(const SimulateParams& p);
int64_t SimulateBlocks(const SimulateParams& p);
// Bytes of a packed row: codes, rope bf16 and scales (before padding).
int64_t KvEntryUsedBytes(int64_t nope, int64_t rope);
int64_t IndexerKeyUsedBytes(int64_t dim);
const char* CheckKvPack(const KvPackParams& p);
const char* CheckKvPack(const KvUnpackParams& p);
const char* CheckIndexerKeyPack(const KvPackParams& p);
const char* CheckIndexerKeyPack(const KvUnpackParams& p);
int64_t KvPackBlocks(int64_t rows);

int LaunchSimulate(const SimulateParams& p, CUstream_st* stream);
int LaunchPackKvEntries(const KvPackParams& p, CUstream_st* stream);
int LaunchUnpackKvEntries(const KvUnpackParams& p, CUstream_st* stream);
int LaunchPackIndexerKeys(const KvPackParams& p, CUstream_st* stream);
int LaunchUnpackIndexerKeys(const KvUnpackParams& p, CUstream_st* stream);

}  // namespace flotilla::kernels::cuda
