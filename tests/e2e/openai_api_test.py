"""End-to-end checks of the OpenAI-compatible HTTP API, driven by the official `openai` package
against a real server on the tiny model (run by openai_test.sh, which starts the server).

    openai_api_test.py CASE BASE_URL FLOTILLA_BIN MODEL_DIR [API_KEY]

References are independent of the HTTP adapter: `flotilla run` (single-process generation) for
greedy token ids, `flotilla detokenize` for their text, the openai package's own parsing of the
responses and errors. Every loop is bounded.
"""
import asyncio
import json
import math
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import openai

CASE, BASE, FLOTILLA, MODEL_DIR = sys.argv[1:5]
API_KEY = sys.argv[5] if len(sys.argv) > 5 else "unused"
MODEL = MODEL_DIR.rstrip("/").split("/")[-1]
ROOT = BASE[: -len("/v1")]
client = openai.OpenAI(base_url=BASE, api_key=API_KEY, max_retries=0, timeout=120)
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)


def raw(method, path, body=None, headers=None):
    """(status, headers, body bytes) of one plain HTTP call."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(ROOT + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metric(name, labels=""):
    """Sum of a metric's samples whose labels contain `labels`, from GET /metrics."""
    status, _, body = raw("GET", "/metrics", headers={"Authorization": "Bearer " + API_KEY})
    assert status == 200, status
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if labels in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def reference_ids(prompt_ids, n):
    out = subprocess.run([FLOTILLA, "run", "--model", MODEL_DIR, "--prompt-ids",
                          ",".join(map(str, prompt_ids)), "--max-new-tokens", str(n), "--greedy",
                          "--ignore-eos"], capture_output=True, text=True, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("generated:")][0]
    return [int(t) for t in line.split(":", 1)[1].split()]


def reference_logprobs(prompt_ids, n, top, experts=0):
    """Per generated token: (chosen id, its log softmax, the `top` largest log softmax values),
    in double from the float32 logits `flotilla run --dump-logits` writes."""
    path = MODEL_DIR.rstrip("/") + "_logits.npy"
    out = subprocess.run([FLOTILLA, "run", "--model", MODEL_DIR, "--prompt-ids",
                          ",".join(map(str, prompt_ids)), "--max-new-tokens", str(n), "--greedy",
                          "--ignore-eos", "--dump-logits", path] +
                         (["--experts-per-token", str(experts)] if experts else []),
                         capture_output=True, text=True, check=True).stdout
    chosen = [int(t) for t in [l for l in out.splitlines() if l.startswith("generated:")][0]
              .split(":", 1)[1].split()]
    data = open(path, "rb").read()
    assert data[:6] == b"\x93NUMPY", "not a .npy file"
    header_len = struct.unpack("<H", data[8:10])[0]
    header = data[10:10 + header_len].decode()
    assert "'<f4'" in header and "False" in header, header
    rows, vocab = [int(x) for x in header.split("(")[1].split(")")[0].split(",") if x.strip()]
    values = struct.unpack(f"<{rows * vocab}f", data[10 + header_len:10 + header_len + 4 * rows * vocab])
    result = []
    for r in range(rows):
        row = values[r * vocab:(r + 1) * vocab]
        m = max(row)
        log_z = m + math.log(sum(math.exp(v - m) for v in row))
        result.append((chosen[r], row[chosen[r]] - log_z,
                       sorted((v - log_z for v in row), reverse=True)[:top]))
    return result


def detokenize(ids):
    out = subprocess.run([FLOTILLA, "detokenize", "--model", MODEL_DIR, "--ids",
                          ",".join(map(str, ids))], capture_output=True, text=True, check=True)
    return out.stdout  # the text exactly, no newline added


def expect_error(cls, status, fn, param=None, what=""):
    try:
        fn()
    except cls as e:
        check(e.status_code == status, f"{what}: status {e.status_code}, want {status}")
        body = e.body if isinstance(e.body, dict) else {}
        check("message" in body and body.get("message"), f"{what}: error has a message: {e.body}")
        if param is not None:
            check(body.get("param") == param, f"{what}: param {body.get('param')!r}, want {param!r}")
        return e
    except Exception as e:  # noqa: BLE001
        check(False, f"{what}: raised {type(e).__name__} {e}, want {cls.__name__}")
        return None
    check(False, f"{what}: no error")
    return None


