#!/usr/bin/env bash
# End-to-end serving tests (CTest label e2e): real processes — launch/flotilla-serve starts a
# coordinator and 2 CPU workers on the tiny model — and real gRPC on 127.0.0.1.
#   serve_test.sh BUILD_DIR WORK_DIR CASE [MALFORMED_CHECK [UPLOAD_CHECK [SOAK_CHECK]]]
set -uo pipefail
build=$1 work=$2 case=$3 malformed_check=${4:-} upload_check=${5:-} soak_check=${6:-}
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
launcher_flags=()
start_server() {  # start_server [coordinator flags...]; launcher_flags go to flotilla-serve
  rm -f "$work/port"
  # A background job of a script starts with SIGINT ignored; a terminal's job does not.
  env --default-signal=INT "$here/launch/flotilla-serve" --model "$model" --workers 2 --port 0 \
    --http-port 0 "${launcher_flags[@]}" \
    -- --port-file "$work/port" "$@" >"$work/serve.log" 2>&1 &
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
worker_pages() {  # "used/total" KV pages of each worker's own pool, one line each
  "$flotilla" status --server "$server" --json --timeout-s 10 |
    python3 -c 'import json,sys; s=json.load(sys.stdin); [print("%d/%d" % (int(w["stats"].get("kv_pages_used", 0)), int(w["stats"].get("kv_pages_total", 0)))) for w in s["cluster"]["workers"]]'
}
ids_of() { grep '^ids:' "$1" | sed 's/^ids: //'; }
job_processes() { pgrep -f "^$build/(coordinator|worker)/flotilla-.*--model $model" | wc -l; }
# Every process of the launcher, its timers included (their command line is the launcher's).
launcher_processes() { pgrep -f "launch/flotilla-serve --model $model " | wc -l; }
# Waits (at most $2 s) for the launcher to exit; fails naming $1 if it does not.
wait_exit() {
  for _ in $(seq 1 $(( $2 * 10 ))); do kill -0 $server_pid 2>/dev/null || break; sleep 0.1; done
  kill -0 $server_pid 2>/dev/null && fail "$1: the job still runs after $2 s"
  wait $server_pid
  local rc=$?
  server_pid=""
  return $rc
}
# A greedy stream ($1 tokens, default 60) in the background ($client), once it holds KV pages.
# Streams that must still be in flight when a signal comes ask for 400: decode on `tiny` is fast
# enough that 60 tokens can finish before the first status poll sees their pages.
start_stream() {
  "$flotilla" generate --server "$server" --prompt-ids 1,2,3,4,5 --max-new-tokens ${1:-60} --greedy \
    --ignore-eos >"$work/inflight.txt" 2>&1 &
  client=$!
  for _ in $(seq 1 100); do [ "$(pages_used)" -gt 0 ] && break; sleep 0.05; done
  [ "$(pages_used)" -gt 0 ] || fail "the stream never held KV pages"
}
expect_stream_complete() {  # the stream finished cleanly with all $1 tokens
  wait $client || { cat "$work/inflight.txt"; fail "$2: the in-flight stream did not finish cleanly"; }
  [ "$(ids_of "$work/inflight.txt" | tr ',' '\n' | wc -l)" -eq "$1" ] || fail "$2: the stream was cut short"
}

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
  # The worker that runs it holds pages of its own pool (1 GiB in 64 KiB pages: 16,384).
  held() { worker_pages | awk -F/ '{ used += $1 } END { print used + 0 }'; }
  for _ in $(seq 1 100); do [ "$(held)" -gt 0 ] && break; sleep 0.1; done
  [ "$(held)" -gt 0 ] || { worker_pages; fail "no worker holds KV pages for the long request"; }
  kill -9 $client
  "$flotilla" generate --server "$server" --prompt-ids 9,10,11 --max-new-tokens 100000 \
    --ignore-eos --greedy --timeout-s 2 >"$work/deadline.txt" 2>&1
  [ $? -ne 0 ] || fail "a request past its deadline succeeded"
  for _ in $(seq 1 100); do [ "$(pages_used)" -eq 0 ] && break; sleep 0.1; done
  [ "$(pages_used)" -eq 0 ] || fail "KV pages still used after the clients left: $(pages_used)"
  # Every page returns to the workers' pools too (the release reaches them with the next plan).
  for _ in $(seq 1 100); do [ "$(worker_pages | sort -u)" = "0/16384" ] && break; sleep 0.1; done
  [ "$(worker_pages | sort -u)" = "0/16384" ] || { worker_pages; fail "worker pools not back to empty"; }
  # The server keeps serving.
  "$flotilla" generate --server "$server" --prompt-ids 1,2,3 --max-new-tokens 3 --greedy \
    >"$work/after.txt" 2>&1 || fail "the server stopped serving"
  stop_server || fail "server exit status $?"
  echo "disconnect and deadline: KV pool back to empty (admission and workers), server still serving"
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
  # Each worker reserved the coordinator's pool (8 MiB in 64 KiB pages) and holds no page once
  # the stream is done (the release reaches the workers with the next step plan).
  for _ in $(seq 1 100); do [ "$(worker_pages | sort -u)" = "0/128" ] && break; sleep 0.1; done
  [ "$(worker_pages | sort -u)" = "0/128" ] || { worker_pages; fail "worker KV pages are not 0/128"; }
  stop_server || fail "server exit status $?"
  echo "over-capacity request refused with the numbers; the other stream completed; workers' pools back to 0/128 pages"
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
  # Issue 13, item 4: UNAVAILABLE naming the rank, not a transport error as the job ends.
  grep -q "UNAVAILABLE: worker rank [12] (127.0.0.1:[0-9]*) is gone" "$work/victim.txt" ||
    { tail -n 2 "$work/victim.txt"; fail "the client's error does not name the dead rank"; }
  for _ in $(seq 1 300); do kill -0 $server_pid 2>/dev/null || break; sleep 0.1; done
  wait $server_pid
  rc=$?
  server_pid=""
  [ $rc -ne 0 ] || fail "the job exited 0 after losing a worker"
  echo "worker killed: client error after $elapsed s ($(tail -n 1 "$work/victim.txt")); job exited $rc"
  ;;
worker-hung)
  # Issue 13, item 4: a stopped worker (SIGSTOP) turns health NOT_SERVING and admission refuses
  # with UNAVAILABLE naming it within the liveness deadline (--liveness-s 3 here); after SIGCONT
  # the server serves again.
  start_server --liveness-s 3
  health() { "$malformed_check" "$server" health | tr '\n' ' '; }
  [ "$(health)" = "(server): SERVING flotilla.v1.Flotilla: SERVING " ] || fail "health at start: $(health)"
  victim=$(pgrep -n -f "^$build/worker/flotilla-worker --serve --model $model")
  kill -STOP "$victim"
  start=$(date +%s)
  for _ in $(seq 1 200); do
    [ "$(health)" = "(server): NOT_SERVING flotilla.v1.Flotilla: NOT_SERVING " ] && break
    sleep 0.1
  done
  elapsed=$(( $(date +%s) - start ))
  [ "$(health)" = "(server): NOT_SERVING flotilla.v1.Flotilla: NOT_SERVING " ] ||
    { kill -CONT "$victim"; fail "health still $(health) with a stopped worker"; }
  [ $elapsed -le 10 ] || { kill -CONT "$victim"; fail "NOT_SERVING after $elapsed s (deadline 3 s)"; }
  "$flotilla" generate --server "$server" --prompt-ids 1,2 --max-new-tokens 2 >"$work/refused.txt" 2>&1
  rc=$?
  kill -CONT "$victim"
  [ $rc -eq 14 ] || { cat "$work/refused.txt"; fail "a request with a stopped worker: exit $rc, not 14"; }
  grep -q "UNAVAILABLE: .*worker rank [12] (127.0.0.1:[0-9]*) has not answered" "$work/refused.txt" ||
    { cat "$work/refused.txt"; fail "the refusal does not name the rank"; }
  for _ in $(seq 1 200); do
    [ "$(health)" = "(server): SERVING flotilla.v1.Flotilla: SERVING " ] && break
    sleep 0.1
  done
  [ "$(health)" = "(server): SERVING flotilla.v1.Flotilla: SERVING " ] || fail "health after SIGCONT: $(health)"
  "$flotilla" generate --server "$server" --prompt-ids 1,2 --max-new-tokens 2 >"$work/after.txt" 2>&1 ||
    { cat "$work/after.txt"; fail "no service after SIGCONT"; }
  stop_server || fail "server exit status $?"
  echo "stopped worker: NOT_SERVING after $elapsed s, refused naming the rank; serving again after SIGCONT"
  ;;
