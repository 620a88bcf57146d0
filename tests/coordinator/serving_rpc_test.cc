// The rest of the client API through a real in-process gRPC server: disconnect ->
// Cancel(notify=false), Cancel, Tokenize, model info, cluster status, drain, health and
// reflection; then the real Scheduler (with a fake engine thread) behind the front door.
#include <google/protobuf/descriptor.pb.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/synthetic.h"
#include "coordinator/scheduler.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "tests/coordinator/serving_test_util.h"
#include "tokenizer/chat_encoding.h"

namespace flotilla::testing {
namespace {

int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service = "");

// ---- disconnect and cancel ----

TEST_F(ServingTest, ClientDisconnectCancelsWithoutNotify) {
  backend_->set_hold(true);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  auto stream = stub_->Generate(&ctx);
  ASSERT_TRUE(stream->Write(Header(v1::PROMPT_KIND_TEXT)));
  ASSERT_TRUE(stream->Write(TextChunk("Hello", true)));
  v1::GenerateResponse e;
  ASSERT_TRUE(stream->Read(&e));
  ASSERT_TRUE(e.has_admitted());
  const uint64_t id = e.admitted().request_id();
  EXPECT_EQ(front_door_->num_active(), 1);
  ctx.TryCancel();
  ASSERT_TRUE(backend_->WaitForCancel(id, std::chrono::seconds(10)));
  const auto cancels = backend_->cancels();
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_EQ(cancels[0], std::make_pair(id, false));
  EXPECT_EQ(front_door_->num_active(), 0);
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(ServingTest, DisconnectDuringThePromptSubmitsNothing) {
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    auto stream = stub_->Generate(&ctx);
    ASSERT_TRUE(stream->Write(Header(v1::PROMPT_KIND_TEXT)));
    ASSERT_TRUE(stream->Write(TextChunk("Hel")));
    ctx.TryCancel();
    stream->Finish().IgnoreError();
  }
  // The server is still fine, and only the next request reaches the backend.
  const CallResult r = Call({Header(v1::PROMPT_KIND_TEXT), TextChunk("Hello", true)});
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(backend_->submitted().size(), 1u);
  EXPECT_TRUE(backend_->cancels().empty());
}

TEST_F(ServingTest, CancelRpcEndsTheStreamWithCancelled) {
  backend_->set_hold(true);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  auto stream = stub_->Generate(&ctx);
  ASSERT_TRUE(stream->Write(Header(v1::PROMPT_KIND_TEXT)));
  ASSERT_TRUE(stream->Write(TextChunk("Hello", true)));
  v1::GenerateResponse e;
  ASSERT_TRUE(stream->Read(&e));
  ASSERT_TRUE(e.has_admitted());
  const uint64_t id = e.admitted().request_id();

  v1::CancelRequest cancel;
  cancel.set_request_id(id);
  v1::CancelResponse response;
  {
    grpc::ClientContext c;
    c.set_deadline(std::chrono::system_clock::now() + kTimeout);
    ASSERT_TRUE(stub_->Cancel(&c, cancel, &response).ok());
  }
  EXPECT_TRUE(response.found());
  ASSERT_TRUE(stream->Read(&e));
  ASSERT_TRUE(e.has_finished());
  EXPECT_EQ(e.finished().reason(), v1::FINISH_REASON_CANCELLED);
  EXPECT_FALSE(stream->Read(&e));
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(backend_->cancels(), (std::vector<std::pair<uint64_t, bool>>{{id, true}}));

  // Finished: no longer found.
  grpc::ClientContext c;
  c.set_deadline(std::chrono::system_clock::now() + kTimeout);
  ASSERT_TRUE(stub_->Cancel(&c, cancel, &response).ok());
  EXPECT_FALSE(response.found());
}

// ---- unary calls ----

TEST_F(ServingTest, TokenizeTextAndChat) {
  v1::TokenizeRequest in;
  in.set_prompt_kind(v1::PROMPT_KIND_TEXT);
  in.set_text("Hello world");
  v1::TokenizeResponse out;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    ASSERT_TRUE(stub_->Tokenize(&ctx, in, &out).ok());
  }
  EXPECT_EQ(std::vector<int32_t>(out.ids().begin(), out.ids().end()),
            ProjectTokenizer().Encode("Hello world").value());
  EXPECT_EQ(out.prompt(), "");  // a text prompt is not echoed

