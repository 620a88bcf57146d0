// Expert-parallel MoE (design.md §2): each TP rank routes 1/tp of its DP group's tokens,
// dispatches their activations to the ranks owning the chosen experts (all-to-all-v), the
// owners run their experts over what they received, the outputs come back (all-to-all-v), and
// each token's routed sum is formed in increasing expert id, as in one process. The TP group
// then all-gathers the token slices. Every result is bitwise that of a single process.
#include <cstring>

#include "absl/strings/str_cat.h"

#include "worker/model_internal.h"

namespace flotilla {
namespace {

// What travels with each token copy, ahead of its activation bytes.
struct EntryHeader {
  int32_t token;         // index in the sender's slice
  int32_t slot;          // routing slot (0..k-1)
  int32_t local_expert;  // index among the receiver's experts
  float weight;          // routing weight
};

}  // namespace

absl::Status Model::MoeDistributed(const MoeWeights& mw, const Rows& rows, const bf16* x,
                                   bf16* out) const {
  const ModelConfig& c = config_;
  const int64_t n = rows.n, d = c.hidden_size, k = top_k_;
  const float limit = float(c.swiglu_limit);
  Comm& ep = *par_.ep;
  const int64_t world = ep.size();

  // This TP rank's slice of the group's tokens.
  const IndexRange slice = SplitEvenly(n, par_.tp_size, par_.tp_rank);
  const int64_t ns = slice.size();
  const bf16* xs = x + slice.begin * d;
  std::vector<int32_t> idx;
  std::vector<float> weights;
  RouteTokens(c, mw, rows.token.data() + slice.begin, ns, k, xs, &idx, &weights);

  // Activations travel as FP8 codes + UE8M0 scales (quantised experts) or bf16.
  const bool quantized = c.Quantized();  // FP8 checkpoints carry FP4 or FP8 experts
  QuantizedActs xq;
  if (quantized && ns > 0) QuantizeActs(xs, d, ns, d, &xq);
  const size_t act_bytes = quantized ? size_t(d + d / 128) : size_t(2 * d);
  const size_t entry_bytes = sizeof(EntryHeader) + act_bytes;

  // Dispatch: entries grouped by destination, then token, then slot.
  std::vector<std::vector<int64_t>> to_rank(world);  // (token * k + slot)
  for (int64_t t = 0; t < ns; ++t)
    for (int64_t s = 0; s < k; ++s)
      to_rank[par_.placement.Locate(idx[t * k + s]).rank].push_back(t * k + s);
  std::vector<uint64_t> send_count(world), recv_count(world);
  std::vector<size_t> eight(world, 8), send_bytes(world), recv_bytes(world);
  for (int64_t r = 0; r < world; ++r) send_count[r] = to_rank[r].size();
  RETURN_IF_ERROR(ep.AllToAllV(send_count.data(), eight, recv_count.data(), eight,
                               Site("moe dispatch counts")));
  std::vector<uint8_t> send_buf, recv_buf;
  for (int64_t r = 0; r < world; ++r) {
    send_bytes[r] = send_count[r] * entry_bytes;
    recv_bytes[r] = recv_count[r] * entry_bytes;
  }
  uint64_t total_send = 0, total_recv = 0;
  for (int64_t r = 0; r < world; ++r) {
    total_send += send_count[r];
    total_recv += recv_count[r];
  }
  send_buf.resize(total_send * entry_bytes);
  recv_buf.resize(total_recv * entry_bytes);
  {
    uint8_t* p = send_buf.data();
    for (int64_t r = 0; r < world; ++r) {
      for (int64_t e : to_rank[r]) {
        const int64_t t = e / k, s = e % k;
        const ExpertSlot where = par_.placement.Locate(idx[e]);
        const EntryHeader hdr{int32_t(t), int32_t(s), int32_t(where.local_expert_idx), weights[e]};
        std::memcpy(p, &hdr, sizeof(hdr));
        p += sizeof(hdr);
        if (quantized) {
          std::memcpy(p, xq.row(t), d);
          std::memcpy(p + d, xq.row_scale(t), d / 128);
        } else {
          std::memcpy(p, xs + t * d, 2 * d);
        }
        p += act_bytes;
      }
    }
  }
  RETURN_IF_ERROR(ep.AllToAllV(send_buf.data(), send_bytes, recv_buf.data(), recv_bytes,
                               Site("moe dispatch")));

  // Expert compute over the received entries, grouped by local expert in arrival order (source
  // rank, then the source's order); every row's arithmetic is independent of its group.
  const int64_t num_local = int64_t(mw.experts.size());
  std::vector<std::vector<int64_t>> by_expert(num_local);
  for (uint64_t i = 0; i < total_recv; ++i) {
    EntryHeader hdr;
    std::memcpy(&hdr, recv_buf.data() + i * entry_bytes, sizeof(hdr));
    if (hdr.local_expert < 0 || hdr.local_expert >= num_local) {
      return absl::InternalError(absl::StrCat("moe dispatch: entry for local expert ",
                                              hdr.local_expert, " on a rank owning ", num_local));
    }
    by_expert[hdr.local_expert].push_back(int64_t(i));
  }
  std::vector<bf16> reply(total_recv * d);
  for (int64_t le = 0; le < num_local; ++le) {
    const auto& list = by_expert[le];
    const int64_t m = int64_t(list.size());
    if (m == 0) continue;
    std::vector<float> w(m);
    std::vector<bf16> xe, ye(m * d);
    QuantizedActs qe;
    if (quantized) {
      qe.m = m;
      qe.k = d;
      qe.q.resize(m * d);
      qe.scale.resize(m * (d / 128));
    } else {
      xe.resize(m * d);
    }
    for (int64_t i = 0; i < m; ++i) {
      const uint8_t* p = recv_buf.data() + list[i] * entry_bytes;
      EntryHeader hdr;
      std::memcpy(&hdr, p, sizeof(hdr));
      w[i] = hdr.weight;
      p += sizeof(hdr);
      if (quantized) {
        std::memcpy(qe.q.data() + i * d, p, d);
        std::memcpy(qe.scale.data() + i * (d / 128), p + d, d / 128);
      } else {
        std::memcpy(xe.data() + i * d, p, 2 * d);
      }
    }
    ExpertForward(mw.experts[le], quantized ? &qe : nullptr, xe.data(), m, w.data(), limit,
                  ye.data(), d);
    for (int64_t i = 0; i < m; ++i) std::copy_n(&ye[i * d], d, &reply[list[i] * d]);
  }

  // Combine: outputs return in the order they were sent.
  std::vector<size_t> reply_send(world), reply_recv(world);
  for (int64_t r = 0; r < world; ++r) {
    reply_send[r] = recv_count[r] * 2 * d;
    reply_recv[r] = send_count[r] * 2 * d;
  }
  std::vector<bf16> returned(total_send * d);
  RETURN_IF_ERROR(ep.AllToAllV(reply.data(), reply_send, returned.data(), reply_recv,
                               Site("moe combine")));
  std::vector<bf16> routed(ns * k * d);
  {
    int64_t i = 0;
    for (int64_t r = 0; r < world; ++r)
      for (int64_t e : to_rank[r]) std::copy_n(&returned[(i++) * d], d, &routed[e * d]);
  }
  std::vector<bf16> shared;
  if (mw.has_shared && ns > 0) {
    shared.resize(ns * d);
    const bool sq = mw.shared.w1.TakesQuantizedInput();
    ExpertForward(mw.shared, sq ? &xq : nullptr, xs, ns, nullptr, limit, shared.data(), d);
  }
  std::vector<bf16> ys(ns * d);
  CombineExperts(mw, idx.data(), routed.data(), shared.empty() ? nullptr : shared.data(), ns, k, d,
                 ys.data());

  // The TP group all-gathers its token slices (padded to the widest slice).
  if (par_.tp_size == 1) {
    std::copy(ys.begin(), ys.end(), out);
    return absl::OkStatus();
  }
  const int64_t widest = SplitEvenly(n, par_.tp_size, 0).size();
  ys.resize(widest * d);
  std::vector<bf16> all(par_.tp_size * widest * d);
  RETURN_IF_ERROR(par_.tp->AllGather(ys.data(), ys.size() * 2, all.data(),
                                     Site("moe token-slice all-gather")));
  for (int64_t t = 0; t < par_.tp_size; ++t) {
    const IndexRange sl = SplitEvenly(n, par_.tp_size, t);
    std::copy_n(&all[t * widest * d], sl.size() * d, out + sl.begin * d);
  }
  return absl::OkStatus();
}

}  // namespace flotilla
