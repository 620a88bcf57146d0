#include "tests/comm/comm_cases.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace flotilla::comm_test {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

#define EXPECT_OK(expr)              \
  do {                               \
    const absl::Status _st = (expr); \
    EXPECT_TRUE(_st.ok()) << _st;    \
  } while (0)
#define ASSERT_OK(expr)              \
  do {                               \
    const absl::Status _st = (expr); \
    ASSERT_TRUE(_st.ok()) << _st;    \
  } while (0)

constexpr uint64_t kGuard = 0xDEADBEEFCAFEF00DULL;

absl::Duration Since(Clock::time_point start) { return absl::FromChrono(Clock::now() - start); }

// Element i of the block from rank src to rank dst.
uint64_t Payload(int src, int dst, size_t i) {
  return (uint64_t(src) << 48) | (uint64_t(dst) << 32) | uint64_t(i);
}

uint8_t PatternByte(int rank, size_t i) { return uint8_t(rank * 31 + i * 7 + (i >> 8)); }

uint64_t SplitMix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Values spread over 31 binades with both signs, so the summation order changes the result.
float Value(int rank, size_t i) {
  const uint64_t h = SplitMix(uint64_t(rank) * 1000003u + i);
  const float mantissa = 1.0f + float((h >> 8) & 0xFFFF) / 65536.0f;
  const float v = std::ldexp(mantissa, int(h % 31) - 10);
  return (h >> 40) & 1 ? -v : v;
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

using CountFn = size_t (*)(int src, int dst, int n);

// Elements from src to dst: the last rank sends nothing, rank 1 receives nothing (n > 2), and
// some other blocks are empty too.
size_t MixedCount(int src, int dst, int n) {
  if (n > 1 && src == n - 1) return 0;
  if (n > 2 && dst == 1) return 0;
  return size_t((3 * src + 5 * dst + 1) % 4);
}
size_t EmptyCount(int, int, int) { return 0; }
size_t LargeCount(int src, int dst, int) { return 20000 + 1000 * size_t(src) + 7 * size_t(dst); }

void RunAllToAllV(Comm& comm, CountFn count, const char* what) {
  const int n = comm.size(), me = comm.rank();
  std::vector<size_t> send_bytes(n), recv_bytes(n);
  std::vector<uint64_t> send;
  for (int dst = 0; dst < n; ++dst) {
    for (size_t i = 0; i < count(me, dst, n); ++i) send.push_back(Payload(me, dst, i));
    send_bytes[dst] = count(me, dst, n) * sizeof(uint64_t);
  }
  size_t total = 0;
  for (int src = 0; src < n; ++src) {
    recv_bytes[src] = count(src, me, n) * sizeof(uint64_t);
    total += count(src, me, n);
  }
  std::vector<uint64_t> recv(total + 1, kGuard);
  ASSERT_OK(comm.AllToAllV(send.data(), send_bytes, recv.data(), recv_bytes, {what, 1}));
  size_t k = 0, wrong = 0;
  for (int src = 0; src < n; ++src) {
    for (size_t i = 0; i < count(src, me, n); ++i, ++k) {
      if (recv[k] != Payload(src, me, i) && ++wrong <= 5) {
        ADD_FAILURE() << "rank " << me << "/" << n << ": element " << i << " from rank " << src
                      << " is 0x" << std::hex << recv[k] << ", expected 0x" << Payload(src, me, i);
      }
    }
  }
  EXPECT_EQ(wrong, 0u) << "rank " << me;
  EXPECT_EQ(recv[total], kGuard) << "rank " << me << ": write past the receive buffer";
}

}  // namespace

void AllToAllVPayloads(Comm& comm) {
  RunAllToAllV(comm, MixedCount, "a2a mixed");
  RunAllToAllV(comm, MixedCount, "a2a mixed again");  // the comm is reusable
}

void AllToAllVEmpty(Comm& comm) { RunAllToAllV(comm, EmptyCount, "a2a empty"); }

void AllToAllVLarge(Comm& comm) { RunAllToAllV(comm, LargeCount, "a2a large"); }

