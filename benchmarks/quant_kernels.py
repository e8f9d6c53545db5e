"""Weight-only quantized matmul kernels on a GPU at the Llama-3-8B shapes: checked against the
dequantize-then-matmul reference and timed beside the bf16 torch.matmul.

    python benchmarks/quant_kernels.py            # wint8 + wint4, M in 1, 16, 256, 4096 (about a minute)
    python benchmarks/quant_kernels.py --sweep    # also try GEMV launch configs for M=1 (a few minutes)

One row per (method, K x N, M): max error vs the reference (|a - b| / (1 + |ref|)), Triton and bf16 times
(triton.testing.do_bench, median us), speedup over bf16 and the GB/s of weight bytes (int weights + scales)
the kernel streams. Then, per method, the M=1 time of one decoder layer's linears (qkv, o, gate, up, down)
against bf16. Exits non-zero if a check fails.
"""
import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from fastdeploy.model_executor.ops import quant_matmul as qm  # noqa: E402
from fastdeploy.model_executor.ops import triton_quant_matmul as tq  # noqa: E402

DEV, DTYPE, TOL = "cuda", torch.bfloat16, 2e-2
# (K, N) of Llama-3-8B's linears and how many of each a layer has (gate and up are two 4096 x 14336)
SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate/up": (4096, 14336), "down": (14336, 4096)}
PER_LAYER = {"qkv": 1, "o": 1, "gate/up": 2, "down": 1}
MS = (1, 16, 256, 4096)
FAILED = []


def bench(fn):
    return do_bench(fn, warmup=25, rep=100) * 1e-3      # seconds


def maxerr(a, b):
    a, b = a.float(), b.float()
    return ((a - b).abs() / (1 + b.abs())).max().item()


def weights(k, n, bits):
    w = torch.randn(n, k, device=DEV, dtype=DTYPE) * 0.02
    q, s = qm.QUANTIZE[bits](w)
    return w, q, s, q.numel() * q.element_size() + s.numel() * s.element_size()


def run_table():
    print(f"{'method':<6} {'layer':<8} {'K x N':<12} {'M':>5} {'err':>9} {'chk':<4} {'quant_us':>9} "
          f"{'bf16_us':>9} {'speedup':>8} {'GB/s':>7}")
    decode = {}
    for method, (name, (k, n)) in itertools.product(qm.METHODS, SHAPES.items()):
        bits = qm.METHODS[method]
        w, q, s, nbytes = weights(k, n, bits)
        for m in MS:
            x = torch.randn(m, k, device=DEV, dtype=DTYPE)
            err = maxerr(tq.quant_matmul(x, q, s, bits), qm.MATMUL_REF[bits](x, q, s))
            t_q = bench(lambda: tq.quant_matmul(x, q, s, bits))
            t_bf16 = bench(lambda: F.linear(x, w))
            ok = err <= TOL
            if not ok:
                FAILED.append(f"{method} {name} M={m}")
            if m == 1:
                decode[method, name] = (t_q, t_bf16)
            print(f"{method:<6} {name:<8} {f'{k}x{n}':<12} {m:>5} {err:9.2e} {'ok' if ok else 'FAIL':<4} "
                  f"{t_q * 1e6:9.1f} {t_bf16 * 1e6:9.1f} {t_bf16 / t_q:7.2f}x {nbytes / t_q / 1e9:7.0f}", flush=True)
        del w, q, s
    print("\nM=1, one decoder layer's linears:")
    for method in qm.METHODS:
        t_q = sum(decode[method, name][0] * c for name, c in PER_LAYER.items())
        t_bf16 = sum(decode[method, name][1] * c for name, c in PER_LAYER.items())
        print(f"  {method}: {t_q * 1e6:7.1f} us vs bf16 {t_bf16 * 1e6:7.1f} us: {t_bf16 / t_q:.2f}x")


def run_sweep():
    """GEMV launch configs for M=1; the best per (method, shape) against the default."""
    print("\nGEMV sweep, M=1 (us): default, then the best configs")
    for method, (name, (k, n)) in itertools.product(qm.METHODS, SHAPES.items()):
        bits = qm.METHODS[method]
        _, q, s, nbytes = weights(k, n, bits)
        x = torch.randn(1, k, device=DEV, dtype=DTYPE)
        times = {}
        for bn, per_step, warps, stages in itertools.product((8, 16, 32), (2, 4, 8, 16), (4, 8), (1, 3)):
            c = tq.GemvConfig(bn, per_step, warps, stages)
            times[c] = bench(lambda: tq.quant_matmul(x, q, s, bits, config=c))
        default = bench(lambda: tq.quant_matmul(x, q, s, bits))
        best = sorted(times, key=times.get)[:3]
        print(f"{method} {name:<8} default {default * 1e6:6.1f} ({nbytes / default / 1e9:4.0f} GB/s); " +
              "; ".join(f"{times[c] * 1e6:6.1f} n={c.block_n} steps={c.blocks_per_step} w={c.num_warps} "
                        f"s={c.num_stages}" for c in best), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true")
    args = p.parse_args()
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}")
    run_table()
    if args.sweep:
        run_sweep()
    if FAILED:
        print("FAILED:", ", ".join(FAILED))
        sys.exit(1)


if __name__ == "__main__":
    main()
