"""GGUF quantized weights kept quantized (layers/gguf_quant.py) on a GPU: the grouped kernels checked against
the dequantize-then-matmul reference and timed beside bf16 F.linear (and our wint8/wint4 for comparison), at
the Llama-3-8B shapes of quant_kernels.py.

    python benchmarks/gguf_kernels.py                  # Q8_0 Q6_K Q4_0 Q4_1 Q4_K + wint8 wint4, M in 1, 16, 256
    python benchmarks/gguf_kernels.py --sweep          # also GEMV launch configs at M=1 (gate/up shape)
    python benchmarks/gguf_kernels.py --e2e FILE.gguf  # greedy chat, weights kept quantized vs dequantized at load

Weights are random llama.cpp blocks (tests/tiny_models.py's `random_blocks`), repacked as at load. `err` is
against the fp32 dequantized weight times fp32 activations, relative (|a - b| / (1 + |ref|)); `float_err` the
same for bf16 F.linear on the dequantized weight rounded to bf16 (the model dequantized at load). A check
passes if err <= max(2e-2, 1.25 float_err): the GEMM rounds each dequantized weight to bf16 for the tensor
cores, as the float model does once at load, so at M > 1 both err the same. Times as in quant_kernels.py:
M <= 16 in a CUDA graph over weight copies (weights from DRAM), else do_bench. GB/s counts the bytes of the
repacked weight (integers, scales, mins). Exits non-zero if a check fails.
"""
import argparse
import functools
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from quant_kernels import PER_LAYER, SHAPES, bench, bench_graph, copies, maxerr  # noqa: E402
from tiny_models import random_blocks  # noqa: E402

from fastdeploy.model_executor.layers import gguf_quant as gq  # noqa: E402
from fastdeploy.model_executor.ops import quant_matmul as qm  # noqa: E402
from fastdeploy.model_executor.ops import triton_quant_matmul as tq  # noqa: E402

DEV, DTYPE, TOL = "cuda", torch.bfloat16, 2e-2
MS = (1, 16, 256)
FORMATS = ["Q8_0", "Q6_K", "Q4_0", "Q4_1", "Q4_K", "wint8", "wint4"]
SWEEP_FORMATS = ["Q8_0", "Q6_K", "Q4_1", "Q4_K"]      # Q4_0 runs Q4_K's code without the min
FAILED = []


def weights(fmt: str, k: int, n: int):
    """(matmul(x, tensors, config=None), fp32 dequantized weight, the tensors the matmul reads)."""
    if fmt.startswith("wint"):
        bits = qm.METHODS[fmt]
        q, s = qm.QUANTIZE[bits](torch.randn(n, k, device=DEV) * 0.02)
        return (lambda x, t, config=None: tq.quant_matmul(x, *t, bits, config=config),
                qm.dequantize(q, s, bits, k, torch.float32), (q, s))
    qtype = T[fmt]
    meth = gq.TYPES[qtype].method
    packed = {k: v.to(DEV) for k, v in gq.repack(random_blocks(qtype, n, k, np.random.default_rng(0)), qtype).items()}
    tensors = (packed["qweight"], packed["weight_scale"], packed.get("weight_min"))

    def run(x, t, config=None):
        return tq.quant_matmul(x, t[0], t[1], meth.bits, config=config, group=meth.group, mins=t[2])
    return run, qm.dequantize(*tensors[:2], meth.bits, k, torch.float32, meth.group, tensors[2]), tensors


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def weight_copies(tensors):
    """Tuples of copies of `tensors` streaming at least quant_kernels.ROTATE_BYTES together."""
    size = nbytes(tensors)
    return list(zip(*[copies(t, size) if t is not None else [None] * 32 for t in tensors]))


