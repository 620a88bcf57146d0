// flotilla run: single-process generation, the reference path every distributed result is
// held against.
#include <chrono>
#include <cstdio>
#include <string>

#include "common/npy.h"
#include "tools/command.h"
#include "common/flags.h"
#include "worker/model.h"
#include "worker/sampler.h"

namespace flotilla::cli {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

absl::Status Run(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(
      Flags f, Flags::Parse(args,
                            {"--model", "--prompt-ids", "--max-new-tokens", "--temperature",
                             "--top-p", "--top-k", "--seed", "--chunk", "--experts-per-token",
                             "--dump-logits", "--prompt-ids-file"},
                            {"--greedy", "--mtp", "--ignore-eos"}));
  ASSIGN_OR_RETURN(std::string dir, f.Required("--model"));
  if (f.Has("--prompt-ids") == f.Has("--prompt-ids-file")) {
    return absl::InvalidArgumentError("give exactly one of --prompt-ids 1,2,3 or --prompt-ids-file FILE");
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt,
                   f.Has("--prompt-ids") ? ParseIdList("--prompt-ids", f.Get("--prompt-ids"))
                                         : ReadIdFile("--prompt-ids-file", f.Get("--prompt-ids-file")));
  ASSIGN_OR_RETURN(int64_t max_new, f.Int("--max-new-tokens", 16));
  ASSIGN_OR_RETURN(int64_t chunk, f.Int("--chunk", 0));
  ASSIGN_OR_RETURN(int64_t k, f.Int("--experts-per-token", 0));
  SamplingParams sp;
  sp.greedy = f.Has("--greedy") || !f.Has("--temperature");
  if (f.Has("--greedy") && (f.Has("--temperature") || f.Has("--top-p") || f.Has("--top-k"))) {
    return absl::InvalidArgumentError("--greedy excludes --temperature, --top-p and --top-k");
  }
  ASSIGN_OR_RETURN(double temperature, f.Double("--temperature", 1.0));
  ASSIGN_OR_RETURN(double top_p, f.Double("--top-p", 1.0));
  ASSIGN_OR_RETURN(sp.top_k, f.Int("--top-k", 0));
  ASSIGN_OR_RETURN(int64_t seed, f.Int("--seed", 0));
  sp.temperature = float(temperature);
  sp.top_p = float(top_p);
  sp.seed = uint64_t(seed);
  if (max_new < 1) return absl::InvalidArgumentError("--max-new-tokens must be at least 1");
  if (chunk < 0) return absl::InvalidArgumentError("--chunk must be positive");
  if (!(sp.temperature >= 0.0f)) {
    return absl::InvalidArgumentError("--temperature must be >= 0 (0 is greedy)");
  }
  if (sp.temperature == 0.0f) sp.greedy = true;
  if (!(sp.top_p > 0.0f && sp.top_p <= 1.0f)) {
    return absl::InvalidArgumentError("--top-p must be in (0, 1]");
  }
  if (sp.top_k < 0) return absl::InvalidArgumentError("--top-k must be >= 0");

  ModelOptions options;
  options.experts_per_token = k;
  const auto t_load = Clock::now();
  ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(dir, options));
  const ModelConfig& c = model->config();
  const int64_t vocab = c.vocab_size;
  std::fprintf(stderr, "loaded %s in %.2f s\n", dir.c_str(), Seconds(t_load, Clock::now()));

  auto seq = model->NewSequence();
  Sampler sampler(sp);
  std::vector<int32_t> generated;
  std::vector<float> dump;
  const bool want_dump = f.Has("--dump-logits"), mtp = f.Has("--mtp");
  Model::Output out;

