// Dispatch/combine with recognisable payloads: every copy's bytes encode (source rank, token,
// slot), the receiving "expert" answers with (its rank, its local expert, the bytes it got), and
// every value is checked exactly — including ranks that send or receive nothing and experts that
// nobody picked.
#include <cstring>
#include <thread>

#include "gtest/gtest.h"
#include "comm/fake_comm.h"
#include "worker/expert_exchange.h"

namespace flotilla {
namespace {

struct Payload {
  int32_t src_rank, token, pad0, pad1;
};
struct Reply {
  int32_t owner_rank, local_expert, src_rank, token;
  float weight;
  int32_t slot;
};

// Routing of rank r's tokens: deterministic, with gaps (some ranks route nothing, some experts
// are never chosen) so empty blocks are exercised.
void RouteOf(int rank, int64_t n, int64_t k, int64_t num_experts, std::vector<int32_t>* idx,
             std::vector<float>* w) {
  idx->resize(n * k);
  w->resize(n * k);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t s = 0; s < k; ++s) {
      // Experts 0 and num_experts - 1 are never picked.
      (*idx)[t * k + s] = int32_t(1 + (rank * 7 + t * 3 + s * 5) % (num_experts - 2));
      (*w)[t * k + s] = float(rank * 1000 + t * 10 + s);
    }
}

void RunCase(int world, int64_t num_experts, int64_t k, std::vector<int64_t> tokens_per_rank) {
  auto comms = FakeCommGroup::Create(world);
  const ExpertPlacement placement(num_experts, world);
  std::vector<std::thread> threads;
  std::vector<std::string> errors(world);
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      Comm& ep = *comms[r];
      const int64_t n = tokens_per_rank[r];
      std::vector<int32_t> idx;
      std::vector<float> w;
      RouteOf(r, n, k, num_experts, &idx, &w);
      std::vector<Payload> rows(n);
      for (int64_t t = 0; t < n; ++t) rows[t] = {r, int32_t(t), -1, -2};
      ExpertExchange ex;
      absl::Status st = ex.Dispatch(ep, placement, idx.data(), w.data(), n, k,
                                    reinterpret_cast<const uint8_t*>(rows.data()),
                                    sizeof(Payload), 0);
      if (!st.ok()) {
        errors[r] = std::string(st.message());
        return;
      }
      // Everything received is addressed to one of this rank's experts, with the sender's weight.
      const IndexRange mine = placement.ExpertsOf(r);
      std::vector<Reply> replies(ex.num_received());
      int64_t expected_count = 0;
      for (int src = 0; src < world; ++src) {
        std::vector<int32_t> sidx;
        std::vector<float> sw;
        RouteOf(src, tokens_per_rank[src], k, num_experts, &sidx, &sw);
        for (int32_t e : sidx) expected_count += mine.Contains(e);
      }
      if (ex.num_received() != expected_count) {
        errors[r] = "received " + std::to_string(ex.num_received()) + " entries, expected " +
                    std::to_string(expected_count);
      }
      int last_src = -1;
      for (int64_t i = 0; i < ex.num_received(); ++i) {
        const auto h = ex.header(i);
        Payload p;
        std::memcpy(&p, ex.payload(i), sizeof(p));
        std::vector<int32_t> sidx;
        std::vector<float> sw;
        RouteOf(p.src_rank, tokens_per_rank[p.src_rank], k, num_experts, &sidx, &sw);
        const int32_t global = sidx[p.token * k + h.slot];
        if (p.token != h.token || p.pad0 != -1 || p.pad1 != -2 ||
            placement.Locate(global).rank != r ||
            placement.Locate(global).local_expert_idx != h.local_expert ||
            sw[p.token * k + h.slot] != h.weight || p.src_rank < last_src) {
          errors[r] = "bad entry " + std::to_string(i);
        }
        last_src = p.src_rank;  // arrival order: by source rank
        replies[i] = {r, h.local_expert, p.src_rank, p.token, h.weight, h.slot};
      }
      std::vector<Reply> back(n * k);
      st = ex.Combine(ep, reinterpret_cast<const uint8_t*>(replies.data()), sizeof(Reply),
                      reinterpret_cast<uint8_t*>(back.data()), 0);
      if (!st.ok()) {
        errors[r] = std::string(st.message());
        return;
      }
      for (int64_t t = 0; t < n; ++t)
        for (int64_t s = 0; s < k; ++s) {
          const Reply& b = back[t * k + s];
          const ExpertSlot where = placement.Locate(idx[t * k + s]);
          if (b.owner_rank != where.rank || b.local_expert != where.local_expert_idx ||
              b.src_rank != r || b.token != t || b.slot != s || b.weight != w[t * k + s]) {
            errors[r] = "bad reply for token " + std::to_string(t) + " slot " + std::to_string(s);
          }
        }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

TEST(ExpertExchange, OneRank) { RunCase(1, 16, 6, {9}); }
TEST(ExpertExchange, TwoRanks) { RunCase(2, 16, 6, {5, 3}); }
TEST(ExpertExchange, RanksWithoutTokens) { RunCase(4, 16, 2, {0, 7, 0, 1}); }
TEST(ExpertExchange, UnevenExpertsAndRanksOwningNothingPicked) { RunCase(3, 10, 4, {4, 4, 2}); }
TEST(ExpertExchange, MoreRanksThanUsefulExperts) { RunCase(4, 5, 1, {3, 0, 2, 6}); }

}  // namespace
}  // namespace flotilla
