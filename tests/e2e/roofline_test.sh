#!/usr/bin/env bash
# flotilla roofline: refusals name the flag; the printed step is the slower of memory and compute
# plus the exchange, the bound is tokens per step over it; and one token through V4-Flash on one
# rank does 2 FLOPs per active parameter (spec §1.4: 13.27 B).
#   roofline_test.sh FLOTILLA CONFIGS_DIR
set -uo pipefail
flotilla=$1 configs=$2
fail() { echo "FAIL: $*"; exit 1; }
flash=$configs/DeepSeek-V4-Flash/config.json

expect_error() {  # expect_error TEXT ARGS...
  local text=$1
  shift
  out=$("$flotilla" roofline "$@" 2>&1) && fail "roofline $* succeeded"
  grep -qF -- "$text" <<<"$out" || fail "roofline $*: expected '$text', got: $out"
}
expect_error "--config" --nodes 1 --gpus-per-node 8
expect_error "--batch and --chunk must be at least 1" --config "$flash" --nodes 1 --gpus-per-node 8 --batch 0
expect_error "exceed max_position_embeddings 1048576" --config "$flash" --nodes 1 --gpus-per-node 8 --context 1048576
expect_error "--bandwidth, --peak and --alltoall must be positive" --config "$flash" --nodes 1 --gpus-per-node 8 --peak 0
expect_error "--nodes, --gpus-per-node and --tp must be at least 1" --config "$flash" --nodes 0 --gpus-per-node 8

for args in "--nodes 1 --gpus-per-node 8 --batch 64 --context 8192" \
            "--nodes 2 --gpus-per-node 8 --tp 2 --batch 32 --context 65536" \
            "--nodes 1 --gpus-per-node 1 --chunk 4096"; do
  # shellcheck disable=SC2086
  out=$("$flotilla" roofline --config "$flash" $args) || fail "roofline $args: $out"
  python3 - "$out" "$args" <<'PY' || fail "roofline $args printed inconsistent figures: $out"
import re, sys
out, args = sys.argv[1], sys.argv[2].split()
get = lambda name: float(re.search(name + r"\s+([0-9.]+) ms", out).group(1))
mem, comp, step = get("memory time"), get("compute time"), get("step")
ex = float(re.search(r"2 calls each: ([0-9.]+) ms", out).group(1))
assert abs(step - (max(mem, comp) + ex)) <= 0.002, (step, mem, comp, ex)
opt = lambda flag, d: int(args[args.index(flag) + 1]) if flag in args else d
tokens = opt("--batch", 1) * opt("--chunk", 1) / opt("--tp", 1)
bound = float(re.search(r"bound\s+([0-9]+) tokens/s", out).group(1))
assert abs(bound - tokens / (step / 1e3)) <= max(1.0, 0.001 * bound), (bound, tokens, step)
PY
done

out=$("$flotilla" roofline --config "$flash" --nodes 1 --gpus-per-node 1) || fail "$out"
python3 - "$out" <<'PY' || fail "one V4-Flash token is not 2 x 13.27 GFLOP of weights: $out"
import re, sys
m = re.search(r"FLOPs\s+dense ([0-9.]+) G, experts ([0-9.]+) G", sys.argv[1])
total = float(m.group(1)) + float(m.group(2))
assert abs(total - 2 * 13.27) <= 0.02, total
PY
echo "roofline: refusals, consistent figures, 13.27 B active parameters"
