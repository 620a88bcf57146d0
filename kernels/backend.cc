// Argument checks shared by every backend: run on the host before an op is issued.
#include "kernels/backend.h"

#include <cstring>
#include <string>
#include <type_traits>

namespace flotilla::kernels {
namespace {

std::string Str(int64_t v) { return std::to_string(v); }

// Elements a [rows, cols] tensor with row stride ld reaches.
int64_t Extent(int64_t rows, int64_t cols, int64_t ld) {
  return rows <= 0 || cols <= 0 ? 0 : (rows - 1) * ld + cols;
}

// Collects the first failed check of one op call.
class Checker {
 public:
  Checker(const Backend& backend, const char* op) : backend_(backend), op_(op) {}

  // A required tensor of at least `need` elements (nothing is read when need == 0).
  template <typename T>
  Checker& Span(const char* arg, const DeviceSpan<T>& span, int64_t need) {
    if (!status_.ok() || need == 0) return *this;
    if (span.arena() == nullptr) {
      return Fail(std::string(arg) + " is not set; expected " + Str(need) + " elements");
    }
    if (BackendStatus s = backend_.CheckSpan(op_, arg, span); !s.ok()) {
      status_ = s;
      return *this;
    }
    if (span.size() < need) {
      return Fail(std::string(arg) + " has " + Str(span.size()) + " elements; expected at least " +
                  Str(need) + " for the shape given");
    }
    return *this;
  }
  // An optional tensor: unset (default span) or as Span.
  template <typename T>
  Checker& Optional(const char* arg, const DeviceSpan<T>& span, int64_t need) {
    if (span.arena() == nullptr) return *this;
    return Span(arg, span, need);
  }
  // `expected`: a string, or a function making it (so that a passing check allocates nothing:
  // steps run allocation-free).
  template <typename Message>
  Checker& That(bool ok, Message&& expected) {
    if (!status_.ok() || ok) return *this;
    if constexpr (std::is_invocable_v<Message>) {
      return Fail("expected " + std::string(expected()));
    } else {
      return Fail("expected " + std::string(expected));
    }
  }
  Checker& NonNegative(const char* name, int64_t v) {
    return That(v >= 0, [&] { return std::string(name) + " >= 0 (got " + Str(v) + ")"; });
  }
  Checker& Stride(const char* name, int64_t ld, int64_t cols) {
    return That(ld >= cols,
                [&] { return std::string(name) + " >= " + Str(cols) + " (got " + Str(ld) + ")"; });
  }
  // Element `index` of a list of tensors named `list` (its message says "list[index]"), as Span.
  template <typename T>
  Checker& SpanAt(const char* list, size_t index, const DeviceSpan<T>& span, int64_t need) {
    if (!status_.ok() || need == 0) return *this;
    auto name = [&] { return std::string(list) + "[" + Str(int64_t(index)) + "]"; };
    if (span.arena() == nullptr) {
      return Fail(name() + " is not set; expected " + Str(need) + " elements");
    }
    if (!backend_.CheckSpan(op_, list, span).ok()) {
      status_ = backend_.CheckSpan(op_, name().c_str(), span);
      return *this;
    }
    if (span.size() < need) {
      return Fail(name() + " has " + Str(span.size()) + " elements; expected at least " +
                  Str(need) + " for the shape given");
    }
    return *this;
  }
  BackendStatus Done() { return status_; }

