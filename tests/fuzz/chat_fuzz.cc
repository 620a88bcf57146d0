// Chat messages and tools JSON from arbitrary bytes, through the front door's Tokenize (the
// server's path: parse, render in the DeepSeek-V4 format, tokenize): an answer or a status.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <string>

#include "coordinator/front_door.h"
#include "tests/tokenizer/test_data.h"

namespace {

class NoSink : public flotilla::RequestSink {
 public:
  absl::Status Submit(flotilla::GenerateRequest, flotilla::EventSink) override {
    return absl::UnavailableError("not here");
  }
  void Cancel(uint64_t, bool) override {}
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flotilla;
  static NoSink sink;
  static FrontDoor door(ModelConfig(), &testing::ProjectTokenizer(), &sink);
  FuzzedDataProvider in(data, size);
  ChatPromptOptions chat;
  chat.thinking = in.ConsumeBool();
  chat.keep_thinking = in.ConsumeBool();
  chat.reasoning_effort = in.PickValueInArray(
      {ReasoningEffort::kNone, ReasoningEffort::kHigh, ReasoningEffort::kMax});
  if (in.ConsumeBool()) chat.tools_json = in.ConsumeRandomLengthString(4096);
  (void)door.Tokenize(PromptKind::kChat, in.ConsumeRemainingBytesAsString(), chat);
  return 0;
}
