#include "common/step_plan.h"

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

// Wire format (all integers little-endian, floats as their IEEE-754 bits):
//   plan   := u32 magic "FSP2" | i64 step | u8 shutdown | u32 num_release | u64 release[]
//             | u32 num_seqs | seq[]
//   seq    := u64 seq_id | i32 dp_group | i64 start_pos | u8 sample | sampling
//             | u32 num_tokens | i32 tokens[]
//   sampling := u8 greedy | f32 temperature | f32 top_p | i64 top_k | u64 seed | u8 logprobs
//               | u8 top_logprobs | u8 experts_per_token
//   tokens := u32 magic "FST2" | u32 count | token[]
//   token  := u64 seq_id | i32 token | u8 n (0: no log probabilities; else 1 + alternatives)
//             | [f32 logprob | (i32 id | f32 logprob)[n - 1]]
// Counts are checked against the bytes left before anything is allocated.

namespace flotilla {
namespace {

constexpr uint32_t kPlanMagic = 0x32505346;    // "FSP2"
constexpr uint32_t kTokensMagic = 0x32545346;  // "FST2"
constexpr size_t kSamplingBytes = 1 + 4 + 4 + 8 + 8 + 1 + 1 + 1;
constexpr size_t kSeqFixedBytes = 8 + 4 + 8 + 1 + kSamplingBytes + 4;
constexpr size_t kTokenRecordBytes = 8 + 4 + 1;  // the smallest record

class Writer {
 public:
  void U8(uint8_t v) { out_.push_back(char(v)); }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(char((v >> (8 * i)) & 0xff));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(char((v >> (8 * i)) & 0xff));
  }
  void I32(int32_t v) { U32(uint32_t(v)); }
  void I64(int64_t v) { U64(uint64_t(v)); }
  void F32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    U32(bits);
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  Reader(const std::string& bytes, const char* what) : bytes_(bytes), what_(what) {}

