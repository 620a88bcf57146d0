#!/usr/bin/env bash
# --help and --version of the programs a user starts (issue 13, item 8): each prints its usage
# to stdout and exits 0 without starting anything; --version names the project version.
#   help_test.sh BUILD_DIR VERSION
set -uo pipefail
build=$1 version=$2
here=$(cd "$(dirname "$0")/../.." && pwd)
export FLOTILLA_BIN=$build
fail() { echo "FAIL: $*"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

check_help() {  # check_help NAME USAGE_PREFIX COMMAND...
  local name=$1 prefix=$2
  shift 2
  for flag in --help -h; do
    timeout 20 "$@" $flag >"$work/out" 2>"$work/err"
    rc=$?
    [ $rc -eq 0 ] || fail "$name $flag exited $rc: $(cat "$work/err")"
    [ -s "$work/err" ] && fail "$name $flag wrote to stderr: $(cat "$work/err")"
    head -n 1 "$work/out" | grep -q "^usage: $prefix" || fail "$name $flag: $(head -n 2 "$work/out")"
    grep -q '^#' "$work/out" && fail "$name $flag printed script source"
  done
  timeout 20 "$@" --version >"$work/out" 2>&1 || fail "$name --version exited $?"
  [ "$(cat "$work/out")" = "$name (Flotilla) $version" ] || fail "$name --version: $(cat "$work/out")"
}
check_help flotilla-coordinator "flotilla-coordinator --model DIR" "$build/coordinator/flotilla-coordinator"
check_help flotilla-worker "mpirun -np W flotilla-worker" "$build/worker/flotilla-worker"
check_help flotilla-serve "launch/flotilla-serve --model DIR" "$here/launch/flotilla-serve"
check_help flotilla "flotilla COMMAND" "$build/tools/flotilla"
# --help after other flags, before anything starts (no MPI, no model directory needed).
"$build/coordinator/flotilla-coordinator" --model /nonexistent --help | grep -q -- '--kv-pool SIZE' ||
  fail "the coordinator's --help does not list --kv-pool"
# Every flag the coordinator parses is in its usage.
for flag in $(grep -o '"--[a-z-]*"' "$here/coordinator/coordinator_main.cc" | tr -d '"' | sort -u); do
  [ "$flag" = --help ] || [ "$flag" = --version ] && continue
  "$build/coordinator/flotilla-coordinator" --help | grep -q -- "$flag" ||
    fail "flotilla-coordinator --help does not document $flag"
done
echo "--help and --version: coordinator, worker, flotilla-serve, flotilla"
