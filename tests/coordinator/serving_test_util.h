// Helpers of the serving tests: stream messages, a Generate call, and a fixture with a real
// in-process gRPC server on 127.0.0.1 (port 0) in front of a FrontDoor and a FakeBackend.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/grpc_server.h"
#include "flotilla/v1/flotilla.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/tokenizer/test_data.h"
#include "tests/coordinator/fake_backend.h"

namespace flotilla::testing {

constexpr auto kTimeout = std::chrono::seconds(20);

inline v1::GenerateRequest Header(v1::PromptKind kind,
                                  const std::function<void(v1::GenerateHeader*)>& edit = {}) {
  v1::GenerateRequest m;
  m.mutable_header()->set_prompt_kind(kind);
  if (edit) edit(m.mutable_header());
  return m;
}

inline v1::GenerateRequest TextChunk(const std::string& text, bool last = false) {
  v1::GenerateRequest m;
  m.mutable_chunk()->set_text(text);
  m.mutable_chunk()->set_last(last);
  return m;
}

inline v1::GenerateRequest IdsChunk(const std::vector<int32_t>& ids, bool last = false) {
  v1::GenerateRequest m;
  m.mutable_chunk()->mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
  m.mutable_chunk()->set_last(last);
  return m;
}

struct CallResult {
  grpc::Status status;
  std::vector<v1::GenerateResponse> events;
};

// Splits `s` into pieces of `n` bytes (the last may be shorter).
inline std::vector<std::string> Pieces(const std::string& s, size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size(); i += n) out.push_back(s.substr(i, n));
  return out;
}

class ServingTest : public ::testing::Test {
 protected:
  void StartServer(ModelConfig config = ModelConfig(), FrontDoorOptions options = {},
                   ServingCallbacks callbacks = {}, ServingOptions serving = {}) {
    backend_ = std::make_unique<FakeBackend>(&ProjectTokenizer());
    front_door_ = std::make_unique<FrontDoor>(config, &ProjectTokenizer(), backend_.get(),
                                              std::move(options));
    auto server = ServingServer::Start(serving, front_door_.get(), std::move(callbacks));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    ASSERT_GT(server_->port(), 0);
    channel_ = grpc::CreateChannel(server_->endpoint(), grpc::InsecureChannelCredentials());
    stub_ = v1::Flotilla::NewStub(channel_);
  }

  void SetUp() override {
    // The validation table runs against a small model context and chunk limit, so that the
    // limits are cheap to reach.
    ModelConfig config;
    config.max_position_embeddings = 64;
    FrontDoorOptions options;
    options.model_name = "test-model";
    options.max_chunk_bytes = 1024;  // 256 ids
    StartServer(config, options);
  }

  void TearDown() override {
    if (server_) {
      EXPECT_TRUE(server_->Shutdown(std::chrono::system_clock::now()).ok());
    }
  }

  CallResult Call(const std::vector<v1::GenerateRequest>& messages) {
    CallResult r;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    auto stream = stub_->Generate(&ctx);
    for (const auto& m : messages) {
      if (!stream->Write(m)) break;
    }
    stream->WritesDone();
    v1::GenerateResponse e;
    while (stream->Read(&e)) r.events.push_back(e);
    r.status = stream->Finish();
    return r;
  }

  // The prompt the backend got for the last request.
  std::vector<int32_t> LastPrompt() const {
    auto s = backend_->submitted();
    return s.empty() ? std::vector<int32_t>{} : s.back().prompt;
  }

  std::unique_ptr<FakeBackend> backend_;
  std::unique_ptr<FrontDoor> front_door_;
  std::unique_ptr<ServingServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Flotilla::Stub> stub_;
};

}  // namespace flotilla::testing
