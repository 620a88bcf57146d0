#include <cmath>

#include "kernels/cuda/indexer.h"

namespace flotilla::kernels::cuda {

const char* CheckHadamard(const HadamardParams& p) {
  if (!p.x) return "hadamard: x must be set";
  if (p.dim < 2 || p.dim > kHadamardMaxDim || (p.dim & (p.dim - 1)) != 0) {
    return "hadamard: dim must be a power of two in [2, 8192]";
  }
  if (p.rows < 0 || p.rows > 0x7fffffff) return "hadamard: rows must be in [0, 2^31)";
  return nullptr;
}

const char* CheckIndexerScores(const IndexerScoresParams& p) {
  if (!p.q || !p.w || !p.keys || !p.scores) return "indexer scores: q, w, keys and scores must all be set";
  if (p.num_heads <= 0 || p.dim <= 0) return "indexer scores: num_heads and dim must be positive";
  if (p.num_heads * p.dim > kIndexerMaxQ) return "indexer scores: num_heads * dim must be at most 12288";
  if (p.ldk < p.dim) return "indexer scores: ldk must be at least dim";
  if (p.n < 0 || p.n > 0x7fffffff) return "indexer scores: n must be in [0, 2^31)";
  return nullptr;
}

const char* CheckTopK(const TopKParams& p) {
  if (!p.scores || !p.idx) return "top-k: scores and idx must be set";
  if (p.n <= 0 || p.n > 0x7fffffff) return "top-k: n must be in [1, 2^31)";
  if (p.k <= 0 || p.k > p.n || p.k > kTopKMax) return "top-k: k must be in [1, min(n, 4096)]";
  return nullptr;
}

float HadamardScale(int64_t dim) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim))); }

}  // namespace flotilla::kernels::cuda
