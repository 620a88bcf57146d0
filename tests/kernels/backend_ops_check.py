#!/usr/bin/env python3
"""Fails when an op of kernels/ops.h has no method of the same name on the Backend.

Every op the CPU backend offers must be reachable through kernels/backend.h (design.md §7a: CPU
and CUDA implement the same list), with a Do<Name> that each backend implements: every backend
class in BACKENDS that exists in the tree must declare Do<Name> ... override for every op.

Usage: backend_ops_check.py ROOT       check the tree at ROOT
       backend_ops_check.py --self-test  check that a missing op is caught
"""
import pathlib
import re
import sys
import tempfile

OP = re.compile(r"^void\s+(\w+)\s*\(", re.M)
NOT_OPS = {"SimdPath"}  # backend information, not an op
BACKENDS = ["kernels/cpu/cpu_backend.h", "kernels/cuda/cuda_backend.h"]


def missing(root):
    root = pathlib.Path(root)
    ops = set(OP.findall((root / "kernels/ops.h").read_text())) - NOT_OPS
    backend = (root / "kernels/backend.h").read_text()
    gaps = []
    for op in sorted(ops):
        if not re.search(r"BackendStatus\s+%s\s*\(" % op, backend):
            gaps.append("%s: no Backend::%s" % (op, op))
        if not re.search(r"virtual\s+BackendStatus\s+Do%s\s*\(" % op, backend):
            gaps.append("%s: no virtual Backend::Do%s" % (op, op))
    for header in BACKENDS:
        path = root / header
        if not path.exists():
            continue
        text = path.read_text()
        for op in sorted(ops):
            if not re.search(r"BackendStatus\s+Do%s\s*\([^;]*\)\s*override" % op, text):
                gaps.append("%s: %s does not override Do%s" % (op, header, op))
    if not ops:
        gaps.append("no ops found in kernels/ops.h")
    return gaps


def self_test():
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "kernels").mkdir()
        (root / "kernels/ops.h").write_text(
            "void Alpha(const P& p);\nvoid Beta(int x);\nconst char* SimdPath();\n")
        (root / "kernels/backend.h").write_text(
            "BackendStatus Alpha(Queue& q, const A& a);\n"
            "virtual BackendStatus DoAlpha(Queue& q, const A& a) = 0;\n")
        (root / "kernels/cuda").mkdir()
        (root / "kernels/cuda/cuda_backend.h").write_text(
            "BackendStatus DoAlpha(Queue& q, const A& a) override;\n")
        gaps = missing(root)
        if gaps != ["Beta: no Backend::Beta", "Beta: no virtual Backend::DoBeta",
                    "Beta: kernels/cuda/cuda_backend.h does not override DoBeta"]:
            print("self-test failed: got %r" % gaps)
            return 1
    print("self-test: a missing op, and a backend without it, are reported")
    return 0


def main(argv):
    if len(argv) == 2 and argv[1] == "--self-test":
        return self_test()
    if len(argv) != 2:
        print(__doc__)
        return 2
    gaps = missing(argv[1])
    for g in gaps:
        print(g)
    print("backend ops: %d gap(s)" % len(gaps))
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
