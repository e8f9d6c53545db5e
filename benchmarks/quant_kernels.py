"""Weight-only quantized matmul kernels on a GPU at the Llama-3-8B shapes: checked against the
dequantize-then-matmul reference and timed beside the bf16 torch.matmul.

    python benchmarks/quant_kernels.py            # wint8 + wint4, M in 1, 16, 256, 4096 (about a minute)
    python benchmarks/quant_kernels.py --sweep    # also try GEMV configs for M=1 and GEMM configs for M=16
    python benchmarks/quant_kernels.py --baseline old_triton_quant_matmul.py   # before/after, same run
    python benchmarks/quant_kernels.py --gated    # also the M=1 gate/up GEMV with SiLU-and-mul in its launch

One row per (method, K x N, M): max error vs the reference (|a - b| / (1 + |ref|)), Triton and bf16 times
(triton.testing.do_bench, median us), speedup over bf16 and the GB/s of weight bytes (int weights + scales)
the kernel streams. Then, per method, the M=1 time of one decoder layer's linears (qkv, o, gate, up, down)
against bf16. Exits non-zero if a check fails.

The reference for the error is the dequantized weight in fp32 times the activations in fp32, not the bf16
`matmul_ref` (which rounds every dequantized weight to bf16): the kernels multiply the exact integers and
apply the fp32 (int8) or bf16 (int4) scales to fp32 partial sums, so against a bf16-weight reference the
error measured is mostly the reference's own rounding, and at K = 14336 over 16M outputs (down, M=4096)
its maximum reached the 2e-2 threshold. Against fp32 the kernel error is the bf16 rounding of the output.
"""
import argparse
import importlib.util
import itertools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from fastdeploy.model_executor.ops import quant_matmul as qm  # noqa: E402
from fastdeploy.model_executor.ops import triton_quant_matmul as tq  # noqa: E402
from fastdeploy.model_executor.ops import triton_wint4_gemv as w4  # noqa: E402

DEV, DTYPE, TOL = "cuda", torch.bfloat16, 2e-2
# (K, N) of Llama-3-8B's linears and how many of each a layer has (gate and up are two 4096 x 14336)
SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate/up": (4096, 14336), "down": (14336, 4096)}
PER_LAYER = {"qkv": 1, "o": 1, "gate/up": 2, "down": 1}
MS = (1, 16, 256, 4096)
FAILED = []
OLD = None          # --baseline: an earlier triton_quant_matmul module, timed beside the current one


ROTATE_BYTES = 256 << 20     # small-M timings cycle through weight copies of at least this many bytes


def bench(fn, rep=100):
    return do_bench(fn, warmup=min(25, rep), rep=rep) * 1e-3      # seconds


