// flotilla roofline: the least time a step can take on each rank of a cluster shape — the bytes
// it must read at the memory's bandwidth or its FLOPs at the peak rate, whichever is slower, plus
// the expert exchange at a stated all-to-all bandwidth — and the decode tokens/s per GPU that
// bounds. The arithmetic and its assumptions are sharding/step_cost.h; docs/gpu-model.md.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/flags.h"
#include "common/model_tensors.h"
#include "sharding/capacity.h"
#include "sharding/exchange_layout.h"
#include "sharding/shard_plan.h"
#include "sharding/step_cost.h"
#include "tools/command.h"

namespace flotilla::cli {
namespace {

const char* kUsage =
    "usage: flotilla roofline --config FILE --nodes N --gpus-per-node G [--tp T]\n"
    "                         [--batch B] [--chunk C] [--context T]\n"
    "                         [--bandwidth BYTES/S] [--peak FLOP/S] [--alltoall BYTES/S]\n"
    "                         [--alltoall-latency SECONDS]\n"
    "  A step of B sequences per DP group (default 1), each adding C tokens (default 1: decode)\n"
    "  at T positions (default 0). The device: --bandwidth its memory bandwidth (default 4.8e12,\n"
    "  an H200's published figure), --peak its dense FLOP rate for the step's GEMMs (default\n"
    "  1.979e15, H200 FP8 dense); --alltoall the all-to-all bandwidth one GPU sees (default\n"
    "  3.5e11) and --alltoall-latency the fixed cost of one all-to-all (default 2e-5; two per\n"
    "  MoE layer: dispatch and combine). All are assumptions to state, not measurements:\n"
    "  benchmarks measure them.\n";

std::string Si(double v, const char* unit) {
  const char* prefixes[] = {"", "k", "M", "G", "T", "P", "E"};
  int i = 0;
  while (v >= 1000 && i < 6) {
    v /= 1000;
    ++i;
  }
  return absl::StrFormat("%.2f %s%s", v, prefixes[i], unit);
}

absl::Status Roofline(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(Flags f, Flags::Parse(args,
                                         {"--config", "--nodes", "--gpus-per-node", "--tp",
                                          "--batch", "--chunk", "--context", "--bandwidth",
                                          "--peak", "--alltoall", "--alltoall-latency"},
                                         {}));
  ASSIGN_OR_RETURN(std::string path, f.Required("--config"));
  ASSIGN_OR_RETURN(ModelConfig c, ModelConfig::FromFile(path));
  RETURN_IF_ERROR(c.Validate());
  RETURN_IF_ERROR(f.Required("--nodes").status());
  RETURN_IF_ERROR(f.Required("--gpus-per-node").status());
  ASSIGN_OR_RETURN(int64_t nodes, f.Int("--nodes", 0));
  ASSIGN_OR_RETURN(int64_t gpus, f.Int("--gpus-per-node", 0));
  ASSIGN_OR_RETURN(int64_t tp, f.Int("--tp", 1));
  StepShape shape;
  ASSIGN_OR_RETURN(shape.sequences, f.Int("--batch", 1));
  ASSIGN_OR_RETURN(shape.tokens_per_seq, f.Int("--chunk", 1));
  ASSIGN_OR_RETURN(shape.context, f.Int("--context", 0));
  ASSIGN_OR_RETURN(double bandwidth, f.Double("--bandwidth", 4.8e12));
  ASSIGN_OR_RETURN(double peak, f.Double("--peak", 1.979e15));
  ASSIGN_OR_RETURN(double alltoall, f.Double("--alltoall", 3.5e11));
  ASSIGN_OR_RETURN(double latency, f.Double("--alltoall-latency", 2e-5));
  if (nodes < 1 || gpus < 1 || tp < 1) {
    return absl::InvalidArgumentError("--nodes, --gpus-per-node and --tp must be at least 1");
  }
  if (shape.sequences < 1 || shape.tokens_per_seq < 1 || shape.context < 0) {
    return absl::InvalidArgumentError(
        "--batch and --chunk must be at least 1 and --context at least 0");
  }
  if (!(bandwidth > 0) || !(peak > 0) || !(alltoall > 0) || !(latency >= 0)) {
    return absl::InvalidArgumentError(
        "--bandwidth, --peak and --alltoall must be positive, --alltoall-latency not negative");
  }
  if (shape.context + shape.tokens_per_seq > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--context %d + --chunk %d exceed max_position_embeddings %d", shape.context,
        shape.tokens_per_seq, c.max_position_embeddings));
  }
  const Layout layout = Layout::ForCluster(nodes, gpus, tp);
  ASSIGN_OR_RETURN(ShardPlan plan, ShardPlan::Make(c, layout, ExpertFormatOf(c)));

