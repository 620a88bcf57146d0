#include <algorithm>

#include "kernels/cuda/kv_pack.h"

namespace flotilla::kernels::cuda {

const char* CheckSimulate(const SimulateParams& p) {
  if (p.rows < 0 || p.n < 0) return "qat_simulate: rows and n must be >= 0";
  if (p.block <= 0) return "qat_simulate: block must be positive";
  if (p.ld < p.n) return "qat_simulate: ld must be at least n";
  if (p.rows > 0 && p.n > 0 && !p.x) return "qat_simulate: x must be set";
  return nullptr;
}

int64_t SimulateBlocks(const SimulateParams& p) {
  if (p.block <= 0) return 0;
  const int64_t groups = p.rows * ((p.n + p.block - 1) / p.block);
  return std::min<int64_t>((groups + kSimulateThreads - 1) / kSimulateThreads, 65536);
}

int64_t KvEntryUsedBytes(int64_t nope, int64_t rope) { return nope + 2 * rope + (nope + 63) / 64; }
int64_t IndexerKeyUsedBytes(int64_t dim) { return dim / 2 + dim / 32; }

namespace {

template <typename P>
const char* KvShape(const P& p) {
  if (p.rows < 0 || p.nope < 0 || p.rope < 0) return "kv_pack: rows, nope and rope must be >= 0";
  if (p.entry_bytes < KvEntryUsedBytes(p.nope, p.rope)) {
    return "kv_pack: entry_bytes must hold nope codes, 2 * rope bytes and ceil(nope / 64) scales";
  }
  if (p.ldx < p.nope + p.rope) return "kv_pack: ldx must be at least nope + rope";
  if (p.rows > 0 && (!p.x || !p.entries)) return "kv_pack: x and entries must be set";
  return nullptr;
}

template <typename P>
const char* KeyShape(const P& p) {
  if (p.rows < 0 || p.nope <= 0 || p.nope % 32 != 0 || p.nope > kIndexerKeyMaxDim) {
    return "indexer_key_pack: rows must be >= 0 and dim a multiple of 32 from 32 to 8192";
  }
  if (p.rope != 0) return "indexer_key_pack: indexer keys have no rope part";
  if (p.entry_bytes < IndexerKeyUsedBytes(p.nope)) {
    return "indexer_key_pack: key_bytes must hold dim / 2 code bytes and dim / 32 scales";
  }
  if (p.ldx < p.nope) return "indexer_key_pack: ldx must be at least dim";
  if (p.rows > 0 && (!p.x || !p.entries)) return "indexer_key_pack: x and entries must be set";
  return nullptr;
}

}  // namespace

const char* CheckKvPack(const KvPackParams& p) { return KvShape(p); }
const char* CheckKvPack(const KvUnpackParams& p) { return KvShape(p); }
const char* CheckIndexerKeyPack(const KvPackParams& p) { return KeyShape(p); }
const char* CheckIndexerKeyPack(const KvUnpackParams& p) { return KeyShape(p); }

int64_t KvPackBlocks(int64_t rows) { return rows < 65535 ? rows : 65535; }

}  // namespace flotilla::kernels::cuda