def bench_graph(fns, reps=15):
    """Seconds per call of the calls `fns` (each on its own weight copy, so that the weights come from
    DRAM, not L2), captured back to back in one CUDA graph: the decode engine's setting, without the
    host's launch overhead that do_bench would add to a kernel of a few microseconds."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / len(fns))
    del graph
    return sorted(times)[len(times) // 2]


def copies(t, nbytes):
    """t and enough clones of it to stream ROTATE_BYTES."""
    return [t] + [t.clone() for _ in range(min(31, -(-ROTATE_BYTES // nbytes) - 1))]


def maxerr(a, b):
    a, b = a.float(), b.float()
    return ((a - b).abs() / (1 + b.abs())).max().item()


def weights(k, n, bits):
    w = torch.randn(n, k, device=DEV, dtype=DTYPE) * 0.02
    q, s = qm.QUANTIZE[bits](w)
    return w, q, s, q.numel() * q.element_size() + s.numel() * s.element_size()


def reference(x, q, s, bits):
    deq = qm.dequantize_int8 if bits == 8 else qm.dequantize_int4
    return F.linear(x.float(), deq(q, s, x.shape[-1], torch.float32))


def run_table():
    print(f"{'method':<6} {'layer':<8} {'K x N':<12} {'M':>5} {'err':>9} {'chk':<4} {'quant_us':>9} "
          f"{'bf16_us':>9} {'speedup':>8} {'GB/s':>7}" + (f" {'old_us':>8}" if OLD else ""))
    decode, old = {}, {}
    for method, (name, (k, n)) in itertools.product(qm.METHODS, SHAPES.items()):
        bits = qm.METHODS[method]
        w, q, s, nbytes = weights(k, n, bits)
        for m in MS:
            x = torch.randn(m, k, device=DEV, dtype=DTYPE)
            err = maxerr(tq.quant_matmul(x, q, s, bits), reference(x, q, s, bits))
            if m <= 16:
                qs, ss = copies(q, nbytes), copies(s, nbytes)
                ws = copies(w, w.numel() * 2)
                t_q = bench_graph([lambda q=q, s=s: tq.quant_matmul(x, q, s, bits) for q, s in zip(qs, ss)])
                t_bf16 = bench_graph([lambda w=w: F.linear(x, w) for w in ws])
                t_old = (bench_graph([lambda q=q, s=s: OLD.quant_matmul(x, q, s, bits) for q, s in zip(qs, ss)])
                         if OLD else None)
                del qs, ss, ws
            else:
                t_q = bench(lambda: tq.quant_matmul(x, q, s, bits))
                t_bf16 = bench(lambda: F.linear(x, w))
                t_old = None
            ok = err <= TOL
            if not ok:
                FAILED.append(f"{method} {name} M={m}")
            if m in (1, 16):
                decode[method, name, m] = (t_q, t_bf16)
                old[method, name, m] = t_old
            print(f"{method:<6} {name:<8} {f'{k}x{n}':<12} {m:>5} {err:9.2e} {'ok' if ok else 'FAIL':<4} "
                  f"{t_q * 1e6:9.1f} {t_bf16 * 1e6:9.1f} {t_bf16 / t_q:7.2f}x {nbytes / t_q / 1e9:7.0f}"
                  + (f" {t_old * 1e6:8.1f}" if t_old else ""), flush=True)
        del w, q, s
    for m in (1, 16):
        print(f"\nM={m}, one decoder layer's linears:")
        for method in qm.METHODS:
            t_q = sum(decode[method, name, m][0] * c for name, c in PER_LAYER.items())
            t_bf16 = sum(decode[method, name, m][1] * c for name, c in PER_LAYER.items())
            line = f"  {method}: {t_q * 1e6:7.1f} us vs bf16 {t_bf16 * 1e6:7.1f} us: {t_bf16 / t_q:.2f}x"
            if OLD:
                t_old = sum(old[method, name, m] * c for name, c in PER_LAYER.items())
                line += f"   (baseline kernels {t_old * 1e6:7.1f} us: {t_bf16 / t_old:.2f}x)"
            print(line)


def _top(times, fmt):
    best = sorted(times, key=times.get)[:3]
    return "; ".join(f"{times[c] * 1e6:6.1f} {fmt(c)}" for c in best)


def run_sweep():
    """GEMV launch configs at M=1 (and the GEMV against the GEMM at M=2..16), GEMM configs at M=16;
    the best three per (method, shape) against the default (CUDA-graph timings, weights from DRAM)."""
    print("\nsweep (us): default, then the best configs")
    gemv_fmt = lambda c: f"n={c.block_n} k={c.block_k} w={c.num_warps} s={c.num_stages}"  # noqa: E731
    gemm_fmt = lambda c: f"n={c.block_n} split={c.split_k} w={c.num_warps} s={c.num_stages}"  # noqa: E731
    for method, (name, (k, n)) in itertools.product(qm.METHODS, SHAPES.items()):
        bits = qm.METHODS[method]
        _, q, s, nbytes = weights(k, n, bits)
        qs, ss = copies(q, nbytes), copies(s, nbytes)

        def timed(x, config=None):
            return bench_graph([lambda q=q, s=s: tq.quant_matmul(x, q, s, bits, config=config)
                                for q, s in zip(qs, ss)], reps=7)

        x = torch.randn(1, k, device=DEV, dtype=DTYPE)
        times = {}
        for bn, bk, warps, stages in itertools.product((2, 4, 8, 16), (512, 1024), (1, 2, 4), (1, 3)):
            threads = warps * 32
            if bn * bk * bits // 8 < threads * 16 or bn * bk // (2 if bits == 4 else 1) > threads * 128:
                continue
            c = tq.GemvConfig(bn, bk, warps, stages)
            times[c] = timed(x, c)
        if bits == 4:       # the tensor-core GEMV (bf16), unsplit and with K split over 2 to 8 programs
            mma = [*itertools.product((2, 4, 8), (2, 4, 8), (1, 2, 3), (1,)),
                   *itertools.product((2, 4), (4, 8), (2,), (2, 4, 8))]
            for c in itertools.starmap(w4.MmaGemvConfig, mma):
                times[c] = timed(x, c)
        default = timed(x)
        print(f"{method} {name:<8} M=1 default {default * 1e6:6.1f} ({nbytes / default / 1e9:4.0f} GB/s); "
              + _top(times, lambda c: gemv_fmt(c) if isinstance(c, tq.GemvConfig) else f"mma {c}"), flush=True)
        for m in (2, 4, 8, 16):
            xm = torch.randn(m, k, device=DEV, dtype=DTYPE)
            t_gemv = timed(xm, tq.GEMV_WINT4 if bits == 4 else tq.GEMV_DEFAULT[bits])
            t_gemm = timed(xm, tq.gemm_config(m, n, -(-k // 128)))
            print(f"    M={m}: gemv {t_gemv * 1e6:6.1f} gemm(default) {t_gemm * 1e6:6.1f}", flush=True)
        x = torch.randn(16, k, device=DEV, dtype=DTYPE)
        times = {}
        for bn, split, warps, stages in itertools.product((16, 32, 64), (1, 2, 4, 8), (4,), (4,)):
            c = tq.GemmConfig(16, bn, warps, stages, split)
            times[c] = timed(x, c)
        default = timed(x)
        print(f"{method} {name:<8} M=16 default {default * 1e6:6.1f}; " + _top(times, gemm_fmt), flush=True)
        del qs, ss


def run_gated():
    """M=1 gate/up ([gate; up], 2 x 14336 rows): the GEMV that applies silu_and_mul in its own launch (gated)
    against the GEMV then the activation kernel, for the two that have the gated form: the bf16 GEMV (its
    default and swept launch configs) and wint4's tensor-core GEMV (CUDA-graph timings, weights from DRAM)."""
    print("\ngate/up at M=1 (us): GEMV then silu_and_mul; gated default; best gated configs")
    k, n = SHAPES["gate/up"][0], 2 * SHAPES["gate/up"][1]
    x = torch.randn(1, k, device=DEV, dtype=DTYPE)
    fmt = lambda c: f"n={c.block_n} k={c.block_k} w={c.num_warps} s={c.num_stages}"  # noqa: E731
    for method in ("bf16", "wint4"):
        if method == "bf16":
            w = torch.randn(n, k, device=DEV, dtype=DTYPE) * 0.02
            args = [(w,) for w in copies(w, w.numel() * 2)]
            matmul = lambda w, **kw: tq.float_gemv(x, w, **kw)  # noqa: E731
            want = F.linear(x.float(), w.float())
        else:
            _, q, s, nbytes = weights(k, n, 4)
            args = list(zip(copies(q, nbytes), copies(s, nbytes)))
            matmul = lambda q, s, **kw: tq.quant_matmul(x, q, s, 4, **kw)  # noqa: E731
            want = reference(x, q, s, 4)
        want = F.silu(want[:, :n // 2]) * want[:, n // 2:]
        err = maxerr(matmul(*args[0], gated=True), want)
        if err > TOL:
            FAILED.append(f"{method} gated gate/up")

        def timed(**kw):
            return bench_graph([lambda a=a: matmul(*a, **kw) for a in args], reps=7)

        unfused = bench_graph([lambda a=a: tq.silu_and_mul(matmul(*a)) for a in args], reps=7)
        line = f"{method:<6} err {err:.1e}: unfused {unfused * 1e6:6.1f}; gated {timed(gated=True) * 1e6:6.1f}"
        if method == "bf16":
            configs = itertools.starmap(tq.GemvConfig, itertools.product((1, 2, 4, 8), (256, 512, 1024), (2, 4),
                                                                         (1, 3)))
            line += "; " + _top({c: timed(gated=True, config=c) for c in configs}, fmt)
        print(line, flush=True)
        del args


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--gated", action="store_true")
    p.add_argument("--baseline", help="path of an earlier triton_quant_matmul.py to time beside this one")
    args = p.parse_args()
    if args.baseline:
        global OLD
        spec = importlib.util.spec_from_file_location("baseline_triton_quant_matmul", args.baseline)
        OLD = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(OLD)
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}")
    run_table()
    if args.sweep:
        run_sweep()
    if args.gated:
        run_gated()
    if FAILED:
        print("FAILED:", ", ".join(FAILED))
        sys.exit(1)


if __name__ == "__main__":
    main()
