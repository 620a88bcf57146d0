#!/usr/bin/env bash
# Multi-node tests on one machine (CTest label multinode): a cluster of network namespaces
# (netns_cluster.sh), Open MPI over TCP between them, daemons started through netns-rsh.
#   multinode_test.sh BUILD_DIR WORK_DIR CASE [ARGS]
# Cases: equal W TP | serve | remote-missing-model | remote-wrong-checkpoint | link-cut | slow-link |
#        gpu-bind | sbatch
# Exits 77 (skipped) where network namespaces cannot be made.
set -uo pipefail
build=$1 work=$2 case=$3
shift 3
here=$(cd "$(dirname "$0")/../.." && pwd)
flotilla=$build/tools/flotilla
worker=$build/worker/flotilla-worker
source "$here/tests/multinode/netns_cluster.sh"
rm -rf "$work" && mkdir -p "$work"
export FLOTILLA_BIN=$build
# The daemons on the other nodes start through the namespace agent; MPI itself gets its
# settings from launch/flotilla-serve (or, for bare mpirun, the same ones below).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_plm_rsh_agent=$here/tests/multinode/netns-rsh
unset OMPI_MCA_btl OMPI_MCA_oob_tcp_if_include OMPI_MCA_btl_tcp_if_include
export OMP_NUM_THREADS=1

fail() {
  echo "FAIL: $*"
  [ -f "$work/serve.log" ] && { echo "--- server log"; tail -n 40 "$work/serve.log"; }
  exit 1
}
model() {  # model DIR SEED
  [ -f "$1/config.json" ] || "$flotilla" make-model --preset tiny --out "$1" --seed "$2" >/dev/null \
    || fail "make-model $1"
}
prompt=0,128803,19923,2058,3337,128804,77,88,99,1000,2000,3000,5,6,7,8,9,10,11,12,13,14,15,16,17
prompt=$prompt,40000,50000,60000,70000,80000,90000,100000,110000,120000,129000,1,2,3,4

# flotilla-serve on node 0 with the cluster's hostfile; the front door listens on node 0's
# loopback, where the clients run too.
server_pid=""
start_server() {  # start_server WORKERS TP [coordinator flags...]
  local w=$1 tp=$2
  shift 2
  rm -f "$work/port"
  on_node 0 "$here/launch/flotilla-serve" --model "$work/tiny" --workers "$w" --tp "$tp" \
    --hostfile "$work/hostfile" --network "$CLUSTER_NETWORK" --port 0 --http-port 0 -- \
    --port-file "$work/port" --http-port-file "$work/http_port" "$@" >"$work/serve.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    [ -s "$work/port" ] && break
    kill -0 $server_pid 2>/dev/null || return 1
    sleep 0.1
  done
  [ -s "$work/port" ] || fail "the server did not start within 60 s"
  server=127.0.0.1:$(cat "$work/port")
}
coordinator_pid() { pgrep -f "^$build/coordinator/flotilla-coordinator --model $work/tiny" | head -n 1; }
stop_server() {
  kill -TERM "$(coordinator_pid)" 2>/dev/null
  wait $server_pid
  local rc=$?
  server_pid=""
  return $rc
}
# Waits up to $1 s for every process inside the nodes to end; fails naming what is left.
expect_no_processes() {
  local left=""
  for _ in $(seq 1 $(($1 * 10))); do
    left=$(cluster_pids | tr '\n' ' ')
    [ -z "${left// /}" ] && return 0
    sleep 0.1
  done
  ps -o pid,etimes,args -p ${left// /,} 2>/dev/null
  fail "processes still running in the nodes after $1 s: $left"
}
generate() {  # generate OUT [flags...]: a client on node 0
  local out=$1
  shift
  on_node 0 "$flotilla" generate --server "$server" "$@" >"$out" 2>&1
}
ids_of() { grep '^ids:' "$1" | sed 's/^ids: //'; }
reference() {  # reference IDS N: what flotilla run generates greedily
  "$flotilla" run --model "$work/tiny" --prompt-ids "$1" --max-new-tokens "$2" --greedy \
    --ignore-eos 2>/dev/null | grep '^generated:' | sed 's/^generated: //; s/ /,/g'
}

case $case in
equal)
  # Distributed workers across nodes give bitwise the logits of the single process. No shared
  # memory at all: every byte between ranks goes over TCP on the cluster's links.
  W=$1 TP=$2
  cluster_up "$work" 3 || fail "cluster_up"
  model "$work/tiny" 3
  for chunk in 0 7; do
    "$flotilla" run --model "$work/tiny" --prompt-ids $prompt --max-new-tokens 4 --greedy \
      --chunk $chunk --ignore-eos --dump-logits "$work/ref_$chunk.npy" >"$work/ref_$chunk.txt" \
      || fail "flotilla run"
    OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=$CLUSTER_NETWORK \
      OMPI_MCA_oob_tcp_if_include=$CLUSTER_NETWORK \
      timeout 300 ip netns exec "$cluster_id-n0" mpirun --hostfile "$work/hostfile" \
      --bind-to none --display-map -np "$W" "$worker" --model "$work/tiny" --tp "$TP" --prompt-ids $prompt \
      --max-new-tokens 4 --greedy --chunk $chunk --ignore-eos --timeout-s 120 \
      --dump-logits "$work/w${W}_$chunk.npy" >"$work/w${W}_$chunk.txt" 2>&1 \
      || { cat "$work/w${W}_$chunk.txt"; fail "W=$W tp=$TP (chunk $chunk) exited $?"; }
    cmp "$work/ref_$chunk.npy" "$work/w${W}_$chunk.npy" \
      || fail "W=$W tp=$TP chunk $chunk: logits are not bitwise equal"
  done
  # The ranks really were spread over the nodes (mpirun's map lists each node with its ranks).
  nodes=$(grep 'Data for node: .*Num procs: [1-9]' "$work/w${W}_0.txt" | awk '{print $4}' | sort -u | wc -l)
  [ "$nodes" -eq $(( W > 2 ? 3 : 2 )) ] || { cat "$work/w${W}_0.txt"; fail "ranks on $nodes nodes"; }
  echo "W=$W tp=$TP over $nodes nodes (namespaces), MPI over TCP only: logits bitwise equal to flotilla run"
  ;;