PROMPT_IDS = [0, 128803, 9906, 11, 1917, 128804]  # BOS, <｜User｜>, a few words, <｜Assistant｜>


def case_api():
    # Models and health.
    models = client.models.list()
    check([m.id for m in models.data] == [MODEL], f"models: {[m.id for m in models.data]}")
    status, _, body = raw("GET", "/health")
    check(status == 200 and json.loads(body)["status"] == "ok", f"health: {status} {body}")

    # Completions with token ids, greedy: the text of `flotilla run`'s ids; usage counts them.
    want_ids = reference_ids(PROMPT_IDS, 12)
    want_text = detokenize(want_ids)
    c = client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=12, temperature=0,
                                  extra_body={"ignore_eos": True})
    check(c.choices[0].text == want_text, f"completions greedy: {c.choices[0].text!r} != {want_text!r}")
    check(c.choices[0].finish_reason == "length", f"finish_reason {c.choices[0].finish_reason}")
    check(c.usage.prompt_tokens == len(PROMPT_IDS) and c.usage.completion_tokens == 12 and
          c.usage.total_tokens == len(PROMPT_IDS) + 12, f"completions usage {c.usage}")
    # Streamed: the same text in pieces, ending with finish_reason; [DONE] ends the stream
    # (the package stops on it).
    pieces, finish = [], None
    for chunk in client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=12,
                                           temperature=0, stream=True,
                                           extra_body={"ignore_eos": True}):
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    check("".join(pieces) == want_text, f"streamed completions: {''.join(pieces)!r}")
    check(finish == "length", f"streamed completions finish {finish}")
    # echo: the prompt text leads.
    e = client.completions.create(model=MODEL, prompt="Hello world", max_tokens=3, temperature=0,
                                  echo=True)
    check(e.choices[0].text.startswith("Hello world") and len(e.choices[0].text) > 11,
          f"echo: {e.choices[0].text!r}")

    # Chat, greedy: the rendered prompt's ids through `flotilla run` give the same text.
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    work = MODEL_DIR.rstrip("/") + "_chat"
    with open(work + ".json", "w") as f:
        json.dump(messages, f)
    prompt = subprocess.run([FLOTILLA, "encode-chat", "--messages", work + ".json"],
                            capture_output=True, text=True, check=True).stdout
    with open(work + ".txt", "w") as f:
        f.write(prompt)
    ids = json.loads(subprocess.run([FLOTILLA, "tokenize", "--model", MODEL_DIR, "--text-file",
                                     work + ".txt"], capture_output=True, text=True,
                                    check=True).stdout)
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                          temperature=0, extra_body={"ignore_eos": True})
    msg = chat.choices[0].message
    check(msg.role == "assistant" and isinstance(msg.content, str) and msg.content,
          f"chat message {msg}")
    check(chat.usage.completion_tokens == 10, f"chat usage {chat.usage}")
    check(chat.usage.completion_tokens_details.reasoning_tokens == 0, "chat mode: no reasoning")
    check(getattr(msg, "reasoning_content", None) in (None, ""), "chat mode: no reasoning_content")
    check(chat.usage.prompt_tokens == len(ids), f"chat prompt tokens {chat.usage.prompt_tokens} != {len(ids)}")
    check(msg.content == detokenize(reference_ids(ids, 10)), f"chat greedy {msg.content!r}")
    # Streamed chat with usage: same text; the usage chunk comes last with no choices.
    text, finish, usage, roles = "", None, None, 0
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}):
        if chunk.usage is not None:
            usage = chunk.usage
            check(chunk.choices == [], "usage chunk has no choices")
            continue
        d = chunk.choices[0].delta
        roles += d.role == "assistant"
        text += d.content or ""
        finish = chunk.choices[0].finish_reason or finish
    check(text == msg.content, f"streamed chat {text!r} != {msg.content!r}")
    check(roles == 1 and finish == "length", f"streamed chat roles {roles} finish {finish}")
    check(usage is not None and usage.completion_tokens == 10 and
          usage.prompt_tokens == chat.usage.prompt_tokens, f"streamed usage {usage}")

    # Thinking on request: reasoning_content is a field of the message (a string).
    t = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, seed=3,
                                       reasoning_effort="high")
    check(isinstance(getattr(t.choices[0].message, "reasoning_content", None), str),
          f"thinking: reasoning_content {t.choices[0].message}")

    # Seeds: the same seed gives the same text; n choices sample seed, seed+1, ...
    a = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, seed=42,
                                       temperature=1.0, extra_body={"ignore_eos": True})
    b = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, seed=42,
                                       temperature=1.0, extra_body={"ignore_eos": True})
    check(a.choices[0].message.content == b.choices[0].message.content, "seed reproducibility")
    many = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, seed=42,
                                          temperature=1.0, n=3, extra_body={"ignore_eos": True})
    check([ch.index for ch in many.choices] == [0, 1, 2], f"n=3 indices {[ch.index for ch in many.choices]}")
    check(many.choices[0].message.content == a.choices[0].message.content, "n: choice 0 = seed")
    s43 = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, seed=43,
                                         temperature=1.0, extra_body={"ignore_eos": True})
    check(many.choices[1].message.content == s43.choices[0].message.content, "n: choice 1 = seed+1")
    check(many.usage.completion_tokens == 36, f"n usage {many.usage}")

    # Stop strings: cut the greedy text at a chosen substring.
    full = client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=12,
                                     temperature=0, extra_body={"ignore_eos": True}).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    if stop.strip():
        cut = client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=12,
                                        temperature=0, stop=[stop],
                                        extra_body={"ignore_eos": True}).choices[0]
        check(cut.text == full[: full.index(stop)], f"stop: {cut.text!r} vs {full!r} / {stop!r}")
        check(cut.finish_reason == "stop", f"stop finish {cut.finish_reason}")

    # Log probabilities: the log softmax of `flotilla run`'s logits, token by token.
    ref = reference_logprobs(PROMPT_IDS, 6, 5)
    lp = client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=6, temperature=0,
                                   logprobs=5, extra_body={"ignore_eos": True}).choices[0]
    got = lp.logprobs
    check(len(got.token_logprobs) == 6 and len(got.top_logprobs) == 6, f"logprobs: {got}")
    check("".join(got.tokens) == lp.text, "logprobs tokens spell the text")
    for i, (tok, want, want_top) in enumerate(ref[:len(got.token_logprobs)]):
        check(abs(got.token_logprobs[i] - want) < 1e-4,
              f"token {i}: logprob {got.token_logprobs[i]} vs reference {want}")
        top_values = sorted(got.top_logprobs[i].values(), reverse=True)
        # Keyed by token text, so two tokens with the same text share an entry.
        check(1 <= len(top_values) <= 5 and abs(top_values[0] - want_top[0]) < 1e-4 and
              all(any(abs(a - b) < 1e-4 for b in want_top) for a in top_values),
              f"token {i}: top {top_values} vs reference {want_top}")
    lp_chunks = []
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8,
                                                temperature=0, logprobs=True, top_logprobs=3,
                                                stream=True, extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            lp_chunks.extend(chunk.choices[0].logprobs.content or [])
    check(len(lp_chunks) == 8, f"streamed chat logprobs: {len(lp_chunks)} entries for 8 tokens")
    for e in lp_chunks:
        tops = [t.logprob for t in e.top_logprobs]
        check(len(tops) == 3 and tops == sorted(tops, reverse=True) and
              abs(e.logprob - tops[0]) < 1e-6, f"greedy token is the most likely: {e}")

    # Experts per token per request: concurrent requests with K = 2, 4 and the checkpoint's 6
    # share batches; each matches `flotilla run --experts-per-token K`, tokens and logprobs.
    import concurrent.futures

    def with_k(k):
        body = {"ignore_eos": True}
        if k:
            body["experts_per_token"] = k
        return client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=6,
                                         temperature=0, logprobs=0, extra_body=body).choices[0]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(with_k, [2, 4, 0]))
    for k, ans in zip([2, 4, 0], answers):
        want = reference_logprobs(PROMPT_IDS, 6, 1, experts=k)
        got_lp = ans.logprobs.token_logprobs
        check(ans.text == detokenize([t for t, _, _ in want]), f"K={k}: text {ans.text!r}")
        check(len(got_lp) == 6 and all(abs(a - b) < 1e-5 for a, (_, b, _) in zip(got_lp, want)),
              f"K={k}: logprobs {got_lp} vs {[b for _, b, _ in want]}")
    check(answers[0].logprobs.token_logprobs != answers[2].logprobs.token_logprobs,
          "K changes the output")
    expect_error(openai.BadRequestError, 400, lambda: client.completions.create(
        model=MODEL, prompt="x", extra_body={"experts_per_token": 7}), "experts_per_token",
        "experts_per_token 7")

    # Errors, in OpenAI's shape, naming the field.
    expect_error(openai.BadRequestError, 400, lambda: client.chat.completions.create(
        model=MODEL, messages=messages, temperature=5), "temperature", "temperature 5")
    expect_error(openai.BadRequestError, 400, lambda: client.chat.completions.create(
        model=MODEL, messages=messages, n=9), "n", "n 9")
    expect_error(openai.BadRequestError, 400, lambda: client.chat.completions.create(
        model=MODEL, messages=[]), "messages", "empty messages")
    expect_error(openai.BadRequestError, 400, lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "wizard", "content": "x"}]), None, "bad role")
    expect_error(openai.BadRequestError, 400, lambda: client.chat.completions.create(
        model=MODEL, messages=messages, logprobs=True, top_logprobs=21), "top_logprobs",
        "top_logprobs 21")
    expect_error(openai.BadRequestError, 400, lambda: client.completions.create(
        model=MODEL, prompt="x", logprobs=2, echo=True), "logprobs", "logprobs with echo")
    expect_error(openai.BadRequestError, 400, lambda: client.chat.completions.create(
        model=MODEL, messages=messages, tool_choice="required"), "tool_choice", "tool_choice w/o tools")
    expect_error(openai.NotFoundError, 404, lambda: client.chat.completions.create(
        model="no-such-model", messages=messages), None, "unknown model")
    expect_error(openai.BadRequestError, 400, lambda: client.completions.create(
        model=MODEL, prompt=[200000]), None, "token id beyond the vocabulary")
    long_error = expect_error(openai.BadRequestError, 400, lambda: client.completions.create(
        model=MODEL, prompt=PROMPT_IDS, max_tokens=(1 << 20) + 1), None, "past the context")
    if long_error is not None:
        check(long_error.body.get("code") == "context_length_exceeded",
              f"context error code {long_error.body}")
    status, _, body = raw("GET", "/v1/nothing")
    check(status == 404 and "error" in json.loads(body), f"unknown path {status}")
    status, _, body = raw("POST", "/v1/chat/completions", b"{not json",
                          {"Content-Type": "application/json"})
    check(status == 400 and json.loads(body)["error"]["param"] == "body", f"bad JSON {status} {body}")

    # Tools are accepted and rendered; the random model's output decides what comes back.
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string"}}}}}]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=4)
    check(r.choices[0].finish_reason in ("stop", "length", "tool_calls"), "tools accepted")
    # A named tool_choice makes the prompt open the call, so the output is the call's body.
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=4,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    check(r.choices[0].message.content is None or "DSML" not in r.choices[0].message.content,
          "forced call: no DSML in content")

    # 64 concurrent greedy streams: each equals the non-streamed greedy answer.
    async def streams():
        ac = openai.AsyncOpenAI(base_url=BASE, api_key=API_KEY, max_retries=0, timeout=300)

        async def one():
            out = ""
            async for ch in await ac.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=10, temperature=0, stream=True,
                    extra_body={"ignore_eos": True}):
                if ch.choices:
                    out += ch.choices[0].delta.content or ""
            return out
        return await asyncio.gather(*[one() for _ in range(64)])
    outs = asyncio.run(streams())
    check(all(o == msg.content for o in outs),
          f"64 streams: {sum(o == msg.content for o in outs)} of 64 equal the greedy answer")

    # Metrics: Prometheus text with the counters this run produced.
    check(metric("flotilla_requests_total", 'endpoint="chat_completions",outcome="ok"') >= 64,
          "requests_total counts the chat requests")
    check(metric("flotilla_requests_total", 'outcome="client_error"') >= 8, "client errors counted")
    check(metric("flotilla_generated_tokens_total") >= 64 * 10, "generated tokens counted")
    check(metric("flotilla_time_to_first_token_seconds_count") >= 64, "TTFT histogram")
    check(metric("flotilla_step_seconds_count") > 0, "step histogram")

    # A client that goes away mid-stream: its request is cancelled and its KV pages return.
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=100000,
                                            stream=True, extra_body={"ignore_eos": True})
    got = 0
    for _ in stream:
        got += 1
        if got == 5:
            break
    used_while_streaming = metric("flotilla_kv_pages_used")
    check(used_while_streaming > 0, f"pages used while streaming: {used_while_streaming}")
    stream.close()
    for _ in range(300):
        if metric("flotilla_kv_pages_used") == 0 and metric("flotilla_running_sequences") == 0:
            break
        time.sleep(0.1)
    check(metric("flotilla_kv_pages_used") == 0, "pages back to zero after the disconnect")
    check(metric("flotilla_requests_total", 'outcome="cancelled"') >= 1, "cancel counted")


