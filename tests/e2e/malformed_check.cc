// Sends malformed Generate streams to a running server: each must end with INVALID_ARGUMENT and
// a message naming the problem, and the server must keep serving (a valid request afterwards
// succeeds). Prints "N passed, M failed" and exits non-zero on any failure.
//   malformed_check HOST:PORT
// With `drain`: calls Drain, then at once sends a request, which must get UNAVAILABLE (issue 13,
// item 2: a request sent right after Drain returned was once admitted).
//   malformed_check HOST:PORT drain
// With `health`: prints the health status of service "" and flotilla.v1.Flotilla (SERVING,
// NOT_SERVING, or the error), read with a hand-encoded grpc.health.v1 request.
//   malformed_check HOST:PORT health
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "flotilla/v1/flotilla.grpc.pb.h"

namespace v1 = flotilla::v1;

namespace {

struct Case {
  std::string name;
  std::function<std::vector<v1::GenerateRequest>()> messages;
  std::string expect;  // fragment of the error message (case-sensitive)
};

v1::GenerateRequest Header(v1::PromptKind kind, std::function<void(v1::GenerateHeader*)> edit = {}) {
  v1::GenerateRequest r;
  auto* h = r.mutable_header();
  h->set_prompt_kind(kind);
  h->mutable_sampling()->set_greedy(true);
  h->mutable_sampling()->set_max_new_tokens(2);
  if (edit) edit(h);
  return r;
}
v1::GenerateRequest Text(const std::string& text, bool last = true) {
  v1::GenerateRequest r;
  r.mutable_chunk()->set_text(text);
  r.mutable_chunk()->set_last(last);
  return r;
}
v1::GenerateRequest Ids(std::vector<int32_t> ids, bool last = true) {
  v1::GenerateRequest r;
  for (int32_t id : ids) r.mutable_chunk()->mutable_token_ids()->add_ids(id);
  r.mutable_chunk()->set_last(last);
  return r;
}

// Runs one stream; returns the final status.
grpc::Status RunStream(v1::Flotilla::Stub& stub, const std::vector<v1::GenerateRequest>& msgs,
                       int* tokens) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = stub.Generate(&ctx);
  for (const auto& m : msgs) {
    if (!stream->Write(m)) break;
  }
  stream->WritesDone();
  v1::GenerateResponse ev;
  *tokens = 0;
  while (stream->Read(&ev)) {
    if (ev.has_token()) *tokens += ev.token().ids_size();
  }
  return stream->Finish();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc == 3 ? argv[2] : "";
  if (argc != 2 && !(argc == 3 && (mode == "drain" || mode == "health"))) {
    std::fprintf(stderr, "usage: malformed_check HOST:PORT [drain|health]\n");
    return 2;
  }
  auto channel = grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials());
  auto stub = v1::Flotilla::NewStub(channel);
  using K = v1::PromptKind;
  if (mode == "health") {
    for (const std::string service : {"", "flotilla.v1.Flotilla"}) {
      grpc::GenericStub generic(channel);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      // HealthCheckRequest{service = 1}: tag 0x0a, length, bytes.
      const std::string request =
          service.empty() ? "" : std::string(1, '\x0a') + char(service.size()) + service;
      grpc::Slice slice(request);
      grpc::ByteBuffer in(&slice, 1), out;
      grpc::CompletionQueue cq;
      auto call = generic.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", in, &cq);
      call->StartCall();
      grpc::Status status;
      call->Finish(&out, &status, reinterpret_cast<void*>(1));
      void* tag = nullptr;
      bool ok = false;
      cq.Next(&tag, &ok);
      cq.Shutdown();
      while (cq.Next(&tag, &ok)) {
      }
      std::vector<grpc::Slice> slices;
      std::string bytes;
      if (status.ok() && out.Dump(&slices).ok()) {
        for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
      const char* name = !status.ok()                                  ? "ERROR"
                         : bytes.size() == 2 && bytes[0] == 0x08 && bytes[1] == 1 ? "SERVING"
                         : bytes.size() == 2 && bytes[0] == 0x08 && bytes[1] == 2 ? "NOT_SERVING"
                                                                                  : "UNKNOWN";
      std::printf("%s: %s\n", service.empty() ? "(server)" : service.c_str(), name);
    }
    return 0;
  }
  if (mode == "drain") {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::DrainResponse drained;
    const grpc::Status d = stub->Drain(&ctx, v1::DrainRequest(), &drained);
    if (!d.ok()) {
      std::printf("FAIL: Drain: %s\n", d.error_message().c_str());
      return 1;
    }
    int tokens = 0;
    const grpc::Status s = RunStream(*stub, {Header(K::PROMPT_KIND_TOKEN_IDS), Ids({1, 2, 3})},
                                     &tokens);
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE) {
      std::printf("FAIL: a request right after Drain got %d (%s) and %d tokens, not UNAVAILABLE\n",
                  int(s.error_code()), s.error_message().c_str(), tokens);
      return 1;
    }
    std::printf("after Drain: UNAVAILABLE: %s\n", s.error_message().c_str());
    return 0;
  }
  const std::string big(5 << 20, 'a');
  std::vector<Case> cases = {
      {"no header", [] { return std::vector{Text("hello")}; }, "header"},
      {"two headers",
       [] { return std::vector{Header(K::PROMPT_KIND_TEXT), Header(K::PROMPT_KIND_TEXT)}; },
       "header"},
      {"unspecified prompt kind",
       [] { return std::vector{Header(K::PROMPT_KIND_UNSPECIFIED), Text("hi")}; }, "prompt"},
      {"ids chunk for a text prompt",
       [] { return std::vector{Header(K::PROMPT_KIND_TEXT), Ids({1, 2})}; }, "token"},
      {"text chunk for an ids prompt",
       [] { return std::vector{Header(K::PROMPT_KIND_TOKEN_IDS), Text("hi")}; }, "text"},
      {"token id >= vocab",
       [] { return std::vector{Header(K::PROMPT_KIND_TOKEN_IDS), Ids({5, 129280})}; }, "129280"},
      {"negative token id",
       [] { return std::vector{Header(K::PROMPT_KIND_TOKEN_IDS), Ids({-3})}; }, "-3"},
      {"empty prompt", [] { return std::vector{Header(K::PROMPT_KIND_TEXT), Text("")}; },
       "empty"},
      {"negative temperature",
       [] {
         return std::vector{Header(K::PROMPT_KIND_TEXT,
                                   [](v1::GenerateHeader* h) {
                                     h->mutable_sampling()->set_greedy(false);
                                     h->mutable_sampling()->set_temperature(-0.5f);
                                   }),
                            Text("hi")};
       },
       "temperature"},
      {"top_p above 1",
       [] {
         return std::vector{Header(K::PROMPT_KIND_TEXT,
                                   [](v1::GenerateHeader* h) {
                                     h->mutable_sampling()->set_greedy(false);
                                     h->mutable_sampling()->set_top_p(1.5f);
                                   }),
                            Text("hi")};
       },
       "top_p"},
      {"negative top_k",
       [] {
         return std::vector{Header(K::PROMPT_KIND_TEXT,
                                   [](v1::GenerateHeader* h) {
                                     h->mutable_sampling()->set_top_k(-1);
                                   }),
                            Text("hi")};
       },
       "top_k"},
      {"max_new_tokens 0",
       [] {
         return std::vector{Header(K::PROMPT_KIND_TEXT,
                                   [](v1::GenerateHeader* h) {
                                     h->mutable_sampling()->set_max_new_tokens(0);
                                   }),
                            Text("hi")};
       },
       "max_new_tokens"},
      {"invalid UTF-8",
       [] { return std::vector{Header(K::PROMPT_KIND_TEXT), Text(std::string("ab\xff\xfe"))}; },
       "UTF-8"},
      {"messages not JSON",
       [] { return std::vector{Header(K::PROMPT_KIND_CHAT), Text("[{\"role\": ")}; }, "JSON"},
      {"unknown role",
       [] {
         return std::vector{Header(K::PROMPT_KIND_CHAT),
                            Text(R"([{"role": "robot", "content": "hi"}])")};
       },
       "robot"},
      {"tool message without a matching call",
       [] {
         return std::vector{
             Header(K::PROMPT_KIND_CHAT),
             Text(R"([{"role": "user", "content": "hi"},
                      {"role": "tool", "tool_call_id": "call_9", "content": "42"}])")};
       },
       "messages[1]"},
      {"oversized chunk",
       [&big] { return std::vector{Header(K::PROMPT_KIND_TEXT), Text(big)}; }, "chunk"},
      {"empty stop string",
       [] {
         return std::vector{Header(K::PROMPT_KIND_TEXT,
                                   [](v1::GenerateHeader* h) {
                                     h->mutable_sampling()->add_stop("");
                                   }),
                            Text("hi")};
       },
       "stop"},
      {"another model's name",
       [] {
         return std::vector{Header(K::PROMPT_KIND_TEXT,
                                   [](v1::GenerateHeader* h) { h->set_model("gpt-x"); }),
                            Text("hi")};
       },
       "gpt-x"},
  };
  int passed = 0, failed = 0;
  for (const Case& c : cases) {
    int tokens = 0;
    const grpc::Status st = RunStream(*stub, c.messages(), &tokens);
    const bool ok = st.error_code() == grpc::StatusCode::INVALID_ARGUMENT &&
                    st.error_message().find(c.expect) != std::string::npos;
    std::printf("%s %-40s -> %d %s\n", ok ? "ok  " : "FAIL", c.name.c_str(),
                int(st.error_code()), st.error_message().c_str());
    ok ? ++passed : ++failed;
  }
  // The server is still serving.
  int tokens = 0;
  const grpc::Status st =
      RunStream(*stub, {Header(v1::PROMPT_KIND_TOKEN_IDS), Ids({1, 2, 3})}, &tokens);
  const bool ok = st.ok() && tokens == 2;
  std::printf("%s %-40s -> %d %s (%d tokens)\n", ok ? "ok  " : "FAIL", "valid request afterwards",
              int(st.error_code()), st.error_message().c_str(), tokens);
  ok ? ++passed : ++failed;
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
