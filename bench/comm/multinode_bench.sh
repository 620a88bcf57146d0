#!/usr/bin/env bash
# All-to-all-v and the `small` model's step time across "nodes" (network namespaces joined by
# veth links, MPI over TCP; tests/multinode/netns_cluster.sh) next to the same on one host over
# shared memory and over TCP on loopback. A program, not a test: it prints the figures.
#   bench/comm/multinode_bench.sh [BUILD_DIR] [WORK_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
work=${2:-$(mktemp -d)}
mkdir -p "$work"
source "$here/tests/multinode/netns_cluster.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_plm_rsh_agent=$here/tests/multinode/netns-rsh OMP_NUM_THREADS=1
cluster_up "$work" 3
small=$work/small
[ -f "$small/config.json" ] || "$build/tools/flotilla" make-model --preset small --out "$small" >/dev/null
prompt=$(python3 -c "print(','.join(str(1000 + 37 * i) for i in range(64)))")

run() {  # run LABEL WHERE BTL: bench_alltoall, then flotilla-worker on small, W = 2
  local label=$1 where=$2 btl=$3 net
  local mpi=(mpirun --bind-to none -np 2)
  if [ "$where" = cluster ]; then
    net=$CLUSTER_NETWORK
    mpi=(ip netns exec "$cluster_id-n0" mpirun --hostfile "$work/hostfile" --bind-to none -np 2)
  else
    net=lo
  fi
  echo "### $label"
  OMPI_MCA_btl=$btl OMPI_MCA_btl_tcp_if_include=$net OMPI_MCA_oob_tcp_if_include=$net \
    "${mpi[@]}" "$build/bench/comm/bench_alltoall"
  OMPI_MCA_btl=$btl OMPI_MCA_btl_tcp_if_include=$net OMPI_MCA_oob_tcp_if_include=$net \
    "${mpi[@]}" "$build/worker/flotilla-worker" --model "$small" --prompt-ids "$prompt" \
    --max-new-tokens 32 --greedy --ignore-eos --timeout-s 600 2>/dev/null | grep -E '^(prefill|decode):'
}
run "one host, shared memory (btl self,vader)" local self,vader
run "one host, TCP over loopback (btl self,tcp)" local self,tcp
run "two namespaces over a veth link, TCP (btl self,tcp)" cluster self,tcp
