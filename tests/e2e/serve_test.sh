#!/usr/bin/env bash
# End-to-end serving tests (CTest label e2e): real processes — launch/flotilla-serve starts a
# coordinator and 2 CPU workers on the tiny model — and real gRPC on 127.0.0.1.
#   serve_test.sh BUILD_DIR WORK_DIR CASE [MALFORMED_CHECK]
set -uo pipefail
build=$1 work=$2 case=$3 malformed_check=${4:-}
here=$(cd "$(dirname "$0")/../.." && pwd)
flotilla=$build/tools/flotilla
mkdir -p "$work"
export FLOTILLA_BIN=$build
fail() {
  echo "FAIL: $*"
  [ -f "$work/serve.log" ] && { echo "--- server log"; tail -n 40 "$work/serve.log"; }
  stop_server kill
  exit 1
}
model=$work/tiny
[ -f "$model/config.json" ] || "$flotilla" make-model --preset tiny --out "$model" --seed 5 >/dev/null

server_pid=""
start_server() {  # start_server [coordinator flags...]
  rm -f "$work/port"
  "$here/launch/flotilla-serve" --model "$model" --workers 2 --port 0 --http-port 0 \
    -- --port-file "$work/port" \
    "$@" >"$work/serve.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 300); do
    [ -s "$work/port" ] && break
    kill -0 $server_pid 2>/dev/null || fail "the server exited during start"
    sleep 0.1
  done
  [ -s "$work/port" ] || fail "the server did not start within 30 s"
  server=127.0.0.1:$(cat "$work/port")
}
# The programs' own command lines start with their path (mpirun's starts with "mpirun").
coordinator_pid() { pgrep -f "^$build/coordinator/flotilla-coordinator --model $model" | head -n 1; }
stop_server() {  # stop_server [kill]
  [ -n "$server_pid" ] || return 0
  if [ "${1:-}" = kill ]; then
    kill -9 $server_pid 2>/dev/null
    pkill -9 -f "^$build/(coordinator|worker)/flotilla-.*--model $model" 2>/dev/null
  else
    kill -TERM "$(coordinator_pid)" 2>/dev/null
  fi
  wait $server_pid 2>/dev/null
  local rc=$?
  server_pid=""
  return $rc
}
pages_used() {  # total KV pages in use over the DP groups
  "$flotilla" status --server "$server" --json --timeout-s 10 |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(int(g["pages_used"]) for g in s["cluster"]["scheduler"]["groups"]))'
}
ids_of() { grep '^ids:' "$1" | sed 's/^ids: //'; }

case $case in
concurrent)
  # 8 concurrent greedy streams; each must give exactly the tokens of `flotilla run`.
  start_server
  for i in $(seq 1 8); do
    prompt=0,128803,$((1000 + i * 7919 % 120000)),$((2000 + i * 31)),$((i * 977)),128804
    for j in $(seq 1 $((i * 3))); do prompt=$prompt,$(( (i * 131 + j * 17) % 129000 )); done
    echo "$prompt" >"$work/prompt_$i"
    "$flotilla" generate --server "$server" --prompt-ids "$prompt" --max-new-tokens 12 --greedy \
      --ignore-eos --timeout-s 120 >"$work/stream_$i.txt" 2>&1 &
  done
  wait_fail=0
  for job in $(jobs -p); do [ "$job" = "$server_pid" ] && continue; wait "$job" || wait_fail=1; done
  [ $wait_fail -eq 0 ] || { cat "$work"/stream_*.txt; fail "a stream failed"; }
  for i in $(seq 1 8); do
    "$flotilla" run --model "$model" --prompt-ids "$(cat "$work/prompt_$i")" --max-new-tokens 12 \
      --greedy --ignore-eos >"$work/ref_$i.txt" 2>/dev/null || fail "flotilla run"
    want=$(grep '^generated:' "$work/ref_$i.txt" | sed 's/^generated: //; s/ /,/g')
    got=$(ids_of "$work/stream_$i.txt")
    [ "$want" = "$got" ] || fail "stream $i: got [$got], flotilla run gave [$want]"
  done
  # Every worker answers through its control service.
  "$flotilla" status --server "$server" >"$work/status.txt" || fail "status"
  [ "$(grep -c ': ready, loaded' "$work/status.txt")" -eq 2 ] || { cat "$work/status.txt"; fail "workers not ready"; }
  stop_server || fail "server exit status $?"
  echo "8 concurrent streams: token ids equal to flotilla run"
  ;;
cancel)
  # A client that disconnects mid-stream frees its KV; so does one whose deadline passes.
  start_server
  "$flotilla" generate --server "$server" --prompt-ids 5,6,7,8 --max-new-tokens 100000 \
    --ignore-eos --greedy >"$work/long.txt" 2>&1 &
  client=$!
  for _ in $(seq 1 100); do [ "$(pages_used)" -gt 0 ] && break; sleep 0.1; done
  [ "$(pages_used)" -gt 0 ] || fail "the long request never held KV pages"
  kill -9 $client
  "$flotilla" generate --server "$server" --prompt-ids 9,10,11 --max-new-tokens 100000 \
    --ignore-eos --greedy --timeout-s 2 >"$work/deadline.txt" 2>&1
  [ $? -ne 0 ] || fail "a request past its deadline succeeded"
  for _ in $(seq 1 100); do [ "$(pages_used)" -eq 0 ] && break; sleep 0.1; done
  [ "$(pages_used)" -eq 0 ] || fail "KV pages still used after the clients left: $(pages_used)"
  # The server keeps serving.
  "$flotilla" generate --server "$server" --prompt-ids 1,2,3 --max-new-tokens 3 --greedy \
    >"$work/after.txt" 2>&1 || fail "the server stopped serving"
  stop_server || fail "server exit status $?"
  echo "disconnect and deadline: KV pool back to empty, server still serving"
  ;;