def run_table():
    print(f"{'format':<6} {'layer':<8} {'K x N':<11} {'M':>4} {'err':>9} {'float_err':>9} {'chk':<4} "
          f"{'quant_us':>9} {'bf16_us':>8} {'speedup':>8} {'GB/s':>6}")
    decode = {}
    for name, (k, n) in SHAPES.items():
        w_bf16 = torch.randn(n, k, device=DEV, dtype=DTYPE) * 0.02
        bf16 = {}
        for fmt in FORMATS:
            run, deq, tensors = weights(fmt, k, n)
            for m in MS:
                x = torch.randn(m, k, device=DEV, dtype=DTYPE)
                ref = F.linear(x.float(), deq)
                err, float_err = maxerr(run(x, tensors), ref), maxerr(F.linear(x, deq.to(DTYPE)), ref)
                if m <= 16:
                    t_q = bench_graph([functools.partial(run, x, t) for t in weight_copies(tensors)])
                    if m not in bf16:
                        bf16[m] = bench_graph([functools.partial(F.linear, x, w) for w in copies(w_bf16, n * k * 2)])
                else:
                    t_q = bench(lambda: run(x, tensors))
                    bf16.setdefault(m, bench(lambda: F.linear(x, w_bf16)))
                ok = err <= max(TOL, 1.25 * float_err)
                if not ok:
                    FAILED.append(f"{fmt} {name} M={m}")
                decode[fmt, name, m] = t_q
                decode["bf16", name, m] = bf16[m]
                print(f"{fmt:<6} {name:<8} {f'{k}x{n}':<11} {m:>4} {err:9.2e} {float_err:9.2e} "
                      f"{'ok' if ok else 'FAIL':<4} {t_q * 1e6:9.1f} {bf16[m] * 1e6:8.1f} {bf16[m] / t_q:7.2f}x "
                      f"{nbytes(tensors) / t_q / 1e9:6.0f}", flush=True)
    for m in (m for m in MS if m <= 16):
        t_bf16 = sum(decode["bf16", name, m] * c for name, c in PER_LAYER.items())
        print(f"\nM={m}, one Llama-3-8B decoder layer's linears: bf16 {t_bf16 * 1e6:.1f} us")
        for fmt in FORMATS:
            t_q = sum(decode[fmt, name, m] * c for name, c in PER_LAYER.items())
            print(f"  {fmt:<6} {t_q * 1e6:7.1f} us: {t_bf16 / t_q:.2f}x")


def run_sweep(shape="gate/up"):
    """GEMV launch configs at M=1 per format: the default and the best three (CUDA-graph timings), each
    config's output checked."""
    k, n = SHAPES[shape]
    print(f"\nGEMV sweep at M=1, {shape} {k}x{n} (us): default, then the best configs")
    x = torch.randn(1, k, device=DEV, dtype=DTYPE)
    for fmt in SWEEP_FORMATS:
        run, deq, tensors = weights(fmt, k, n)
        ref = F.linear(x.float(), deq)
        tcopies = weight_copies(tensors)

        def timed(config=None):
            if maxerr(run(x, tensors, config), ref) > TOL:
                FAILED.append(f"{fmt} sweep {config}")
            return bench_graph([functools.partial(run, x, t, config=config) for t in tcopies], reps=7)
        times = {}
        for bn in (2, 4, 8):
            for bk in (512, 1024):
                for warps in (2, 4):
                    c = tq.GemvConfig(bn, bk, warps, 3)
                    times[c] = timed(c)
        default = timed()
        best = sorted(times, key=times.get)[:3]
        print(f"{fmt:<6} default {default * 1e6:6.1f} ({nbytes(tensors) / default / 1e9:4.0f} GB/s); " + "; ".join(
            f"{times[c] * 1e6:6.1f} n={c.block_n} k={c.block_k} w={c.num_warps}" for c in best), flush=True)


def run_e2e(path: str):
    """Greedy chat answers with the GGUF's linear weights kept quantized (the CUDA default) and dequantized
    at load (as before): token agreement, and each engine's decode time."""
    import gc
    import time

    import fastdeploy.worker.model_runner as model_runner
    from fastdeploy import LLM, SamplingParams
    from fastdeploy.model_executor.loader import get_model
    questions = ["What is the capital of France?", "Write a haiku about the sea.", "Explain gravity in one sentence."]
    chats = [[{"role": "user", "content": q}] for q in questions]
    greedy = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    outs = {}
    for keep in (True, False):
        model_runner.get_model = functools.partial(get_model, gguf_keep_quantized=keep)
        llm = LLM(model=path, dtype="bfloat16", max_model_len=512, gpu_memory_utilization=0.3)
        kept = sum(isinstance(m.quant_method, gq.GGUFQuantMethod)
                   for m in llm.llm_engine.runner.model.modules() if hasattr(m, "quant_method"))
        outs[keep] = llm.chat(chats, greedy, use_tqdm=False)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        llm.chat(chats, greedy, use_tqdm=False)
        torch.cuda.synchronize()
        print(f"keep_quantized={keep}: {kept} quantized linears, 3 x 32 tokens in "
              f"{(time.perf_counter() - t0) * 1e3:.0f} ms")
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    same = total = 0
    for a, b in zip(outs[True], outs[False]):
        ta, tb = a.outputs.token_ids, b.outputs.token_ids
        first = next((i for i, (p, q) in enumerate(zip(ta, tb)) if p != q), len(ta))
        same += sum(p == q for p, q in zip(ta, tb))
        total += len(ta)
        print(f"first difference at token {first}/{len(ta)}\n  kept:  {a.outputs.text!r}\n  float: {b.outputs.text!r}")
    print(f"greedy token agreement {same}/{total} = {same / total:.1%}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--no-table", action="store_true")
    p.add_argument("--e2e", metavar="GGUF")
    args = p.parse_args()
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}")
    if not args.no_table:
        run_table()
    if args.sweep:
        run_sweep()
    if args.e2e:
        run_e2e(args.e2e)
    if FAILED:
        print("FAILED:", ", ".join(FAILED))
        sys.exit(1)


if __name__ == "__main__":
    main()