idle)
  # Issue 13, item 7: an idle server is idle. Each process's CPU time (utime + stime from
  # /proc/PID/stat, in clock ticks) over 10 s of idling must stay under 5% of a core.
  start_server
  sleep 3
  pids=$(pgrep -f "^$build/(coordinator|worker)/flotilla-.*--model $model")
  [ "$(echo "$pids" | wc -w)" -eq 3 ] || fail "expected 3 processes, found: $pids"
  hz=$(getconf CLK_TCK)
  ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  declare -A before
  for p in $pids; do before[$p]=$(ticks "$p"); done
  sleep 10
  for p in $pids; do
    used=$(( $(ticks "$p") - ${before[$p]} ))
    name=$(tr '\0' ' ' <"/proc/$p/cmdline" | cut -d' ' -f1 | xargs basename)
    echo "$name (pid $p): $used ticks of $((10 * hz)) while idle"
    [ $(( used * 100 )) -lt $(( 5 * 10 * hz )) ] || fail "$name used $used of $((10 * hz)) ticks while idle"
  done
  "$flotilla" generate --server "$server" --prompt-ids 1,2 --max-new-tokens 2 >"$work/after.txt" 2>&1 ||
    fail "no service after idling"
  stop_server || fail "server exit status $?"
  ;;
bad-start)
  # Issue 13, item 9: mistakes that used to start a server are refused at start-up, each message
  # printed once and without Open MPI's boilerplate; a trailing slash in --model still names
  # the model.
  expect_refused() {  # expect_refused WHAT MESSAGE_FRAGMENT LAUNCHER_ARGS...
    local what=$1 fragment=$2
    shift 2
    timeout 120 "$here/launch/flotilla-serve" "$@" >"$work/bad.log" 2>&1
    local rc=$?
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || { cat "$work/bad.log"; fail "$what: exit status $rc"; }
    [ "$(grep -c -F -- "$fragment" "$work/bad.log")" -eq 1 ] ||
      { cat "$work/bad.log"; fail "$what: '$fragment' not printed exactly once"; }
    grep -q -- '------------' "$work/bad.log" && { cat "$work/bad.log"; fail "$what: mpirun boilerplate"; }
    echo "refused: $what"
  }
  expect_refused "--workers 0" "--workers '0': expected a positive integer" --model "$model" --workers 0
  expect_refused "--kv-pool 1KiB" "one sequence of 2 tokens needs 10 pages: give at least 655360 bytes" \
    --model "$model" --workers 2 --port 0 -- --kv-pool 1KiB
  # Each worker reserves its pool at start: one larger than the host's memory fails there.
  expect_refused "--kv-pool 1TiB" "KV pool of 1.00 TiB (--kv-memory; flotilla-serve passes --kv-pool)" \
    --model "$model" --workers 2 --port 0 -- --kv-pool 1TiB
  # The same shards under a config with one main layer fewer.
  fewer=$work/fewer
  rm -rf "$fewer" && mkdir -p "$fewer"
  for f in "$model"/*; do ln -s "$f" "$fewer/"; done
  rm "$fewer/config.json"
  python3 - "$model/config.json" "$fewer/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["num_hidden_layers"] -= 1
del c["compress_ratios"][c["num_hidden_layers"]]
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY
  expect_refused "fewer layers than the shards" "tensors the config does not explain" \
    --model "$fewer" --workers 2 --port 0
  "$flotilla" run --model "$fewer" --prompt-ids 1,2,3 --max-new-tokens 1 >"$work/run.log" 2>&1 &&
    fail "flotilla run served a config with fewer layers than the shards"
  grep -q "tensors the config does not explain" "$work/run.log" || { cat "$work/run.log"; fail "run: no reason"; }
  # A trailing slash: the model is still called after its directory, and the name is checked.
  model_dir=$model
  model="$model/"
  start_server
  "$flotilla" generate --server "$server" --prompt-ids 1,2 --max-new-tokens 1 --model-name tiny \
    >"$work/named.txt" 2>&1 || { cat "$work/named.txt"; fail "--model-name tiny refused"; }
  "$flotilla" generate --server "$server" --prompt-ids 1,2 --max-new-tokens 1 --model-name other \
    >"$work/other.txt" 2>&1 && fail "--model-name other accepted"
  grep -q "is not served here" "$work/other.txt" || { cat "$work/other.txt"; fail "no name check"; }
  stop_server || fail "server exit status $?"
  model=$model_dir
  echo "bad starts refused with one message each; trailing slash keeps the model name"
  ;;
launcher-signals)
  # Issue 13, item 2: SIGTERM or SIGINT to launch/flotilla-serve drains (the stream in flight
  # completes, every rank exits 0); so does SIGTERM to a worker; a request right after the Drain
  # RPC returned is refused.
  for sig in TERM INT; do
    start_server
    start_stream 400
    kill -$sig $server_pid
    expect_stream_complete 400 "SIG$sig to the launcher"
    wait_exit "SIG$sig to the launcher" 120 || fail "SIG$sig to the launcher: exit status $?"
    [ "$(job_processes)" -eq 0 ] || fail "SIG$sig: processes left"
    grep -q "drained after" "$work/serve.log" || fail "SIG$sig: the coordinator did not drain"
    sleep 1
    [ "$(launcher_processes)" -eq 0 ] || fail "SIG$sig: launcher processes left (its grace timer?)"
    echo "SIG$sig to flotilla-serve drained the stream; every rank exited 0"
  done
  start_server
  start_stream 400
  pkill -TERM -n -f "^$build/worker/flotilla-worker --serve --model $model"
  expect_stream_complete 400 "SIGTERM to a worker"
  wait_exit "SIGTERM to a worker" 120 || fail "SIGTERM to a worker: exit status $?"
  grep -q "asked to drain; draining the job" "$work/serve.log" || fail "the worker's drain was not seen"
  echo "SIGTERM to a worker drained the job; every rank exited 0"
  # With a stream in flight, so that the server is still up (draining) when the request comes.
  start_server
  start_stream 400
  "$malformed_check" "$server" drain || fail "a request right after Drain"
  expect_stream_complete 400 "the Drain RPC"
  wait_exit "after the Drain RPC" 120 || fail "after the Drain RPC: exit status $?"
  ;;
hard-stop)
  # Issue 13, item 2: a second signal, or the end of --grace-s, stops the job at once; the
  # client gets an error status, no process is left.
  start_server
  start_stream 100000
  kill -TERM $server_pid
  sleep 1
  kill -INT $server_pid
  wait_exit "a second signal" 60 && fail "a second signal: the job exited 0"
  wait $client && fail "the stream cut by a hard stop ended cleanly"
  sleep 1
  [ "$(job_processes)" -eq 0 ] || fail "a second signal: processes left"
  [ "$(launcher_processes)" -eq 0 ] || fail "a second signal: launcher processes left (its grace timer?)"
  echo "a second signal stopped the job hard ($(tail -n 1 "$work/inflight.txt"))"
  launcher_flags=(--grace-s 3)
  start_server
  start_stream 100000
  kill -TERM $server_pid
  wait_exit "--grace-s 3" 60 && fail "--grace-s 3: the job exited 0"
  wait $client && fail "the stream cut by the grace period ended cleanly"
  grep -q "grace period of 3 s is over" "$work/serve.log" || fail "the grace period was not the reason"
  sleep 1
  [ "$(job_processes)" -eq 0 ] || fail "--grace-s: processes left"
  echo "--grace-s 3 stopped the job hard after the grace period"
  ;;
demo)
  # Issue 13, item 3: launch/demo stops its own server, not another one of the same build, and
  # exits 0.
  start_server
  decoy=$server
  FLOTILLA_BIN=$build timeout 600 "$here/launch/demo" --model "$work/demo_model" >"$work/demo.log" 2>&1 ||
    { tail -n 30 "$work/demo.log"; fail "launch/demo failed"; }
  grep -q "drained after" "$work/demo.log" || { tail -n 5 "$work/demo.log"; fail "the demo's server did not drain"; }
  pgrep -f "^$build/coordinator/flotilla-coordinator --model $work/demo_model" >/dev/null &&
    fail "the demo left its coordinator running"
  "$flotilla" generate --server "$decoy" --prompt-ids 1,2 --max-new-tokens 2 >"$work/decoy.txt" 2>&1 ||
    { cat "$work/decoy.txt"; fail "the other server was stopped by the demo"; }
  stop_server || fail "server exit status $?"
  echo "launch/demo stopped its own server only"
  ;;
prompt-memory)
  # Issue 13, item 1: 8 prompts of 16 MiB uploaded at once (gRPC streamed upload, 4 MiB chunks)
  # to a model whose context (2^24 tokens, so 512 MiB of text) admits them by size. Each is
  # tokenized as it arrives under a 64 MiB prompt memory budget; each ends with a clear refusal
  # (the budget, or the KV pool once tokenized), never a transport error. The coordinator's peak
  # RSS stays within baseline + budget + 8 streams x 8 MiB (a 4 MiB chunk as the gRPC message
  # and as text) + 64 MiB (gRPC buffers, allocator slack): baseline + 192 MiB. Before, the same
  # burst tokenized every prompt whole at about 38 bytes per byte (8 x 16 MiB x 38 = 4.8 GiB).
  # Afterwards the server serves a normal request, no upload or prompt memory is left in the
  # status, and RSS is back within baseline + 48 MiB.
  big=$work/tiny_long_context
  rm -rf "$big"
  cp -r "$model" "$big"
  python3 - "$big/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["max_position_embeddings"] = 1 << 24
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
  model=$big
  start_server --prompt-memory 64MiB --kv-pool 64MiB  # a tokenized 16 MiB prompt exceeds the pool
  "$flotilla" generate --server "$server" --prompt "Hello there" --max-new-tokens 4 --greedy \
    >"$work/warm.txt" 2>&1 || { cat "$work/warm.txt"; fail "warm-up request"; }
  pid=$(coordinator_pid)
  kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"; }
  base=$(kib VmRSS)
  echo 5 >"/proc/$pid/clear_refs" || fail "cannot reset the peak RSS of pid $pid"
  start=$(date +%s)
  "$upload_check" "$server" burst 8 16 >"$work/burst.txt" 2>&1
  rc=$?
  cat "$work/burst.txt"
  [ $rc -eq 0 ] || fail "a 16 MiB upload ended other than with a clear refusal"
  peak=$(kib VmHWM)
  bound=$(( base + 192 * 1024 ))
  echo "coordinator RSS: baseline $((base / 1024)) MiB, peak $((peak / 1024)) MiB during the burst ($(( $(date +%s) - start )) s), bound $((bound / 1024)) MiB"
  [ "$peak" -le "$bound" ] || fail "peak RSS $((peak / 1024)) MiB is above the bound $((bound / 1024)) MiB"
  "$flotilla" generate --server "$server" --prompt-ids 1,2,3 --max-new-tokens 3 --greedy \
    >"$work/after.txt" 2>&1 || { cat "$work/after.txt"; fail "the server stopped serving"; }
  "$flotilla" status --server "$server" >"$work/status.txt" || fail "status"
  grep -q "^prompts: 0 uploads in progress (0 bytes received), prompt memory 0/67108864 bytes" \
    "$work/status.txt" || { cat "$work/status.txt"; fail "uploads or prompt memory left after the burst"; }
  after=$(kib VmRSS)
  echo "coordinator RSS after: $((after / 1024)) MiB"
  [ "$after" -le $(( base + 48 * 1024 )) ] || fail "RSS $((after / 1024)) MiB did not return near the baseline $((base / 1024)) MiB"
  stop_server || fail "server exit status $?"
  ;;
stalled-clients)
  # Issue 13, item 5: an upload that stops before its last chunk, visible in the status while it
  # lasts, ends with DEADLINE_EXCEEDED after --upload-idle-s; a client that stops reading its
  # stream has its request cancelled and its KV pages freed after --write-stall-s while it is
  # still connected, and then sees DEADLINE_EXCEEDED naming the flag; a chunk after `last` is
  # refused.
  start_server --upload-idle-s 3 --write-stall-s 2
  "$upload_check" "$server" stall-upload >"$work/stall_upload.txt" 2>&1 &
  up=$!
  uploads_line() { "$flotilla" status --server "$server" >"$work/status.txt"; grep '^prompts:' "$work/status.txt"; }
  for _ in $(seq 1 50); do
    uploads_line | grep -q "^prompts: 1 uploads in progress (47 bytes received)" && break
    sleep 0.1
  done
  uploads_line | grep -q "^prompts: 1 uploads in progress (47 bytes received)" ||
    { cat "$work/status.txt"; fail "the stalled upload is not in the status"; }
  wait $up || { cat "$work/stall_upload.txt"; fail "the stalled upload did not end with DEADLINE_EXCEEDED"; }
  cat "$work/stall_upload.txt"
  uploads_line | grep -q "^prompts: 0 uploads in progress (0 bytes received)" ||
    { cat "$work/status.txt"; fail "the stalled upload is still in the status"; }
  "$upload_check" "$server" stall-read >"$work/stall_read.txt" 2>&1 &
  reader=$!
  for _ in $(seq 1 100); do [ "$(pages_used)" -gt 0 ] && break; sleep 0.1; done
  [ "$(pages_used)" -gt 0 ] || fail "the long request never held KV pages"
  for _ in $(seq 1 300); do [ "$(pages_used)" -eq 0 ] && break; sleep 0.1; done
  [ "$(pages_used)" -eq 0 ] || fail "KV pages still held by a client that reads nothing"
  kill -0 $reader 2>/dev/null || fail "the reader exited early (the test needs it connected)"
  wait $reader || { cat "$work/stall_read.txt"; fail "the stalled reader did not see DEADLINE_EXCEEDED"; }
  cat "$work/stall_read.txt"
  # A chunk sent after the one marked `last` (once admitted) ends the stream with
  # INVALID_ARGUMENT naming chunk.last, and the request's KV pages return.
  "$upload_check" "$server" after-last >"$work/after_last.txt" 2>&1 ||
    { cat "$work/after_last.txt"; fail "a chunk after last was not refused naming chunk.last"; }
  cat "$work/after_last.txt"
  for _ in $(seq 1 100); do [ "$(pages_used)" -eq 0 ] && break; sleep 0.1; done
  [ "$(pages_used)" -eq 0 ] || fail "KV pages still used after the refused stream"
  "$flotilla" generate --server "$server" --prompt-ids 1,2,3 --max-new-tokens 3 --greedy \
    >"$work/after.txt" 2>&1 || fail "the server stopped serving"
  stop_server || fail "server exit status $?"
  echo "stalled upload and stalled reader cut off, chunk after last refused; KV freed; server still serving"
  ;;
soak)
  # Issue 13: a soak of 150 s (loopback only, tiny model). Six clients at once send short and
  # long requests over gRPC and HTTP, cancel at random times (during upload, tokenization,
  # queueing and generation), use the Cancel RPC, and disconnect mid-stream and mid-upload
  # (tests/e2e/soak_check.cc). Every request not cancelled must complete with finish reason
  # length and exactly its max_new_tokens. Afterwards: no KV pages used, no request active,
  # running or queued, no upload or prompt memory held; the coordinator's RSS within its
  # baseline + 64 MiB, each worker's within its baseline + the 128 MiB KV pool it may have
  # touched + 64 MiB.
  rm -f "$work/http_port"
  start_server --kv-pool 128MiB --http-port-file "$work/http_port"
  for _ in $(seq 1 50); do [ -s "$work/http_port" ] && break; sleep 0.1; done
  http_port=$(cat "$work/http_port")
  "$flotilla" generate --server "$server" --prompt "Hello there" --max-new-tokens 4 --greedy \
    >"$work/warm.txt" 2>&1 || { cat "$work/warm.txt"; fail "warm-up request"; }
  pids=$(pgrep -f "^$build/(coordinator|worker)/flotilla-.*--model $model")
  [ "$(echo "$pids" | wc -w)" -eq 3 ] || fail "expected 3 processes, found: $pids"
  rss_kib() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status"; }
  declare -A base
  for p in $pids; do base[$p]=$(rss_kib "$p"); done
  "$soak_check" "$server" "$http_port" 150 >"$work/soak.txt" 2>&1
  rc=$?
  cat "$work/soak.txt"
  [ $rc -eq 0 ] || fail "the soak had unexpected outcomes"
  for _ in $(seq 1 300); do [ "$(pages_used)" -eq 0 ] && break; sleep 0.1; done
  [ "$(pages_used)" -eq 0 ] || fail "KV pages still used after the soak: $(pages_used)"
  "$flotilla" status --server "$server" >"$work/status.txt" || fail "status"
  grep -q "^scheduler: running 0, queued 0, .*active requests 0" "$work/status.txt" ||
    { cat "$work/status.txt"; fail "requests left after the soak"; }
  grep -q "^prompts: 0 uploads in progress (0 bytes received), prompt memory 0/" "$work/status.txt" ||
    { cat "$work/status.txt"; fail "uploads or prompt memory left after the soak"; }
  sleep 2
  for p in $pids; do
    name=$(tr '\0' ' ' <"/proc/$p/cmdline" | cut -d' ' -f1 | xargs basename)
    slack=$(( 64 * 1024 ))
    [ "$name" = flotilla-worker ] && slack=$(( (128 + 64) * 1024 ))
    now=$(rss_kib "$p")
    echo "$name (pid $p): RSS $(( ${base[$p]} / 1024 )) MiB before, $(( now / 1024 )) MiB after (bound $(( (${base[$p]} + slack) / 1024 )) MiB)"
    [ "$now" -le $(( ${base[$p]} + slack )) ] || fail "$name RSS did not return near its baseline"
  done
  "$flotilla" generate --server "$server" --prompt-ids 1,2,3 --max-new-tokens 3 --greedy \
    >"$work/after.txt" 2>&1 || fail "the server stopped serving"
  stop_server || fail "server exit status $?"
  ;;
*) fail "unknown case $case" ;;
esac