 private:
  Checker& Fail(const std::string& what) {
    status_ = BackendStatus::Error(std::string(op_) + ": " + what);
    return *this;
  }
  const Backend& backend_;
  const char* op_;
  BackendStatus status_;
};

template <typename T>
bool IsSet(const DeviceSpan<T>& s) {
  return s.arena() != nullptr;
}

#define FLOTILLA_CHECKED(call, check) \
  do {                                \
    BackendStatus s_ = (check);       \
    if (!s_.ok()) return s_;          \
    return call;                      \
  } while (0)

}  // namespace

BackendStatus Backend::CheckRaw(const char* op, const char* arg, const Arena* arena,
                                uintptr_t address, int64_t bytes) const {
  auto where = [&] { return std::string(op) + ": " + arg; };
  if (arena == nullptr) return BackendStatus::Error(where() + " is a default span (no memory)");
  if (arena->kind().owner != this) {
    return BackendStatus::Error(where() + " lies in arena '" + arena->name() + "' of another " +
                                "backend (" + arena->kind().name + "); expected memory of " +
                                memory().name);
  }
  if (!arena->Contains(address, bytes)) {
    return BackendStatus::Error(where() + " (" + Str(bytes) + " bytes) lies outside arena '" +
                                arena->name() + "' of " + Str(arena->capacity()) + " bytes");
  }
  return BackendStatus::Ok();
}

BackendStatus Backend::SizeMismatch(const char* op, size_t host, int64_t device) {
  return BackendStatus::Error(std::string(op) + ": host memory of " + Str(int64_t(host)) +
                              " elements for a backend span of " + Str(device) +
                              "; expected equal sizes");
}

BackendStatus Backend::ActQuantFp8(Queue& q, const ActQuantArgs& a) {
  Checker c(*this, "ActQuantFp8");
  c.NonNegative("m", a.m).NonNegative("k", a.k).That(
      a.block > 0 && a.k % a.block == 0, [&] { return "k a multiple of block " + Str(a.block); });
  c.Stride("ldx", a.ldx, a.k).Span("x", a.x, Extent(a.m, a.k, a.ldx));
  c.Span("q", a.q, a.m * a.k).Span("scale", a.scale, a.block > 0 ? a.m * (a.k / a.block) : 0);
  FLOTILLA_CHECKED(DoActQuantFp8(q, a), c.Done());
}

namespace {
BackendStatus CheckSimulate(const Backend& b, const char* op, const QuantSimulateArgs& a) {
  Checker c(b, op);
  c.NonNegative("rows", a.rows).NonNegative("n", a.n).That(a.block > 0, "block > 0");
  c.Stride("ld", a.ld, a.n).Span("x", a.x, Extent(a.rows, a.n, a.ld));
  return c.Done();
}
}  // namespace

BackendStatus Backend::Fp8SimulateInPlace(Queue& q, const QuantSimulateArgs& a) {
  FLOTILLA_CHECKED(DoFp8SimulateInPlace(q, a), CheckSimulate(*this, "Fp8SimulateInPlace", a));
}

BackendStatus Backend::Fp4SimulateInPlace(Queue& q, const QuantSimulateArgs& a) {
  FLOTILLA_CHECKED(DoFp4SimulateInPlace(q, a), CheckSimulate(*this, "Fp4SimulateInPlace", a));
}

BackendStatus Backend::GemmFp8(Queue& q, const GemmFp8Args& a) {
  Checker c(*this, "GemmFp8");
  c.NonNegative("m", a.m).NonNegative("n", a.n).That(a.k > 0 && a.k % 128 == 0,
                                                     "k a positive multiple of 128");
  c.That(IsSet(a.w_scale) != IsSet(a.w_scale_f32), "exactly one of w_scale / w_scale_f32");
  const int64_t kb = a.k / 128, nb = (a.n + 127) / 128;
  c.Span("a", a.a, a.m * a.k).Span("a_scale", a.a_scale, a.m * kb).Span("w", a.w, a.n * a.k);
  c.Optional("w_scale", a.w_scale, nb * kb).Optional("w_scale_f32", a.w_scale_f32, nb * kb);
  c.Stride("ldc", a.ldc, a.n).Span("c", a.c, Extent(a.m, a.n, a.ldc));
  FLOTILLA_CHECKED(DoGemmFp8(q, a), c.Done());
}

BackendStatus Backend::GemmFp8Fp4(Queue& q, const GemmFp8Fp4Args& a) {
  Checker c(*this, "GemmFp8Fp4");
  c.NonNegative("m", a.m).NonNegative("n", a.n).That(a.k > 0 && a.k % 128 == 0,
                                                     "k a positive multiple of 128");
  c.Span("a", a.a, a.m * a.k).Span("a_scale", a.a_scale, a.m * (a.k / 128));
  c.Span("w", a.w, a.n * (a.k / 2)).Span("w_scale", a.w_scale, a.n * (a.k / 32));
  c.Stride("ldc", a.ldc, a.n).Span("c", a.c, Extent(a.m, a.n, a.ldc));
  FLOTILLA_CHECKED(DoGemmFp8Fp4(q, a), c.Done());
}

BackendStatus Backend::GemmBf16(Queue& q, const GemmBf16Args& a) {
  Checker c(*this, "GemmBf16");
  c.NonNegative("m", a.m).NonNegative("n", a.n).NonNegative("k", a.k);
  c.That(IsSet(a.c) != IsSet(a.c_f32), "exactly one of c / c_f32");
  c.Stride("lda", a.lda, a.k).Span("a", a.a, Extent(a.m, a.k, a.lda));
  c.Stride("ldw", a.ldw, a.k).Span("w", a.w, Extent(a.n, a.k, a.ldw));
  c.Stride("ldc", a.ldc, a.n);
  c.Optional("c", a.c, Extent(a.m, a.n, a.ldc)).Optional("c_f32", a.c_f32, Extent(a.m, a.n, a.ldc));
  FLOTILLA_CHECKED(DoGemmBf16(q, a), c.Done());
}

BackendStatus Backend::GemmF32(Queue& q, const GemmF32Args& a) {
  Checker c(*this, "GemmF32");
  c.NonNegative("m", a.m).NonNegative("n", a.n).NonNegative("k", a.k);
  c.That(IsSet(a.a) != IsSet(a.a_bf16), "exactly one of a / a_bf16");
  c.That(IsSet(a.w) != IsSet(a.w_bf16), "exactly one of w / w_bf16");
  c.Stride("lda", a.lda, a.k).Stride("ldw", a.ldw, a.k).Stride("ldc", a.ldc, a.n);
  c.Optional("a", a.a, Extent(a.m, a.k, a.lda))
      .Optional("a_bf16", a.a_bf16, Extent(a.m, a.k, a.lda));
  c.Optional("w", a.w, Extent(a.n, a.k, a.ldw))
      .Optional("w_bf16", a.w_bf16, Extent(a.n, a.k, a.ldw));
  c.Span("c", a.c, Extent(a.m, a.n, a.ldc));
  FLOTILLA_CHECKED(DoGemmF32(q, a), c.Done());
}

BackendStatus Backend::RmsNorm(Queue& q, const RmsNormArgs& a) {
  Checker c(*this, "RmsNorm");
  c.NonNegative("m", a.m).That(a.d > 0, "d > 0");
  c.Stride("ldx", a.ldx, a.d).Stride("ldy", a.ldy, a.d);
  c.Span("x", a.x, Extent(a.m, a.d, a.ldx)).Span("w", a.w, a.m > 0 ? a.d : 0);
  c.Span("y", a.y, Extent(a.m, a.d, a.ldy));
  FLOTILLA_CHECKED(DoRmsNorm(q, a), c.Done());
}

BackendStatus Backend::HeadRmsNormBf16(Queue& q, const HeadRmsNormArgs& a) {
  Checker c(*this, "HeadRmsNormBf16");
  c.NonNegative("rows", a.rows).That(a.dim > 0, "dim > 0").Span("q", a.q, a.rows * a.dim);
  FLOTILLA_CHECKED(DoHeadRmsNormBf16(q, a), c.Done());
}

BackendStatus Backend::RopeFrequencies(Queue& q, const RopeFrequenciesArgs& a) {
  Checker c(*this, "RopeFrequencies");
  c.That(a.rope_dim > 0 && a.rope_dim % 2 == 0, "rope_dim a positive even number");
  c.Span("freqs", a.freqs, a.rope_dim / 2);
  FLOTILLA_CHECKED(DoRopeFrequencies(q, a), c.Done());
}

BackendStatus Backend::ApplyRope(Queue& q, const RopeArgs& a) {
  Checker c(*this, "ApplyRope");
  c.NonNegative("num_tokens", a.num_tokens).NonNegative("num_heads", a.num_heads);
  c.That(a.rope_dim > 0 && a.rope_dim % 2 == 0, "rope_dim a positive even number");
  c.NonNegative("rope_offset", a.rope_offset).NonNegative("head_stride", a.head_stride);
  const int64_t head_end = a.rope_offset + a.rope_dim;
  const int64_t need =
      a.num_tokens == 0 || a.num_heads == 0
          ? 0
          : (a.num_tokens - 1) * a.ld + (a.num_heads - 1) * a.head_stride + head_end;
  c.Stride("ld", a.ld, a.num_heads > 0 ? (a.num_heads - 1) * a.head_stride + head_end : 0);
  c.Span("x", a.x, need).Span("positions", a.positions, a.num_tokens);
  c.Span("freqs", a.freqs, need > 0 ? a.rope_dim / 2 : 0);
  FLOTILLA_CHECKED(DoApplyRope(q, a), c.Done());
}

BackendStatus Backend::HcPre(Queue& q, const HcPreArgs& a) {
  Checker c(*this, "HcPre");
  c.NonNegative("m", a.m).That(a.hc > 0, "hc > 0").That(a.d > 0, "d > 0");
  const int64_t mix = (2 + a.hc) * a.hc, live = a.m > 0;
  c.Span("h", a.h, a.m * a.hc * a.d).Span("fn", a.fn, live * mix * a.hc * a.d);
  c.Span("scale", a.scale, live * 3).Span("base", a.base, live * mix);
  c.Span("x", a.x, a.m * a.d)
      .Span("post", a.post, a.m * a.hc)
      .Span("comb", a.comb, a.m * a.hc * a.hc);
  FLOTILLA_CHECKED(DoHcPre(q, a), c.Done());
}

BackendStatus Backend::HcPost(Queue& q, const HcPostArgs& a) {
  Checker c(*this, "HcPost");
  c.NonNegative("m", a.m).That(a.hc > 0, "hc > 0").That(a.d > 0, "d > 0");
  c.Span("x", a.x, a.m * a.d).Span("res", a.res, a.m * a.hc * a.d);
  c.Span("post", a.post, a.m * a.hc).Span("comb", a.comb, a.m * a.hc * a.hc);
  c.Span("h_out", a.h_out, a.m * a.hc * a.d);
  if (a.m > 0 && IsSet(a.res) && IsSet(a.h_out)) {
    const uintptr_t r0 = BackendAccess::RawAddress(a.res), o0 = BackendAccess::RawAddress(a.h_out);
    const uintptr_t r1 = r0 + a.res.size_bytes(), o1 = o0 + a.h_out.size_bytes();
    c.That(r1 <= o0 || o1 <= r0, "h_out not overlapping res");
  }
  FLOTILLA_CHECKED(DoHcPost(q, a), c.Done());
}

BackendStatus Backend::HcHead(Queue& q, const HcHeadArgs& a) {
  Checker c(*this, "HcHead");
  c.NonNegative("m", a.m).That(a.hc > 0, "hc > 0").That(a.d > 0, "d > 0");
  const int64_t live = a.m > 0;
  c.Span("h", a.h, a.m * a.hc * a.d).Span("fn", a.fn, live * a.hc * a.hc * a.d);
  c.Span("scale", a.scale, live).Span("base", a.base, live * a.hc).Span("y", a.y, a.m * a.d);
  FLOTILLA_CHECKED(DoHcHead(q, a), c.Done());
}

BackendStatus Backend::CompressPool(Queue& q, const CompressPoolArgs& a) {
  Checker c(*this, "CompressPool");
  c.NonNegative("num_entries", a.num_entries).That(a.n_slots > 0, "n_slots > 0");
  c.That(a.d > 0, "d > 0");
  const int64_t live = a.num_entries > 0;
  c.Span("kv", a.kv, live * a.d).Span("score", a.score, live * a.d);
  c.That(a.kv.size() == a.score.size(), [&] {
    return "kv and score of equal size (got " + Str(a.kv.size()) + " and " + Str(a.score.size()) +
           ")";
  });
  c.Span("slot_offsets", a.slot_offsets, a.num_entries * a.n_slots);
  c.Span("out", a.out, a.num_entries * a.d);
  FLOTILLA_CHECKED(DoCompressPool(q, a), c.Done());
}

BackendStatus Backend::HadamardRotateBf16(Queue& q, const HadamardArgs& a) {
  Checker c(*this, "HadamardRotateBf16");
  c.NonNegative("rows", a.rows).That(a.dim > 0 && (a.dim & (a.dim - 1)) == 0, [&] {
    return "dim a power of two (got " + Str(a.dim) + ")";
  });
  c.Span("x", a.x, a.rows * a.dim);
  FLOTILLA_CHECKED(DoHadamardRotateBf16(q, a), c.Done());
}

BackendStatus Backend::IndexerScores(Queue& q, const IndexerScoreArgs& a) {
  Checker c(*this, "IndexerScores");
  c.NonNegative("n", a.n).That(a.num_heads > 0, "num_heads > 0").That(a.dim > 0, "dim > 0");
  const int64_t live = a.n > 0;
  c.Span("q", a.q, live * a.num_heads * a.dim).Span("w", a.w, live * a.num_heads);
  c.Stride("ldk", a.ldk, a.dim).Span("keys", a.keys, Extent(a.n, a.dim, a.ldk));
  c.Span("scores", a.scores, a.n);
  FLOTILLA_CHECKED(DoIndexerScores(q, a), c.Done());
}

BackendStatus Backend::TopK(Queue& q, const TopKArgs& a) {
  Checker c(*this, "TopK");
  c.NonNegative("rows", a.rows).NonNegative("k", a.k);
  c.That(a.k <= a.n, [&] { return "k <= n (got k " + Str(a.k) + ", n " + Str(a.n) + ")"; });
  c.Stride("ld_scores", a.ld_scores, a.n)
      .Span("scores", a.scores, Extent(a.rows, a.n, a.ld_scores));
  c.Span("idx", a.idx, a.rows * a.k);
  FLOTILLA_CHECKED(DoTopK(q, a), c.Done());
}

BackendStatus Backend::SparseAttention(Queue& q, const SparseAttentionArgs& a) {
  Checker c(*this, "SparseAttention");
  c.That(a.n > 0, "n > 0 (a list starts with a row)");
  c.That(a.num_heads > 0, "num_heads > 0").That(a.dim > 0, "dim > 0");
  c.Span("q", a.q, a.num_heads * a.dim).Span("row_idx", a.row_idx, a.n);
  c.Span("kv", a.kv, a.dim).Optional("kv2", a.kv2, a.dim);
  c.That(a.kv.size() % (a.dim > 0 ? a.dim : 1) == 0, "kv a whole number of rows of dim");
  c.That(a.kv2.size() % (a.dim > 0 ? a.dim : 1) == 0, "kv2 a whole number of rows of dim");
  c.Span("sink", a.sink, a.num_heads).Span("out", a.out, a.num_heads * a.dim);
  FLOTILLA_CHECKED(DoSparseAttention(q, a), c.Done());
}

BackendStatus Backend::Route(Queue& q, const RouteArgs& a) {
  Checker c(*this, "Route");
  c.NonNegative("m", a.m).That(a.num_experts > 0, "num_experts > 0");
  c.That(a.top_k > 0 && a.top_k <= a.num_experts, "0 < top_k <= num_experts");
  c.That(IsSet(a.bias) != IsSet(a.hash_ids), "exactly one of bias / hash_ids");
  c.Span("logits", a.logits, a.m * a.num_experts);
  c.Optional("bias", a.bias, a.num_experts);
  if (IsSet(a.hash_ids)) {
    c.Stride("ld_hash", a.ld_hash, a.top_k)
        .Span("hash_ids", a.hash_ids, Extent(a.m, a.top_k, a.ld_hash));
  }
  c.Span("expert_idx", a.expert_idx, a.m * a.top_k).Span("weights", a.weights, a.m * a.top_k);
  FLOTILLA_CHECKED(DoRoute(q, a), c.Done());
}

BackendStatus Backend::SwiGlu(Queue& q, const SwiGluArgs& a) {
  Checker c(*this, "SwiGlu");
  c.NonNegative("m", a.m).NonNegative("inter", a.inter);
  c.Stride("ld_in", a.ld_in, a.inter).Stride("ld_out", a.ld_out, a.inter);
  c.Span("gate", a.gate, Extent(a.m, a.inter, a.ld_in))
      .Span("up", a.up, Extent(a.m, a.inter, a.ld_in));
  c.Optional("row_weight", a.row_weight, a.m);
  c.Span("out", a.out, Extent(a.m, a.inter, a.ld_out));
  FLOTILLA_CHECKED(DoSwiGlu(q, a), c.Done());
}

namespace {

// Shape checks of the packed layouts; `indexer`: FP4 keys (rope 0, dim % 32 == 0).
void CheckPackShape(Checker& c, bool indexer, int64_t rows, int64_t nope, int64_t rope,
                    int64_t entry_bytes, int64_t ldx) {
  c.NonNegative("rows", rows).That(nope > 0, "nope > 0").NonNegative("rope", rope);
  int64_t need = 0;
  if (indexer) {
    c.That(rope == 0, "rope == 0 for indexer keys").That(nope % 32 == 0, [&] {
      return "dim a multiple of 32 (got " + Str(nope) + ")";
    });
    need = nope / 2 + nope / 32;
  } else {
    need = nope + 2 * rope + (nope + 63) / 64;
  }
  c.That(entry_bytes >= need,
         [&] { return "entry_bytes >= " + Str(need) + " (got " + Str(entry_bytes) + ")"; });
  c.Stride("ldx", ldx, nope + rope);
}

BackendStatus CheckPack(const Backend& b, const char* op, bool indexer, const KvPackArgs& a) {
  Checker c(b, op);
  CheckPackShape(c, indexer, a.rows, a.nope, a.rope, a.entry_bytes, a.ldx);
  c.Span("x", a.x, Extent(a.rows, a.nope + a.rope, a.ldx));
  c.Span("entries", a.entries, a.rows * a.entry_bytes);
  return c.Done();
}

BackendStatus CheckUnpack(const Backend& b, const char* op, bool indexer, const KvUnpackArgs& a) {
  Checker c(b, op);
  CheckPackShape(c, indexer, a.rows, a.nope, a.rope, a.entry_bytes, a.ldx);
  c.Span("entries", a.entries, a.rows * a.entry_bytes);
  c.Span("x", a.x, Extent(a.rows, a.nope + a.rope, a.ldx));
  return c.Done();
}

}  // namespace

BackendStatus Backend::MoePermute(Queue& q, const MoePermuteArgs& a) {
  Checker c(*this, "MoePermute");
  c.NonNegative("n", a.n).That(a.k > 0, "k > 0").That(a.num_experts > 0, "num_experts > 0");
  c.Span("expert_idx", a.expert_idx, a.n * a.k).Span("offsets", a.offsets, a.num_experts + 1);
  c.Span("order", a.order, a.n * a.k);
  FLOTILLA_CHECKED(DoMoePermute(q, a), c.Done());
}

namespace {
BackendStatus CheckRowCopy(const Backend& b, const char* op, const RowCopyArgs& a) {
  Checker c(b, op);
  c.NonNegative("rows", a.rows).That(a.divisor > 0, "divisor > 0");
  c.That(a.row_bytes > 0, "row_bytes > 0");
  c.Stride("ld_src", a.ld_src, a.row_bytes).Stride("ld_dst", a.ld_dst, a.row_bytes);
  c.Span("index", a.index, a.rows);
  // The indexed side (src of a gather, dst of a scatter) must hold at least one row; the other
  // side holds `rows` rows.
  const bool gather = std::strcmp(op, "GatherRows") == 0;
  const int64_t live = a.rows > 0;
  c.Span("src", a.src, gather ? live * a.row_bytes : Extent(a.rows, a.row_bytes, a.ld_src));
  c.Span("dst", a.dst, gather ? Extent(a.rows, a.row_bytes, a.ld_dst) : live * a.row_bytes);
  return c.Done();
}
}  // namespace

BackendStatus Backend::GatherRows(Queue& q, const RowCopyArgs& a) {
  FLOTILLA_CHECKED(DoGatherRows(q, a), CheckRowCopy(*this, "GatherRows", a));
}

BackendStatus Backend::ScatterRows(Queue& q, const RowCopyArgs& a) {
  FLOTILLA_CHECKED(DoScatterRows(q, a), CheckRowCopy(*this, "ScatterRows", a));
}

BackendStatus Backend::MoeCombine(Queue& q, const MoeCombineArgs& a) {
  Checker c(*this, "MoeCombine");
  c.NonNegative("n", a.n).That(a.k > 0 && a.k <= 64, "0 < k <= 64").That(a.d > 0, "d > 0");
  c.Span("expert_idx", a.expert_idx, a.n * a.k).Span("routed", a.routed, a.n * a.k * a.d);
  c.Optional("shared", a.shared, a.n * a.d).Span("out", a.out, a.n * a.d);
  FLOTILLA_CHECKED(DoMoeCombine(q, a), c.Done());
}

BackendStatus Backend::PackKvEntries(Queue& q, const KvPackArgs& a) {
  FLOTILLA_CHECKED(DoPackKvEntries(q, a), CheckPack(*this, "PackKvEntries", false, a));
}

BackendStatus Backend::UnpackKvEntries(Queue& q, const KvUnpackArgs& a) {
  FLOTILLA_CHECKED(DoUnpackKvEntries(q, a), CheckUnpack(*this, "UnpackKvEntries", false, a));
}

BackendStatus Backend::PackIndexerKeys(Queue& q, const KvPackArgs& a) {
  FLOTILLA_CHECKED(DoPackIndexerKeys(q, a), CheckPack(*this, "PackIndexerKeys", true, a));
}

BackendStatus Backend::UnpackIndexerKeys(Queue& q, const KvUnpackArgs& a) {
  FLOTILLA_CHECKED(DoUnpackIndexerKeys(q, a), CheckUnpack(*this, "UnpackIndexerKeys", true, a));
}

// ---------------------------------------------------------------- model ops

BackendStatus Backend::EmbedRows(Queue& q, const EmbedRowsArgs& a) {
  Checker c(*this, "EmbedRows");
  c.NonNegative("n", a.n).NonNegative("first", a.first).NonNegative("num_rows", a.num_rows);
  c.That(a.d > 0, "d > 0");
  c.Span("table", a.table, a.num_rows * a.d).Span("tokens", a.tokens, a.n);
  c.Span("out", a.out, a.n * a.d);
  FLOTILLA_CHECKED(DoEmbedRows(q, a), c.Done());
}

namespace {

// Whether the first x_count elements of x and the first y_count of y share a byte.
template <typename T, typename U>
bool Overlap(const DeviceSpan<T>& x, int64_t x_count, const DeviceSpan<U>& y, int64_t y_count) {
  if (x.arena() == nullptr || x.arena() != y.arena() || x_count <= 0 || y_count <= 0) return false;
  const uintptr_t x0 = BackendAccess::RawAddress(x), y0 = BackendAccess::RawAddress(y);
  const uintptr_t x1 = x0 + uintptr_t(x_count) * sizeof(T),
                  y1 = y0 + uintptr_t(y_count) * sizeof(U);
  return x0 < y1 && y0 < x1;
}

}  // namespace

BackendStatus Backend::RepeatRows(Queue& q, const RepeatRowsArgs& a) {
  Checker c(*this, "RepeatRows");
  c.NonNegative("n", a.n).That(a.copies > 0, "copies > 0").That(a.d > 0, "d > 0");
  c.Span("x", a.x, a.n * a.d).Span("out", a.out, a.n * a.copies * a.d);
  c.That(!Overlap(a.x, a.n * a.d, a.out, a.n * a.copies * a.d), "out not overlapping x");
  FLOTILLA_CHECKED(DoRepeatRows(q, a), c.Done());
}

BackendStatus Backend::BroadcastAdd(Queue& q, const BroadcastAddArgs& a) {
  Checker c(*this, "BroadcastAdd");
  c.NonNegative("n", a.n).That(a.copies > 0, "copies > 0").That(a.d > 0, "d > 0");
  const int64_t total = a.n * a.copies * a.d;
  c.Span("a", a.a, a.n * a.d).Span("b", a.b, total).Span("out", a.out, total);
  c.That(!Overlap(a.a, a.n * a.d, a.out, total), "out not overlapping a");
  c.That(!Overlap(a.b, total, a.out, total) ||
             BackendAccess::RawAddress(a.b) == BackendAccess::RawAddress(a.out),
         "out either b itself or not overlapping it");
  FLOTILLA_CHECKED(DoBroadcastAdd(q, a), c.Done());
}

BackendStatus Backend::ConvertBf16ToF32(Queue& q, const ConvertBf16ToF32Args& a) {
  Checker c(*this, "ConvertBf16ToF32");
  c.NonNegative("count", a.count).Span("x", a.x, a.count).Span("y", a.y, a.count);
  FLOTILLA_CHECKED(DoConvertBf16ToF32(q, a), c.Done());
}

BackendStatus Backend::ConvertF32ToBf16(Queue& q, const ConvertF32ToBf16Args& a) {
  Checker c(*this, "ConvertF32ToBf16");
  c.NonNegative("count", a.count).Span("x", a.x, a.count).Span("y", a.y, a.count);
  FLOTILLA_CHECKED(DoConvertF32ToBf16(q, a), c.Done());
}

BackendStatus Backend::InterleaveRows(Queue& q, const InterleaveRowsArgs& a) {
  Checker c(*this, "InterleaveRows");
  c.NonNegative("blocks", a.blocks)
      .NonNegative("rows", a.rows)
      .NonNegative("row_bytes", a.row_bytes);
  const int64_t bytes = a.blocks * a.rows * a.row_bytes;
  c.Span("src", a.src, bytes).Span("dst", a.dst, bytes);
  c.That(!Overlap(a.src, bytes, a.dst, bytes), "dst not overlapping src");
  FLOTILLA_CHECKED(DoInterleaveRows(q, a), c.Done());
}

// ---- MoE ops

BackendStatus Backend::RoutePerRowK(Queue& q, const RoutePerRowKArgs& a) {
  Checker c(*this, "RoutePerRowK");
  c.NonNegative("m", a.m).That(a.num_experts > 0, "num_experts > 0");
  c.That(a.top_k > 0 && a.top_k <= a.num_experts && a.top_k <= 64,
         "0 < top_k <= min(num_experts, 64)");
  c.That(IsSet(a.bias) != IsSet(a.hash_ids), "exactly one of bias / hash_ids");
  c.Span("logits", a.logits, a.m * a.num_experts).Span("row_top_k", a.row_top_k, a.m);
  c.Optional("bias", a.bias, a.num_experts);
  if (IsSet(a.hash_ids)) {
    c.Stride("ld_hash", a.ld_hash, a.top_k)
        .Span("hash_ids", a.hash_ids, Extent(a.m, a.top_k, a.ld_hash));
  }
  c.Span("expert_idx", a.expert_idx, a.m * a.top_k).Span("weights", a.weights, a.m * a.top_k);
  FLOTILLA_CHECKED(DoRoutePerRowK(q, a), c.Done());
}

namespace {

// The grouping and window of a grouped GEMM.
void CheckGrouping(Checker& c, size_t num_groups, const In<int64_t>& offsets, int64_t row_begin,
                   int64_t rows) {
  c.That(num_groups > 0, "the weights of at least one group");
  c.NonNegative("row_begin", row_begin).NonNegative("rows", rows);
  c.Span("offsets", offsets, int64_t(num_groups) + 1);
}

// One span per group, each of at least `need` elements.
template <typename T>
void CheckGroupWeights(Checker& c, const char* name, std::span<const In<T>> w, size_t num_groups,
                       int64_t need) {
  c.That(w.size() == num_groups, [&] {
    return std::string(name) + " with one span per group (" + Str(int64_t(num_groups)) + "; got " +
           Str(int64_t(w.size())) + ")";
  });
  for (size_t g = 0; g < w.size(); ++g) c.SpanAt(name, g, w[g], need);
}

}  // namespace

BackendStatus Backend::GroupedGemmFp8Fp4(Queue& q, const GroupedGemmFp8Fp4Args& a) {
  Checker c(*this, "GroupedGemmFp8Fp4");
  c.NonNegative("n", a.n).That(a.k > 0 && a.k % 128 == 0, "k a positive multiple of 128");
  CheckGrouping(c, a.w.size(), a.offsets, a.row_begin, a.rows);
  c.Span("a", a.a, a.rows * a.k).Span("a_scale", a.a_scale, a.rows * (a.k / 128));
  CheckGroupWeights(c, "w", a.w, a.w.size(), a.n * (a.k / 2));
  CheckGroupWeights(c, "w_scale", a.w_scale, a.w.size(), a.n * (a.k / 32));
  c.Stride("ldc", a.ldc, a.n).Span("c", a.c, Extent(a.rows, a.n, a.ldc));
  FLOTILLA_CHECKED(DoGroupedGemmFp8Fp4(q, a), c.Done());
}

BackendStatus Backend::GroupedGemmFp8(Queue& q, const GroupedGemmFp8Args& a) {
  Checker c(*this, "GroupedGemmFp8");
  c.NonNegative("n", a.n).That(a.k > 0 && a.k % 128 == 0, "k a positive multiple of 128");
  c.That(a.w_scale.empty() != a.w_scale_f32.empty(), "exactly one of w_scale / w_scale_f32");
  CheckGrouping(c, a.w.size(), a.offsets, a.row_begin, a.rows);
  const int64_t kb = a.k / 128, nb = (a.n + 127) / 128;
  c.Span("a", a.a, a.rows * a.k).Span("a_scale", a.a_scale, a.rows * kb);
  CheckGroupWeights(c, "w", a.w, a.w.size(), a.n * a.k);
  if (!a.w_scale.empty()) CheckGroupWeights(c, "w_scale", a.w_scale, a.w.size(), nb * kb);
  if (!a.w_scale_f32.empty()) {
    CheckGroupWeights(c, "w_scale_f32", a.w_scale_f32, a.w.size(), nb * kb);
  }
  c.Stride("ldc", a.ldc, a.n).Span("c", a.c, Extent(a.rows, a.n, a.ldc));
  FLOTILLA_CHECKED(DoGroupedGemmFp8(q, a), c.Done());
}

BackendStatus Backend::GroupedGemmBf16(Queue& q, const GroupedGemmBf16Args& a) {
  Checker c(*this, "GroupedGemmBf16");
  c.NonNegative("n", a.n).That(a.k > 0, "k > 0");
  CheckGrouping(c, a.w.size(), a.offsets, a.row_begin, a.rows);
  c.Stride("lda", a.lda, a.k).Span("a", a.a, Extent(a.rows, a.k, a.lda));
  CheckGroupWeights(c, "w", a.w, a.w.size(), a.n * a.k);
  c.Stride("ldc", a.ldc, a.n).Span("c", a.c, Extent(a.rows, a.n, a.ldc));
  FLOTILLA_CHECKED(DoGroupedGemmBf16(q, a), c.Done());
}

// ---- attention ops

BackendStatus Backend::CompressorUpdate(Queue& q, const CompressorUpdateArgs& a) {
  Checker c(*this, "CompressorUpdate");
  c.NonNegative("n", a.n).NonNegative("start_pos", a.start_pos).That(a.ratio > 0, "ratio > 0");
  c.That(a.d > 0, "d > 0");
  c.That(a.width == (a.overlap ? 2 * a.d : a.d), [&] {
    return "width " + Str(a.overlap ? 2 * a.d : a.d) +
           (a.overlap ? " (2 d with overlap)" : " (d)") + " (got " + Str(a.width) + ")";
  });
  const int64_t state = (a.overlap ? 2 : 1) * a.ratio * a.width, live = a.n > 0;
  const int64_t entries = CompressorEntries(a.start_pos, a.n, a.ratio);
  c.Span("k", a.k, a.n * a.width).Span("g", a.g, a.n * a.width);
  c.Span("ape", a.ape, live * a.ratio * a.width);
  c.Span("state_kv", a.state_kv, live * state).Span("state_score", a.state_score, live * state);
  c.Span("pooled", a.pooled, entries * a.d).Optional("entry_pos", a.entry_pos, entries);
  FLOTILLA_CHECKED(DoCompressorUpdate(q, a), c.Done());
}

BackendStatus Backend::IndexerTopK(Queue& q, const IndexerTopKArgs& a) {
  Checker c(*this, "IndexerTopK");
  c.NonNegative("rows", a.rows).NonNegative("n_keys", a.n_keys);
  c.NonNegative("first_key", a.first_key).NonNegative("start_pos", a.start_pos);
  c.That(a.ratio > 0, "ratio > 0").That(a.num_heads > 0, "num_heads > 0");
  c.That(a.dim > 0, "dim > 0").That(a.top_k > 0, "top_k > 0");
  c.That(a.first_key + a.n_keys <= int64_t(0x7fffffff), "key indices below 2^31");
  const int64_t live = a.rows > 0 && a.n_keys > 0;
  c.Span("q", a.q, live * a.rows * a.num_heads * a.dim);
  c.Span("w", a.w, live * a.rows * a.num_heads).Span("keys", a.keys, live * a.n_keys * a.dim);
  c.Span("picks", a.picks, live * a.rows * a.top_k);
  c.Span("pick_scores", a.pick_scores, live * a.rows * a.top_k);
  c.Span("num_picks", a.num_picks, live * a.rows);
  FLOTILLA_CHECKED(DoIndexerTopK(q, a), c.Done());
}

BackendStatus Backend::PickedEntries(Queue& q, const PickedEntriesArgs& a) {
  Checker c(*this, "PickedEntries");
  c.NonNegative("rows", a.rows).That(a.top_k > 0, "top_k > 0");
  c.NonNegative("visible", a.visible).NonNegative("max_entries", a.max_entries);
  c.Span("picks", a.picks, a.rows * a.top_k).Span("num_picks", a.num_picks, a.rows);
  c.Span("entry_slot", a.entry_slot, a.visible).Span("entry_idx", a.entry_idx, a.max_entries);
  c.Span("count", a.count, 1);
  FLOTILLA_CHECKED(DoPickedEntries(q, a), c.Done());
}

BackendStatus Backend::UnpackKvEntriesPaged(Queue& q, const KvUnpackPagedArgs& a) {
  Checker c(*this, "UnpackKvEntriesPaged");
  CheckPackShape(c, false, a.max_rows, a.nope, a.rope, a.entry_bytes, a.ldx);
  c.That(a.per_page > 0, "per_page > 0");
  c.That(a.page_bytes >= a.per_page * a.entry_bytes, [&] {
    return "page_bytes >= per_page * entry_bytes (" + Str(a.per_page * a.entry_bytes) + ")";
  });
  const int64_t live = a.max_rows > 0;
  c.Span("pool", a.pool, live * a.page_bytes).Span("page_ids", a.page_ids, live);
  c.Span("units", a.units, a.max_rows).Span("count", a.count, 1);
  c.Span("x", a.x, Extent(a.max_rows, a.nope + a.rope, a.ldx));
  FLOTILLA_CHECKED(DoUnpackKvEntriesPaged(q, a), c.Done());
}

BackendStatus Backend::ChunkAttention(Queue& q, const ChunkAttentionArgs& a) {
  Checker c(*this, "ChunkAttention");
  c.NonNegative("rows", a.rows).NonNegative("start_pos", a.start_pos);
  c.That(a.window > 0, "window > 0").NonNegative("ratio", a.ratio);
  c.That(a.num_heads > 0, "num_heads > 0").That(a.dim > 0, "dim > 0");
  const int64_t live = a.rows > 0, hd = a.num_heads * a.dim;
  c.Stride("ldq", a.ldq, hd).Stride("ldo", a.ldo, hd);
  c.Span("q", a.q, Extent(a.rows, hd, a.ldq)).Span("out", a.out, Extent(a.rows, hd, a.ldo));
  c.Span("fresh", a.fresh, a.rows * a.dim).Span("sink", a.sink, live * a.num_heads);
  c.Span("ring", a.ring, live * (a.start_pos > 0) * a.window * a.dim);
  const int64_t visible = a.ratio > 0 ? (a.start_pos + a.rows) / a.ratio : 0;
  if (IsSet(a.picks)) {
    c.That(a.ratio > 0, "ratio > 0 with picks").That(a.top_k > 0, "top_k > 0 with picks");
    c.Span("picks", a.picks, a.rows * a.top_k).Span("num_picks", a.num_picks, a.rows);
    c.Span("entry_slot", a.entry_slot, visible);
  } else {
    c.Span("entries", a.entries, live * visible * a.dim);
  }
  c.That(a.dim > 0 && a.entries.size() % a.dim == 0, "entries a whole number of rows of dim");
  FLOTILLA_CHECKED(DoChunkAttention(q, a), c.Done());
}

}  // namespace flotilla::kernels
