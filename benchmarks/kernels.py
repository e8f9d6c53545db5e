"""Check the Triton kernels against their PyTorch references at full sizes on a GPU, and time both.

    python benchmarks/kernels.py            # everything (a few minutes on an H100)
    python benchmarks/kernels.py --quick    # fewer shapes
    python benchmarks/kernels.py --only decode,prefill

Prints one table row per case: max error vs the reference (|a - b| / (1 + |ref|)), pass/fail, Triton and reference times
(triton.testing.do_bench, median ms) and, for the memory-bound kernels, the Triton kernel's achieved GB/s.
Exits non-zero if any check fails.
"""
import argparse
import itertools
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from fastdeploy.model_executor.ops import triton_attention as ta  # noqa: E402
from fastdeploy.model_executor.ops import triton_elementwise as te  # noqa: E402
from fastdeploy.model_executor.ops.activation import silu_and_mul_ref  # noqa: E402
from fastdeploy.model_executor.ops.norm import rms_norm_ref  # noqa: E402
from fastdeploy.model_executor.ops.paged_attention import paged_attention_ref, store_kvcache_ref  # noqa: E402
from fastdeploy.model_executor.ops.rotary import apply_rotary_ref  # noqa: E402

DEV = "cuda"
BLOCK_SIZE = 64
NUM_HEADS = 32
# shapes (module-level so a smoke run can shrink them)
STORE_TOKENS = (1, 64, 8192)
DECODE_BATCHES, DECODE_BATCHES_QUICK = (1, 16, 64), (1, 64)
DECODE_CTXS, DECODE_CTXS_QUICK = (1, 128, 1024, 8192), (1, 1024, 8192)
GRAPH_BATCH, GRAPH_CTX = 16, 4096
# prefill (query_lens, ctx_lens): whole prompts, chunked prefill after a cached prefix, mixed batches
PREFILL_CASES = [([8192], [0]), ([1024] * 4, [0] * 4), ([512], [7680]), ([128] * 8, [1000] * 8),
                 ([2048, 1, 1, 300], [0, 4000, 100, 3000]), ([1] * 8, [4096] * 8)]
ELEM_TOKENS = (1, 128, 8192)
HIDDEN, INTERMEDIATE = 4096, 14336
TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}
ROWS = []
FAILED = []


def report(kernel, case, dtype, err, tol, t_tri, t_ref, nbytes=None):
    ok = err <= tol
    if not ok:
        FAILED.append(f"{kernel} {case} {dtype}")
    gbs = f"{nbytes / t_tri / 1e6:8.0f}" if nbytes else "       -"
    ROWS.append(f"{kernel:<10} {case:<44} {str(dtype)[6:]:<9} {err:9.2e} {'ok' if ok else 'FAIL':<4} "
                f"{t_tri * 1e3:9.1f} {t_ref * 1e3:10.1f} {t_ref / t_tri:7.1f}x {gbs}")
    print(ROWS[-1], flush=True)


def header():
    print(f"{'kernel':<10} {'case':<44} {'dtype':<9} {'rel_err':>9} {'chk':<4} {'triton_us':>9} "
          f"{'torch_us':>10} {'speedup':>8} {'GB/s':>8}")


def bench(fn):
    return do_bench(fn, warmup=10, rep=50)


def maxerr(a, b):
    """Max of |a - b| / (1 + |b|): absolute near zero, relative for large values."""
    a, b = a.float(), b.float()
    return ((a - b).abs() / (1 + b.abs())).max().item()


# ----------------------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------------------

