// `flotilla generate / chat / status` (the real binary, as a subprocess) against an in-process
// server with a fake scheduler: what the client sends (chunked), what it prints, and its exit
// code on an error status.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "coordinator/grpc_server.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/tokenizer/test_data.h"
#include "tests/coordinator/fake_backend.h"

namespace flotilla {
namespace {

using testing::FakeBackend;
using testing::ProjectTokenizer;
using testing::ReadFileOrDie;
using testing::ReadJsonOrDie;
using testing::RepoPath;

struct CliRun {
  int exit_code = -1;
  std::string out, err;
};

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q += c;
    }
  }
  return q + "'";
}

std::string TempPath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/serving_cli_", getpid(), "_", name);
}

CliRun Flotilla(const std::vector<std::string>& args) {
  std::string cmd = Quote(FLOTILLA_BIN);
  for (const auto& a : args) absl::StrAppend(&cmd, " ", Quote(a));
  const std::string err_path = TempPath("stderr");
  absl::StrAppend(&cmd, " 2>", Quote(err_path));
  CliRun r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) r.out.append(buf, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_path);
  r.err.assign(std::istreambuf_iterator<char>(err), std::istreambuf_iterator<char>());
  std::remove(err_path.c_str());
  return r;
}

// The value of the "name: ..." line of the summary.
std::string Line(const std::string& out, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (absl::StartsWith(line, name + ": ")) return std::string(line.substr(name.size() + 2));
  }
  return "<no " + name + " line>";
}

class ClientCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend_ = std::make_unique<FakeBackend>(&ProjectTokenizer());
    FrontDoorOptions options;
    options.model_name = "cli-model";
    front_door_ =
        std::make_unique<FrontDoor>(ModelConfig(), &ProjectTokenizer(), backend_.get(), options);
    ServingCallbacks callbacks;
    callbacks.cluster_status = [] {
      ClusterStatus status;
      status.scheduler.running = 1;
      status.scheduler.groups.push_back({64, 8, 2048, 1});
      WorkerReport w;
      w.world_rank = 1;
      w.address = "127.0.0.1:7001";
      w.health.state = WorkerState::kReady;
      w.stats.device = "cpu";
      w.stats.kv_pages_total = 16384;
      w.stats.kv_pages_used = 300;
      w.stats.kv_pool_bytes = uint64_t(16384) << 16;
      status.workers.push_back(w);
      return status;
    };
    auto server = ServingServer::Start(ServingOptions(), front_door_.get(), std::move(callbacks));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    address_ = server_->endpoint();
  }

  std::unique_ptr<FakeBackend> backend_;
  std::unique_ptr<FrontDoor> front_door_;
  std::unique_ptr<ServingServer> server_;
  std::string address_;
};

