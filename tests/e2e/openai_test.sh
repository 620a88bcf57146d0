#!/usr/bin/env bash
# End-to-end tests of the OpenAI-compatible HTTP API (CTest label e2e): launch/flotilla-serve
# starts a coordinator and 2 CPU workers on the tiny model, HTTP and gRPC on 127.0.0.1, and
# openai_api_test.py drives it with the official `openai` package from the project-local
# virtualenv build/venv (created here when missing: python3 -m venv + pip install openai).
#   openai_test.sh BUILD_DIR WORK_DIR CASE       CASE: api | auth | admission | tls
set -uo pipefail
build=$1 work=$2 case=$3
here=$(cd "$(dirname "$0")/../.." && pwd)
flotilla=$build/tools/flotilla
mkdir -p "$work"
export FLOTILLA_BIN=$build
venv=$build/venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q openai || { echo "FAIL: cannot set up $venv"; exit 1; }
fi
server_pid=""
fail() {
  echo "FAIL: $*"
  [ -f "$work/serve.log" ] && { echo "--- server log"; tail -n 40 "$work/serve.log"; }
  [ -n "$server_pid" ] && { kill -9 $server_pid 2>/dev/null; pkill -9 -f "^$build/(coordinator|worker)/flotilla-.*--model $model" 2>/dev/null; }
  exit 1
}
model=$work/tiny
[ -f "$model/config.json" ] || "$flotilla" make-model --preset tiny --out "$model" --seed 5 >/dev/null

start_server() {  # start_server [coordinator flags...]
  rm -f "$work/port" "$work/http_port"
  "$here/launch/flotilla-serve" --model "$model" --workers 2 --port 0 --http-port 0 \
    -- --port-file "$work/port" --http-port-file "$work/http_port" "$@" >"$work/serve.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 300); do
    [ -s "$work/http_port" ] && break
    kill -0 $server_pid 2>/dev/null || fail "the server exited during start"
    sleep 0.1
  done
  [ -s "$work/http_port" ] || fail "the server did not start within 30 s"
  grpc=127.0.0.1:$(cat "$work/port")
  http_port=$(cat "$work/http_port")
}
stop_server() {
  local pid
  pid=$(pgrep -f "^$build/coordinator/flotilla-coordinator --model $model" | head -n 1)
  [ -n "$pid" ] && kill -TERM "$pid"
  wait $server_pid
  local rc=$?
  server_pid=""
  [ $rc -eq 0 ] || fail "server exit status $rc"
}
py=$venv/bin/python
script=$here/tests/e2e/openai_api_test.py

case $case in
api)
  start_server
  "$py" "$script" api "http://127.0.0.1:$http_port/v1" "$flotilla" "$model" || fail "api checks"
  stop_server
  ;;
auth)
  key=test-key-$$-$RANDOM
  FLOTILLA_API_KEY=$key start_server
  "$py" "$script" auth "http://127.0.0.1:$http_port/v1" "$flotilla" "$model" "$key" "$grpc" ||
    fail "auth checks"
  stop_server
  # Beyond loopback without a key the coordinator refuses to start, naming the way out.
  out=$("$build/coordinator/flotilla-coordinator" --model "$model" --address 0.0.0.0 2>&1)
  echo "$out" | grep -q -- "--insecure-public" || fail "public address without a key: $out"
  ;;
admission)
  start_server --max-running 1 --max-queued 1 --kv-pool 64MiB
  "$py" "$script" admission "http://127.0.0.1:$http_port/v1" "$flotilla" "$model" || fail "admission checks"
  stop_server
  ;;
tls)
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/key.pem" -out "$work/cert.pem" \
    -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1 ||
    fail "openssl could not make a test certificate"
  start_server --tls-cert "$work/cert.pem" --tls-key "$work/key.pem"
  body='{"model":"tiny","messages":[{"role":"user","content":"Hi"}],"max_tokens":3}'
  out=$(curl -sS --cacert "$work/cert.pem" "https://127.0.0.1:$http_port/v1/chat/completions" -d "$body") ||
    fail "HTTPS request: $out"
  echo "$out" | "$py" -c 'import json,sys; r=json.load(sys.stdin); assert r["usage"]["completion_tokens"]==3, r' ||
    fail "HTTPS answer: $out"
  plain=$(curl -sS "http://127.0.0.1:$http_port/health" 2>&1) && fail "plain HTTP on the TLS port answered: $plain"
  # gRPC is on TLS too: the client trusting the certificate gets through, a plaintext one not.
  "$flotilla" status --server "$grpc" --tls-ca "$work/cert.pem" --timeout-s 20 >"$work/status.txt" 2>&1 ||
    fail "gRPC over TLS: $(cat "$work/status.txt")"
  grep -q "scheduler:" "$work/status.txt" || fail "gRPC over TLS answered: $(cat "$work/status.txt")"
  "$flotilla" status --server "$grpc" --timeout-s 5 >/dev/null 2>&1 && fail "plaintext gRPC on the TLS port answered"
  SSL_CERT_FILE=$work/cert.pem "$py" - "$http_port" <<'PY' || fail "openai over HTTPS"
import sys, openai
c = openai.OpenAI(base_url=f"https://127.0.0.1:{sys.argv[1]}/v1", api_key="x", max_retries=0)
r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
assert r.usage.completion_tokens == 2, r
PY
  stop_server
  ;;
*) echo "unknown case $case"; exit 2 ;;
esac
echo "openai $case: ok"
