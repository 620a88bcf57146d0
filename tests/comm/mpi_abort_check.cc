// Under mpiexec -np N (N >= 2): world rank 0 calls Abort() while the others wait in a Barrier.
// Expected (checked by check_abort.cmake): the others print the ABORTED status quoting rank 0's
// message, and the job ends non-zero (rank 0's MPI_Abort after its grace), far before any
// deadline.
#include <chrono>
#include <cstdio>
#include <thread>

#include "comm/mpi_comm.h"

int main(int argc, char** argv) {
  flotilla::CommOptions options;
  options.timeout = absl::Seconds(60);
  options.abort_grace = absl::Seconds(2);
  absl::StatusOr<std::unique_ptr<flotilla::MpiComm>> world =
      flotilla::MpiComm::World(options, &argc, &argv);
  if (!world.ok()) {
    std::fprintf(stderr, "%s\n", world.status().ToString().c_str());
    return 2;
  }
  flotilla::Comm& comm = **world;
  if (comm.rank() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    comm.Abort(absl::InternalError("injected load failure on rank 0"));
  }
  const absl::Status status = comm.Barrier({"wait for rank 0", 0});
  std::printf("observed on rank %d: %s\n", comm.rank(), status.ToString().c_str());
  std::fflush(stdout);
  // Let rank 0's MPI_Abort end the job (after its grace), so that no rank's exit cuts short
  // another's report.
  std::this_thread::sleep_for(std::chrono::seconds(30));
  return 1;
}
