// flotilla make-model --preset tiny|small|mini-1b --out DIR [--seed N] [--tokenizer-dir DIR]
#include <chrono>
#include <cstdio>

#include "common/synthetic.h"
#include "tools/command.h"
#include "common/flags.h"

namespace flotilla::cli {
namespace {

absl::Status MakeModel(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags f, Flags::Parse(args, {"--preset", "--out", "--seed", "--tokenizer-dir"},
                                         {}));
  ASSIGN_OR_RETURN(std::string preset, f.Required("--preset"));
  ASSIGN_OR_RETURN(std::string out, f.Required("--out"));
  ASSIGN_OR_RETURN(int64_t seed, f.Int("--seed", 1));
  ASSIGN_OR_RETURN(ModelConfig config, PresetConfig(preset));
  SyntheticOptions options;
  options.seed = uint64_t(seed);
  options.shard_bytes = preset == "tiny" ? (48ull << 20) : (512ull << 20);
  options.tokenizer_dir = f.Get("--tokenizer-dir", FLOTILLA_SOURCE_DIR "/data/tokenizer");
  const auto t0 = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(WriteSyntheticCheckpoint(config, options, out));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s model (seed %lld) to %s in %.1f s\n", preset.c_str(), (long long)seed,
              out.c_str(), s);
  return absl::OkStatus();
}

int Main(const std::vector<std::string>& args) {
  absl::Status st = MakeModel(args);
  return st.ok() ? 0 : Fail("make-model", st);
}

FLOTILLA_COMMAND("make-model", "write a synthetic checkpoint in the official format",
                 "usage: flotilla make-model --preset tiny|small|mini-1b --out DIR [--seed N]\n"
                 "                           [--tokenizer-dir DIR]\n"
                 "  Writes config.json, safetensors shards, model.safetensors.index.json and the\n"
                 "  tokenizer files into DIR. --seed (default 1) picks the random weights;\n"
                 "  --tokenizer-dir copies tokenizer files from DIR instead of the built-in ones.\n",
                 Main);

}  // namespace
}  // namespace flotilla::cli