def case_auth():
    status, _, _ = raw("GET", "/health")
    check(status == 200, "health needs no key")
    bad = openai.OpenAI(base_url=BASE, api_key="wrong-" + API_KEY, max_retries=0)
    e = expect_error(openai.AuthenticationError, 401, lambda: bad.models.list(), None, "wrong key")
    status, headers, body = raw("POST", "/v1/completions", {"model": MODEL, "prompt": "x"})
    check(status == 401 and json.loads(body)["error"]["type"] == "authentication_error",
          f"no key: {status} {body}")
    r = client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    check(r.usage.completion_tokens >= 1, "the right key works")
    # gRPC needs the key too: the CLI without it is refused.
    out = subprocess.run([FLOTILLA, "status", "--server", sys.argv[6], "--timeout-s", "10"],
                         capture_output=True, text=True)
    said = out.stdout + out.stderr
    check(out.returncode != 0 and "authorization: missing" in said, f"gRPC without key: {said}")
    out = subprocess.run([FLOTILLA, "status", "--server", sys.argv[6], "--timeout-s", "10",
                          "--api-key", "wrong"], capture_output=True, text=True)
    check(out.returncode != 0 and "not valid" in out.stdout + out.stderr, "gRPC, wrong key")
    out = subprocess.run([FLOTILLA, "generate", "--server", sys.argv[6], "--timeout-s", "60",
                          "--api-key", API_KEY, "--prompt", "Hi", "--max-new-tokens", "3"],
                         capture_output=True, text=True)
    check(out.returncode == 0 and "completion_tokens=3" in out.stdout + out.stderr,
          f"gRPC with the key: {out.stdout} {out.stderr}")
    check(metric("flotilla_requests_total", 'endpoint="grpc_generate",outcome="ok"') == 1,
          "the gRPC stream is counted")


