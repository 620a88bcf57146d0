// flotilla plan: for a model config and a cluster shape, the shard of every worker rank (heads,
// vocabulary slice, experts, weight bytes), the KV pool per rank and the longest context that
// fits (design.md §5; the arithmetic is sharding/, explained in docs/capacity.md).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/flags.h"
#include "common/model_tensors.h"
#include "common/safetensors.h"
#include "sharding/capacity.h"
#include "sharding/kv_pool_layout.h"
#include "sharding/shard_plan.h"
#include "sharding/step_workspace.h"
#include "tools/command.h"

namespace flotilla::cli {
namespace {

constexpr int64_t kOneMillion = 1048576;  // "1M" tokens, as in the spec

const char* kUsage =
    "usage: flotilla plan (--config FILE | --model DIR) --nodes N --gpus-per-node G\n"
    "                     --gpu-memory SIZE [--tp T] [--reserve SIZE] [--kv-page SIZE]\n"
    "                     [--step-tokens N] [--step-seqs N] [--logit-rows N]\n"
    "                     [--max-context N] [--indexer-block N] [--exchange-rows N]\n"
    "                     [--tensors RANK]\n"
    "  SIZE: e.g. 80GiB, 141GB, 512MiB, 4096B. --tp defaults to 1, --reserve to 8GiB\n"
    "  (communication buffers, CUDA context), --kv-page (the page of a worker's KV pool) to\n"
    "  64KiB. The step workspace every rank holds (every temporary of a step) is sized from\n"
    "  --step-tokens (8192), --step-seqs (256), --logit-rows (256), --max-context (0:\n"
    "  max_position_embeddings), --indexer-block (8192) and, with more than one rank, the\n"
    "  expert exchange's --exchange-rows per round (128); it comes out of the KV pool.\n"
    "  --tensors RANK also lists the tensors and byte runs that rank reads.\n";

// 3688172544 -> "3,688,172,544"
std::string Thousands(uint64_t v) {
  std::string digits = absl::StrCat(v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string BytesBoth(uint64_t bytes) {
  return absl::StrCat(Thousands(bytes), " B (", FormatBytes(bytes), ")");
}

// 3514.25 -> "3,514.25"; at most 4 decimals, trailing zeros dropped.
std::string Decimal(double v) {
  std::string frac = absl::StrFormat("%.4f", v - double(uint64_t(v)));  // "0.2500"
  while (!frac.empty() && frac.back() == '0') frac.pop_back();
  if (frac == "0.") frac.clear();
  if (frac == "1.") return Thousands(uint64_t(v) + 1);
  return Thousands(uint64_t(v)) + (frac.empty() ? "" : frac.substr(1));
}

const char* ExpertFormatName(ExpertFormat f) {
  switch (f) {
    case ExpertFormat::kFp4:
      return "FP4 (int8-packed E2M1 + UE8M0 per 32)";
    case ExpertFormat::kFp8:
      return "FP8 E4M3 + f32 128x128 scales";
    case ExpertFormat::kBf16:
      return "BF16";
  }
  return "?";
}

// The config and the expert format: --config FILE, or --model DIR (its config.json; the expert
// format read from the checkpoint's tensors when the directory holds any).
absl::Status LoadModel(const Flags& f, std::string* source, ModelConfig* config,
                       ExpertFormat* experts) {
  if (f.Has("--config") == f.Has("--model")) {
    return absl::InvalidArgumentError("give exactly one of --config FILE and --model DIR");
  }
  namespace fs = std::filesystem;
  const bool from_dir = f.Has("--model");
  *source = from_dir ? (fs::path(f.Get("--model")) / "config.json").string() : f.Get("--config");
  ASSIGN_OR_RETURN(*config, ModelConfig::FromFile(*source));
  RETURN_IF_ERROR(config->Validate());
  *experts = ExpertFormatOf(*config);
  if (!from_dir) return absl::OkStatus();
  bool has_weights = false;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(f.Get("--model"), ec)) {
    if (entry.path().extension() == ".safetensors") has_weights = true;
  }
  if (has_weights) {
    ASSIGN_OR_RETURN(auto ckpt, CheckpointDir::Open(f.Get("--model")));
    *experts = DetectExpertFormat(*config, *ckpt);
  }
  return absl::OkStatus();
}

void PrintTensors(const RankPlan& rank) {
  std::printf("\nrank %lld reads %s tensors, %s (byte runs relative to each tensor's data)\n",
              (long long)rank.rank, Thousands(rank.tensors.size()).c_str(),
              BytesBoth(rank.weight_bytes).c_str());
  for (const TensorSlice& s : rank.tensors) {
    std::printf("  %-48s %-10s %-14s local %-14s %s\n", s.name.c_str(), SplitKindName(s.split),
                ShapeString(s.shape).c_str(), ShapeString(s.local_shape).c_str(),
                ByteRunString(s.run).c_str());
  }
}

absl::Status Plan(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(
      Flags f, Flags::Parse(args,
                            {"--config", "--model", "--nodes", "--gpus-per-node", "--gpu-memory",
                             "--tp", "--reserve", "--tensors", "--kv-page", "--step-tokens",
                             "--step-seqs", "--logit-rows", "--max-context", "--indexer-block",
                             "--exchange-rows"},
                            {}));
  std::string source;
  ModelConfig c;
  ExpertFormat experts;
  RETURN_IF_ERROR(LoadModel(f, &source, &c, &experts));
  RETURN_IF_ERROR(f.Required("--nodes").status());
  RETURN_IF_ERROR(f.Required("--gpus-per-node").status());
  ASSIGN_OR_RETURN(int64_t nodes, f.Int("--nodes", 0));
  ASSIGN_OR_RETURN(int64_t gpus_per_node, f.Int("--gpus-per-node", 0));
  ASSIGN_OR_RETURN(int64_t tp, f.Int("--tp", 1));
  ASSIGN_OR_RETURN(std::string memory_text, f.Required("--gpu-memory"));
  ASSIGN_OR_RETURN(uint64_t gpu_memory, ParseByteSize(memory_text));
  ASSIGN_OR_RETURN(uint64_t reserve, ParseByteSize(f.Get("--reserve", "8GiB")));
  ASSIGN_OR_RETURN(uint64_t kv_page, ParseByteSize(f.Get("--kv-page", "64KiB")));
  ASSIGN_OR_RETURN(const KvPoolLayout pages,
                   KvPoolLayout::Make(c, int64_t(std::min<uint64_t>(kv_page, uint64_t(1) << 40))));
  ASSIGN_OR_RETURN(int64_t tensors_rank, f.Int("--tensors", -1));
  StepLimits limits;
  ASSIGN_OR_RETURN(limits.tokens, f.Int("--step-tokens", limits.tokens));
  ASSIGN_OR_RETURN(limits.sequences, f.Int("--step-seqs", limits.sequences));
  ASSIGN_OR_RETURN(limits.logit_rows, f.Int("--logit-rows", limits.logit_rows));
  ASSIGN_OR_RETURN(limits.max_context, f.Int("--max-context", 0));
  ASSIGN_OR_RETURN(limits.indexer_block_keys, f.Int("--indexer-block", limits.indexer_block_keys));
  ASSIGN_OR_RETURN(limits.exchange_rows, f.Int("--exchange-rows", limits.exchange_rows));
  limits.tp_size = std::max<int64_t>(tp, 1);
  if (nodes < 1 || gpus_per_node < 1) {
    return absl::InvalidArgumentError("--nodes and --gpus-per-node must be at least 1");
  }
  const Layout layout = Layout::ForCluster(nodes, gpus_per_node, tp);
  // The expert exchange's buffers are part of the workspace; rank 0 owns the most experts, so
  // its workspace bounds every rank's.
  limits.ep_size = layout.num_workers;
  limits.ep_rank = 0;
  ASSIGN_OR_RETURN(const StepWorkspaceLayout workspace, MakeStepWorkspaceLayout(c, limits));
  const uint64_t workspace_bytes = workspace.Bytes();
  ASSIGN_OR_RETURN(ShardPlan plan, ShardPlan::Make(c, layout, experts));
  if (tensors_rank < -1 || tensors_rank >= layout.num_workers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--tensors ", tensors_rank, ": expected a rank in [0, ", layout.num_workers, ")"));
  }

  std::printf("model       %s\n", source.c_str());
  std::printf(
      "            %lld layers + %lld MTP, %lld query heads in %lld output groups, "
      "%lld indexer heads, %lld routed experts, vocab %lld\n",
      (long long)c.num_hidden_layers, (long long)c.num_nextn_predict_layers,
      (long long)c.num_attention_heads, (long long)c.o_groups, (long long)c.index_n_heads,
      (long long)c.n_routed_experts, (long long)c.vocab_size);
  std::printf("weights     dense %s, experts %s\n",
              c.Quantized() ? "FP8 E4M3 + UE8M0 128x128" : "BF16", ExpertFormatName(experts));
  std::printf(
      "checkpoint  %s in %s tensors: %s replicated on every rank, %s split over "
      "each TP group, %s of experts spread over all ranks\n",
      BytesBoth(plan.CheckpointBytes()).c_str(), Thousands(plan.inventory().size()).c_str(),
      FormatBytes(plan.ReplicatedBytes()).c_str(), FormatBytes(plan.SplitBytes()).c_str(),
      FormatBytes(plan.ExpertBytes()).c_str());
  std::printf("layout      %s; ep %lld\n", layout.ToString().c_str(), (long long)layout.ep());
  std::printf("memory      %s per GPU, reserve %s\n", FormatBytes(gpu_memory).c_str(),
              FormatBytes(reserve).c_str());
  std::printf(
      "step        %lld tokens, %lld sequences, %lld logit rows a pass, context up to %s, "
      "indexer blocks of %lld keys: workspace %s per rank\n\n",
      (long long)workspace.limits.tokens, (long long)workspace.limits.sequences,
      (long long)workspace.limits.logit_rows,
      Thousands(uint64_t(workspace.limits.max_context)).c_str(),
      (long long)workspace.limits.indexer_block_keys, BytesBoth(workspace_bytes).c_str());
  std::printf("%5s %4s %4s %3s  %-10s %-8s %-10s %-17s %-16s %12s %12s %12s\n", "rank", "node",
              "dp", "tp", "heads", "groups", "idx heads", "vocab rows", "experts/layer", "weights",
              "workspace", "KV pool");
  std::vector<uint64_t> group_pool(size_t(layout.dp()), UINT64_MAX);
  int64_t short_ranks = 0;  // ranks whose weights and reserve exceed the GPU memory
  std::string first_short;
  int64_t without_experts = 0;
  for (int64_t r = 0; r < layout.num_workers; ++r) {
    const RankPlan p = plan.Rank(r, /*with_tensors=*/false);
    if (p.experts.empty()) ++without_experts;
    absl::StatusOr<uint64_t> pool =
        KvPoolBytes(gpu_memory, p.weight_bytes + workspace_bytes, reserve);
    uint64_t& group = group_pool[size_t(p.dp_group)];
    if (pool.ok()) {
      group = std::min(group, *pool);
    } else {
      group = 0;
      if (short_ranks++ == 0) first_short = absl::StrCat("rank ", r, ": ", pool.status().message());
    }
    std::printf("%5lld %4lld %4lld %3lld  %-10s %-8s %-10s %-17s %-16s %12s %12s %12s\n",
                (long long)r, (long long)p.node, (long long)p.dp_group, (long long)p.tp_rank,
                RangeString(p.heads).c_str(), RangeString(p.o_groups).c_str(),
                RangeString(p.index_heads).c_str(), RangeString(p.vocab).c_str(),
                p.experts.empty()
                    ? "none"
                    : absl::StrCat(RangeString(p.experts), " (", p.experts.size(), ")").c_str(),
                FormatBytes(p.weight_bytes).c_str(), FormatBytes(workspace_bytes).c_str(),
                pool.ok() ? FormatBytes(*pool).c_str() : "does not fit");
  }

  if (tp > 1 && gpus_per_node % tp != 0) {
    std::printf("note: tp %lld does not divide %lld GPUs per node: TP groups span nodes\n",
                (long long)tp, (long long)gpus_per_node);
  }
  if (without_experts > 0) {
    std::printf("note: %lld ranks own no routed expert (W %lld > %lld experts)\n",
                (long long)without_experts, (long long)layout.num_workers,
                (long long)c.n_routed_experts);
  }
  const int64_t reference_tokens = std::min<int64_t>(kOneMillion, c.max_position_embeddings);
  const std::string ref_name = Thousands(uint64_t(reference_tokens));
  const SequenceKvBytes ref = SequenceKvBytesAt(c, reference_tokens);
  std::printf(
      "\nKV cache, packed: main entry %lld B, indexer key %lld B. A sequence's KV is on "
      "every rank of its DP group (one KV head: not split by TP).\n",
      (long long)MainKvEntryBytes(c), (long long)IndexerKeyBytes(c));
  auto row = [](const std::string& label, const std::string& value) {
    std::printf("  %-32s %s\n", label.c_str(), value.c_str());
  };
  row("per token, asymptotic", absl::StrCat(Decimal(KvBytesPerTokenAsymptotic(c)), " B"));
  row(absl::StrCat("one ", ref_name, "-token sequence"),
      absl::StrCat(BytesBoth(ref.Kv()), " KV, ",
                   Decimal(double(ref.Kv()) / double(reference_tokens)), " B/token"));
  row("  + MTP window", BytesBoth(ref.mtp_window));
  row("  + compressor state", BytesBoth(ref.compressor_state));
  row("  = per sequence", BytesBoth(ref.Total()));

  if (short_ranks > 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat(short_ranks, " of ", layout.num_workers,
                     " ranks cannot hold their weights, step workspace and a ",
                     FormatBytes(reserve), " reserve in ", FormatBytes(gpu_memory), " (",
                     first_short, "); use more or larger GPUs, or a smaller --reserve"));
  }
  // A DP group holds what its fullest rank leaves free; groups differ only when E % W != 0.
  const uint64_t pool = *std::min_element(group_pool.begin(), group_pool.end());
  row("KV pool per DP group",
      absl::StrCat(BytesBoth(pool), group_pool.size() > 1 ? ", the smallest group's" : ""));
  const ContextFit fit = LongestContext(c, pool);
  if (!fit.fits) {
    row("longest context that fits",
        absl::StrCat("none: an empty sequence needs ", BytesBoth(SequenceKvBytesAt(c, 0).Total())));
  } else if (fit.capped) {
    ModelConfig uncapped = c;
    uncapped.max_position_embeddings = int64_t(1) << 40;
    const ContextFit room = LongestContext(uncapped, pool);
    row("longest context that fits",
        absl::StrCat(Thousands(uint64_t(fit.tokens)), " tokens, capped by ",
                     "max_position_embeddings (the pool alone would hold ",
                     Thousands(uint64_t(room.tokens)), ")"));
  } else {
    row("longest context that fits",
        absl::StrCat(Thousands(uint64_t(fit.tokens)), " tokens, ", BytesBoth(fit.bytes)));
  }
  int64_t in_all = 0;
  for (uint64_t group : group_pool) in_all += SequencesThatFit(c, group, reference_tokens);
  row(absl::StrCat(ref_name, "-token sequences"),
      absl::StrCat(SequencesThatFit(c, pool, reference_tokens), " per DP group, ", in_all,
                   " in all (", layout.dp(), layout.dp() == 1 ? " DP group)" : " DP groups)"));

  // The same pool in pages of one kind each (sharding/kv_pool_layout.h, docs/capacity.md §6).
  const int64_t pool_pages = pages.PagesInPool(pool);
  const KvPoolLayout::Pages ref_pages = pages.SequencePages(reference_tokens);
  std::printf("\nKV pool in %s pages (%lld main entries or %lld indexer keys a page):\n",
              FormatBytes(kv_page).c_str(), (long long)pages.main_per_page,
              (long long)pages.keys_per_page);
  row("pages per DP group", Thousands(uint64_t(pool_pages)));
  row("per token, asymptotic", absl::StrCat(Decimal(pages.BytesPerTokenAsymptotic()), " B"));
  row("empty sequence", absl::StrCat(ref_pages.Fixed(), " pages (windows ", ref_pages.window,
                                     ", compressor state ", ref_pages.state, ")"));
  row(absl::StrCat("one ", ref_name, "-token sequence"),
      absl::StrCat(Thousands(uint64_t(ref_pages.Total())),
                   " pages = ", BytesBoth(uint64_t(ref_pages.Total()) * kv_page)));
  const int64_t paged_longest = pages.LongestContext(pool_pages, c.max_position_embeddings);
  row("longest context that fits", paged_longest < 0
                                       ? std::string("none")
                                       : absl::StrCat(Thousands(uint64_t(paged_longest)), " tokens",
                                                      paged_longest == c.max_position_embeddings
                                                          ? ", capped by max_position_embeddings"
                                                          : ""));
  row(absl::StrCat(ref_name, "-token sequences"),
      absl::StrCat(pool_pages / std::max<int64_t>(1, ref_pages.Total()), " per DP group"));

  if (tensors_rank >= 0) PrintTensors(plan.Rank(tensors_rank));
  return absl::OkStatus();
}

int Main(const std::vector<std::string>& args) {
  if (args.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  absl::Status st = Plan(args);
  return st.ok() ? 0 : Fail("plan", st);
}

FLOTILLA_COMMAND("plan", "weights per rank, KV pool and longest context for a cluster shape",
                 kUsage, Main);

}  // namespace
}  // namespace flotilla::cli
