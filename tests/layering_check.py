#!/usr/bin/env python3
"""Fails when a #include crosses the project's layering (README, "Layout").

The include graph runs one way:

    tools -> coordinator, worker -> comm, sharding, kernels, tokenizer -> common

`proto` (the generated flotilla.v1 headers, included as "flotilla/v1/...") sits beside common
and may be used by comm and everything above it. coordinator and worker never include each
other. tests/ and bench/ may include anything.

Usage: layering_check.py ROOT      check the tree at ROOT
       layering_check.py --self-test  check that a crossing include is caught
"""
import pathlib
import re
import sys
import tempfile

BOTTOM = {"common"}
MIDDLE = {"comm", "sharding", "kernels", "tokenizer"}
UPPER = {"coordinator", "worker"}
ALLOWED = {
    "common": {"common"},
    "kernels": {"kernels", "common"},
    "sharding": {"sharding", "common"},
    "tokenizer": {"tokenizer", "common"},
    "comm": {"comm", "common", "proto"},
    "worker": {"worker"} | MIDDLE | BOTTOM | {"proto"},
    "coordinator": {"coordinator"} | MIDDLE | BOTTOM | {"proto"},
    "tools": {"tools"} | UPPER | MIDDLE | BOTTOM | {"proto"},
}
PROJECT = set(ALLOWED) | {"proto", "tests", "bench"}
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^">]+)[">]')
SOURCES = ("*.h", "*.hpp", "*.cc", "*.cpp", "*.cu", "*.cuh")


def included_folder(path):
    if path.startswith("flotilla/v1/"):
        return "proto"
    head = path.split("/", 1)[0]
    return head if "/" in path and head in PROJECT else None


def violations(root):
    root = pathlib.Path(root)
    found = []
    for folder, allowed in sorted(ALLOWED.items()):
        base = root / folder
        if not base.is_dir():
            continue
        for pattern in SOURCES:
            for source in sorted(base.rglob(pattern)):
                lines = source.read_text(encoding="utf-8", errors="replace").splitlines()
                for number, line in enumerate(lines, 1):
                    match = INCLUDE.match(line)
                    if not match:
                        continue
                    target = included_folder(match.group(1))
                    if target is not None and target not in allowed:
                        found.append(f"{source.relative_to(root)}:{number}: {folder}/ includes "
                                     f"{match.group(1)} ({target}/); {folder}/ may include "
                                     f"only {', '.join(sorted(allowed))}")
    return found


def self_test():
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for folder, text in {
            "common/a.h": '#include "common/b.h"\n#include "absl/status/status.h"\n',
            "comm/c.h": '#include "common/a.h"\n#include "flotilla/v1/x.pb.h"\n',
            "worker/w.cc": '#include "comm/c.h"\n#include "kernels/ops.h"\n',
            "tools/t.cc": '#include "worker/w.h"\n#include "coordinator/c.h"\n',
        }.items():
            (root / folder).parent.mkdir(parents=True, exist_ok=True)
            (root / folder).write_text(text)
        if violations(root):
            print("self-test: a clean tree was reported:", violations(root))
            return 1
        bad = {
            "worker/bad.cc": '#include "coordinator/engine.h"\n',
            "common/bad.h": '  #  include <sharding/layout.h>\n',
            "tokenizer/bad.cc": '#include "flotilla/v1/flotilla.pb.h"\n',
            "comm/bad.cc": '#include "tools/flags.h"\n',
        }
        for name, text in bad.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        reported = {v.split(":", 1)[0] for v in violations(root)}
        if reported != set(bad):
            print("self-test: expected", sorted(bad), "got", sorted(reported))
            return 1
    print("self-test: crossing includes are caught")
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) != 2:
        print(__doc__)
        return 2
    found = violations(argv[1])
    for line in found:
        print(line)
    print(f"layering: {len(found)} crossing include(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