long-prompt)
  # A prompt of at least 65,536 tokens, streamed in chunks, is admitted, reports progress and
  # completes.
  python3 -c "
import sys
words = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta']
print(' '.join(words[i % 8] + str(i % 1000) for i in range(31500)))" >"$work/long_prompt.txt"
  start_server --step-token-budget 8192
  timeout 900 "$flotilla" generate --server "$server" --prompt-file "$work/long_prompt.txt" \
    --chunk-bytes 65536 --max-new-tokens 4 --greedy --verbose --timeout-s 900 \
    >"$work/long.txt" 2>&1 || { cat "$work/long.txt"; fail "the long prompt failed"; }
  n=$(grep -o 'prompt_tokens=[0-9]*' "$work/long.txt" | cut -d= -f2)
  [ -n "$n" ] && [ "$n" -ge 65536 ] || { tail -n 5 "$work/long.txt"; fail "the prompt had ${n:-no} tokens"; }
  grep -qi "progress" "$work/long.txt" || fail "no progress was reported"
  stop_server || fail "server exit status $?"
  echo "a $n-token prompt streamed in chunks: admitted, progress reported, completed"
  ;;
over-capacity)
  # A request larger than the pool is refused with RESOURCE_EXHAUSTED while another streams.
  start_server --kv-pool 8MiB
  "$flotilla" generate --server "$server" --prompt-ids 1,2,3,4 --max-new-tokens 40 --greedy \
    --ignore-eos >"$work/ok.txt" 2>&1 &
  ok=$!
  "$flotilla" generate --server "$server" --prompt-ids 1,2,3 --max-new-tokens 1000000 \
    >"$work/big.txt" 2>&1
  rc=$?
  [ $rc -ne 0 ] || fail "the oversized request was admitted"
  grep -q "RESOURCE_EXHAUSTED" "$work/big.txt" || { cat "$work/big.txt"; fail "no RESOURCE_EXHAUSTED"; }
  wait $ok || { cat "$work/ok.txt"; fail "the other stream did not complete"; }
  [ "$(ids_of "$work/ok.txt" | tr ',' '\n' | wc -l)" -eq 40 ] || fail "the other stream was cut short"
  stop_server || fail "server exit status $?"
  echo "over-capacity request refused with the numbers; the other stream completed"
  ;;
malformed)
  # Malformed requests each get INVALID_ARGUMENT with a useful message; the server keeps serving.
  start_server
  "$malformed_check" "$server" || fail "malformed requests"
  stop_server || fail "server exit status $?"
  ;;
drain)
  # SIGTERM to the coordinator: in-flight streams finish, then every rank exits 0.
  start_server
  "$flotilla" generate --server "$server" --prompt-ids 1,2,3,4,5 --max-new-tokens 60 --greedy \
    --ignore-eos >"$work/inflight.txt" 2>&1 &
  client=$!
  for _ in $(seq 1 100); do [ "$(pages_used)" -gt 0 ] && break; sleep 0.05; done
  kill -TERM "$(coordinator_pid)"
  wait $client || { cat "$work/inflight.txt"; fail "the in-flight stream did not finish cleanly"; }
  [ "$(ids_of "$work/inflight.txt" | tr ',' '\n' | wc -l)" -eq 60 ] || fail "the stream was cut short"
  wait $server_pid
  rc=$?
  server_pid=""
  [ $rc -eq 0 ] || fail "mpirun exited $rc after the drain"
  echo "SIGTERM drained the in-flight stream; every rank exited 0"
  ;;
worker-killed)
  # A worker killed mid-generation: the client gets an error status within 10 s, the job exits
  # non-zero.
  start_server
  "$flotilla" generate --server "$server" --prompt-ids 1,2,3 --max-new-tokens 100000 \
    --ignore-eos --greedy --timeout-s 60 >"$work/victim.txt" 2>&1 &
  client=$!
  for _ in $(seq 1 100); do [ "$(pages_used)" -gt 0 ] && break; sleep 0.05; done
  pkill -9 -n -f "^$build/worker/flotilla-worker --serve --model $model"
  start=$(date +%s)
  wait $client
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  [ $rc -ne 0 ] || fail "the client did not see an error"
  [ $elapsed -le 10 ] || fail "the client took $elapsed s to see the error"
  for _ in $(seq 1 300); do kill -0 $server_pid 2>/dev/null || break; sleep 0.1; done
  wait $server_pid
  rc=$?
  server_pid=""
  [ $rc -ne 0 ] || fail "the job exited 0 after losing a worker"
  echo "worker killed: client error after $elapsed s ($(tail -n 1 "$work/victim.txt")); job exited $rc"
  ;;
*) fail "unknown case $case" ;;
esac
