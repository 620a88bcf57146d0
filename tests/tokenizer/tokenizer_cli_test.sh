#!/usr/bin/env bash
# The flotilla tokenizer tools against the official chat fixtures and their ids.
# usage: tokenizer_cli_test.sh FLOTILLA_BINARY REPO_ROOT
set -u
flotilla=$1
root=$2
data=$root/tests/data/chat-encoding
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
passes=0

check() {  # check NAME COMMAND...: the command must succeed
  local name=$1
  shift
  if "$@"; then
    passes=$((passes + 1))
  else
    echo "FAIL: $name"
    failures=$((failures + 1))
  fi
}

refused() {  # refused NAME EXPECTED_STDERR_SUBSTRING COMMAND...: must fail with that message
  local name=$1 want=$2
  shift 2
  if "$@" >"$work/out" 2>"$work/err"; then
    echo "FAIL: $name: succeeded"
    failures=$((failures + 1))
  elif ! grep -qF -- "$want" "$work/err"; then
    echo "FAIL: $name: stderr was: $(cat "$work/err")"
    failures=$((failures + 1))
  else
    passes=$((passes + 1))
  fi
}

model=$work/model
mkdir -p "$model"
cp "$root/data/tokenizer/tokenizer.json" "$root/data/tokenizer/tokenizer_config.json" "$model/"
echo '{"vocab_size": 129280}' >"$model/config.json"

for n in 1 2 3 4; do
  mode=--thinking
  [ "$n" = 4 ] && mode=
  "$flotilla" encode-chat --messages "$data/test_input_$n.json" $mode >"$work/prompt_$n.txt"
  check "encode-chat fixture $n" cmp -s "$work/prompt_$n.txt" "$data/test_output_$n.txt"

  want_ids=$(sed -n 's/.*"ids": \(\[[^]]*\]\).*/\1/p' "$data/test_output_$n.ids.json")
  got_ids=$("$flotilla" tokenize --model "$model" --text-file "$data/test_output_$n.txt")
  check "tokenize fixture $n" test "$got_ids" = "$want_ids"

  id_list=$(echo "$want_ids" | tr -d '[] ')
  "$flotilla" detokenize --model "$model" --ids "$id_list" >"$work/text_$n.txt"
  check "detokenize fixture $n" cmp -s "$work/text_$n.txt" "$data/test_output_$n.txt"
done

check "tokenize adds no BOS" test "$("$flotilla" tokenize --model "$model" --text 'hello world')" = "[33310, 2058]"

completion=$(printf 'Need time.</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_time">\n<｜DSML｜parameter name="tz" string="true">UTC</｜DSML｜parameter>\n<｜DSML｜parameter name="n" string="false">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>')
"$flotilla" parse-completion --thinking --text "$completion" >"$work/parsed.json"
check "parse-completion arguments" grep -qF '"arguments": "{\"tz\": \"UTC\", \"n\": 3}"' "$work/parsed.json"
check "parse-completion reasoning" grep -qF '"reasoning_content": "Need time."' "$work/parsed.json"

refused "id at vocab_size" "outside the model's vocabulary (vocab_size 129280)" \
  "$flotilla" detokenize --model "$model" --ids 1,129280
echo '{"vocab_size": 1000}' >"$model/config.json"
refused "id above a small config vocab" "vocab_size 1000" \
  "$flotilla" detokenize --model "$model" --ids 5000
refused "bad id list" "is not a token id" "$flotilla" detokenize --model "$model" --ids 1,x
echo '[{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]' >"$work/bad.json"
refused "unknown role" "messages[1].role: unknown role 'robot'" \
  "$flotilla" encode-chat --messages "$work/bad.json"
refused "missing EOS" "Invalid format: missing EOS token" \
  "$flotilla" parse-completion --text "no eos"
refused "no tokenizer.json" "cannot open" "$flotilla" tokenize --model "$work/none" --text a

echo "$passes passed, $failures failed"
[ "$failures" = 0 ]
