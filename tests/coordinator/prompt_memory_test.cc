// The front door's bounds on clients (issue items 1 and 5), over real in-process gRPC with a
// fake scheduler: an over-long prompt is refused as soon as its tokens pass the context, before
// the rest arrives; prompt memory is bounded by the budget and returned; uploads in progress
// show in the status; a stalled upload and a client that stops reading are cut off.
#include <grpcpp/grpcpp.h>

#include <thread>

#include "tests/coordinator/serving_test_util.h"

namespace flotilla::testing {
namespace {

// English-like text: about 5 bytes per token.
std::string Prose(size_t bytes) {
  std::string text;
  for (int i = 0; text.size() < bytes; ++i) text += "word" + std::to_string(i % 977) + " and ";
  text.resize(bytes);
  return text;
}

class PromptMemoryTest : public ServingTest {
 protected:
  void SetUp() override {}  // each test starts its own server

  v1::ClusterStatus Status() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    v1::ClusterStatus out;
    EXPECT_TRUE(stub_->GetClusterStatus(&ctx, v1::GetClusterStatusRequest(), &out).ok());
    return out;
  }

  // Polls the status until `pred` holds (at most 10 s).
  bool WaitForStatus(const std::function<bool(const v1::ClusterStatus&)>& pred) {
    for (int i = 0; i < 200; ++i) {
      if (pred(Status())) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
};

TEST_F(PromptMemoryTest, OverLongTextIsRefusedBeforeTheRestArrives) {
  ModelConfig config;
  config.max_position_embeddings = 16384;  // 512 KiB of text at most, and 16,383 tokens
  StartServer(config);
  const std::string text = Prose(500 << 10);  // about 100k tokens
  std::vector<v1::GenerateRequest> stream = {Header(v1::PROMPT_KIND_TEXT)};
  for (const std::string& piece : Pieces(text, 64 << 10)) stream.push_back(TextChunk(piece));
  const CallResult r = Call(stream);
  ASSERT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const std::string& m = r.status.error_message();
  EXPECT_NE(m.find("prompt too large: more than 16383 tokens by byte "), std::string::npos) << m;
  // Refused after the first tokenized piece (256 KiB), long before the 500 KiB were all in.
  EXPECT_NE(m.find("by byte 262144 of the text (stream message 5)"), std::string::npos) << m;
  EXPECT_TRUE(backend_->submitted().empty());
  EXPECT_TRUE(WaitForStatus([](const v1::ClusterStatus& s) {
    return s.prompt_memory().reserved_bytes() == 0 && s.prompt_memory().uploads() == 0;
  }));
}

TEST_F(PromptMemoryTest, TheBudgetBoundsUploadsAndShowsThemInTheStatus) {
  ModelConfig config;
  config.max_position_embeddings = 1 << 20;  // 32 MiB of text at most
  FrontDoorOptions options;
  options.prompt_memory_bytes = 16 << 20;
  options.prompt_memory_wait = std::chrono::milliseconds(300);
  StartServer(config, options);

  // A chat upload that holds 12 MiB of messages JSON and does not finish.
  grpc::ClientContext held_ctx;
  held_ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  auto held = stub_->Generate(&held_ctx);
  ASSERT_TRUE(held->Write(Header(v1::PROMPT_KIND_CHAT)));
  const std::string piece(3 << 20, 'x');
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(held->Write(TextChunk(piece)));
  ASSERT_TRUE(WaitForStatus([](const v1::ClusterStatus& s) {
    return s.prompt_memory().uploads() == 1 && s.prompt_memory().upload_bytes() == (12 << 20);
  })) << Status().DebugString();
  const v1::ClusterStatus during = Status();
  EXPECT_EQ(during.prompt_memory().budget_bytes(), 16 << 20);
  EXPECT_GE(during.prompt_memory().reserved_bytes(), 12 << 20);
  EXPECT_LE(during.prompt_memory().reserved_bytes(), 16 << 20);

  // A second prompt cannot get its share: it waits, then RESOURCE_EXHAUSTED names the budget.
  const CallResult refused = Call({Header(v1::PROMPT_KIND_TEXT), TextChunk(Prose(1 << 20), true)});
  ASSERT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.status.error_message().find("--prompt-memory 16.00 MiB"), std::string::npos)
      << refused.status.error_message();
  EXPECT_EQ(Status().prompt_memory().refused(), 1);

  // The held upload goes away: its memory and its place in the status are returned.
  held_ctx.TryCancel();
  EXPECT_FALSE(held->Finish().ok());
  ASSERT_TRUE(WaitForStatus([](const v1::ClusterStatus& s) {
    return s.prompt_memory().reserved_bytes() == 0 && s.prompt_memory().uploads() == 0 &&
           s.prompt_memory().upload_bytes() == 0;
  })) << Status().DebugString();

  // Now the same prompt goes through, and the peak stayed within the budget.
  const CallResult ok = Call({Header(v1::PROMPT_KIND_TEXT), TextChunk(Prose(1 << 20), true)});
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(LastPrompt(), *ProjectTokenizer().Encode(Prose(1 << 20)));
  EXPECT_LE(Status().prompt_memory().peak_reserved_bytes(), 16 << 20);
  EXPECT_TRUE(WaitForStatus(
      [](const v1::ClusterStatus& s) { return s.prompt_memory().reserved_bytes() == 0; }));
}

TEST_F(PromptMemoryTest, APromptLargerThanTheWholeBudgetIsRefusedAtOnce) {
  ModelConfig config;
  config.max_position_embeddings = 1 << 20;
  FrontDoorOptions options;
  options.prompt_memory_bytes = 4 << 20;
  StartServer(config, options);
  const CallResult r = Call({Header(v1::PROMPT_KIND_TEXT), TextChunk(Prose(1 << 20), true)});
  ASSERT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(r.status.error_message().find("more than the whole 4.00 MiB budget (--prompt-memory)"),
            std::string::npos)
      << r.status.error_message();
}

TEST_F(PromptMemoryTest, AStalledUploadEndsWithDeadlineExceeded) {
  ServingOptions serving;
  serving.upload_idle = std::chrono::milliseconds(1000);
  StartServer(ModelConfig(), FrontDoorOptions(), {}, serving);

  // A client that keeps sending, with gaps below the limit, is not cut off.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    auto stream = stub_->Generate(&ctx);
    ASSERT_TRUE(stream->Write(Header(v1::PROMPT_KIND_TEXT)));
    for (int i = 0; i < 5; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(400));
      ASSERT_TRUE(stream->Write(TextChunk("Hello there. ")));
    }
    stream->WritesDone();
    v1::GenerateResponse e;
    while (stream->Read(&e)) {
    }
    const grpc::Status s = stream->Finish();
    EXPECT_TRUE(s.ok()) << s.error_message();
  }