  const std::string messages = R"([{"role": "user", "content": "Hi"}])";
  in.set_prompt_kind(v1::PROMPT_KIND_CHAT);
  in.set_text(messages);
  in.mutable_chat()->set_thinking(true);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    ASSERT_TRUE(stub_->Tokenize(&ctx, in, &out).ok());
  }
  ChatEncodeOptions options;
  options.thinking_mode = ThinkingMode::kThinking;
  const std::string want =
      EncodeChatJson(nlohmann::ordered_json::parse(messages), nullptr, options).value();
  EXPECT_EQ(out.prompt(), want);
  EXPECT_EQ(std::vector<int32_t>(out.ids().begin(), out.ids().end()),
            ProjectTokenizer().Encode(want).value());
  EXPECT_EQ(out.ids(0), 0);  // BOS comes from the chat format's text

  in.set_prompt_kind(v1::PROMPT_KIND_TOKEN_IDS);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  const grpc::Status s = stub_->Tokenize(&ctx, in, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServingTest, ModelInfoAndClusterStatusFromCallbacks) {
  TearDown();
  ServingCallbacks callbacks;
  FrontDoor* door = nullptr;
  callbacks.model_info = [&door] {
    ModelInfo info = door->ModelSummary();
    info.layout = {4, 2, 2, 4};
    return info;
  };
  callbacks.cluster_status = [] {
    ClusterStatus status;
    status.scheduler.running = 3;
    status.scheduler.queued = 2;
    status.scheduler.groups.push_back({100, 40, 4096, 3});
    WorkerReport w;
    w.world_rank = 1;
    w.address = "10.0.0.2:7000";
    w.health.state = WorkerState::kReady;
    w.stats.kv_pages_used = 40;
    w.stats.device = "cpu";
    status.workers.push_back(w);
    return status;
  };
  bool drained = false;
  callbacks.drain = [&drained] {
    drained = true;
    return absl::OkStatus();
  };
  FrontDoorOptions options;
  options.model_name = "dsv4-test";
  StartServer(ModelConfig(), options, std::move(callbacks));
  door = front_door_.get();

  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    ASSERT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  }
  EXPECT_EQ(info.name(), "dsv4-test");
  EXPECT_EQ(info.vocab_size(), ProjectTokenizer().model_vocab_size());
  EXPECT_EQ(info.max_context(), 1048576);
  EXPECT_EQ(info.num_hidden_layers(), 43);
  EXPECT_EQ(info.layout().num_workers(), 4);
  EXPECT_EQ(info.layout().tp(), 2);

  v1::ClusterStatus status;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    ASSERT_TRUE(stub_->GetClusterStatus(&ctx, v1::GetClusterStatusRequest(), &status).ok());
  }
  EXPECT_EQ(status.scheduler().running(), 3);
  ASSERT_EQ(status.scheduler().groups_size(), 1);
  EXPECT_EQ(status.scheduler().groups(0).pages_used(), 40);
  ASSERT_EQ(status.workers_size(), 1);
  EXPECT_EQ(status.workers(0).address(), "10.0.0.2:7000");
  EXPECT_EQ(status.workers(0).health().state(), v1::WORKER_STATE_READY);
  EXPECT_FALSE(status.draining());

  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    v1::DrainResponse drain;
    ASSERT_TRUE(stub_->Drain(&ctx, v1::DrainRequest(), &drain).ok());
  }
  EXPECT_TRUE(drained);
  EXPECT_EQ(HealthStatus(channel_), 2);  // NOT_SERVING once draining
  EXPECT_EQ(HealthStatus(channel_, "flotilla.v1.Flotilla"), 2);
  server_->SetServing(true);  // a drained server stays NOT_SERVING
  EXPECT_EQ(HealthStatus(channel_, "flotilla.v1.Flotilla"), 2);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  ASSERT_TRUE(stub_->GetClusterStatus(&ctx, v1::GetClusterStatusRequest(), &status).ok());
  EXPECT_TRUE(status.draining());
}

