// Clients that strain the front door of a running server (issue 13, items 1 and 5). Each mode
// prints what happened and exits non-zero when the server did not answer as it should.
//   upload_check HOST:PORT burst N MIB
//     N streams at once, each uploading MIB MiB of prose text in 4 MiB chunks (gRPC streamed
//     upload). Every stream must end with OK, INVALID_ARGUMENT "prompt too large" or
//     RESOURCE_EXHAUSTED (the prompt memory budget or the KV pool), never a transport error.
//   upload_check HOST:PORT stall-upload
//     Sends a header and one chunk, then nothing: the stream must end with DEADLINE_EXCEEDED
//     naming --upload-idle-s.
//   upload_check HOST:PORT after-last
//     Sends a prompt whose chunk is marked `last`, then, once admitted, one more chunk: the
//     stream must end with INVALID_ARGUMENT naming chunk.last.
//   upload_check HOST:PORT stall-read
//     Asks for a long generation through a channel with a small receive window and reads
//     nothing for 60 s: the stream must end with DEADLINE_EXCEEDED naming --write-stall-s.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "flotilla/v1/flotilla.grpc.pb.h"

namespace v1 = flotilla::v1;

namespace {

constexpr size_t kChunkBytes = size_t{4} << 20;

std::string Prose(size_t bytes, int seed) {
  std::string text;
  text.reserve(bytes + 64);
  for (int i = 0; text.size() < bytes; ++i) {
    text += "sentence " + std::to_string((i * 7919 + seed) % 100003) + " of a long prompt. ";
  }
  text.resize(bytes);
  return text;
}

v1::GenerateRequest Header(v1::PromptKind kind, int64_t max_new_tokens) {
  v1::GenerateRequest r;
  v1::GenerateHeader* h = r.mutable_header();
  h->set_prompt_kind(kind);
  h->mutable_sampling()->set_greedy(true);
  h->mutable_sampling()->set_max_new_tokens(max_new_tokens);
  h->mutable_sampling()->set_ignore_eos(true);
  return r;
}

bool Contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

int Burst(v1::Flotilla::Stub& stub, int n, size_t bytes) {
  std::vector<grpc::Status> results(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      const std::string text = Prose(bytes, i);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(600));
      auto stream = stub.Generate(&ctx);
      bool open = stream->Write(Header(v1::PROMPT_KIND_TEXT, 4));
      for (size_t at = 0; open && at < text.size(); at += kChunkBytes) {
        v1::GenerateRequest m;
        m.mutable_chunk()->set_text(text.substr(at, kChunkBytes));
        m.mutable_chunk()->set_last(at + kChunkBytes >= text.size());
        open = stream->Write(m);
      }
      stream->WritesDone();
      v1::GenerateResponse e;
      while (stream->Read(&e)) {
      }
      results[i] = stream->Finish();
    });
  }
  for (auto& t : threads) t.join();
  int bad = 0;
  for (int i = 0; i < n; ++i) {
    const grpc::Status& s = results[i];
    const std::string& m = s.error_message();
    const bool allowed =
        s.ok() ||
        (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT && Contains(m, "prompt too large")) ||
        (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
         (Contains(m, "--prompt-memory") || Contains(m, "whole pool")));
    std::printf("stream %d: %s%d %s\n", i, allowed ? "" : "UNEXPECTED ", int(s.error_code()),
                m.substr(0, 240).c_str());
    if (!allowed) ++bad;
  }
  return bad == 0 ? 0 : 1;
}

int StallUpload(v1::Flotilla::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto stream = stub.Generate(&ctx);
  v1::GenerateRequest chunk;
  chunk.mutable_chunk()->set_text("The beginning of a prompt whose end never comes");
  if (!stream->Write(Header(v1::PROMPT_KIND_TEXT, 4)) || !stream->Write(chunk)) {
    std::printf("the server refused the first messages\n");
    return 1;
  }
  std::printf("sent a header and one chunk\n");
  std::fflush(stdout);
  v1::GenerateResponse e;
  while (stream->Read(&e)) {
  }
  const grpc::Status s = stream->Finish();
  std::printf("status %d: %s\n", int(s.error_code()), s.error_message().c_str());
  return s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
                 Contains(s.error_message(), "--upload-idle-s")
             ? 0
             : 1;
}

int AfterLast(v1::Flotilla::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto stream = stub.Generate(&ctx);
  v1::GenerateRequest ids;
  for (int32_t id : {1, 2, 3}) ids.mutable_chunk()->mutable_token_ids()->add_ids(id);
  ids.mutable_chunk()->set_last(true);
  if (!stream->Write(Header(v1::PROMPT_KIND_TOKEN_IDS, 100000)) || !stream->Write(ids)) {
    std::printf("the server refused the request\n");
    return 1;
  }
  v1::GenerateResponse e;
  if (!stream->Read(&e) || !e.has_admitted()) {
    std::printf("no Admitted event\n");
    return 1;
  }
  v1::GenerateRequest more;
  more.mutable_chunk()->mutable_token_ids()->add_ids(4);
  stream->Write(more);
  int64_t num_read = 1;
  while (stream->Read(&e)) ++num_read;
  const grpc::Status s = stream->Finish();
  std::printf("read %lld responses, then status %d: %s\n", (long long)num_read, int(s.error_code()),
              s.error_message().c_str());
  return s.error_code() == grpc::StatusCode::INVALID_ARGUMENT &&
                 Contains(s.error_message(), "chunk.last")
             ? 0
             : 1;
}

int StallRead(const std::string& server) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4096);
  auto channel = grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args);
  auto stub = v1::Flotilla::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
  auto stream = stub->Generate(&ctx);
  v1::GenerateRequest ids;
  for (int32_t id : {1, 2, 3, 4, 5}) ids.mutable_chunk()->mutable_token_ids()->add_ids(id);
  ids.mutable_chunk()->set_last(true);
  if (!stream->Write(Header(v1::PROMPT_KIND_TOKEN_IDS, 100000)) || !stream->Write(ids)) {
    std::printf("the server refused the request\n");
    return 1;
  }
  stream->WritesDone();
  std::printf("sent the request; reading nothing for 20 s\n");
  std::fflush(stdout);
  std::this_thread::sleep_for(std::chrono::seconds(20));
  v1::GenerateResponse e;
  int64_t num_read = 0;
  while (stream->Read(&e)) ++num_read;
  const grpc::Status s = stream->Finish();
  std::printf("read %lld responses, then status %d: %s\n", (long long)num_read, int(s.error_code()),
              s.error_message().c_str());
  return s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
                 Contains(s.error_message(), "--write-stall-s")
             ? 0
             : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(
        stderr,
        "usage: upload_check HOST:PORT burst N MIB | stall-upload | stall-read | after-last\n");
    return 2;
  }
  const std::string server = argv[1], mode = argv[2];
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(16 << 20);
  auto channel = grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args);
  auto stub = v1::Flotilla::NewStub(channel);
  if (mode == "burst" && argc == 5) {
    return Burst(*stub, std::atoi(argv[3]), size_t(std::atoll(argv[4])) << 20);
  }
  if (mode == "stall-upload") return StallUpload(*stub);
  if (mode == "stall-read") return StallRead(server);
  if (mode == "after-last") return AfterLast(*stub);
  std::fprintf(stderr, "upload_check: unknown mode %s\n", mode.c_str());
  return 2;
}
