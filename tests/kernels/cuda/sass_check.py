#!/usr/bin/env python3
"""Checks the machine code of the CUDA kernels without a GPU (CTest, label cpu).

Disassembles every object given with cuobjdump (PyPI's nvidia-cuda-cuobjdump, with the
nvdisasm it runs from nvidia-cuda-nvdisasm, installed into the build's virtualenv when missing) and, for each architecture the objects were built
for, checks each kernel against RULES: the tensor-core instructions it is meant to use are
present; against FORBIDDEN: the kernels bitwise with the CPU through common/hd_math.h use no
approximate transcendental; and no kernel touches local memory (LDL/STL: register spills or stack
arrays).

Usage: sass_check.py VENV ARCHS OBJECT...     (ARCHS: e.g. "90a,100a")
"""
import os
import pathlib
import re
import subprocess
import sys

# kernel-name pattern -> instruction patterns that must each appear in its SASS, and why
# (optionally: on which architectures).
_EXPERT_GEMM = [
    (r"\bHMMA\.16816\.F32\b", "tensor-core MMA with f32 accumulation"),
    (r"\bF2FP\.F16\.E4M3\.UNPACK_B\b", "E4M3 operands unpacked in registers"),
]
# The FP8 dense GEMMs are cuBLASLt's (kernels/cuda/fp8_gemm.cu): no SASS of ours to check beyond
# the scale conversions, which fall under the local-memory rule like every kernel.
RULES = {
    r"ExpertGateUpKernel": _EXPERT_GEMM,
    r"SparseAttentionChunkKernel": [
        (r"\bHMMA\.16816\.F32\.BF16\b", "bf16 tensor-core MMA (q·k and p·v) with f32 accumulation"),
    ],
    # Hopper's FP8 warpgroup MMA (wgmma .e4m3 disassembles as QGMMA), on sm_90a: the only target
    # with wgmma (elsewhere the kernel is a trap the launch never reaches).
    r"GroupedGemmFp8Fp4WgmmaKernel": [
        (r"\bQGMMA\.64x128x32\.F32\.E4M3\.E4M3\b", "FP8 wgmma with f32 accumulation", {"sm_90a"}),
    ],
    r"GroupedGemmFp8Fp4Kernel": [
        (r"\bHMMA\.16816\.F32\b", "tensor-core MMA with f32 accumulation"),
        (r"\bF2FP\.F16\.E4M3\.UNPACK_B\b", "E4M3 operands unpacked in registers"),
    ],
}
# kernel-name pattern -> instruction patterns that must not appear, and why. The kernels that
# give the CPU backend's bits through common/hd_math.h must not reach the hardware's approximate
# transcendentals (MUFU.EX2 / SIN / COS / LG2: what expf, __expf, sinf and logf compile to);
# MUFU.RCP / RSQ start the correctly rounded division and square root and are allowed.
_APPROXIMATE = [(r"\bMUFU\.(EX2|SIN|COS|LG2)\b", "approximate transcendental (hd_math bits expected)")]
FORBIDDEN = {
    r"RopeKernel": _APPROXIMATE,
    r"RouteKernel": _APPROXIMATE,
    r"SwiGluKernel": _APPROXIMATE,
    r"HcPreKernel": _APPROXIMATE,
    r"HcHeadKernel": _APPROXIMATE,
    r"CompressPoolKernel": _APPROXIMATE,
    r"CompressorUpdateKernel": _APPROXIMATE,
    r"SampleKernel": _APPROXIMATE,
    r"ExpertGateUpKernel": _APPROXIMATE,
}
LOCAL_MEMORY = re.compile(r"\b(LDL|STL)(\.[A-Z0-9.]+)?\b")


def tools(venv):
    """Paths of cuobjdump and nvdisasm in `venv`, installing them there when missing."""
    venv = pathlib.Path(venv)

    def find(name):
        return sorted(venv.glob(f"lib/python3*/site-packages/nvidia/*/bin/{name}"))

    if not find("cuobjdump") or not find("nvdisasm"):
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "nvidia-cuda-cuobjdump",
                        "nvidia-cuda-nvdisasm"], check=True)
    if not find("cuobjdump") or not find("nvdisasm"):
        sys.exit(f"no cuobjdump / nvdisasm under {venv}")
    return str(find("cuobjdump")[-1]), str(find("nvdisasm")[-1])


def kernels_by_arch(sass):
    """{arch: {kernel name: [instruction lines]}} from `cuobjdump -sass` output."""
    out, arch, name = {}, None, None
    for line in sass.splitlines():
        m = re.match(r"\s*arch = (sm_\w+)", line)
        if m:
            arch, name = m.group(1), None
            out.setdefault(arch, {})
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m and arch:
            name = m.group(1)
            out[arch][name] = []
            continue
        if name and re.match(r"\s*/\*[0-9a-f]{4,}\*/", line):
            out[arch][name].append(line)
    return out


def main(argv):
    if len(argv) < 4:
        print(__doc__)
        return 2
    tool, nvdisasm = tools(argv[1])
    env = dict(os.environ, NVDISASM_PATH=str(pathlib.Path(nvdisasm).parent))
    archs = {"sm_" + a for a in argv[2].split(",") if a}
    failures, checked = [], 0
    for obj in argv[3:]:
        result = subprocess.run([tool, "-sass", obj], capture_output=True, text=True, env=env)
        if (result.returncode != 0 and obj.endswith(".cc.o")
                and "does not contain device code" in result.stderr):
            print(f"{obj}: host code only (no kernels)")
            continue
        if result.returncode != 0:
            failures.append(f"{obj}: cuobjdump failed: {result.stderr.strip()}")
            continue
        found = kernels_by_arch(result.stdout)
        if set(found) != archs:
            failures.append(f"{obj}: built for {sorted(found)}, expected {sorted(archs)}")
        for arch, kernels in sorted(found.items()):
            for name, lines in sorted(kernels.items()):
                checked += 1
                text = "\n".join(lines)
                local = [l.strip() for l in lines if LOCAL_MEMORY.search(l)]
                if local:
                    failures.append(f"{arch} {name}: local memory ({len(local)}): {local[0]}")
                for pattern, rules in RULES.items():
                    if re.search(pattern, name):
                        for want, why, *only in rules:
                            if only and arch not in only[0]:
                                continue
                            if not re.search(want, text):
                                failures.append(f"{arch} {name}: no {want} ({why})")
                for pattern, rules in FORBIDDEN.items():
                    if re.search(pattern, name):
                        for bad, why in rules:
                            hit = re.search(bad, text)
                            if hit:
                                failures.append(f"{arch} {name}: has {hit.group(0)} ({why})")
                print(f"{arch} {name}: {len(lines)} instructions, "
                      f"{len(re.findall(r'MMA', text))} MMA, no local memory" if not local else
                      f"{arch} {name}: {len(lines)} instructions")
    for f in failures:
        print("FAIL:", f)
    print(f"failures: local-memory={sum('local memory' in f for f in failures)} "
          f"missing-instruction={sum(': no ' in f for f in failures)} "
          f"forbidden-instruction={sum(': has ' in f for f in failures)}")
    if checked == 0:
        print("FAIL: no kernel was found in", argv[3:])
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