void AllReduceSum(Comm& comm, bool rank_order_exact) {
  const int n = comm.size(), me = comm.rank();
  for (size_t count : {size_t{0}, size_t{1}, size_t{3}, size_t{1000}, size_t{65537}}) {
    std::vector<float> data(count);
    for (size_t i = 0; i < count; ++i) data[i] = Value(me, i);
    ASSERT_OK(comm.AllReduceSum(data.data(), count, {"allreduce", int64_t(count)}));
    size_t wrong = 0;
    for (size_t i = 0; i < count; ++i) {
      float expected = Value(0, i);
      double magnitude = std::fabs(Value(0, i));
      for (int r = 1; r < n; ++r) {
        expected += Value(r, i);
        magnitude += std::fabs(Value(r, i));
      }
      const bool ok =
          rank_order_exact
              ? Bits(data[i]) == Bits(expected)
              : !std::isnan(data[i]) && std::fabs(double(data[i]) - expected) <= 1e-6 * magnitude;
      if (!ok && ++wrong <= 5) {
        ADD_FAILURE() << "rank " << me << "/" << n << ": count " << count << " element " << i
                      << " = " << data[i] << ", rank-order sum " << expected;
      }
    }
    EXPECT_EQ(wrong, 0u);
    // Bitwise identical on every rank.
    std::vector<float> all(count * n);
    ASSERT_OK(comm.AllGather(data.data(), count * sizeof(float), all.data(),
                             {"allreduce check", int64_t(count)}));
    for (int r = 0; r < n; ++r) {
      EXPECT_TRUE(count == 0 ||
                  std::memcmp(all.data() + r * count, data.data(), count * sizeof(float)) == 0)
          << "rank " << me << ": result differs from rank " << r << "'s, count " << count;
    }
  }
}

void AllGatherRankOrder(Comm& comm) {
  const int n = comm.size(), me = comm.rank();
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{13}, size_t{4096}, size_t{300000}}) {
    for (bool in_place : {false, true}) {
      std::vector<uint8_t> send(bytes), recv(n * bytes + 8, 0xEE);
      for (size_t i = 0; i < bytes; ++i) send[i] = PatternByte(me, i);
      const void* from = send.data();
      if (in_place) {
        if (bytes > 0) std::memcpy(recv.data() + me * bytes, send.data(), bytes);
        from = recv.data() + me * bytes;
      }
      ASSERT_OK(comm.AllGather(from, bytes, recv.data(), {"allgather", int64_t(bytes)}));
      size_t wrong = 0;
      for (int r = 0; r < n; ++r) {
        for (size_t i = 0; i < bytes; ++i) wrong += recv[r * bytes + i] != PatternByte(r, i);
      }
      EXPECT_EQ(wrong, 0u) << "rank " << me << " bytes " << bytes << " in_place " << in_place;
      for (size_t i = 0; i < 8; ++i) EXPECT_EQ(recv[n * bytes + i], 0xEE) << "guard overwritten";
    }
  }
}

void BroadcastFromEachRoot(Comm& comm) {
  const int n = comm.size(), me = comm.rank();
  for (int root = 0; root < n; ++root) {
    for (size_t bytes : {size_t{0}, size_t{5}, size_t{1} << 20}) {
      std::vector<uint8_t> data(bytes + 8, 0xEE);
      if (me == root) {
        for (size_t i = 0; i < bytes; ++i) data[i] = PatternByte(root, i);
      }
      ASSERT_OK(comm.Broadcast(data.data(), bytes, root, {"broadcast", root}));
      size_t wrong = 0;
      for (size_t i = 0; i < bytes; ++i) wrong += data[i] != PatternByte(root, i);
      EXPECT_EQ(wrong, 0u) << "rank " << me << " root " << root << " bytes " << bytes;
      for (size_t i = 0; i < 8; ++i) EXPECT_EQ(data[bytes + i], 0xEE) << "guard overwritten";
    }
  }
}