serve)
  # flotilla-serve across 3 nodes (coordinator on node 0, 2 workers on each of nodes 1 and 2,
  # tp 2): concurrent greedy streams give the tokens of flotilla run, every worker's control
  # service answers across the links, and SIGTERM drains every node.
  cluster_up "$work" 3 || fail "cluster_up"
  model "$work/tiny" 3
  FLOTILLA_CONTROL_PORT_BASE=47000 start_server 4 2 || fail "the server exited during start"
  for i in 1 2 3 4; do
    p=0,128803,$((1000 + i * 7919)),$((2000 + i * 31)),$((i * 977)),128804,$((i * 11)),$((i * 13))
    echo "$p" >"$work/prompt_$i"
    generate "$work/stream_$i.txt" --prompt-ids "$p" --max-new-tokens 8 --greedy --ignore-eos \
      --timeout-s 120 &
  done
  for job in $(jobs -p); do [ "$job" = "$server_pid" ] || wait "$job" || fail "a stream failed"; done
  for i in 1 2 3 4; do
    want=$(reference "$(cat "$work/prompt_$i")" 8)
    got=$(ids_of "$work/stream_$i.txt")
    [ "$want" = "$got" ] || fail "stream $i: got [$got], flotilla run gave [$want]"
  done
  on_node 0 "$flotilla" status --server "$server" >"$work/status.txt" || fail "status"
  [ "$(grep -c ': ready, loaded' "$work/status.txt")" -eq 4 ] || { cat "$work/status.txt"; fail "workers not ready"; }
  # Control services on the cluster network, at the pinned ports: ranks 1-2 on node 1, 3-4 on 2.
  for r in 1 2 3 4; do
    grep -q "rank $r 198\.18\.0\.$(( (r + 1) / 2 + 1 )):4700$r: ready" "$work/status.txt" ||
      { cat "$work/status.txt"; fail "rank $r's control service is not where it should be"; }
  done
  # The OpenAI-compatible front door too, from the coordinator's node.
  on_node 0 curl -sS --max-time 60 "http://127.0.0.1:$(cat "$work/http_port")/v1/chat/completions" \
    -H 'Content-Type: application/json' \
    -d '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}' \
    >"$work/http.json" || fail "the HTTP front door did not answer"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["usage"]["completion_tokens"] == 4, r' \
    "$work/http.json" || { cat "$work/http.json"; fail "unexpected HTTP reply"; }
  stop_server || fail "server exit status $?"
  expect_no_processes 10
  echo "serving across 3 nodes: 4 streams equal to flotilla run, 4 workers report, HTTP answers," \
    "clean stop"
  ;;
