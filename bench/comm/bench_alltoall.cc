// All-to-all-v throughput of MpiComm at MoE dispatch sizes, next to this machine's memory copy
// bandwidth and Open MPI's own MPI_Alltoallv on the same shapes.
//
//   mpiexec -n W bench_alltoall [--iters-scale X]
//
// Shape per rank: T tokens (64: decode-like, 4096: prefill-like) x top-6 routing, each
// token-copy an FP8 hidden state of 4096 B + 32 B of scales = 4128 B, copies spread evenly over
// the W ranks (its own included). GB/s counts the bytes a rank sends to other ranks per second
// (the self block is a local copy); the memcpy ceiling is one core copying a 256 MiB buffer.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/status.h"
#include "comm/mpi_comm.h"

namespace flotilla {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kHidden = 4096;
constexpr size_t kScaleBytes = 32;  // 4096 / 128 blocks x f32
constexpr size_t kCopyBytes = kHidden + kScaleBytes;
constexpr int kTopK = 6;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Best of `reps` single-threaded memcpy of `bytes`, in GB/s (bytes copied per second).
double MemcpyGBs(size_t bytes, int reps) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double best = 0;
  for (int i = 0; i < reps; ++i) {
    src[i] = char(i);
    const auto start = Clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    const double s = Seconds(Clock::now() - start);
    best = std::max(best, bytes / s / 1e9);
  }
  if (dst[reps - 1] != char(reps - 1)) std::abort();  // keep the copy observable
  return best;
}

struct Shape {
  std::vector<size_t> send_bytes, recv_bytes;
  size_t total_send = 0, total_recv = 0, off_rank = 0;
};

// Token-copies from rank `src` to rank `dst`: tokens * top-k spread evenly, the remainder to
// the lowest destinations.
size_t Copies(int tokens, int dst, int world) {
  const size_t total = size_t(tokens) * kTopK;
  return total / world + (size_t(dst) < total % world ? 1 : 0);
}

Shape MakeShape(int tokens, int rank, int world) {
  Shape shape;
  for (int p = 0; p < world; ++p) {
    shape.send_bytes.push_back(Copies(tokens, p, world) * kCopyBytes);
    shape.recv_bytes.push_back(Copies(tokens, rank, world) * kCopyBytes);
    shape.total_send += shape.send_bytes.back();
    shape.total_recv += shape.recv_bytes.back();
    if (p != rank) shape.off_rank += shape.send_bytes.back();
  }
  return shape;
}

// Mean seconds per call over `iters` calls (after warm-up), as seen by the slowest rank.
template <typename Fn>
absl::StatusOr<double> Time(Comm& comm, int iters, Fn fn) {
  for (int i = 0; i < 3; ++i) RETURN_IF_ERROR(fn());
  if (absl::Status st = comm.Barrier({"bench sync", -1}); !st.ok()) return st;
  const auto start = Clock::now();
  for (int i = 0; i < iters; ++i) RETURN_IF_ERROR(fn());
  double mine = Seconds(Clock::now() - start) / iters;
  std::vector<double> all(comm.size());
  if (absl::Status st = comm.AllGather(&mine, sizeof(double), all.data(), {"bench times", -1});
      !st.ok()) {
    return st;
  }
  return *std::max_element(all.begin(), all.end());
}

int Run(int argc, char** argv) {
  double iters_scale = 1.0;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--iters-scale" && i + 1 < argc) iters_scale = std::atof(argv[++i]);
  }
  CommOptions options;
  options.timeout = absl::Seconds(120);
  absl::StatusOr<std::unique_ptr<MpiComm>> world = MpiComm::World(options, &argc, &argv);
  if (!world.ok()) {
    std::fprintf(stderr, "%s\n", world.status().ToString().c_str());
    return 1;
  }
  MpiComm& comm = **world;
  const int w = comm.size(), me = comm.rank();

  // The ceiling: rank 0 copies while the others wait.
  double memcpy_gbs = 0;
  if (me == 0) memcpy_gbs = MemcpyGBs(size_t{256} << 20, 5);
  if (absl::Status st = comm.Broadcast(&memcpy_gbs, sizeof(double), 0, {"bench memcpy", -1});
      !st.ok()) {
    comm.Abort(st);
  }

  if (me == 0) {
    std::printf(
        "all-to-all-v over MPI, W = %d ranks, %zu B per token-copy (FP8 %zu + scales %zu), "
        "top-%d spread evenly\n",
        w, kCopyBytes, kHidden, kScaleBytes, kTopK);
    std::printf(
        "| W | tokens/rank | MB sent/rank (off-rank) | MpiComm us | MpiComm GB/s/rank | "
        "MPI_Alltoallv us | MPI_Alltoallv GB/s/rank | memcpy GB/s | MpiComm / memcpy |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
  }
  for (int tokens : {64, 4096}) {
    const Shape shape = MakeShape(tokens, me, w);
    std::vector<char> send(shape.total_send, char(me)), recv(shape.total_recv, 0);
    const int iters = std::max(1, int((tokens <= 64 ? 300 : 10) * iters_scale));

    absl::StatusOr<double> ours = Time(comm, iters, [&] {
      return comm.AllToAllV(send.data(), shape.send_bytes, recv.data(), shape.recv_bytes,
                            {"bench alltoallv", tokens});
    });
    if (!ours.ok()) comm.Abort(ours.status());

    // Open MPI's collective on the same shape (counts in bytes; fits int at these sizes).
    std::vector<int> sc(w), sd(w), rc(w), rd(w);
    for (int p = 0, so = 0, ro = 0; p < w; ++p) {
      sc[p] = int(shape.send_bytes[p]);
      rc[p] = int(shape.recv_bytes[p]);
      sd[p] = so;
      rd[p] = ro;
      so += sc[p];
      ro += rc[p];
    }
    absl::StatusOr<double> native = Time(comm, iters, [&] {
      const int rc_mpi = MPI_Alltoallv(send.data(), sc.data(), sd.data(), MPI_BYTE, recv.data(),
                                       rc.data(), rd.data(), MPI_BYTE, comm.raw());
      return rc_mpi == MPI_SUCCESS ? absl::OkStatus() : absl::InternalError("MPI_Alltoallv failed");
    });
    if (!native.ok()) comm.Abort(native.status());

    if (me == 0) {
      const double ours_gbs = shape.off_rank / *ours / 1e9;
      const double native_gbs = shape.off_rank / *native / 1e9;
      std::printf("| %d | %d | %.2f | %.1f | %.2f | %.1f | %.2f | %.2f | %.2f |\n", w, tokens,
                  shape.off_rank / 1e6, *ours * 1e6, ours_gbs, *native * 1e6, native_gbs,
                  memcpy_gbs, ours_gbs / memcpy_gbs);
    }
  }
  world->reset();
  const absl::Status finalized = MpiComm::FinalizeProcess();
  if (!finalized.ok()) {
    std::fprintf(stderr, "%s\n", finalized.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace flotilla

int main(int argc, char** argv) { return flotilla::Run(argc, argv); }
