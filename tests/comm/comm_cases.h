// Test cases of the Comm contract, written once and run on every implementation: FakeComm (N
// threads), MpiComm (N processes under mpiexec) and NcclComm (through a host-staging adapter).
// Every rank of `comm` calls the case; checks use gtest EXPECT / ASSERT (thread-safe).
#pragma once

#include <memory>
#include <vector>

#include "comm/comm.h"

namespace flotilla::comm_test {

// Recognisable payloads (source, destination, index) through variable-size blocks, including
// ranks that send nothing and ranks that receive nothing; checked exactly, with guard bytes.
void AllToAllVPayloads(Comm& comm);
// Every block empty: the call still completes.
void AllToAllVEmpty(Comm& comm);
// Blocks of a few hundred KB (rendezvous-sized for MPI).
void AllToAllVLarge(Comm& comm);
// In-place sum; every rank's result bitwise identical (checked by all-gathering it). With
// `rank_order_exact`, also bitwise equal to ((x0 + x1) + x2) + ... computed locally.
void AllReduceSum(Comm& comm, bool rank_order_exact);
// Rank-order blocks of several sizes, separate and in-place buffers.
void AllGatherRankOrder(Comm& comm);
// Every rank as root, several sizes.
void BroadcastFromEachRoot(Comm& comm);
// The last rank enters late; nobody leaves before it arrives.
void BarrierWaitsForLastRank(Comm& comm);
// TP-style groups (color rank / tp, key rank % tp) for every tp dividing size, plus a split with
// reversed keys; collectives inside the groups see exactly their members.
void SplitTpGroups(Comm& comm);
// Bad arguments fail locally with INVALID_ARGUMENT and leave the comm usable.
void InvalidArgumentsAreLocal(Comm& comm);
// A receiver expecting a different size than its peer sends gets an error naming that peer.
void SizeMismatchIsReported(Comm& comm);
// Needs size >= 2. The last rank never joins a Barrier / AllToAllV on a sub-communicator; the
// others return DEADLINE_EXCEEDED within the deadline, naming themselves, the call, the step and
// the missing rank; the sub-communicator is unusable afterwards. Broken sub-communicators are
// moved into `graveyard` when given (freed by the caller, e.g. just before MPI_Finalize), else
// shut down. `names_peers`: the transport knows which peer is missing (not NCCL).
void DeadlineNamesMissingRank(Comm& comm, std::vector<std::unique_ptr<Comm>>* graveyard,
                              bool names_peers = true);
void DeadlineInAllToAllV(Comm& comm, std::vector<std::unique_ptr<Comm>>* graveyard,
                         bool names_peers = true);
// FakeComm only (MpiComm::Abort ends the process): rank 0 aborts while the others wait in a
// Barrier; they return ABORTED quoting its message well before their deadline.
void AbortReachesWaitingRanks(Comm& comm);

}  // namespace flotilla::comm_test
