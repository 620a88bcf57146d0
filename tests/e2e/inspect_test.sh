#!/usr/bin/env bash
# flotilla inspect catches what it used to pass (issue 13, item 9): a missing tokenizer, and,
# with --scan-values, a NaN weight (written here with Python straight into the safetensors bytes).
#   inspect_test.sh FLOTILLA WORK_DIR
set -uo pipefail
flotilla=$1 work=$2
fail() { echo "FAIL: $*"; exit 1; }
rm -rf "$work" && mkdir -p "$work"
model=$work/tiny
"$flotilla" make-model --preset tiny --out "$model" --seed 3 >/dev/null || fail "make-model"
"$flotilla" inspect "$model" >"$work/ok.txt" 2>&1 || { cat "$work/ok.txt"; fail "a good checkpoint failed"; }
grep -q '^tokenizer        129280 ids' "$work/ok.txt" || { cat "$work/ok.txt"; fail "no tokenizer line"; }
"$flotilla" inspect "$model" --scan-values >"$work/scan.txt" 2>&1 ||
  { cat "$work/scan.txt"; fail "--scan-values failed on finite weights"; }
grep -q '^values           all finite' "$work/scan.txt" || fail "no values line"

# A NaN in the first element of the first BF16 tensor of the first shard.
victim=$(python3 - "$model" <<'PY'
import json, struct, sys, glob
path = sorted(glob.glob(sys.argv[1] + "/*.safetensors"))[0]
with open(path, "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    name, info = next((k, v) for k, v in sorted(header.items())
                      if k != "__metadata__" and v["dtype"] == "BF16")
    f.seek(8 + n + info["data_offsets"][0])
    f.write(struct.pack("<H", 0x7FC0))
print(name)
PY
) || fail "could not write the NaN"
"$flotilla" inspect "$model" >"$work/nan_plain.txt" 2>&1 || fail "inspect without --scan-values read the values"
"$flotilla" inspect "$model" --scan-values >"$work/nan.txt" 2>&1 && fail "a NaN weight passed --scan-values"
grep -q "^  $victim: element 0 is NaN or infinite (BF16" "$work/nan.txt" ||
  { cat "$work/nan.txt"; fail "the NaN tensor $victim is not named"; }

# No tokenizer: inspect fails and says so.
rm "$model/tokenizer.json"
"$flotilla" inspect "$model" >"$work/notok.txt" 2>&1 && fail "inspect passed without tokenizer.json"
grep -q '^tokenizer        PROBLEM: .*tokenizer.json' "$work/notok.txt" ||
  { cat "$work/notok.txt"; fail "the missing tokenizer is not named"; }
echo "inspect: tokenizer checked, NaN weight $victim named by --scan-values"