remote-missing-model|remote-wrong-checkpoint)
  # Node 2 (world ranks 3 and 4) sees no model, or another checkpoint, at the model path: the
  # job stops with that rank's message (printed once), every process on every node ends, and the
  # launcher's status says it failed.
  cluster_up "$work" 3 || fail "cluster_up"
  model "$work/tiny" 3
  if [ "$case" = remote-missing-model ]; then
    mkdir -p "$work/empty"
    export FLOTILLA_NETNS_VIEW="198.18.0.3:$work/tiny:$work/empty"
    want="rank [34] could not load: $work/tiny/config.json"
  else
    model "$work/other" 4
    export FLOTILLA_NETNS_VIEW="198.18.0.3:$work/tiny:$work/other"
    want="rank [34] loaded a different checkpoint or config than rank 1"
  fi
  start=$(date +%s)
  start_server 4 1 && fail "the server started with a broken node"
  wait $server_pid
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  [ $rc -ne 0 ] || fail "the launcher exited 0"
  grep -q "$want" "$work/serve.log" || fail "no '$want' in the log"
  expect_no_processes 10
  echo "$case: the job stopped in $elapsed s with exit status $rc: $(grep -m1 "$want" "$work/serve.log")"
  ;;
link-cut)
  # Node 2's cable is cut at the switch mid-generation. The client gets UNAVAILABLE naming a
  # rank of node 2 within the coordinator's deadline, nothing hangs: every process on every
  # node ends (node 2's daemon notices through its keepalives), and the launcher's exit status
  # says the job failed.
  deadline=10
  cluster_up "$work" 3 || fail "cluster_up"
  model "$work/tiny" 3
  start_server 4 1 --timeout-s $deadline || fail "the server exited during start"
  generate "$work/victim.txt" --prompt-ids 1,2,3 --max-new-tokens 100000 --ignore-eos --greedy \
    --timeout-s 120 &
  client=$!
  for _ in $(seq 1 100); do grep -q . "$work/victim.txt" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  kill -0 $client 2>/dev/null || { cat "$work/victim.txt"; fail "the stream ended before the cut"; }
  link_down 2
  start=$(date +%s)
  wait $client
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  [ $rc -ne 0 ] || fail "the client did not see an error"
  grep -q "UNAVAILABLE" "$work/victim.txt" || { tail -n 3 "$work/victim.txt"; fail "no UNAVAILABLE"; }
  grep -Eq "ranks? \[?([34]|3, 4)\]?( |:|,|\)|$)" "$work/victim.txt" ||
    { tail -n 3 "$work/victim.txt"; fail "the error names no rank of node 2"; }
  [ $elapsed -le $((deadline + 10)) ] || fail "the client waited $elapsed s (deadline $deadline s)"
  wait $server_pid
  src=$?
  [ $src -ne 0 ] || fail "the launcher exited 0 after losing a node"
  expect_no_processes 60
  echo "link cut: client saw '$(grep -m1 UNAVAILABLE "$work/victim.txt")' after $elapsed s;" \
    "launcher exited $src; no process left on any node"
  ;;
slow-link)
  # Node 2's link is made slow and lossy (netem, or a token bucket that drops what overflows its
  # queue): requests still complete within the deadline, with the tokens of flotilla run.
  cluster_up "$work" 3 || fail "cluster_up"
  model "$work/tiny" 3
  how=$(link_degrade 2) || fail "tc"
  start_server 4 1 --timeout-s 10 || fail "the server exited during start"
  for i in 1 2 3; do
    p=0,128803,$((3000 + i * 101)),$((i * 977)),128804,$((i * 5))
    for j in $(seq 1 $((i * 40))); do p=$p,$(( (i * 131 + j * 17) % 129000 )); done
    echo "$p" >"$work/prompt_$i"
    generate "$work/stream_$i.txt" --prompt-ids "$p" --max-new-tokens 12 --greedy --ignore-eos \
      --timeout-s 300 &
  done
  for job in $(jobs -p); do [ "$job" = "$server_pid" ] || wait "$job" || fail "a stream failed"; done
  for i in 1 2 3; do
    want=$(reference "$(cat "$work/prompt_$i")" 12)
    got=$(ids_of "$work/stream_$i.txt")
    [ "$want" = "$got" ] || fail "stream $i: got [$got], flotilla run gave [$want]"
  done
  drops=$(link_drops 2)
  [ "$drops" -gt 0 ] || fail "no packet was dropped: the link was not lossy"
  stop_server || fail "server exit status $?"
  expect_no_processes 10
  echo "slow, lossy link to node 2 ($how; $drops packets dropped): streams complete with" \
    "the tokens of flotilla run"
  ;;