TEST_F(ServingTest, DrainWithoutAHookIsUnimplemented) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  v1::DrainResponse drain;
  EXPECT_EQ(stub_->Drain(&ctx, v1::DrainRequest(), &drain).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

// ---- health and reflection (generic calls: their protos are not installed) ----

std::string ToBytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

grpc::ByteBuffer FromBytes(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

void Await(grpc::CompletionQueue* cq, void* want) {
  void* tag = nullptr;
  bool ok = false;
  ASSERT_TRUE(cq->Next(&tag, &ok));
  ASSERT_EQ(tag, want);
}

// grpc.health.v1.Health/Check -> the status enum (1 SERVING, 2 NOT_SERVING); -1 for an error
// status (NOT_FOUND for an unknown service). The request is HealthCheckRequest{service = 1},
// encoded by hand: tag 0x0a, length, bytes.
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  grpc::CompletionQueue cq;
  const std::string request =
      service.empty() ? "" : std::string(1, '\x0a') + char(service.size()) + service;
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", FromBytes(request), &cq);
  call->StartCall();
  grpc::ByteBuffer response;
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  Await(&cq, reinterpret_cast<void*>(1));
  cq.Shutdown();
  if (!status.ok()) return -1;
  const std::string bytes = ToBytes(response);  // field 1, varint
  return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
}

TEST_F(ServingTest, HealthServesUntilDrainAndShutdown) {
  EXPECT_EQ(HealthStatus(channel_), 1);
  // Per service too (issue 13, item 9), and SetServing turns both off and on.
  EXPECT_EQ(HealthStatus(channel_, "flotilla.v1.Flotilla"), 1);
  EXPECT_EQ(HealthStatus(channel_, "no.such.Service"), -1);
  // Every service served has a status: health and reflection answer whatever the model does.
  EXPECT_EQ(HealthStatus(channel_, "grpc.health.v1.Health"), 1);
  EXPECT_EQ(HealthStatus(channel_, "grpc.reflection.v1alpha.ServerReflection"), 1);
  server_->SetServing(false);
  EXPECT_EQ(HealthStatus(channel_, "grpc.health.v1.Health"), 1);
  EXPECT_EQ(HealthStatus(channel_), 2);
  EXPECT_EQ(HealthStatus(channel_, "flotilla.v1.Flotilla"), 2);
  server_->SetServing(true);
  EXPECT_EQ(HealthStatus(channel_), 1);
  EXPECT_EQ(HealthStatus(channel_, "flotilla.v1.Flotilla"), 1);
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1)).IgnoreError();
  EXPECT_EQ(HealthStatus(channel_), -1);                                  // gone
  EXPECT_TRUE(server_->Shutdown(std::chrono::system_clock::now()).ok());  // idempotent
}

// One reflection request with the string field `field` set to `value`; the response (or null).
std::unique_ptr<google::protobuf::Message> Reflect(const std::shared_ptr<grpc::Channel>& channel,
                                                   const std::string& field,
                                                   const std::string& value) {
  namespace pb = google::protobuf;
  const pb::Descriptor* request_type = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(
      "grpc.reflection.v1alpha.ServerReflectionRequest");
  const pb::Descriptor* response_type = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(
      "grpc.reflection.v1alpha.ServerReflectionResponse");
  if (request_type == nullptr || response_type == nullptr) return nullptr;
  std::unique_ptr<pb::Message> request(
      pb::MessageFactory::generated_factory()->GetPrototype(request_type)->New());
  request->GetReflection()->SetString(request.get(), request_type->FindFieldByName(field), value);

  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  grpc::CompletionQueue cq;
  auto call =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* const tag = reinterpret_cast<void*>(1);
  auto await = [&] {
    void* got = nullptr;
    bool ok = false;
    return cq.Next(&got, &ok) && got == tag;
  };
  call->StartCall(tag);
  if (!await()) return nullptr;
  call->Write(FromBytes(request->SerializeAsString()), tag);
  if (!await()) return nullptr;
  call->WritesDone(tag);
  if (!await()) return nullptr;
  grpc::ByteBuffer buffer;
  call->Read(&buffer, tag);
  if (!await()) return nullptr;
  grpc::Status status;
  call->Finish(&status, tag);
  if (!await() || !status.ok()) return nullptr;
  cq.Shutdown();
  std::unique_ptr<pb::Message> response(
      pb::MessageFactory::generated_factory()->GetPrototype(response_type)->New());
  if (!response->ParseFromString(ToBytes(buffer))) return nullptr;
  return response;
}

