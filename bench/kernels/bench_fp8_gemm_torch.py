#!/usr/bin/env python3
"""torch._scaled_mm at the FP8 GEMM benchmark's V4-Flash shapes (bench_fp8_gemm.cu), for the
comparison column of that benchmark: prints a table and writes "n k m tflops" lines to OUT.

Scaling: DeepSeek's blockwise scales (1 x 128 activations, 128 x 128 weights, f32) where the
installed PyTorch accepts them on this device; otherwise row-wise scales (one per row and column,
the nearest cheaper mode), and the table says which was timed.

Usage: bench_fp8_gemm_torch.py OUT
"""
import sys

SHAPES = [("wq_a", 1024, 4096), ("wq_b", 32768, 1024), ("wkv", 512, 4096),
          ("wo_b", 4096, 8192), ("shared w1", 2048, 4096), ("shared w2", 4096, 2048)]
ROWS = [1, 32, 4096]


def main(out_path):
    try:
        import torch
    except ImportError:
        print("bench_fp8_gemm_torch: no PyTorch here; the comparison column stays empty")
        open(out_path, "w").close()
        return 0
    if not torch.cuda.is_available():
        print("bench_fp8_gemm_torch: no CUDA device for PyTorch")
        open(out_path, "w").close()
        return 0
    dev = torch.device("cuda")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    lines = []
    for name, n, k in SHAPES:
        w = (torch.randn(n, k, device=dev) * 0.5).to(torch.float8_e4m3fn)
        sw = torch.rand((n + 127) // 128, k // 128, device=dev) + 0.5
        for m in ROWS:
            a = (torch.randn(m, k, device=dev) * 0.5).to(torch.float8_e4m3fn)
            sa = torch.rand(m, k // 128, device=dev) + 0.5
            modes = [("blockwise", sa.t().contiguous().t(), sw.t()),
                     ("rowwise", torch.ones(m, 1, device=dev), torch.ones(1, n, device=dev))]
            timed = None
            for mode, scale_a, scale_b in modes:
                try:
                    fn = lambda: torch._scaled_mm(a, w.t(), scale_a=scale_a, scale_b=scale_b,
                                                  out_dtype=torch.bfloat16)
                    fn()
                    torch.cuda.synchronize()
                except (RuntimeError, ValueError, TypeError) as e:
                    if mode == "blockwise":
                        continue
                    print(f"{name} m={m}: torch._scaled_mm failed: {e}")
                    break
                start = torch.cuda.Event(enable_timing=True)
                stop = torch.cuda.Event(enable_timing=True)
                start.record()
                reps = 20
                for _ in range(reps):
                    fn()
                stop.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(stop) / reps
                timed = (mode, ms)
                break
            if timed is None:
                continue
            mode, ms = timed
            tflops = 2.0 * m * n * k / (ms * 1e-3) / 1e12
            print(f"{name:10s} n={n:6d} k={k:5d} m={m:5d} {ms:8.3f} ms {tflops:8.1f} TFLOP/s ({mode})")
            lines.append(f"{n} {k} {m} {tflops:.3f}\n")
    with open(out_path, "w") as f:
        f.writelines(lines)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