  // One that stops sending before its prompt is complete is.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  auto stream = stub_->Generate(&ctx);
  ASSERT_TRUE(stream->Write(Header(v1::PROMPT_KIND_TEXT)));
  ASSERT_TRUE(stream->Write(TextChunk("The start of a prompt that never ends")));
  ASSERT_TRUE(WaitForStatus([](const v1::ClusterStatus& s) {
    return s.prompt_memory().uploads() == 1 && s.prompt_memory().upload_bytes() == 37;
  }));
  const auto start = std::chrono::steady_clock::now();
  v1::GenerateResponse e;
  EXPECT_FALSE(stream->Read(&e));
  const grpc::Status s = stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_NE(s.error_message().find("--upload-idle-s"), std::string::npos) << s.error_message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(15));
  EXPECT_TRUE(WaitForStatus([](const v1::ClusterStatus& s) {
    return s.prompt_memory().uploads() == 0 && s.prompt_memory().reserved_bytes() == 0;
  }));
  EXPECT_EQ(backend_->submitted().size(), 1u);  // only the first client's
}

TEST_F(PromptMemoryTest, AClientThatStopsReadingIsCutOffAndItsRequestCancelled) {
  ServingOptions serving;
  serving.write_stall = std::chrono::milliseconds(1000);
  StartServer(ModelConfig(), FrontDoorOptions(), {}, serving);
  std::vector<int32_t> script(200000, 1000);  // far more than the flow-control window holds
  backend_->set_script(script, FinishReason::kLength);
  backend_->set_token_interval(std::chrono::microseconds(200));  // still generating when cut

  // A client with a small receive window that reads nothing.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4096);
  auto channel =
      grpc::CreateCustomChannel(server_->endpoint(), grpc::InsecureChannelCredentials(), args);
  auto stub = v1::Flotilla::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  auto stream = stub->Generate(&ctx);
  ASSERT_TRUE(stream->Write(Header(v1::PROMPT_KIND_TOKEN_IDS, [](v1::GenerateHeader* h) {
    h->mutable_sampling()->set_max_new_tokens(200000);
  })));
  ASSERT_TRUE(stream->Write(IdsChunk({1, 2, 3}, true)));
  ASSERT_TRUE(backend_->WaitForSubmitted(1, std::chrono::seconds(10)));
  const uint64_t id = backend_->submitted()[0].id;
  // The server gives up on the writes and cancels the request without notification.
  ASSERT_TRUE(backend_->WaitForCancel(id, std::chrono::seconds(15)));
  bool notified = true;
  for (const auto& [cancelled_id, notify] : backend_->cancels()) {
    if (cancelled_id == id) notified = notify;
  }
  EXPECT_FALSE(notified);
  // What the client then reads ends with the stall named.
  v1::GenerateResponse e;
  int64_t num_read = 0;
  while (stream->Read(&e)) ++num_read;
  EXPECT_LT(num_read, 200000);
  const grpc::Status s = stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
  EXPECT_NE(s.error_message().find("--write-stall-s"), std::string::npos) << s.error_message();
}