def case_admission():
    # --max-running 1 (2 DP groups) and --max-queued 1: two running streams, one queued, the
    # next refused with 429 and Retry-After.
    msgs = [{"role": "user", "content": "go"}]
    held = []
    for _ in range(2):
        s = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=100000,
                                           stream=True, extra_body={"ignore_eos": True})
        next(iter(s))  # running: its first chunk came
        held.append(s)
    queued = subprocess.Popen(["curl", "-sN", "-o", "/dev/null", ROOT + "/v1/completions", "-d",
                               json.dumps({"model": MODEL, "prompt": "q", "max_tokens": 4})])
    for _ in range(300):
        if metric("flotilla_queue_depth") == 1:
            break
        time.sleep(0.1)
    check(metric("flotilla_queue_depth") == 1, "one request queued")
    status, headers, body = raw("POST", "/v1/completions", {"model": MODEL, "prompt": "x",
                                                            "max_tokens": 2})
    check(status == 429, f"queue full: status {status} {body}")
    check(headers.get("Retry-After") == "1", f"Retry-After: {headers}")
    check(json.loads(body)["error"]["type"] == "rate_limit_error", f"429 body {body}")
    # A request that could never fit a DP group's KV pool is the client's error, not a retry.
    status, headers, body = raw("POST", "/v1/completions", {"model": MODEL, "prompt": "x",
                                                            "max_tokens": 1000000})
    check(status == 400 and json.loads(body)["error"]["code"] == "context_length_exceeded" and
          "Retry-After" not in headers, f"never fits: {status} {headers} {body}")
    for s in held:
        s.close()
    queued.wait(timeout=120)
    check(queued.returncode == 0, "the queued request ran once the streams went away")
    for _ in range(300):
        if metric("flotilla_kv_pages_used") == 0:
            break
        time.sleep(0.1)
    check(metric("flotilla_kv_pages_used") == 0, "pages back to zero")


{"api": case_api, "auth": case_auth, "admission": case_admission}[CASE]()
if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print(f"openai {CASE}: all checks passed")
