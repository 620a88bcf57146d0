// Completion text from arbitrary bytes: ParseCompletion gives a message (which converts to
// JSON) or a status, in both modes.
#include <cstdint>
#include <string>

#include "tokenizer/chat_encoding.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace flotilla;
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (ThinkingMode mode : {ThinkingMode::kChat, ThinkingMode::kThinking}) {
    auto parsed = ParseCompletion(text, mode);
    if (parsed.ok()) (void)ParsedCompletionToJson(*parsed).dump();
  }
  return 0;
}