// Tokenization stops as soon as the client is gone: a 4 MiB chunk is tokenized in 256 KiB
// pieces, and the cancellation check between them ends the work (here after the second piece).
TEST(PromptAssemblerTest, TokenizationStopsWhenTheClientGoes) {
  FakeBackend backend(&ProjectTokenizer());
  ModelConfig config;
  config.max_position_embeddings = 1 << 22;
  FrontDoor door(config, &ProjectTokenizer(), &backend);
  int checks = 0;
  {
    PromptAssembler prompt = door.NewPrompt();
    prompt.SetCancelled([&checks] { return ++checks > 2; });
    ASSERT_TRUE(prompt.AddHeader(GenerateHeader()).ok());
    PromptChunk chunk;
    chunk.kind = PromptChunk::Kind::kText;
    chunk.text = Prose(4 << 20);
    const absl::Status s = prompt.AddChunk(std::move(chunk));
    EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
    EXPECT_LT(checks, 16);  // far fewer checks than the 16 pieces of the chunk
    EXPECT_GT(door.PromptMemoryUse().reserved_bytes, 0);
  }
  // The assembler gone, its memory is back.
  EXPECT_EQ(door.PromptMemoryUse().reserved_bytes, 0);
  EXPECT_EQ(door.PromptMemoryUse().uploads, 0);
  EXPECT_TRUE(backend.submitted().empty());
}

// Issue 13, item 5: chunks sent after the chunk marked `last` were silently ignored.
TEST_F(PromptMemoryTest, AChunkAfterLastIsRefusedNamingTheField) {
  StartServer();
  backend_->set_hold(true);  // the request is still running when the extra chunk comes
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  auto stream = stub_->Generate(&ctx);
  ASSERT_TRUE(stream->Write(Header(v1::PROMPT_KIND_TEXT)));
  ASSERT_TRUE(stream->Write(TextChunk("Hello", /*last=*/true)));
  ASSERT_TRUE(backend_->WaitForSubmitted(1, std::chrono::seconds(10)));
  stream->Write(TextChunk(" and more"));
  v1::GenerateResponse e;
  while (stream->Read(&e)) {
  }
  const grpc::Status s = stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("stream message 3: sent after the prompt was complete "
                                   "(chunk.last was set on stream message 2)"),
            std::string::npos)
      << s.error_message();
  const uint64_t id = backend_->submitted()[0].id;
  EXPECT_TRUE(backend_->WaitForCancel(id, std::chrono::seconds(10)));
}

// A client that ends its prompt with `last` and never half-closes still gets its whole answer
// and an OK status, or the request's own error.
TEST_F(PromptMemoryTest, ClientsThatDoNotHalfCloseGetTheirStatus) {
  StartServer();
  for (const bool fail : {false, true}) {
    SCOPED_TRACE(fail ? "failing request" : "normal request");
    backend_->set_run_error(fail ? absl::UnavailableError("worker rank 1 is gone")
                                 : absl::OkStatus());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    auto stream = stub_->Generate(&ctx);
    ASSERT_TRUE(stream->Write(Header(v1::PROMPT_KIND_TOKEN_IDS, [](v1::GenerateHeader* h) {
      h->mutable_sampling()->set_max_new_tokens(5);
    })));
    ASSERT_TRUE(stream->Write(IdsChunk({7, 8, 9}, /*last=*/true)));
    std::vector<int32_t> tokens;
    bool finished = false;
    v1::GenerateResponse e;
    while (stream->Read(&e)) {
      if (e.has_token())
        tokens.insert(tokens.end(), e.token().ids().begin(), e.token().ids().end());
      if (e.has_finished()) finished = true;
    }
    const grpc::Status s = stream->Finish();
    if (fail) {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
      EXPECT_EQ(s.error_message(), "worker rank 1 is gone");
    } else {
      EXPECT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
      EXPECT_TRUE(finished);
      EXPECT_EQ(tokens, (std::vector<int32_t>{7, 8, 9, 7, 8}));
    }
  }
}

}  // namespace
}  // namespace flotilla::testing