void BarrierWaitsForLastRank(Comm& comm) {
  const int n = comm.size(), me = comm.rank();
  for (int i = 0; i < 10; ++i) ASSERT_OK(comm.Barrier({"barrier loop", i}));
  if (n < 2) return;
  const auto start = Clock::now();
  if (me == n - 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_OK(comm.Barrier({"late barrier", 10}));
  // Ranks left the previous barrier within a few ms of each other, so everyone waited here for
  // most of the last rank's 300 ms.
  if (me != n - 1) {
    EXPECT_GE(Since(start), absl::Milliseconds(150)) << "rank " << me;
  }
}

void SplitTpGroups(Comm& comm) {
  const int n = comm.size(), me = comm.rank();
  for (int tp = 1; tp <= n; ++tp) {
    if (n % tp != 0) continue;
    const int group = me / tp, first = group * tp;
    absl::StatusOr<std::unique_ptr<Comm>> split = comm.Split(group, me % tp, {"tp split", tp});
    ASSERT_TRUE(split.ok()) << split.status();
    Comm& sub = **split;
    EXPECT_EQ(sub.size(), tp);
    EXPECT_EQ(sub.rank(), me % tp);
    for (int i = 0; i < tp && i < sub.size(); ++i) {
      EXPECT_EQ(sub.world_rank(i), comm.world_rank(first + i));
    }
    int mine = me;
    std::vector<int> members(tp, -1);
    ASSERT_OK(sub.AllGather(&mine, sizeof(int), members.data(), {"tp gather", tp}));
    for (int i = 0; i < tp; ++i) EXPECT_EQ(members[i], first + i) << "tp " << tp;
    float value = Value(me, 0);
    ASSERT_OK(sub.AllReduceSum(&value, 1, {"tp allreduce", tp}));
    float expected = Value(first, 0);
    for (int i = 1; i < tp; ++i) expected += Value(first + i, 0);
    EXPECT_NEAR(value, expected, 1e-6 * std::fabs(expected)) << "tp " << tp;
    ASSERT_OK(sub.Barrier({"tp barrier", tp}));
    EXPECT_OK(sub.Shutdown());
    EXPECT_OK(sub.Shutdown());  // idempotent
    EXPECT_EQ(sub.Barrier({"after shutdown", tp}).code(), absl::StatusCode::kFailedPrecondition);
  }
  // Reversed keys: new rank n-1-me; root 0 of the new comm is the last parent rank.
  absl::StatusOr<std::unique_ptr<Comm>> reversed = comm.Split(7, -me, {"reverse split", 0});
  ASSERT_TRUE(reversed.ok()) << reversed.status();
  EXPECT_EQ((*reversed)->rank(), n - 1 - me);
  EXPECT_EQ((*reversed)->world_rank(0), comm.world_rank(n - 1));
  int root_parent_rank = me;
  ASSERT_OK((*reversed)->Broadcast(&root_parent_rank, sizeof(int), 0, {"reverse bcast", 0}));
  EXPECT_EQ(root_parent_rank, n - 1);
}

void InvalidArgumentsAreLocal(Comm& comm) {
  const int n = comm.size(), me = comm.rank();
  const CallSite site{"bad args", 3};
  std::vector<size_t> wrong_size(n + 1, 0);
  absl::Status st = comm.AllToAllV(nullptr, wrong_size, nullptr, wrong_size, site);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr(absl::StrCat("rank ", me, "/", n)));
  EXPECT_THAT(std::string(st.message()), HasSubstr("AllToAllV 'bad args' step 3"));
  int x = 0;
  EXPECT_EQ(comm.Broadcast(&x, sizeof(x), n, site).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.Split(-1, 0, site).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.Barrier(site, absl::ZeroDuration()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm.AllReduceSum(nullptr, 4, site).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_OK(comm.Barrier({"still usable", 3}));
}

void SizeMismatchIsReported(Comm& comm) {
  const int n = comm.size(), me = comm.rank();
  if (n < 2) return;
  // Rank 0 sends 8 bytes to rank 1, which expects `expected` bytes: fewer, then more.
  for (size_t expected : {size_t{16}, size_t{4}}) {
    absl::StatusOr<std::unique_ptr<Comm>> sub = comm.Split(0, me, {"mismatch split", 5});
    ASSERT_TRUE(sub.ok()) << sub.status();
    std::vector<size_t> send_bytes(n, 0), recv_bytes(n, 0);
    if (me == 0) send_bytes[1] = 8;
    if (me == 1) recv_bytes[0] = expected;
    uint64_t send[2] = {Payload(0, 1, 0), 0}, recv[2] = {0, 0};
    const absl::Status st =
        (*sub)->AllToAllV(send, send_bytes, recv, recv_bytes, {"mismatch", 5}, absl::Seconds(10));
    if (me == 1) {
      EXPECT_FALSE(st.ok());
      EXPECT_THAT(std::string(st.message()),
                  HasSubstr(absl::StrCat("expected ", expected, " bytes from rank 0")));
    }
    ASSERT_OK(comm.Barrier({"mismatch resync", 5}));
  }
}

namespace {

void ExpectDeadline(const absl::Status& st, const Comm& comm, const std::string& call, int missing,
                    bool names_peers, Clock::time_point start, absl::Duration deadline) {
  const absl::Duration elapsed = Since(start);
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
  const std::string message(st.message());
  EXPECT_THAT(message, HasSubstr(absl::StrCat("rank ", comm.rank(), "/", comm.size())));
  EXPECT_THAT(message, HasSubstr(call));
  if (names_peers) {
    EXPECT_THAT(message, HasSubstr(absl::StrCat("no answer from ranks [", missing, "]")));
  }
  // A rank gives up at its own deadline. (FakeComm also releases the other waiters of the same
  // call at once: "abandoned: rank r gave up after ...".)
  if (message.find(" abandoned: ") == std::string::npos) {
    EXPECT_GE(elapsed, deadline - absl::Milliseconds(1)) << message;
  } else {
    EXPECT_THAT(message, HasSubstr(absl::StrCat("gave up after ", absl::FormatDuration(deadline))));
  }
  EXPECT_LT(elapsed, deadline + absl::Seconds(5)) << message;
}

// Keeps a broken comm for the caller to free, or shuts it down. With `strict`, Shutdown must
// succeed; NCCL's graceful shutdown of the rank that never joined cannot (its peers aborted).
void Bury(std::unique_ptr<Comm> comm, std::vector<std::unique_ptr<Comm>>* graveyard, bool strict) {
  if (graveyard != nullptr) {
    graveyard->push_back(std::move(comm));
  } else if (strict) {
    EXPECT_OK(comm->Shutdown());
  } else {
    (void)comm->Shutdown();
  }
}

}  // namespace

void DeadlineNamesMissingRank(Comm& comm, std::vector<std::unique_ptr<Comm>>* graveyard,
                              bool names_peers) {
  const int n = comm.size(), me = comm.rank(), skip = n - 1;
  ASSERT_GE(n, 2);
  absl::StatusOr<std::unique_ptr<Comm>> sub = comm.Split(0, me, {"deadline split", 42});
  ASSERT_TRUE(sub.ok()) << sub.status();
  const absl::Duration deadline = absl::Milliseconds(500);
  if (me != skip) {
    const auto start = Clock::now();
    const absl::Status st = (*sub)->Barrier({"deadline probe", 42}, deadline);
    ExpectDeadline(st, **sub, "Barrier 'deadline probe' step 42", skip, names_peers, start,
                   deadline);
    const absl::Status later = (*sub)->Barrier({"after timeout", 43}, absl::Seconds(5));
    EXPECT_EQ(later.code(), absl::StatusCode::kFailedPrecondition) << later;
    EXPECT_THAT(std::string(later.message()), HasSubstr("deadline probe"));
  }
  EXPECT_OK(comm.Barrier({"deadline resync", 42}));
  Bury(std::move(*sub), graveyard, names_peers);
}

void DeadlineInAllToAllV(Comm& comm, std::vector<std::unique_ptr<Comm>>* graveyard,
                         bool names_peers) {
  const int n = comm.size(), me = comm.rank(), skip = n - 1;
  ASSERT_GE(n, 2);
  absl::StatusOr<std::unique_ptr<Comm>> sub = comm.Split(0, me, {"deadline split", 77});
  ASSERT_TRUE(sub.ok()) << sub.status();
  const absl::Duration deadline = absl::Milliseconds(500);
  if (me != skip) {
    std::vector<size_t> bytes(n, sizeof(uint64_t));
    std::vector<uint64_t> send(n), recv(n);
    for (int q = 0; q < n; ++q) send[q] = Payload(me, q, 0);
    const auto start = Clock::now();
    const absl::Status st = (*sub)->AllToAllV(send.data(), bytes, recv.data(), bytes,
                                              {"moe dispatch layer 7", 77}, deadline);
    ExpectDeadline(st, **sub, "AllToAllV 'moe dispatch layer 7' step 77", skip, names_peers, start,
                   deadline);
  }
  EXPECT_OK(comm.Barrier({"deadline resync", 77}));
  Bury(std::move(*sub), graveyard, names_peers);
}

void AbortReachesWaitingRanks(Comm& comm) {
  const int n = comm.size(), me = comm.rank();
  if (n < 2) return;
  if (me == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    comm.Abort(absl::InternalError("injected failure"));
    const absl::Status later = comm.Barrier({"after abort", 8});
    EXPECT_EQ(later.code(), absl::StatusCode::kAborted) << later;
    return;
  }
  const auto start = Clock::now();
  const absl::Status st = comm.Barrier({"waiting for aborted rank", 7}, absl::Seconds(20));
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("world rank 0 aborted"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("injected failure"));
  EXPECT_THAT(std::string(st.message()), HasSubstr(absl::StrCat("rank ", me, "/", n)));
  EXPECT_LT(Since(start), absl::Seconds(5));
  const absl::Status later = comm.Barrier({"after abort", 8});
  EXPECT_FALSE(later.ok());
  EXPECT_THAT(std::string(later.message()), HasSubstr("injected failure"));
}

}  // namespace flotilla::comm_test