def paged_batch(query_lens, ctx_lens, num_kv_heads, head_dim, dtype):
    """Random paged cache holding the context, plus this step's q/k/v, slots and metadata tensors."""
    B = len(query_lens)
    seq_lens = [c + n for c, n in zip(ctx_lens, query_lens)]
    nblocks = [math.ceil(s / BLOCK_SIZE) for s in seq_lens]
    total = sum(nblocks) + 1
    perm = torch.randperm(total, device=DEV).int()
    tables = torch.zeros(B, max(nblocks), dtype=torch.int32, device=DEV)
    used = 0
    for b, nb in enumerate(nblocks):
        tables[b, :nb] = perm[used:used + nb]
        used += nb
    kc = torch.randn(total, BLOCK_SIZE, num_kv_heads, head_dim, device=DEV, dtype=dtype)
    vc = torch.randn_like(kc)
    T = sum(query_lens)
    # slots of the new tokens, computed on device
    seq_id = torch.repeat_interleave(torch.arange(B, device=DEV), torch.tensor(query_lens, device=DEV))
    qsl = torch.tensor([0, *itertools.accumulate(query_lens)], dtype=torch.int32, device=DEV)
    pos = torch.tensor(ctx_lens, device=DEV)[seq_id] + torch.arange(T, device=DEV) - qsl[seq_id].long()
    slots = tables[seq_id, pos // BLOCK_SIZE].long() * BLOCK_SIZE + pos % BLOCK_SIZE
    k = torch.randn(T, num_kv_heads, head_dim, device=DEV, dtype=dtype)
    v = torch.randn_like(k)
    return k, v, kc, vc, slots, qsl, torch.tensor(seq_lens, dtype=torch.int32, device=DEV), tables


def bench_store(quick):
    for dtype, T in itertools.product((torch.bfloat16,), STORE_TOKENS):
        k, v, kc, vc, slots, *_ = paged_batch([T], [0], 8, 128, dtype)
        kc2, vc2 = kc.clone(), vc.clone()
        store_kvcache_ref(k, v, kc, vc, slots)
        ta.store_kvcache(k, v, kc2, vc2, slots)
        err = max(maxerr(kc, kc2), maxerr(vc, vc2))
        report("store_kv", f"T={T} kvh=8 d=128", dtype, err, 0.0,
               bench(lambda: ta.store_kvcache(k, v, kc2, vc2, slots)),
               bench(lambda: store_kvcache_ref(k, v, kc, vc, slots)), nbytes=4 * k.numel() * k.element_size())


def bench_decode(quick):
    batches = DECODE_BATCHES_QUICK if quick else DECODE_BATCHES
    ctxs = DECODE_CTXS_QUICK if quick else DECODE_CTXS
    dtypes = (torch.bfloat16,) if quick else (torch.bfloat16, torch.float16)
    for dtype, head_dim, gqa, B, ctx in itertools.product(dtypes, (64, 128), (1, 2, 4, 8), batches, ctxs):
        kvh = NUM_HEADS // gqa
        # lengths spread over [ctx/2, ctx] so rows differ; a step's new token is the last position
        gen = torch.Generator().manual_seed(B * ctx)
        ctx_lens = [int(x) for x in torch.randint(max(ctx // 2, 1) - 1, ctx, (B,), generator=gen)]
        k, v, kc, vc, slots, qsl, seq_lens, tables = paged_batch([1] * B, ctx_lens, kvh, head_dim, dtype)
        ta.store_kvcache(k, v, kc, vc, slots)
        q = torch.randn(B, NUM_HEADS, head_dim, device=DEV, dtype=dtype)
        scale = head_dim ** -0.5
        lens_cpu = [c + 1 for c in ctx_lens]
        ref_fn = lambda: paged_attention_ref(q, kc, vc, qsl, seq_lens, tables, scale, [1] * B, lens_cpu)  # noqa
        tri_fn = lambda: ta.paged_decode(q, kc, vc, qsl, seq_lens, tables, scale)  # noqa: E731
        err = maxerr(tri_fn(), ref_fn())
        splits = ta.default_num_splits(B, kvh, tables.shape[1] * BLOCK_SIZE, q.device)
        kv_bytes = 2 * sum(lens_cpu) * kvh * head_dim * kc.element_size()
        report("decode", f"B={B} ctx<={ctx} d={head_dim} gqa={gqa} splits={splits}", dtype, err, TOL[dtype],
               bench(tri_fn), bench(ref_fn), nbytes=kv_bytes)
        del k, v, kc, vc
        torch.cuda.empty_cache()


def check_decode_graph():
    """Capture the decode launch in a CUDA graph, then replay it with other lengths."""
    dtype, B, kvh, head_dim = torch.bfloat16, GRAPH_BATCH, 8, 128
    max_ctx = GRAPH_CTX
    k, v, kc, vc, slots, qsl, seq_lens, tables = paged_batch([1] * B, [max_ctx - 1] * B, kvh, head_dim, dtype)
    q = torch.randn(B, NUM_HEADS, head_dim, device=DEV, dtype=dtype)
    out = torch.empty_like(q)
    ta.paged_decode(q, kc, vc, qsl, seq_lens, tables, 0.1, out=out)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ta.paged_decode(q, kc, vc, qsl, seq_lens, tables, 0.1, out=out)
    err = 0.0
    for lens in ([max_ctx] * B, torch.randint(1, max_ctx + 1, (B,)).tolist()):
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        q.normal_()
        graph.replay()
        ref = paged_attention_ref(q, kc, vc, qsl, seq_lens, tables, 0.1)
        err = max(err, maxerr(out, ref))
    report("decode", f"CUDA graph replay B={B} ctx<={max_ctx}", dtype, err, TOL[dtype],
           bench(graph.replay), bench(lambda: ta.paged_decode(q, kc, vc, qsl, seq_lens, tables, 0.1, out=out)))


def bench_prefill(quick):
    cases = PREFILL_CASES[:3] if quick else PREFILL_CASES
    dtypes = (torch.bfloat16,) if quick else (torch.bfloat16, torch.float16)
    for dtype, head_dim, gqa, (qlens, ctxs) in itertools.product(dtypes, (64, 128), (1, 4, 8), cases):
        kvh = NUM_HEADS // gqa
        k, v, kc, vc, slots, qsl, seq_lens, tables = paged_batch(qlens, ctxs, kvh, head_dim, dtype)
        ta.store_kvcache(k, v, kc, vc, slots)
        q = torch.randn(sum(qlens), NUM_HEADS, head_dim, device=DEV, dtype=dtype)
        scale = head_dim ** -0.5
        lens_cpu = [c + n for c, n in zip(ctxs, qlens)]
        ref_fn = lambda: paged_attention_ref(q, kc, vc, qsl, seq_lens, tables, scale, qlens, lens_cpu)  # noqa
        tri_fn = lambda: ta.paged_prefill(q, kc, vc, qsl, seq_lens, tables, scale, max(qlens))  # noqa: E731
        err = maxerr(tri_fn(), ref_fn())
        desc = f"q={qlens[0]}x{len(qlens)} ctx={ctxs[0]}" if len(set(qlens)) == 1 else f"mixed q={qlens}"
        report("prefill", f"{desc} d={head_dim} gqa={gqa}", dtype, err, TOL[dtype], bench(tri_fn), bench(ref_fn))
        del k, v, kc, vc
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------
# elementwise
# ----------------------------------------------------------------------------------------------------------

def bench_elementwise(quick):
    dtypes = (torch.bfloat16,) if quick else (torch.bfloat16, torch.float16)
    tol = TOL
    for dtype, T in itertools.product(dtypes, ELEM_TOKENS):
        hidden = HIDDEN
        x = torch.randn(T, hidden, device=DEV, dtype=dtype)
        r = torch.randn_like(x)
        w = torch.randn(hidden, device=DEV, dtype=dtype)
        e = maxerr(te.rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6))
        report("rms_norm", f"T={T} hidden={hidden}", dtype, e, tol[dtype],
               bench(lambda: te.rms_norm(x, w, 1e-6)), bench(lambda: rms_norm_ref(x, w, 1e-6)),
               nbytes=2 * x.numel() * x.element_size())
        (a, b), (a2, b2) = te.rms_norm(x, w, 1e-6, r), rms_norm_ref(x, w, 1e-6, r)
        e = max(maxerr(a, a2), maxerr(b, b2))
        report("rms_norm", f"T={T} hidden={hidden} +residual", dtype, e, tol[dtype],
               bench(lambda: te.rms_norm(x, w, 1e-6, r)), bench(lambda: rms_norm_ref(x, w, 1e-6, r)),
               nbytes=4 * x.numel() * x.element_size())

        for head_dim, interleaved in itertools.product((64, 128), (False, True)):
            heads, kvh = NUM_HEADS, 8
            qkv = torch.randn(T, (heads + 2 * kvh) * head_dim, device=DEV, dtype=dtype)
            q = qkv[:, :heads * head_dim].view(T, heads, head_dim)
            k = qkv[:, heads * head_dim:(heads + kvh) * head_dim].view(T, kvh, head_dim)
            ang = torch.rand(T, head_dim // 2, device=DEV) * 100
            cos, sin = ang.cos(), ang.sin()
            ref_fn = lambda: (apply_rotary_ref(q, cos, sin, interleaved), apply_rotary_ref(k, cos, sin, interleaved))  # noqa
            tri_fn = lambda: te.apply_rotary(q, k, cos, sin, interleaved)  # noqa: E731
            e = max(maxerr(a, b) for a, b in zip(tri_fn(), ref_fn()))
            report("rotary", f"T={T} h={heads}/{kvh} d={head_dim} {'interleaved' if interleaved else 'neox'}",
                   dtype, e, tol[dtype], bench(tri_fn), bench(ref_fn),
                   nbytes=2 * (q.numel() + k.numel()) * q.element_size())

        inter = INTERMEDIATE
        x = torch.randn(T, 2 * inter, device=DEV, dtype=dtype)
        e = maxerr(te.silu_and_mul(x), silu_and_mul_ref(x))
        report("silu_mul", f"T={T} inter={inter}", dtype, e, tol[dtype],
               bench(lambda: te.silu_and_mul(x)), bench(lambda: silu_and_mul_ref(x)),
               nbytes=3 * T * inter * x.element_size())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="store,decode,graph,prefill,elementwise")
    args = p.parse_args()
    assert torch.cuda.is_available(), "this script needs a CUDA GPU"
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    header()
    only = set(args.only.split(","))
    if "store" in only:
        bench_store(args.quick)
    if "decode" in only:
        bench_decode(args.quick)
    if "graph" in only:
        check_decode_graph()
    if "prefill" in only:
        bench_prefill(args.quick)
    if "elementwise" in only:
        bench_elementwise(args.quick)
    print(f"\n{len(ROWS)} cases, {len(FAILED)} failed")
    for f in FAILED:
        print("FAILED:", f)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