  const auto t0 = Clock::now();
  // --chunk 0: the whole prompt, in steps of at most the workspace's tokens per step.
  const int64_t step = chunk > 0 ? chunk
                                 : std::min<int64_t>(int64_t(prompt.size()),
                                                     model->workspace_layout().limits.tokens);
  for (size_t s = 0; s < prompt.size(); s += step) {
    const size_t n = std::min(prompt.size() - s, size_t(step));
    Model::Chunk ch{seq.get(), std::span<const int32_t>(prompt.data() + s, n), false};
    RETURN_IF_ERROR(model->Forward(std::span<const Model::Chunk>(&ch, 1), &out));
  }
  const auto t1 = Clock::now();
  int64_t drafted = 0, accepted = 0;
  int32_t draft = -1;
  for (int64_t i = 0; i < max_new; ++i) {
    const int32_t tok = sampler.Sample(out.logits.data(), vocab);
    if (want_dump) dump.insert(dump.end(), out.logits.begin(), out.logits.begin() + vocab);
    if (draft >= 0) {
      ++drafted;
      accepted += draft == tok;
    }
    generated.push_back(tok);
    if ((tok == c.eos_token_id && !f.Has("--ignore-eos")) || i + 1 == max_new) break;
    if (mtp) {
      SequenceState* sp_seq = seq.get();
      std::vector<float> draft_logits;
      RETURN_IF_ERROR(model->DraftMtp(std::span<SequenceState* const>(&sp_seq, 1),
                                      std::span<const int32_t>(&tok, 1), &draft_logits));
      draft = Argmax(draft_logits.data(), vocab);
    }
    Model::Chunk ch{seq.get(), std::span<const int32_t>(&tok, 1), false};
    RETURN_IF_ERROR(model->Forward(std::span<const Model::Chunk>(&ch, 1), &out));
  }
  const auto t2 = Clock::now();

  std::printf("generated:");
  for (int32_t t : generated) std::printf(" %d", t);
  std::printf("\n");
  const double pre = Seconds(t0, t1), dec = Seconds(t1, t2);
  const int64_t decoded = int64_t(generated.size()) - 1;
  std::printf("prefill: %zu tokens in %.3f s (%.1f tokens/s)\n", prompt.size(), pre,
              double(prompt.size()) / pre);
  if (decoded > 0) {
    std::printf("decode: %lld tokens in %.3f s (%.2f tokens/s)\n", (long long)decoded, dec,
                double(decoded) / dec);
  }
  if (mtp && drafted > 0) {
    std::printf("mtp: %lld of %lld drafts matched the next token\n", (long long)accepted,
                (long long)drafted);
  }
  if (want_dump) {
    RETURN_IF_ERROR(WriteNpyF32(f.Get("--dump-logits"), {int64_t(generated.size()), vocab},
                                dump.data()));
  }
  return absl::OkStatus();
}

int Main(const std::vector<std::string>& args) {
  absl::Status st = Run(args);
  return st.ok() ? 0 : Fail("run", st);
}

FLOTILLA_COMMAND(
    "run", "generate from a prompt in one process (the reference path)",
    "usage: flotilla run --model DIR (--prompt-ids 1,2,3 | --prompt-ids-file FILE)\n"
    "                    [--max-new-tokens N] [--greedy | --temperature T --top-p P --top-k K\n"
    "                    --seed S] [--ignore-eos] [--chunk C] [--experts-per-token K]\n"
    "                    [--dump-logits FILE.npy] [--mtp]\n"
    "  Loads the whole model on the CPU backend and prints the generated ids and prefill and\n"
    "  decode tokens per second. --prompt-ids-file holds ids separated by commas or white\n"
    "  space. Greedy unless --temperature is given; --temperature 0 is greedy. Defaults:\n"
    "  --max-new-tokens 16, --top-p 1, --top-k 0 (all), --seed 0. --chunk C feeds the prompt\n"
    "  C tokens at a time; --dump-logits writes float32 [generated, vocab]; --mtp drafts with\n"
    "  the MTP block and reports how often the draft matched.\n",
    Main);

}  // namespace
}  // namespace flotilla::cli