  size_t left() const { return bytes_.size() - at_; }
  absl::Status Need(size_t n, const std::string& field) const {
    if (n > left()) {
      return absl::InvalidArgumentError(absl::StrCat(what_, ": truncated at byte ", at_,
                                                     " reading ", field, " (", n, " bytes needed, ",
                                                     left(), " left)"));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> Le(size_t n, const std::string& field) {
    RETURN_IF_ERROR(Need(n, field));
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint64_t(uint8_t(bytes_[at_ + i])) << (8 * i);
    at_ += n;
    return v;
  }
  absl::StatusOr<uint8_t> Flag(const std::string& field) {
    ASSIGN_OR_RETURN(const uint64_t v, Le(1, field));
    if (v > 1) return Error(absl::StrCat(field, " is ", v, " (expected 0 or 1)"));
    return uint8_t(v);
  }
  absl::StatusOr<float> F32(const std::string& field) {
    ASSIGN_OR_RETURN(const uint64_t bits, Le(4, field));
    const uint32_t b32 = uint32_t(bits);
    float v;
    std::memcpy(&v, &b32, 4);
    return v;
  }
  // Requires Need(4) to have passed (e.g. through Count).
  uint32_t U32Unchecked() {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v |= uint32_t(uint8_t(bytes_[at_ + i])) << (8 * i);
    at_ += 4;
    return v;
  }
  // A count of records of `record_bytes` each that must fit in what is left.
  absl::StatusOr<uint32_t> Count(size_t record_bytes, const std::string& field) {
    ASSIGN_OR_RETURN(const uint64_t n, Le(4, field));
    if (n * record_bytes > left()) {
      return Error(absl::StrCat(field, " is ", n, " but only ", left(), " bytes are left (",
                                record_bytes, " bytes each at least)"));
    }
    return uint32_t(n);
  }
  absl::Status Error(const std::string& message) const {
    return absl::InvalidArgumentError(absl::StrCat(what_, ": ", message));
  }
  absl::Status Done() const {
    if (left() != 0) return Error(absl::StrCat(left(), " trailing bytes after the end"));
    return absl::OkStatus();
  }

 private:
  const std::string& bytes_;
  const char* what_;
  size_t at_ = 0;
};

absl::StatusOr<StepSequence> ParseSequence(Reader& r, uint32_t index) {
  const std::string at = absl::StrCat("seqs[", index, "]");
  StepSequence s;
  ASSIGN_OR_RETURN(s.seq_id, r.Le(8, at + ".seq_id"));
  ASSIGN_OR_RETURN(const uint64_t group, r.Le(4, at + ".dp_group"));
  s.dp_group = int32_t(uint32_t(group));
  if (s.dp_group < 0) return r.Error(absl::StrCat(at, ".dp_group is negative (", s.dp_group, ")"));
  ASSIGN_OR_RETURN(const uint64_t start, r.Le(8, at + ".start_pos"));
  s.start_pos = int64_t(start);
  if (s.start_pos < 0) {
    return r.Error(absl::StrCat(at, ".start_pos is negative (", s.start_pos, ")"));
  }
  ASSIGN_OR_RETURN(s.sample, r.Flag(at + ".sample"));
  ASSIGN_OR_RETURN(s.sampling.greedy, r.Flag(at + ".sampling.greedy"));
  ASSIGN_OR_RETURN(s.sampling.temperature, r.F32(at + ".sampling.temperature"));
  ASSIGN_OR_RETURN(s.sampling.top_p, r.F32(at + ".sampling.top_p"));
  ASSIGN_OR_RETURN(const uint64_t top_k, r.Le(8, at + ".sampling.top_k"));
  s.sampling.top_k = int64_t(top_k);
  if (s.sampling.top_k < 0) {
    return r.Error(absl::StrCat(at, ".sampling.top_k is negative (", s.sampling.top_k, ")"));
  }
  ASSIGN_OR_RETURN(s.sampling.seed, r.Le(8, at + ".sampling.seed"));
  ASSIGN_OR_RETURN(s.sampling.logprobs, r.Flag(at + ".sampling.logprobs"));
  ASSIGN_OR_RETURN(const uint64_t top, r.Le(1, at + ".sampling.top_logprobs"));
  if (top > uint64_t(kMaxTopLogprobs)) {
    return r.Error(
        absl::StrCat(at, ".sampling.top_logprobs is ", top, " (at most ", kMaxTopLogprobs, ")"));
  }
  s.sampling.top_logprobs = uint8_t(top);
  ASSIGN_OR_RETURN(const uint64_t experts, r.Le(1, at + ".sampling.experts_per_token"));
  s.sampling.experts_per_token = uint8_t(experts);
  ASSIGN_OR_RETURN(const uint32_t num_tokens, r.Count(4, at + ".num_tokens"));
  if (num_tokens == 0) return r.Error(absl::StrCat(at, " has no tokens"));
  s.tokens.resize(num_tokens);
  for (uint32_t i = 0; i < num_tokens; ++i) {  // Count checked the bytes are there
    s.tokens[i] = int32_t(r.U32Unchecked());
    if (s.tokens[i] < 0) {
      return r.Error(absl::StrCat(at, ".tokens[", i, "] is negative (", s.tokens[i], ")"));
    }
  }
  return s;
}

}  // namespace

std::string SerializeStepPlan(const StepPlan& plan) {
  Writer w;
  w.U32(kPlanMagic);
  w.I64(plan.step);
  w.U8(plan.shutdown);
  w.U32(uint32_t(plan.release.size()));
  for (uint64_t id : plan.release) w.U64(id);
  w.U32(uint32_t(plan.seqs.size()));
  for (const StepSequence& s : plan.seqs) {
    w.U64(s.seq_id);
    w.I32(s.dp_group);
    w.I64(s.start_pos);
    w.U8(s.sample);
    w.U8(s.sampling.greedy);
    w.F32(s.sampling.temperature);
    w.F32(s.sampling.top_p);
    w.I64(s.sampling.top_k);
    w.U64(s.sampling.seed);
    w.U8(s.sampling.logprobs);
    w.U8(s.sampling.top_logprobs);
    w.U8(s.sampling.experts_per_token);
    w.U32(uint32_t(s.tokens.size()));
    for (int32_t t : s.tokens) w.I32(t);
  }
  return w.Take();
}

absl::StatusOr<StepPlan> ParseStepPlan(const std::string& bytes) {
  Reader r(bytes, "step plan");
  ASSIGN_OR_RETURN(const uint64_t magic, r.Le(4, "magic"));
  if (magic != kPlanMagic) {
    return r.Error(absl::StrCat("bad magic 0x", absl::Hex(magic), " (expected 0x",
                                absl::Hex(kPlanMagic), ", \"FSP2\")"));
  }
  StepPlan plan;
  ASSIGN_OR_RETURN(const uint64_t step, r.Le(8, "step"));
  plan.step = int64_t(step);
  if (plan.step < 0) return r.Error(absl::StrCat("step is negative (", plan.step, ")"));
  ASSIGN_OR_RETURN(plan.shutdown, r.Flag("shutdown"));
  ASSIGN_OR_RETURN(const uint32_t num_release, r.Count(8, "num_release"));
  plan.release.resize(num_release);
  for (uint32_t i = 0; i < num_release; ++i) {
    ASSIGN_OR_RETURN(plan.release[i], r.Le(8, "release"));
  }
  ASSIGN_OR_RETURN(const uint32_t num_seqs, r.Count(kSeqFixedBytes, "num_seqs"));
  plan.seqs.reserve(num_seqs);
  std::set<uint64_t> ids;
  for (uint32_t i = 0; i < num_seqs; ++i) {
    ASSIGN_OR_RETURN(StepSequence s, ParseSequence(r, i));
    if (!ids.insert(s.seq_id).second) {
      return r.Error(absl::StrCat("seqs[", i, "]: seq_id ", s.seq_id, " appears twice"));
    }
    plan.seqs.push_back(std::move(s));
  }
  RETURN_IF_ERROR(r.Done());
  return plan;
}

std::string SerializeStepTokens(const std::vector<StepToken>& tokens) {
  Writer w;
  w.U32(kTokensMagic);
  w.U32(uint32_t(tokens.size()));
  for (const StepToken& t : tokens) {
    w.U64(t.seq_id);
    w.I32(t.token);
    if (!t.has_logprob) {
      w.U8(0);
      continue;
    }
    w.U8(uint8_t(1 + t.top.size()));
    w.F32(t.logprob);
    for (const auto& [id, lp] : t.top) {
      w.I32(id);
      w.F32(lp);
    }
  }
  return w.Take();
}

absl::StatusOr<std::vector<StepToken>> ParseStepTokens(const std::string& bytes) {
  Reader r(bytes, "step tokens");
  ASSIGN_OR_RETURN(const uint64_t magic, r.Le(4, "magic"));
  if (magic != kTokensMagic) {
    return r.Error(absl::StrCat("bad magic 0x", absl::Hex(magic), " (expected 0x",
                                absl::Hex(kTokensMagic), ", \"FST2\")"));
  }
  ASSIGN_OR_RETURN(const uint32_t count, r.Count(kTokenRecordBytes, "count"));
  std::vector<StepToken> tokens(count);
  for (uint32_t i = 0; i < count; ++i) {
    ASSIGN_OR_RETURN(tokens[i].seq_id, r.Le(8, "seq_id"));
    ASSIGN_OR_RETURN(const uint64_t t, r.Le(4, "token"));
    tokens[i].token = int32_t(uint32_t(t));
    if (tokens[i].token < 0) {
      return r.Error(absl::StrCat("token ", i, " (seq_id ", tokens[i].seq_id, ") is negative (",
                                  tokens[i].token, ")"));
    }
    ASSIGN_OR_RETURN(const uint64_t n, r.Le(1, "logprob count"));
    if (n == 0) continue;
    if (n > uint64_t(1 + kMaxTopLogprobs)) {
      return r.Error(absl::StrCat("token ", i, " carries ", n - 1, " alternatives (at most ",
                                  kMaxTopLogprobs, ")"));
    }
    tokens[i].has_logprob = true;
    ASSIGN_OR_RETURN(tokens[i].logprob, r.F32("logprob"));
    for (uint64_t k = 1; k < n; ++k) {
      ASSIGN_OR_RETURN(const uint64_t id, r.Le(4, "alternative id"));
      ASSIGN_OR_RETURN(const float lp, r.F32("alternative logprob"));
      tokens[i].top.emplace_back(int32_t(uint32_t(id)), lp);
    }
  }
  RETURN_IF_ERROR(r.Done());
  return tokens;
}

}  // namespace flotilla
