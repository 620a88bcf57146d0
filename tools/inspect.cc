// flotilla inspect DIR: config summary, tensor inventory check, parameter and byte counts.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/model_tensors.h"
#include "common/safetensors.h"
#include "tokenizer/tokenizer.h"
#include "tools/command.h"
#include "common/flags.h"

namespace flotilla::cli {
namespace {

const char* FormatName(ExpertFormat f) {
  switch (f) {
    case ExpertFormat::kFp4: return "FP4 E2M1 + UE8M0/32";
    case ExpertFormat::kFp8: return "FP8 E4M3 + f32 128x128";
    case ExpertFormat::kBf16: return "BF16";
  }
  return "?";
}

int Inspect(const std::vector<std::string>& args_in) {
  std::vector<std::string> args = args_in;
  const auto scan_flag = std::find(args.begin(), args.end(), "--scan-values");
  const bool scan_values = scan_flag != args.end();
  if (scan_values) args.erase(scan_flag);
  if (args.size() != 1 || args[0].starts_with("--")) {
    std::fprintf(stderr, "usage: flotilla inspect DIR [--scan-values]\n");
    return 2;
  }
  const std::string dir = args[0];
  auto config = ModelConfig::FromFile((std::filesystem::path(dir) / "config.json").string());
  if (!config.ok()) return Fail("inspect", config.status());
  const ModelConfig& c = *config;
  absl::Status valid = c.Validate();
  auto ckpt = CheckpointDir::Open(dir);
  if (!ckpt.ok()) return Fail("inspect", ckpt.status());

  int64_t csa = 0, hca = 0, swa = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const int64_t r = c.RatioOf(l);
    (r == 0 ? swa : r == 4 ? csa : hca) += 1;
  }
  const ExpertFormat experts = DetectExpertFormat(c, **ckpt);
  std::printf("model            %s (%s)\n", dir.c_str(), c.model_type.c_str());
  std::printf("layers           %lld main (%lld sliding-window, %lld CSA, %lld HCA) + %lld MTP\n",
              (long long)c.num_hidden_layers, (long long)swa, (long long)csa, (long long)hca,
              (long long)c.num_nextn_predict_layers);
  std::printf("hidden           %lld, vocab %lld, heads %lld x %lld (rope %lld), window %lld\n",
              (long long)c.hidden_size, (long long)c.vocab_size, (long long)c.num_attention_heads,
              (long long)c.head_dim, (long long)c.qk_rope_head_dim, (long long)c.sliding_window);
  std::printf("experts          %lld routed (top %lld, %lld hash layers) + %lld shared, inter %lld\n",
              (long long)c.n_routed_experts, (long long)c.num_experts_per_tok,
              (long long)c.num_hash_layers, (long long)c.n_shared_experts,
              (long long)c.moe_intermediate_size);
  std::printf("weights          dense %s, experts %s\n",
              c.Quantized() ? "FP8 E4M3 + UE8M0 128x128" : "BF16", FormatName(experts));
  std::printf("config           %s\n", valid.ok() ? "valid" : std::string(valid.message()).c_str());

  // Inventory check.
  std::map<std::string, TensorSpec> expected;
  for (auto& s : ExpectedTensors(c, experts)) expected.emplace(s.name, s);
  std::vector<std::string> missing, unexpected, wrong;
  int64_t params = 0, elements = 0;
  uint64_t bytes = 0;
  for (const std::string& name : (*ckpt)->Names()) {
    auto view = (*ckpt)->Get(name);
    const TensorInfo& info = *view->info;
    bytes += info.NumBytes();
    elements += info.NumElements();
    const bool is_scale = name.size() > 6 && name.compare(name.size() - 6, 6, ".scale") == 0;
    if (!is_scale) params += info.NumElements() * (info.dtype == DType::kI8 ? 2 : 1);
    auto it = expected.find(name);
    if (it == expected.end()) {
      unexpected.push_back(absl::StrCat(name, " ", std::string(DTypeName(info.dtype)), ShapeString(info.shape)));
      continue;
    }
    if (it->second.dtype != info.dtype || it->second.shape != info.shape) {
      wrong.push_back(absl::StrCat(name, ": found ", std::string(DTypeName(info.dtype)), ShapeString(info.shape),
                                   ", expected ", std::string(DTypeName(it->second.dtype)),
                                   ShapeString(it->second.shape), " (", *view->file, ")"));
    }
    expected.erase(it);
  }
  for (const auto& [name, s] : expected) {
    missing.push_back(absl::StrCat(name, " ", std::string(DTypeName(s.dtype)), ShapeString(s.shape)));
  }
  std::printf("files            %zu safetensors\n", (*ckpt)->files().size());
  std::printf("tensors          %zu\n", (*ckpt)->Names().size());
  std::printf("parameters       %lld (FP4 elements counted singly, scales excluded)\n",
              (long long)params);
  std::printf("stored elements  %lld\n", (long long)elements);
  std::printf("bytes            %llu (%.2f GiB)\n", (unsigned long long)bytes,
              double(bytes) / double(1ull << 30));
  auto list = [](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    std::printf("%s (%zu):\n", what, v.size());
    for (const auto& s : v) std::printf("  %s\n", s.c_str());
  };
  list("missing tensors", missing);
  list("unexpected tensors", unexpected);
  list("wrong dtype or shape", wrong);
  const bool inventory_ok = missing.empty() && unexpected.empty() && wrong.empty();
  std::printf("inventory        %s\n", inventory_ok ? "complete" : "PROBLEMS (see above)");

  // The tokenizer the server would load.
  auto tokenizer = Tokenizer::FromModelDir(dir);
  if (tokenizer.ok()) {
    std::printf("tokenizer        %lld ids\n", (long long)(*tokenizer)->vocab_size());
  } else {
    std::printf("tokenizer        PROBLEM: %s\n", std::string(tokenizer.status().message()).c_str());
  }

  // Opt-in: every floating-point value finite (reads every byte of the checkpoint).
  std::vector<std::string> non_finite;
  if (scan_values) {
    for (const std::string& name : (*ckpt)->Names()) {
      auto view = (*ckpt)->Get(name);
      const int64_t at = FirstNonFinite(*view);
      if (at >= 0) {
        non_finite.push_back(absl::StrCat(name, ": element ", at, " is NaN or infinite (",
                                          std::string(DTypeName(view->dtype())), ", ",
                                          *view->file, ")"));
      }
    }
    list("non-finite values", non_finite);
    std::printf("values           %s\n", non_finite.empty() ? "all finite" : "PROBLEMS (see above)");
  }
  const bool ok = valid.ok() && inventory_ok && tokenizer.ok() && non_finite.empty();
  return ok ? 0 : 1;
}

FLOTILLA_COMMAND("inspect", "check a checkpoint directory against its config",
                 "usage: flotilla inspect DIR [--scan-values]\n"
                 "  Reads DIR/config.json, the tokenizer files and the safetensors shards (through\n"
                 "  model.safetensors.index.json when there is one) and checks every tensor against\n"
                 "  the config: missing, unexpected, wrong dtype or shape. Prints the config summary,\n"
                 "  the inventory, parameter and byte counts, and whether the tokenizer loads.\n"
                 "  --scan-values also reads every value and names each tensor holding a NaN or an\n"
                 "  infinity. Exit status 0 when everything checks out, 1 if not.\n",
                 Inspect);

}  // namespace
}  // namespace flotilla::cli