// Issue 13, item 9: the health service's descriptor was missing from reflection (gRPC's own
// health service has no generated class). Reflection now gives its file, as a grpcurl-like
// client would ask for it: by the service's symbol.
TEST_F(ServingTest, ReflectionDescribesTheHealthService) {
  namespace pb = google::protobuf;
  const auto response = Reflect(channel_, "file_containing_symbol", "grpc.health.v1.Health");
  ASSERT_NE(response, nullptr);
  const pb::Reflection* r = response->GetReflection();
  const pb::FieldDescriptor* files_field =
      response->GetDescriptor()->FindFieldByName("file_descriptor_response");
  ASSERT_TRUE(r->HasField(*response, files_field)) << response->DebugString();
  const pb::Message& files = r->GetMessage(*response, files_field);
  const pb::FieldDescriptor* protos =
      files.GetDescriptor()->FindFieldByName("file_descriptor_proto");
  ASSERT_GE(files.GetReflection()->FieldSize(files, protos), 1);
  pb::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(files.GetReflection()->GetRepeatedString(files, protos, 0)));
  EXPECT_EQ(file.name(), "grpc/health/v1/health.proto");
  EXPECT_EQ(file.package(), "grpc.health.v1");
  ASSERT_EQ(file.service_size(), 1);
  const pb::ServiceDescriptorProto& health = file.service(0);
  EXPECT_EQ(health.name(), "Health");
  ASSERT_EQ(health.method_size(), 2);
  EXPECT_EQ(health.method(0).name(), "Check");
  EXPECT_EQ(health.method(0).input_type(), ".grpc.health.v1.HealthCheckRequest");
  EXPECT_EQ(health.method(0).output_type(), ".grpc.health.v1.HealthCheckResponse");
  EXPECT_EQ(health.method(1).name(), "Watch");
  EXPECT_TRUE(health.method(1).server_streaming());
}

TEST_F(ServingTest, ReflectionListsTheServices) {
  namespace pb = google::protobuf;
  const pb::Descriptor* request_type = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(
      "grpc.reflection.v1alpha.ServerReflectionRequest");
  const pb::Descriptor* response_type = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(
      "grpc.reflection.v1alpha.ServerReflectionResponse");
  ASSERT_NE(request_type, nullptr);
  ASSERT_NE(response_type, nullptr);
  std::unique_ptr<pb::Message> request(
      pb::MessageFactory::generated_factory()->GetPrototype(request_type)->New());
  request->GetReflection()->SetString(request.get(), request_type->FindFieldByName("list_services"),
                                      "*");

  grpc::GenericStub stub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  grpc::CompletionQueue cq;
  auto call =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* const tag = reinterpret_cast<void*>(1);
  call->StartCall(tag);
  Await(&cq, tag);
  call->Write(FromBytes(request->SerializeAsString()), tag);
  Await(&cq, tag);
  call->WritesDone(tag);
  Await(&cq, tag);
  grpc::ByteBuffer buffer;
  call->Read(&buffer, tag);
  Await(&cq, tag);
  grpc::Status status;
  call->Finish(&status, tag);
  Await(&cq, tag);
  cq.Shutdown();
  ASSERT_TRUE(status.ok()) << status.error_message();

  std::unique_ptr<pb::Message> response(
      pb::MessageFactory::generated_factory()->GetPrototype(response_type)->New());
  ASSERT_TRUE(response->ParseFromString(ToBytes(buffer)));
  const pb::Message& list = response->GetReflection()->GetMessage(
      *response, response_type->FindFieldByName("list_services_response"));
  const pb::FieldDescriptor* service_field = list.GetDescriptor()->FindFieldByName("service");
  std::vector<std::string> names;
  for (int i = 0; i < list.GetReflection()->FieldSize(list, service_field); ++i) {
    const pb::Message& service = list.GetReflection()->GetRepeatedMessage(list, service_field, i);
    names.push_back(service.GetReflection()->GetString(
        service, service.GetDescriptor()->FindFieldByName("name")));
  }
  EXPECT_NE(std::find(names.begin(), names.end(), "flotilla.v1.Flotilla"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "grpc.health.v1.Health"), names.end());
}

