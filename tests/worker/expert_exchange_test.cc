// Dispatch/combine with recognisable payloads: every copy's bytes encode (source rank, token,
// slot), the receiving "expert" answers with (its rank, its local expert, the bytes it got), and
// every value is checked exactly — including ranks that send or receive nothing and experts that
// nobody picked.
#include "worker/expert_exchange.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "comm/fake_comm.h"
#include "gtest/gtest.h"

namespace flotilla {
namespace {

// A bf16 model of hidden size 12 carries 24-byte payloads and replies.
constexpr int64_t kHidden = 12;
struct Payload {
  int32_t src_rank, token, pad0, pad1;
  int16_t tail[4];
};
struct Reply {
  int32_t owner_rank, local_expert, src_rank, token;
  float weight;
  int32_t slot;
};
static_assert(sizeof(Payload) == 2 * kHidden && sizeof(Reply) == 2 * kHidden);

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
  ModelConfig config;
  config.hidden_size = kHidden;
  config.n_routed_experts = num_experts;
  int64_t most_rows = 1;
  for (int64_t n : tokens_per_rank) most_rows = std::max(most_rows, n);
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
      for (int64_t t = 0; t < n; ++t) rows[t] = {r, int32_t(t), -1, -2, {3, 4, 5, int16_t(t)}};
      absl::StatusOr<ExchangeLayout> layout =
          ExchangeLayout::Make(config, placement, r, most_rows, k);
      if (!layout.ok()) {
        errors[r] = std::string(layout.status().message());
        return;
      }
      ExpertExchange ex(*layout);
      // The payload in two pieces (as the model sends FP8 codes, then their scales).
      const ExpertExchange::Piece pieces[2] = {
          {reinterpret_cast<const uint8_t*>(rows.data()), 16, sizeof(Payload)},
          {reinterpret_cast<const uint8_t*>(rows.data()) + 16, 8, sizeof(Payload)}};
      absl::Status st =
          ex.Dispatch(ep, placement, idx.data(), w.data(), n, k, pieces, /*more=*/false, 0);
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
        if (p.token != h.token || p.pad0 != -1 || p.pad1 != -2 || p.tail[0] != 3 ||
            p.tail[2] != 5 || p.tail[3] != int16_t(p.token) || placement.Locate(global).rank != r ||
            placement.Locate(global).local_expert_idx != h.local_expert ||
            sw[p.token * k + h.slot] != h.weight || p.src_rank < last_src) {
          errors[r] = "bad entry " + std::to_string(i);
        }
        last_src = p.src_rank;  // arrival order: by source rank
        replies[i] = {r, h.local_expert, p.src_rank, p.token, h.weight, h.slot};
      }
      // Grouped by local expert: each group in arrival order, every entry once.
      const int64_t num_local = mine.size();
      std::vector<int64_t> offsets(num_local + 1, -1);
      std::vector<int32_t> order(ex.num_received() + 1, -1);
      st = ex.GroupByLocalExpert(num_local, offsets.data(), order.data());
      if (!st.ok()) {
        errors[r] = std::string(st.message());
        return;
      }
      if (offsets[0] != 0 || offsets[num_local] != ex.num_received()) {
        errors[r] = "group offsets do not cover the received entries";
      }
      for (int64_t e = 0; e < num_local; ++e) {
        for (int64_t i = offsets[e]; i < offsets[e + 1]; ++i) {
          if (ex.header(order[i]).local_expert != e || (i > offsets[e] && order[i] <= order[i - 1]))
            errors[r] = "bad group of local expert " + std::to_string(e);
        }
      }
      std::vector<Reply> back(n * k);
      st = ex.Combine(ep, reinterpret_cast<const uint8_t*>(replies.data()),
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

TEST(ExpertExchange, MoreRowsThanTheLayoutHoldsAreRefused) {
  auto comms = FakeCommGroup::Create(1);
  ModelConfig config;
  config.hidden_size = kHidden;
  config.n_routed_experts = 8;
  const ExpertPlacement placement(8, 1);
  const ExchangeLayout layout = *ExchangeLayout::Make(config, placement, 0, 2, 2);
  ExpertExchange ex(layout);
  EXPECT_EQ(ex.ReservedBytes(), layout.HostExchangeBytes());
  const std::vector<int32_t> idx = {0, 1, 2, 3, 4, 5};
  const std::vector<float> w(6, 1.0f);
  std::vector<Payload> rows(3);
  const ExpertExchange::Piece piece{reinterpret_cast<const uint8_t*>(rows.data()), sizeof(Payload),
                                    sizeof(Payload)};
  const absl::Status st =
      ex.Dispatch(*comms[0], placement, idx.data(), w.data(), 3, 2, std::span(&piece, 1), false, 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_NE(st.message().find("3 rows of 2 copies"), std::string::npos) << st.message();
}

// Rows beyond one round go in later rounds; every rank runs as many rounds as the busiest needs
// (ceil(12 / 4) = 3 here), learning it from the counts, and each reply comes back to its row.
TEST(ExpertExchange, RoundsEndTogether) {
  constexpr int kWorld = 3;
  constexpr int64_t kRound = 4, kK = 2, kExperts = 6;
  const std::vector<int64_t> rows_of = {5, 0, 12};
  auto comms = FakeCommGroup::Create(kWorld);
  const ExpertPlacement placement(kExperts, kWorld);
  ModelConfig config;
  config.hidden_size = kHidden;
  config.n_routed_experts = kExperts;
  std::vector<std::string> errors(kWorld);
  std::vector<int64_t> rounds(kWorld, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      const int64_t n = rows_of[r];
      std::vector<int32_t> idx;
      std::vector<float> w;
      RouteOf(r, n, kK, kExperts, &idx, &w);
      std::vector<Payload> rows(n);
      for (int64_t t = 0; t < n; ++t) rows[t] = {r, int32_t(t), -1, -2, {0, 0, 0, 0}};
      ExpertExchange ex(*ExchangeLayout::Make(config, placement, r, kRound, kK));
      std::vector<Reply> back(n * kK);
      for (int64_t r0 = 0;; r0 += kRound) {
        const int64_t m = std::max<int64_t>(0, std::min(kRound, n - r0));
        const ExpertExchange::Piece piece{reinterpret_cast<const uint8_t*>(rows.data() + r0),
                                          sizeof(Payload), sizeof(Payload)};
        absl::Status st =
            ex.Dispatch(*comms[r], placement, idx.data() + r0 * kK, w.data() + r0 * kK, m, kK,
                        std::span(&piece, 1), r0 + m < n, 0);
        std::vector<Reply> replies(ex.num_received());
        for (int64_t i = 0; i < ex.num_received(); ++i) {
          Payload p;
          std::memcpy(&p, ex.payload(i), sizeof(p));
          replies[i] = {r,       ex.header(i).local_expert, p.src_rank,
                        p.token, ex.header(i).weight,       ex.header(i).slot};
        }
        if (st.ok()) {
          st = ex.Combine(*comms[r], reinterpret_cast<const uint8_t*>(replies.data()),
                          reinterpret_cast<uint8_t*>(back.data() + r0 * kK), 0);
        }
        if (!st.ok()) {
          errors[r] = std::string(st.message());
          return;
        }
        ++rounds[r];
        if (!ex.any_more()) break;
      }
      for (int64_t t = 0; t < n; ++t)
        for (int64_t s = 0; s < kK; ++s) {
          const Reply& b = back[t * kK + s];
          if (b.owner_rank != placement.Locate(idx[t * kK + s]).rank || b.src_rank != r ||
              b.token != t || b.slot != s || b.weight != w[t * kK + s]) {
            errors[r] = "bad reply for token " + std::to_string(t) + " slot " + std::to_string(s);
          }
        }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(rounds[r], 3) << "rank " << r;
  }
}

TEST(ExpertExchange, OneRank) { RunCase(1, 16, 6, {9}); }
TEST(ExpertExchange, TwoRanks) { RunCase(2, 16, 6, {5, 3}); }
TEST(ExpertExchange, RanksWithoutTokens) { RunCase(4, 16, 2, {0, 7, 0, 1}); }
TEST(ExpertExchange, UnevenExpertsAndRanksOwningNothingPicked) { RunCase(3, 10, 4, {4, 4, 2}); }
TEST(ExpertExchange, MoreRanksThanUsefulExperts) { RunCase(4, 5, 1, {3, 0, 2, 6}); }

}  // namespace
}  // namespace flotilla
