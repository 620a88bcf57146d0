// A Generate request from arbitrary bytes (header fields, then chunks of text or ids) through
// the front door into the real scheduler (tiny model, a small KV pool): every prompt is
// refused with a status or admitted, and the scheduler runs it to the end with fake tokens.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/synthetic.h"
#include "coordinator/front_door.h"
#include "coordinator/scheduler.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/tokenizer/test_data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flotilla;
  static const ModelConfig config = [] {
    ModelConfig c = *PresetConfig("tiny");
    c.max_position_embeddings = 4096;  // keeps admitted requests short
    return c;
  }();
  FuzzedDataProvider in(data, size);
  SchedulerOptions so;
  so.kv_page_bytes = 4096;
  so.kv_pool_bytes_per_group = 1 << 20;
  so.max_queued = 2;
  Scheduler scheduler(config, so, &testing::ProjectTokenizer());
  FrontDoor door(config, &testing::ProjectTokenizer(), &scheduler);

  PromptAssembler prompt = door.NewPrompt();
  GenerateHeader h;
  h.prompt_kind = in.PickValueInArray({PromptKind::kText, PromptKind::kChat, PromptKind::kTokenIds});
  h.sampling.greedy = in.ConsumeBool();
  h.sampling.temperature = in.ConsumeFloatingPoint<float>();
  h.sampling.top_p = in.ConsumeFloatingPoint<float>();
  h.sampling.top_k = in.ConsumeIntegral<int64_t>();
  h.sampling.seed = in.ConsumeIntegral<uint64_t>();
  if (in.ConsumeBool()) h.max_new_tokens = in.ConsumeIntegralInRange<int64_t>(-2, 5000);
  const int num_stops = in.ConsumeIntegralInRange(0, 3);
  for (int i = 0; i < num_stops; ++i) h.sampling.stop.push_back(in.ConsumeRandomLengthString(8));
  h.sampling.ignore_eos = in.ConsumeBool();
  h.sampling.skip_special_tokens = in.ConsumeBool();
  h.priority = in.ConsumeIntegral<int32_t>();
  if (in.ConsumeBool()) h.chat.tools_json = in.ConsumeRandomLengthString(256);
  if (in.ConsumeBool()) h.model = in.ConsumeRandomLengthString(8);
  absl::Status st = prompt.AddHeader(std::move(h));
  while (st.ok() && !prompt.complete() && in.remaining_bytes() > 0) {
    PromptChunk c;
    c.kind = in.PickValueInArray({PromptChunk::Kind::kNone, PromptChunk::Kind::kText,
                                  PromptChunk::Kind::kTokenIds});
    if (c.kind == PromptChunk::Kind::kText) c.text = in.ConsumeRandomLengthString(512);
    if (c.kind == PromptChunk::Kind::kTokenIds) {
      const int n = in.ConsumeIntegralInRange(0, 64);
      for (int i = 0; i < n; ++i) c.token_ids.push_back(in.ConsumeIntegral<int32_t>());
    }
    c.last = in.ConsumeBool();
    st = prompt.AddChunk(std::move(c));
  }
  if (st.ok() && !prompt.complete()) st = prompt.EndOfStream();
  if (!st.ok()) return 0;
  auto request = door.Prepare(std::move(prompt));
  if (!request.ok()) return 0;
  bool ended = false;
  st = door.Submit(std::move(request).value(), [&](const RequestEvent& e) {
    if (e.kind == RequestEvent::Kind::kFinished || e.kind == RequestEvent::Kind::kError) ended = true;
  });
  if (!st.ok()) return 0;
  // Fake engine: every sampled sequence gets token 100 (or EOS now and then).
  for (int step = 0; step < 10000 && !ended; ++step) {
    StepPlan plan = scheduler.NextStep();
    std::vector<StepToken> tokens;
    for (const StepSequence& s : plan.seqs)
      if (s.sample) tokens.push_back({s.seq_id, step % 97 == 96 ? int32_t(config.eos_token_id) : 100});
    if (!plan.seqs.empty()) scheduler.OnStepDone(tokens);
  }
  if (!ended) fuzz::Violated("request never ended", "");
  return 0;
}