// Issue 13, item 5: Tokenize echoed the whole prompt and failed on its own reply above the
// message limit. Text is no longer echoed, and a reply that would not fit is refused by name.
TEST(ServingServerTest, TokenizeRepliesWithinTheMessageLimit) {
  FakeBackend backend(&ProjectTokenizer());
  FrontDoor door(ModelConfig(), &ProjectTokenizer(), &backend);
  ServingOptions options;
  options.max_message_bytes = 1 << 20;
  auto server = ServingServer::Start(options, &door);
  ASSERT_TRUE(server.ok()) << server.status();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  auto stub = v1::Flotilla::NewStub(grpc::CreateCustomChannel(
      (*server)->endpoint(), grpc::InsecureChannelCredentials(), args));
  auto tokenize = [&](const std::string& text, v1::TokenizeResponse* out) {
    v1::TokenizeRequest in;
    in.set_prompt_kind(v1::PROMPT_KIND_TEXT);
    in.set_text(text);
    grpc::ClientContext ctx;
    // Tokenizing a megabyte takes a while under sanitizers.
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    return stub->Tokenize(&ctx, in, out);
  };
  // 800 KB of words: the ids alone fit in 1 MiB; with the text echoed they did not.
  std::string words;
  while (words.size() < 800000) words += "Hello world ";
  v1::TokenizeResponse out;
  grpc::Status s = tokenize(words, &out);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(std::vector<int32_t>(out.ids().begin(), out.ids().end()),
            ProjectTokenizer().Encode(words).value());
  // 600,000 bytes of rare CJK characters (U+20000..): 4 UTF-8 bytes each, a byte token per
  // byte, ids of 2 varint bytes: 1.2 MB of ids from a 0.6 MB request.
  std::string letters;
  for (int i = 0; letters.size() < 600000; ++i) {
    const uint32_t cp = 0x20000 + uint32_t(i % 64);
    letters += char(0xF0 | (cp >> 18));
    letters += char(0x80 | ((cp >> 12) & 0x3F));
    letters += char(0x80 | ((cp >> 6) & 0x3F));
    letters += char(0x80 | (cp & 0x3F));
  }
  const size_t num_ids = ProjectTokenizer().Encode(letters).value().size();
  s = tokenize(letters, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find(absl::StrCat("Tokenize: the reply (", num_ids, " ids) would be ")),
            std::string::npos)
      << s.error_message();
  EXPECT_NE(s.error_message().find("above the 1048576-byte message limit"), std::string::npos);
}

TEST(ServingServerTest, ABusyPortIsUnavailable) {
  FakeBackend backend(&ProjectTokenizer());
  FrontDoor door(ModelConfig(), &ProjectTokenizer(), &backend);
  auto first = ServingServer::Start(ServingOptions(), &door);
  ASSERT_TRUE(first.ok());
  ServingOptions same;
  same.port = (*first)->port();
  auto second = ServingServer::Start(same, &door);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find("cannot listen on 127.0.0.1:"), std::string::npos);
}

// ---- the real Scheduler behind the front door ----

// The Scheduler with a fake engine thread (every sampled token is 1000 + the step's start
// position mod 50) behind the real server: what a client sees from the production wiring.
class RealSchedulerTest : public ::testing::Test {
 protected:
  void Start(int64_t pool_pages) {
    config_ = PresetConfig("tiny").value();
    SchedulerOptions options;
    options.kv_page_bytes = 4096;
    options.kv_pool_bytes_per_group = uint64_t(pool_pages) * 4096;
    ASSERT_TRUE(options.Validate(config_).ok()) << options.Validate(config_);
    scheduler_ = std::make_unique<Scheduler>(config_, options, &ProjectTokenizer());
    front_door_ = std::make_unique<FrontDoor>(config_, &ProjectTokenizer(), scheduler_.get());
    auto server = ServingServer::Start(ServingOptions(), front_door_.get());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    stub_ = v1::Flotilla::NewStub(
        grpc::CreateChannel(server_->endpoint(), grpc::InsecureChannelCredentials()));
    engine_ = std::thread([this] {
      while (!stop_.load()) {
        if (paused_.load()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
          continue;
        }
        const StepPlan plan = scheduler_->NextStep();
        if (plan.seqs.empty()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
          continue;
        }
        std::vector<StepToken> tokens;
        for (const StepSequence& seq : plan.seqs) {
          if (seq.sample) {
            tokens.push_back({seq.seq_id, int32_t(1000 + (seq.start_pos % 50))});
          }
        }
        scheduler_->OnStepDone(tokens);
      }
    });
  }

  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now()).IgnoreError();
    stop_ = true;
    if (engine_.joinable()) engine_.join();
  }

  ModelConfig config_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<FrontDoor> front_door_;
  std::unique_ptr<ServingServer> server_;
  std::unique_ptr<v1::Flotilla::Stub> stub_;
  std::thread engine_;
  std::atomic<bool> stop_{false}, paused_{false};
};