  // The slowest rank sets the step time (ranks differ only where experts do not divide evenly).
  StepCost worst;
  int64_t worst_rank = 0;
  double worst_s = -1;
  for (int64_t r = 0; r < layout.num_workers; ++r) {
    const StepCost cost = EstimateStepCost(plan, plan.Rank(r), shape);
    if (cost.Seconds(bandwidth, peak) > worst_s) {
      worst_s = cost.Seconds(bandwidth, peak);
      worst = cost;
      worst_rank = r;
    }
  }
  // Exchange: each of a rank's routed copies leaves the rank with probability (ep - 1) / ep as
  // a dispatch record and comes back as a reply; one exchange per MoE layer.
  ASSIGN_OR_RETURN(const ExchangeLayout ex,
                   ExchangeLayout::Make(c, plan.placement(), 0, 1, c.num_experts_per_tok));
  const double tokens = double(shape.sequences * shape.tokens_per_seq) / double(tp);
  const double remote = double(layout.ep() - 1) / double(layout.ep());
  const double exchange_bytes = tokens * double(c.num_experts_per_tok) * remote *
                                double(ex.record_bytes + ex.reply_bytes) *
                                double(c.num_hidden_layers);
  const double exchange_s = layout.ep() > 1 ? exchange_bytes / alltoall +
                                                  2 * double(c.num_hidden_layers) * latency
                                            : 0.0;
  const double step_s = worst_s + exchange_s;
  const double tokens_per_step = double(shape.sequences * shape.tokens_per_seq) / double(tp);

  std::printf("model       %s\n", path.c_str());
  std::printf("layout      %s; ep %lld\n", layout.ToString().c_str(), (long long)layout.ep());
  std::printf("step        %lld sequence(s) per DP group, %lld token(s) each, at %lld positions\n",
              (long long)shape.sequences, (long long)shape.tokens_per_seq,
              (long long)shape.context);
  std::printf(
      "assumed     memory %s, peak %s, all-to-all %s per GPU and %.1f us a call (not "
      "measured)\n\n",
      Si(bandwidth, "B/s").c_str(), Si(peak, "FLOP/s").c_str(), Si(alltoall, "B/s").c_str(),
      1e6 * latency);
  std::printf("slowest rank %lld:\n", (long long)worst_rank);
  std::printf("  weights read   dense %s, routed experts %s (expected)\n",
              Si(worst.dense_bytes, "B").c_str(), Si(worst.expert_bytes, "B").c_str());
  std::printf("  KV read        %s\n", Si(worst.kv_bytes, "B").c_str());
  std::printf("  FLOPs          dense %s, experts %s, attention %s, indexer %s\n",
              Si(worst.linear_flops, "").c_str(), Si(worst.expert_flops, "").c_str(),
              Si(worst.attention_flops, "").c_str(), Si(worst.indexer_flops, "").c_str());
  std::printf("  memory time    %.3f ms\n", 1e3 * worst.Bytes() / bandwidth);
  std::printf("  compute time   %.3f ms\n", 1e3 * worst.Flops() / peak);
  std::printf("  exchange       %s over %lld MoE layers, 2 calls each: %.3f ms\n",
              Si(exchange_bytes, "B").c_str(), (long long)c.num_hidden_layers, 1e3 * exchange_s);
  std::printf("  step           %.3f ms (the slower of memory and compute, plus the exchange)\n",
              1e3 * step_s);
  std::printf("  bound          %.0f tokens/s per GPU\n", tokens_per_step / step_s);
  return absl::OkStatus();
}

int Main(const std::vector<std::string>& args) {
  if (args.empty()) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const absl::Status st = Roofline(args);
  return st.ok() ? 0 : Fail("roofline", st);
}

FLOTILLA_COMMAND("roofline", "the least time a step can take per rank, and the tokens/s it bounds",
                 kUsage, Main);

}  // namespace
}  // namespace flotilla::cli