gpu-bind)
  # launch/gpu-bind gives each worker of a node its own GPU, counting from 0 on every node, past
  # the coordinator on the first one; a scheduler's CUDA_VISIBLE_DEVICES list is indexed.
  cluster_up "$work" 3 || fail "cluster_up"
  show='echo "$(hostname) $CUDA_VISIBLE_DEVICES"'
  # Coordinator alone on node 0, 2 workers on each of nodes 1 and 2.
  OMPI_MCA_btl=self,tcp OMPI_MCA_btl_tcp_if_include=$CLUSTER_NETWORK \
    OMPI_MCA_oob_tcp_if_include=$CLUSTER_NETWORK \
    on_node 0 mpirun --hostfile "$work/hostfile" -np 1 true : --map-by ppr:2:node -np 4 \
    "$here/launch/gpu-bind" 2 bash -c "$show" >"$work/cluster.txt" 2>&1 || { cat "$work/cluster.txt"; fail "mpirun"; }
  got=$(sort "$work/cluster.txt" | tr '\n' ' ')
  [ "$got" = "198.18.0.2 0 198.18.0.2 1 198.18.0.3 0 198.18.0.3 1 " ] || fail "cluster binding: $got"
  # One host: the coordinator and 3 workers share it; SLURM-style visible list 4,5,6.
  OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo CUDA_VISIBLE_DEVICES=4,5,6 \
    mpirun -np 1 true : -np 3 "$here/launch/gpu-bind" 3 bash -c 'echo $CUDA_VISIBLE_DEVICES' \
    >"$work/host.txt" 2>&1 || { cat "$work/host.txt"; fail "mpirun"; }
  got=$(sort "$work/host.txt" | tr '\n' ' ')
  [ "$got" = "4 5 6 " ] || fail "one-host binding: $got"
  # More workers on a node than GPUs is refused, naming the node.
  OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo \
    mpirun -np 1 true : -np 3 "$here/launch/gpu-bind" 2 true >"$work/over.txt" 2>&1 &&
    fail "3 workers on 2 GPUs were accepted"
  grep -q "leaves no GPU of 2" "$work/over.txt" || { cat "$work/over.txt"; fail "no clear error"; }
  echo "gpu-bind: one GPU per worker by local rank, on every node and on one host"
  ;;
sbatch)
  # launch/flotilla.sbatch as SLURM would run it on the first node of a 2-node allocation with
  # 2 GPUs each (scontrol answered by a stand-in that lists the cluster's nodes): 4 workers, the
  # coordinator on the first node; it serves, and SIGTERM (scancel) drains it to exit status 0.
  cluster_up "$work" 2 || fail "cluster_up"
  model "$work/tiny" 3
  mkdir -p "$work/bin"
  printf '#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "198.18.0.1\\n198.18.0.2\\n"\n' \
    >"$work/bin/scontrol"
  chmod +x "$work/bin/scontrol"
  rm -f "$work/port"
  PATH=$work/bin:$PATH SLURM_JOB_NODELIST="fake[1-2]" SLURM_GPUS_ON_NODE=gpu:h200:2 \
    on_node 0 "$here/launch/flotilla.sbatch" --model "$work/tiny" --network "$CLUSTER_NETWORK" \
    --port 0 -- --port-file "$work/port" >"$work/serve.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do [ -s "$work/port" ] && break; kill -0 $server_pid 2>/dev/null || break; sleep 0.1; done
  [ -s "$work/port" ] || fail "flotilla.sbatch did not start a server"
  server=127.0.0.1:$(cat "$work/port")
  grep -q "2 nodes x 2 GPUs = 4 workers; coordinator on 198.18.0.1" "$work/serve.log" || fail "layout"
  p=0,128803,4242,128804,7
  generate "$work/stream.txt" --prompt-ids "$p" --max-new-tokens 6 --greedy --ignore-eos \
    --timeout-s 120 || { cat "$work/stream.txt"; fail "generate"; }
  [ "$(ids_of "$work/stream.txt")" = "$(reference "$p" 6)" ] || fail "tokens differ from flotilla run"
  on_node 0 "$flotilla" status --server "$server" >"$work/status.txt" || fail "status"
  [ "$(grep -c ': ready, loaded' "$work/status.txt")" -eq 4 ] || { cat "$work/status.txt"; fail "workers"; }
  # What scancel does: SIGTERM to the batch script ($server_pid is the shell around it).
  sbatch_pid=$(pgrep -f "launch/flotilla.sbatch --model $work/tiny" | head -n 1)
  [ -n "$sbatch_pid" ] || fail "no flotilla.sbatch process"
  kill -TERM "$sbatch_pid"
  wait $server_pid
  rc=$?
  [ $rc -eq 0 ] || fail "flotilla.sbatch exited $rc after SIGTERM"
  grep -q "draining" "$work/serve.log" || fail "SIGTERM did not drain"
  expect_no_processes 10
  echo "flotilla.sbatch: 2 nodes x 2 GPUs, served, drained on SIGTERM with status 0"
  ;;
*) fail "unknown case $case" ;;
esac