TEST_F(RealSchedulerTest, GenerateStreamsTheSchedulersEvents) {
  Start(1000);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
  auto stream = stub_->Generate(&ctx);
  ASSERT_TRUE(stream->Write(Header(v1::PROMPT_KIND_TOKEN_IDS, [](auto* h) {
    h->mutable_sampling()->set_greedy(true);
    h->mutable_sampling()->set_max_new_tokens(5);
  })));
  ASSERT_TRUE(stream->Write(IdsChunk({3000, 3001, 3002})));
  ASSERT_TRUE(stream->Write(IdsChunk({3003}, true)));
  std::vector<v1::GenerateResponse> events;
  v1::GenerateResponse e;
  while (stream->Read(&e)) events.push_back(e);
  const grpc::Status status = stream->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();

  ASSERT_GE(events.size(), 3u);
  ASSERT_TRUE(events.front().has_admitted());
  EXPECT_EQ(events.front().admitted().kv_bytes_reserved(), scheduler_->ReservationBytes(4 + 5));
  EXPECT_EQ(events.front().admitted().prompt_tokens(), 4);
  std::vector<int32_t> ids;
  std::string text;
  for (const auto& ev : events) {
    if (ev.has_token()) {
      ids.insert(ids.end(), ev.token().ids().begin(), ev.token().ids().end());
      text += ev.token().text();
    }
  }
  ASSERT_EQ(ids.size(), 5u);
  EXPECT_EQ(text, ProjectTokenizer().Decode(ids).value());
  ASSERT_TRUE(events.back().has_finished());
  EXPECT_EQ(events.back().finished().reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(events.back().finished().usage().prompt_tokens(), 4);
  EXPECT_EQ(events.back().finished().usage().completion_tokens(), 5);
  EXPECT_EQ(front_door_->num_active(), 0);
}

TEST_F(RealSchedulerTest, ARequestThatCanNeverFitIsResourceExhausted) {
  Start(50);  // 1,000 new tokens take 71 pages of 4 KiB (28 of them fixed state)
  const CallResult r = [&] {
    CallResult out;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    auto stream = stub_->Generate(&ctx);
    stream->Write(Header(v1::PROMPT_KIND_TEXT,
                         [](auto* h) { h->mutable_sampling()->set_max_new_tokens(1000); }));
    stream->Write(TextChunk("Hello", true));
    stream->WritesDone();
    v1::GenerateResponse e;
    while (stream->Read(&e)) out.events.push_back(e);
    out.status = stream->Finish();
    return out;
  }();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_FALSE(r.status.error_message().empty());
  EXPECT_TRUE(r.events.empty());
  EXPECT_EQ(front_door_->num_active(), 0);
}

TEST_F(RealSchedulerTest, DisconnectReturnsThePages) {
  Start(1000);
  paused_ = true;  // the request stays queued while the client leaves
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kTimeout);
    auto stream = stub_->Generate(&ctx);
    ASSERT_TRUE(stream->Write(Header(v1::PROMPT_KIND_TEXT)));
    ASSERT_TRUE(stream->Write(TextChunk("Hello", true)));
    v1::GenerateResponse e;
    ASSERT_TRUE(stream->Read(&e));
    ASSERT_TRUE(e.has_admitted());
    EXPECT_EQ(scheduler_->Stats().queued + scheduler_->Stats().running, 1);
    ctx.TryCancel();
    stream->Finish().IgnoreError();
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (front_door_->num_active() != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(front_door_->num_active(), 0);
  paused_ = false;  // the cancel takes effect at the next step boundary
  while (!scheduler_->Idle() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(scheduler_->Idle());
  EXPECT_EQ(scheduler_->Stats().groups.at(0).pages_used, 0);
}

}  // namespace
}  // namespace flotilla::testing