TEST_F(ClientCliTest, GenerateTextInChunks) {
  const std::string prompt = "Hello from the command line — ünïcödé too.";
  const CliRun r = Flotilla({"generate", "--server", address_, "--prompt", prompt,
                             "--max-new-tokens", "5", "--greedy", "--chunk-bytes", "5"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto submitted = backend_->submitted();
  ASSERT_EQ(submitted.size(), 1u);
  EXPECT_EQ(submitted[0].prompt, ProjectTokenizer().Encode(prompt).value());
  EXPECT_TRUE(submitted[0].sampling.greedy);
  EXPECT_EQ(submitted[0].sampling.max_new_tokens, 5);
  const std::vector<int32_t> tokens = FakeBackend::ExpectedTokens(submitted[0]);
  EXPECT_EQ(Line(r.out, "ids"), absl::StrJoin(tokens, ","));
  EXPECT_EQ(Line(r.out, "finish"), "length");
  EXPECT_EQ(Line(r.out, "usage"),
            absl::StrCat("prompt_tokens=", submitted[0].prompt.size(), " completion_tokens=5"));
  EXPECT_TRUE(absl::StartsWith(Line(r.out, "timing"), "ttft_s=0.001000 tpot_s=0.000500"));
  // The streamed text comes first.
  EXPECT_TRUE(absl::StartsWith(r.out, ProjectTokenizer().Decode(tokens).value())) << r.out;
  EXPECT_NE(r.err.find("admitted: request "), std::string::npos) << r.err;
}

TEST_F(ClientCliTest, GenerateIdsWithSamplingFlags) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 50; ++i) ids.push_back(1000 + 37 * i);
  const CliRun r = Flotilla({"generate",
                             "--server",
                             address_,
                             "--prompt-ids",
                             absl::StrJoin(ids, ","),
                             "--chunk-bytes",
                             "12",
                             "--temperature",
                             "0.7",
                             "--top-p",
                             "0.9",
                             "--top-k",
                             "40",
                             "--seed",
                             "1234",
                             "--stop",
                             "END",
                             "--stop",
                             "\n\n",
                             "--ignore-eos",
                             "--priority",
                             "2",
                             "--max-new-tokens",
                             "3",
                             "--model-name",
                             "cli-model"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto submitted = backend_->submitted();
  ASSERT_EQ(submitted.size(), 1u);
  const GenerateRequest& q = submitted[0];
  EXPECT_EQ(q.prompt, ids);
  EXPECT_FALSE(q.sampling.greedy);
  EXPECT_FLOAT_EQ(q.sampling.temperature, 0.7f);
  EXPECT_FLOAT_EQ(q.sampling.top_p, 0.9f);
  EXPECT_EQ(q.sampling.top_k, 40);
  EXPECT_EQ(q.sampling.seed, 1234u);
  EXPECT_EQ(q.sampling.stop, (std::vector<std::string>{"END", "\n\n"}));
  EXPECT_TRUE(q.sampling.ignore_eos);
  EXPECT_EQ(q.priority, 2);
  EXPECT_EQ(q.sampling.max_new_tokens, 3);
  EXPECT_EQ(Line(r.out, "ids"), "1000,1037,1074");
}

TEST_F(ClientCliTest, ServerErrorsExitWithTheirCode) {
  CliRun r = Flotilla({"generate", "--server", address_, "--prompt", "hi", "--temperature", "-1"});
  EXPECT_EQ(r.exit_code, 3);  // INVALID_ARGUMENT
  EXPECT_NE(r.err.find("flotilla generate: INVALID_ARGUMENT: sampling.temperature: -1"),
            std::string::npos)
      << r.err;

  backend_->set_submit_status(absl::ResourceExhaustedError("needs 9 KV pages; the pool has 4"));
  r = Flotilla({"generate", "--server", address_, "--prompt", "hi"});
  EXPECT_EQ(r.exit_code, 8);  // RESOURCE_EXHAUSTED
  EXPECT_NE(r.err.find("RESOURCE_EXHAUSTED: needs 9 KV pages; the pool has 4"), std::string::npos)
      << r.err;

  // Bad flags are the client's own: exit 1, nothing sent.
  r = Flotilla({"generate", "--server", address_});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("give exactly one of --prompt"), std::string::npos) << r.err;
  r = Flotilla(
      {"generate", "--server", address_, "--prompt", "x", "--greedy", "--temperature", "0.5"});
  EXPECT_EQ(r.exit_code, 1);
}

// Issue 13, item 8: every command answers --help (and -h, and `help CMD`) with its usage and
// exit status 0 before doing anything; --version names the version.
TEST(ClientCliHelp, EveryCommandHasHelp) {
  const CliRun list = Flotilla({"help"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  std::vector<std::string> commands;
  bool in_list = false;
  for (absl::string_view line : absl::StrSplit(list.out, '\n')) {
    if (line == "commands:") {
      in_list = true;
    } else if (in_list && absl::StartsWith(line, "  ")) {
      std::vector<std::string> words = absl::StrSplit(line.substr(2), ' ');
      commands.push_back(words[0]);
    }
  }
  // The commands the README's table and the serving section name.
  for (const char* want : {"chat", "detokenize", "encode-chat", "generate", "inspect", "make-model",
                           "parse-completion", "plan", "run", "status", "tokenize"}) {
    EXPECT_NE(std::find(commands.begin(), commands.end(), want), commands.end()) << want;
  }
  for (const std::string& c : commands) {
    for (const char* flag : {"--help", "-h"}) {
      const CliRun r = Flotilla({c, flag});
      EXPECT_EQ(r.exit_code, 0) << c << " " << flag << ": " << r.err;
      EXPECT_TRUE(absl::StartsWith(r.out, "usage: flotilla " + c + " ")) << c << ": " << r.out;
      EXPECT_TRUE(r.err.empty()) << c << ": " << r.err;
    }
    // --help after other flags too (nothing runs: no server is contacted, no file is read).
    const CliRun late = Flotilla({c, "--server", "127.0.0.1:1", "--model", "/nonexistent", "--help"});
    EXPECT_EQ(late.exit_code, 0) << c << ": " << late.err;
    EXPECT_TRUE(absl::StartsWith(late.out, "usage: flotilla " + c + " ")) << c;
    const CliRun via_help = Flotilla({"help", c});
    EXPECT_EQ(via_help.out, late.out) << c;
  }

  for (const char* v : {"--version", "version"}) {
    const CliRun r = Flotilla({v});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(absl::StartsWith(r.out, "flotilla (Flotilla) ")) << r.out;
  }
  const CliRun unknown = Flotilla({"help", "no-such-command"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.err.find("unknown command 'no-such-command'"), std::string::npos);
}

// Prompts too long for a command line come from a file (issue 13, item 8: --prompt-ids hit the
// argument-length limit near 20k ids); temperature 0 is greedy; special tokens can be skipped.
TEST_F(ClientCliTest, PromptIdsFileTemperatureZeroAndSkipSpecial) {
  std::vector<int32_t> ids;
  for (int i = 0; i < 200000; ++i) ids.push_back((i * 7919 + 3) % 128000);
  const std::string path = TempPath("ids.txt");
  {
    std::ofstream out(path);
    for (size_t i = 0; i < ids.size(); ++i) out << ids[i] << (i % 10 == 9 ? "\n" : ", ");
  }
  CliRun r = Flotilla({"generate", "--server", address_, "--prompt-ids-file", path,
                       "--temperature", "0", "--skip-special-tokens", "--max-new-tokens", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto submitted = backend_->submitted();
  ASSERT_EQ(submitted.size(), 1u);
  EXPECT_EQ(submitted[0].prompt, ids);
  EXPECT_TRUE(submitted[0].sampling.greedy);
  EXPECT_TRUE(submitted[0].sampling.skip_special_tokens);
  {
    std::ofstream out(path);
    out << "1, 2, x3";
  }
  r = Flotilla({"generate", "--server", address_, "--prompt-ids-file", path});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--prompt-ids-file: " + path + ": item 2 'x3' is not a token id"),
            std::string::npos)
      << r.err;
  std::remove(path.c_str());
  EXPECT_EQ(backend_->submitted().size(), 1u);
}

// A prompt that takes several steps shows its prefill progress without --verbose (issue 13,
// item 8); one that takes one step prints no progress line unless --verbose.
TEST_F(ClientCliTest, LongPrefillShowsProgress) {
  backend_->set_prefill_chunk(100);
  std::vector<int32_t> ids(250, 77);
  CliRun r = Flotilla({"generate", "--server", address_, "--prompt-ids", absl::StrJoin(ids, ","),
                       "--max-new-tokens", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("progress: prefill 100 / 250 tokens\nprogress: prefill 200 / 250 tokens\n"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("250 / 250"), std::string::npos) << r.err;
  r = Flotilla({"generate", "--server", address_, "--prompt-ids", "1,2,3", "--max-new-tokens", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("progress:"), std::string::npos) << r.err;
  r = Flotilla({"generate", "--server", address_, "--prompt-ids", "1,2,3", "--max-new-tokens", "1",
                "--verbose"});
  EXPECT_NE(r.err.find("progress: prefill 3 / 3 tokens"), std::string::npos) << r.err;
}

TEST_F(ClientCliTest, NoServerIsUnavailable) {
  const std::string address = address_;
  server_->Shutdown(std::chrono::system_clock::now()).IgnoreError();
  const CliRun r =
      Flotilla({"generate", "--server", address, "--prompt", "hi", "--timeout-s", "5"});
  EXPECT_EQ(r.exit_code, 14) << r.err;  // UNAVAILABLE
  EXPECT_NE(r.err.find("UNAVAILABLE"), std::string::npos) << r.err;
}

TEST_F(ClientCliTest, ChatSendsTheFixtureAndPrintsAMessage) {
  // Fixture 1: {"tools": [...], "messages": [...]} in thinking mode.
  const CliRun r = Flotilla({"chat", "--server", address_, "--messages",
                             RepoPath("tests/data/chat-encoding/test_input_1.json"), "--thinking",
                             "--max-new-tokens", "4", "--chunk-bytes", "100"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto submitted = backend_->submitted();
  ASSERT_EQ(submitted.size(), 1u);
  const auto want =
      ReadJsonOrDie(RepoPath("tests/data/chat-encoding/test_output_1.ids.json"))["ids"]
          .get<std::vector<int32_t>>();
  EXPECT_EQ(submitted[0].prompt, want);
  // The echoed tokens do not form a completion: the raw text is printed as the message.
  EXPECT_NE(r.out.find("message: {"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"role\": \"assistant\""), std::string::npos) << r.out;

  // Fixture 4, a plain list, chat mode.
  const CliRun r4 = Flotilla({"chat", "--server", address_, "--messages",
                              RepoPath("tests/data/chat-encoding/test_input_4.json")});
  ASSERT_EQ(r4.exit_code, 0) << r4.err;
  const auto want4 =
      ReadJsonOrDie(RepoPath("tests/data/chat-encoding/test_output_4.ids.json"))["ids"]
          .get<std::vector<int32_t>>();
  EXPECT_EQ(backend_->submitted().back().prompt, want4);
}

TEST_F(ClientCliTest, ChatErrorsNameTheMessage) {
  const std::string path = TempPath("bad_messages.json");
  {
    std::ofstream out(path);
    out << R"([{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}])";
  }
  const CliRun r = Flotilla({"chat", "--server", address_, "--messages", path});
  std::remove(path.c_str());
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.err.find("INVALID_ARGUMENT: messages[1].role: unknown role 'robot'"),
            std::string::npos)
      << r.err;
}

TEST_F(ClientCliTest, Status) {
  CliRun r = Flotilla({"status", "--server", address_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("model: cli-model (deepseek_v4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("max context 1048576 tokens"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("scheduler: running 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("dp group 0: KV pages 8/64"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rank 1 127.0.0.1:7001: ready"), std::string::npos) << r.out;
  // The worker's own pool: 16,384 pages of 64 KiB.
  EXPECT_NE(r.out.find("KV pages 300/16384 (16084 free, pool 1.00 GiB), device cpu"),
            std::string::npos)
      << r.out;

  r = Flotilla({"status", "--server", address_, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto doc = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << r.out;
  EXPECT_EQ(doc["model"]["name"], "cli-model");
  EXPECT_EQ(doc["cluster"]["workers"][0]["address"], "127.0.0.1:7001");
}

}  // namespace
}  // namespace flotilla
