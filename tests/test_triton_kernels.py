"""Triton kernels vs their PyTorch references.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, CPU tensors) at tiny sizes;
on a CUDA machine the same tests run compiled, on cuda tensors, at larger sizes.
"""
import os

import torch

# Without a GPU, run the kernels in Triton's interpreter; this must precede the first triton import.
# (On a CUDA machine the kernels compile, unless TRITON_INTERPRET=1 is set by hand.)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import itertools  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("triton")

from fastdeploy.model_executor.ops import triton_argmax  # noqa: E402
from fastdeploy.model_executor.ops import triton_attention as ta  # noqa: E402
from fastdeploy.model_executor.ops import triton_elementwise as te  # noqa: E402
from fastdeploy.model_executor.ops.activation import silu_and_mul_ref  # noqa: E402
from fastdeploy.model_executor.ops.norm import rms_norm_ref  # noqa: E402
from fastdeploy.model_executor.ops.paged_attention import paged_attention_ref, store_kvcache_ref  # noqa: E402
from fastdeploy.model_executor.ops.rotary import apply_rotary_ref  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if CUDA else "cpu"
if not CUDA and not INTERPRET:
    pytest.skip("no GPU and the Triton interpreter is off", allow_module_level=True)

# small sizes under the interpreter, bigger ones compiled on a GPU
SCALE = 8 if CUDA else 1
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}
ATTN_TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


def _close(a, b, dtype, tol=TOL):
    atol, rtol = tol[dtype]
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------------------------------------
# paged batch builder
# ----------------------------------------------------------------------------------------------------------

def make_batch(gen, query_lens, ctx_lens, num_heads, num_kv_heads, head_dim, block_size, dtype,
               skip_frac=0.0, extra_table_cols=1):
    """A flat varlen batch over a randomly laid out paged cache already holding each sequence's context.

    Returns q, k, v (the new tokens), k_cache, v_cache, slot_mapping, query_start_loc, seq_lens, block_tables.
    """
    B = len(query_lens)
    seq_lens = [c + n for c, n in zip(ctx_lens, query_lens)]
    nblocks = [(s + block_size - 1) // block_size for s in seq_lens]
    max_blocks = max(nblocks) + extra_table_cols
    total_blocks = sum(nblocks) + 3
    perm = torch.randperm(total_blocks, generator=gen)
    tables = torch.zeros(B, max_blocks, dtype=torch.int32)
    used = 0
    for b, nb in enumerate(nblocks):
        tables[b, :nb] = perm[used:used + nb].to(torch.int32)
        used += nb
    T = sum(query_lens)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    k_cache = rnd(total_blocks, block_size, num_kv_heads, head_dim)
    v_cache = rnd(total_blocks, block_size, num_kv_heads, head_dim)
    q = rnd(T, num_heads, head_dim)
    k = rnd(T, num_kv_heads, head_dim)
    v = rnd(T, num_kv_heads, head_dim)
    slots = []
    for b in range(B):
        for i in range(query_lens[b]):
            pos = ctx_lens[b] + i
            slots.append(int(tables[b, pos // block_size]) * block_size + pos % block_size)
    slot_mapping = torch.tensor(slots, dtype=torch.int64)
    if skip_frac:
        slot_mapping[torch.rand(T, generator=gen) < skip_frac] = -1
    qsl = torch.tensor([0, *itertools.accumulate(query_lens)], dtype=torch.int32)
    dev = lambda x: x.to(DEVICE)  # noqa: E731
    return tuple(map(dev, (q, k, v, k_cache, v_cache, slot_mapping, qsl,
                           torch.tensor(seq_lens, dtype=torch.int32), tables)))


def _ref_attention(q, k_cache, v_cache, qsl, seq_lens, tables, scale):
    return paged_attention_ref(q, k_cache, v_cache, qsl, seq_lens, tables, scale)


# ----------------------------------------------------------------------------------------------------------
# store K/V
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_store_kvcache(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    kvh = [1, 2, 4][seed % 3]
    head_dim = [64, 128][seed % 2]
    query_lens = [int(x) for x in torch.randint(1, 6 * SCALE, (3,), generator=gen)]
    ctx_lens = [int(x) for x in torch.randint(0, 40 * SCALE, (3,), generator=gen)]
    q, k, v, kc, vc, slots, *_ = make_batch(gen, query_lens, ctx_lens, kvh, kvh, head_dim, 16, dtype,
                                           skip_frac=0.25)
    # k/v as strided views of a fused buffer, the way the model produces them
    kv = torch.cat([k.flatten(1), v.flatten(1)], dim=1)
    k, v = kv[:, :kvh * head_dim].view(-1, kvh, head_dim), kv[:, kvh * head_dim:].view(-1, kvh, head_dim)
    kc2, vc2 = kc.clone(), vc.clone()
    store_kvcache_ref(k, v, kc, vc, slots)
    ta.store_kvcache(k, v, kc2, vc2, slots)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)


# ----------------------------------------------------------------------------------------------------------
# prefill / varlen
# ----------------------------------------------------------------------------------------------------------

PREFILL_CASES = [  # (query_lens, ctx_lens): chunks starting mid-block after cached blocks, decode rows mixed in
    ([5, 1, 17], [0, 9, 21]),
    ([20, 3], [35, 0]),
    ([1, 16, 9, 2], [47, 16, 3, 30]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gqa", [1, 2, 4])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("case", range(len(PREFILL_CASES)))
def test_prefill(case, head_dim, gqa, dtype):
    if not CUDA and dtype == torch.bfloat16:
        pytest.skip("the interpreter's tl.dot multiplies bf16 bit patterns as integers; bf16 runs on GPU")
    gen = torch.Generator().manual_seed(case * 100 + head_dim + gqa)
    query_lens, ctx_lens = PREFILL_CASES[case]
    query_lens = [n * SCALE for n in query_lens]
    ctx_lens = [c * SCALE for c in ctx_lens]
    kvh = 2
    q, k, v, kc, vc, slots, qsl, seq_lens, tables = make_batch(
        gen, query_lens, ctx_lens, kvh * gqa, kvh, head_dim, 16, dtype, skip_frac=0.1)
    ta.store_kvcache(k, v, kc, vc, slots)
    scale = head_dim ** -0.5
    ref = _ref_attention(q, kc, vc, qsl, seq_lens, tables, scale)
    blocks = {} if CUDA else dict(block_m=16, block_n=16)
    out = ta.paged_prefill(q, kc, vc, qsl, seq_lens, tables, scale, max(query_lens), **blocks)
    _close(out, ref, dtype, ATTN_TOL)


# ----------------------------------------------------------------------------------------------------------
# decode (split-K)
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gqa", [1, 2, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("num_splits", [1, 3, None])
@pytest.mark.parametrize("seed", range(2))
def test_decode(seed, num_splits, head_dim, gqa, dtype):
    _decode_case(seed, num_splits, head_dim, gqa, dtype, 16, None if CUDA else 16)


# tiles of keys against cache blocks: several tiles per block (one block-table entry per tile) and tiles across
# blocks (one per key)
@pytest.mark.parametrize("block_size,block_n", [(64, 16), (16, 32)])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_tiles_and_cache_blocks(block_size, block_n, num_splits):
    _decode_case(0, num_splits, 64, 4, torch.float32, block_size, block_n)


def _decode_case(seed, num_splits, head_dim, gqa, dtype, block_size, block_n):
    if not CUDA and dtype == torch.bfloat16:
        pytest.skip("the interpreter's tl.dot multiplies bf16 bit patterns as integers; bf16 runs on GPU")
    gen = torch.Generator().manual_seed(seed * 1000 + head_dim + gqa)
    B = 4 * SCALE
    ctx_lens = [int(x) for x in torch.randint(0, 70 * SCALE * SCALE, (B,), generator=gen)]
    ctx_lens[0] = 0  # a sequence whose only key is its new token
    kvh = 2
    q, k, v, kc, vc, slots, qsl, seq_lens, tables = make_batch(
        gen, [1] * B, ctx_lens, kvh * gqa, kvh, head_dim, block_size, dtype, skip_frac=0.2, extra_table_cols=3)
    ta.store_kvcache(k, v, kc, vc, slots)
    scale = head_dim ** -0.5
    ref = _ref_attention(q, kc, vc, qsl, seq_lens, tables, scale)
    blocks = {} if block_n is None else dict(block_n=block_n)
    out = ta.paged_decode(q, kc, vc, qsl, seq_lens, tables, scale, num_splits=num_splits, **blocks)
    _close(out, ref, dtype, ATTN_TOL)
    if num_splits is None:  # the dispatching launcher picks the decode kernel for an all-decode batch
        _close(ta.paged_attention(q, kc, vc, qsl, seq_lens, tables, scale, 1), ref, dtype, ATTN_TOL)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_batch_split_between_kernels(dtype):
    """A step mixing single-token rows with chunks: with `prefill_rows` the decode kernel takes the former and
    the varlen kernel the latter (a chunk of one token with context counts as a decode row); the result is the
    reference's, as it is when the varlen kernel takes every row."""
    if not CUDA and dtype == torch.bfloat16:
        pytest.skip("the interpreter's tl.dot multiplies bf16 bit patterns as integers; bf16 runs on GPU")
    gen = torch.Generator().manual_seed(11)
    query_lens = [1, 5 * SCALE, 1, 1, 3 * SCALE, 1]
    ctx_lens = [30 * SCALE, 0, 0, 70 * SCALE, 17 * SCALE, 5]
    q, k, v, kc, vc, slots, qsl, seq_lens, tables = make_batch(gen, query_lens, ctx_lens, 8, 2, 64, 16, dtype)
    ta.store_kvcache(k, v, kc, vc, slots)
    ref = _ref_attention(q, kc, vc, qsl, seq_lens, tables, 0.125)
    rows = torch.tensor([b for b, n in enumerate(query_lens) if n > 1], dtype=torch.int32, device=DEVICE)
    for prefill_rows in (rows, None):
        out = ta.paged_attention(q, kc, vc, qsl, seq_lens, tables, 0.125, max(query_lens), prefill_rows)
        _close(out, ref, dtype, ATTN_TOL)


def test_decode_skips_padding_rows():
    """Rows with no new token (CUDA-graph padding) leave the output alone and produce no NaN elsewhere."""
    gen = torch.Generator().manual_seed(7)
    q, k, v, kc, vc, slots, qsl, seq_lens, tables = make_batch(
        gen, [1, 1], [5, 40], 4, 2, 64, 16, torch.float32)
    ta.store_kvcache(k, v, kc, vc, slots)
    ref = _ref_attention(q, kc, vc, qsl, seq_lens, tables, 0.125)
    # append two padding rows: query length 0, seq_len 0
    qsl_p = torch.cat([qsl, qsl[-1:], qsl[-1:]])
    seq_p = torch.cat([seq_lens, torch.zeros(2, dtype=torch.int32, device=DEVICE)])
    tables_p = torch.cat([tables, torch.zeros_like(tables[:2])])
    for splits in (1, 4):
        out = torch.full_like(q, 7.0)
        ta.paged_decode(q, kc, vc, qsl_p, seq_p, tables_p, 0.125, out=out, num_splits=splits,
                        **({} if CUDA else dict(block_n=16)))
        _close(out, ref, torch.float32, ATTN_TOL)


# ----------------------------------------------------------------------------------------------------------
# elementwise
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96, 1000])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(with_residual, hidden, dtype):
    gen = torch.Generator().manual_seed(hidden)
    x = torch.randn(3 * SCALE, 5, hidden, generator=gen).to(dtype).to(DEVICE)
    w = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype).to(DEVICE)
    res = torch.randn(x.shape, generator=gen).to(dtype).to(DEVICE) if with_residual else None
    ref = rms_norm_ref(x, w, 1e-6, res)
    out = te.rms_norm(x, w, 1e-6, res)
    if with_residual:
        _close(out[0], ref[0], dtype)
        _close(out[1], ref[1], dtype)
    else:
        _close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("head_dim,rot_dim", [(64, 64), (128, 128), (128, 64), (96, 32)])
def test_rotary(head_dim, rot_dim, interleaved, dtype):
    gen = torch.Generator().manual_seed(head_dim + rot_dim)
    T = 7 * SCALE
    qkv = torch.randn(T, (6 + 2 * 2) * head_dim, generator=gen).to(dtype).to(DEVICE)
    # q and k as strided views of a fused qkv projection
    q = qkv[:, :6 * head_dim].view(T, 6, head_dim)
    k = qkv[:, 6 * head_dim:8 * head_dim].view(T, 2, head_dim)
    pos = torch.arange(T, dtype=torch.float32)[:, None]
    inv_freq = 10000.0 ** (-torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim)
    cos, sin = (pos * inv_freq).cos().to(DEVICE), (pos * inv_freq).sin().to(DEVICE)
    qo, ko = te.apply_rotary(q, k, cos, sin, interleaved)
    for x, o in ((q, qo), (k, ko)):
        ref = torch.cat((apply_rotary_ref(x[..., :rot_dim], cos, sin, interleaved), x[..., rot_dim:]), dim=-1)
        _close(o, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("head_dim,rot_dim,kvh", [(64, 64, 1), (128, 128, 4), (128, 64, 2)])
def test_rotary_and_store_kv(head_dim, rot_dim, kvh, interleaved, dtype):
    """The fused kernel: q rotated as apply_rotary does, k rotated and written with v into the cache slots
    as store_kvcache does (padding slots -1 untouched), in one launch."""
    gen = torch.Generator().manual_seed(head_dim + kvh)
    query_lens = [int(x) for x in torch.randint(1, 6 * SCALE, (3,), generator=gen)]
    ctx_lens = [int(x) for x in torch.randint(0, 40 * SCALE, (3,), generator=gen)]
    q, k, v, kc, vc, slots, *_ = make_batch(gen, query_lens, ctx_lens, 2 * kvh, kvh, head_dim, 16, dtype,
                                           skip_frac=0.25)
    T = q.shape[0]
    pos = torch.randint(0, 4096, (T, 1), generator=gen).float()
    inv_freq = 10000.0 ** (-torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim)
    cos, sin = (pos * inv_freq).cos().to(DEVICE), (pos * inv_freq).sin().to(DEVICE)
    q_want, k_rot = te.apply_rotary(q, k, cos, sin, interleaved)
    kc_want, vc_want = kc.clone(), vc.clone()
    store_kvcache_ref(k_rot, v, kc_want, vc_want, slots)
    q_got, none = te.apply_rotary(q, k, cos, sin, interleaved, kv_cache=(v, kc, vc, slots))
    assert none is None and torch.equal(q_got, q_want)
    assert torch.equal(kc, kc_want) and torch.equal(vc, vc_want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [64, 100, 3000])
def test_silu_and_mul(inter, dtype):
    gen = torch.Generator().manual_seed(inter)
    x = torch.randn(2, 3 * SCALE, 2 * inter, generator=gen).to(dtype).to(DEVICE)
    _close(te.silu_and_mul(x), silu_and_mul_ref(x), dtype)


# ----------------------------------------------------------------------------------------------------------
# greedy argmax
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [56, 3000, 128 * 1024 + 1])
def test_argmax_takes_the_first_maximum(vocab, dtype):
    """Against torch.argmax: equal maxima within a chunk, across chunks, at a chunk's edge (1024 logits: the
    smallest chunk), all equal, the last index; more chunks than MAX_CHUNKS' tile would hold at 1024 each
    (128k + 1 logits: the chunk grows); a row stride longer than the row (a padded vocabulary's view); and the
    same arrival counters again in a second launch; and into a given output."""
    gen = torch.Generator().manual_seed(vocab)
    padded = torch.randn(7, vocab + 5, generator=gen).to(dtype)
    logits = padded[:, :vocab]
    edge = min(1024, vocab - 1)
    logits[1, [3, 5]] = 9.0                             # within one chunk
    logits[2, [6, vocab - 2]] = 9.0                     # across chunks
    logits[3, [edge - 1, edge]] = 9.0                   # the end of one chunk and the start of the next
    logits[4, :] = 0.0                                  # all equal
    logits[5, vocab - 1] = 9.0                          # the last index
    logits[6, :] = -float("inf")                        # nothing finite
    logits[6, vocab // 2] = -1e4
    want = logits.float().argmax(-1)
    assert want[1:].tolist() == [3, 6, edge - 1, 0, vocab - 1, vocab // 2]
    for _ in range(2):
        assert torch.equal(triton_argmax.argmax(logits.to(DEVICE)).cpu(), want)
    out = torch.full((9,), -1, dtype=torch.long, device=DEVICE)     # into a view of a longer buffer
    triton_argmax.argmax(logits.to(DEVICE), out=out[1:8])
    assert out.tolist() == [-1, *want.tolist(), -1]


# ----------------------------------------------------------------------------------------------------------
# dispatchers
# ----------------------------------------------------------------------------------------------------------

def test_dispatchers_route_by_device(monkeypatch):
    """CUDA tensors go to the Triton launchers, CPU tensors to the references."""
    from fastdeploy.model_executor.layers.attention import AttentionMetadata
    from fastdeploy.model_executor.ops import activation, norm, paged_attention, rotary
    from fastdeploy.worker import sampler

    called = []
    for mod, name in ((ta, "store_kvcache"), (ta, "paged_attention"), (te, "rms_norm"),
                      (te, "apply_rotary"), (te, "silu_and_mul"), (triton_argmax, "argmax")):
        fn = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _fn=fn, _n=name, **kw: (called.append(_n), _fn(*a, **kw))[1])
    gen = torch.Generator().manual_seed(0)
    q, k, v, kc, vc, slots, qsl, seq_lens, tables = make_batch(gen, [3, 1], [4, 9], 4, 2, 64, 16, torch.bfloat16)
    md = AttentionMetadata(slots, qsl, seq_lens, tables, max_query_len=3, max_seq_len=12)
    paged_attention.store_kvcache(k, v, kc, vc, slots)
    out = paged_attention.paged_attention(q, kc, vc, md, 0.125)
    _close(out, _ref_attention(q, kc, vc, qsl, seq_lens, tables, 0.125), torch.bfloat16, ATTN_TOL)
    norm.rms_norm(q, torch.ones(64, device=DEVICE, dtype=q.dtype), 1e-6)
    rotary.apply_rotary(q, k, torch.ones(4, 32, device=DEVICE), torch.zeros(4, 32, device=DEVICE), False)
    activation.silu_and_mul(q)
    sampler.argmax(q[0])
    expected = ["store_kvcache", "paged_attention", "rms_norm", "apply_rotary", "silu_and_mul", "argmax"]
    assert called == (expected if CUDA else [])


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_decode_cuda_graph():
    """The decode launch captures into a CUDA graph and replays correctly on new lengths and tables."""
    gen = torch.Generator().manual_seed(3)
    B, kvh, gqa, hd, bs = 8, 2, 4, 128, 16
    lens_a = [int(x) for x in torch.randint(0, 900, (B,), generator=gen)]
    lens_b = [int(x) for x in torch.randint(0, 900, (B,), generator=gen)]
    batch_a = make_batch(gen, [1] * B, lens_a, kvh * gqa, kvh, hd, bs, torch.bfloat16)
    batch_b = make_batch(gen, [1] * B, lens_b, kvh * gqa, kvh, hd, bs, torch.bfloat16)
    width = max(batch_a[8].shape[1], batch_b[8].shape[1])
    nblk = max(batch_a[3].shape[0], batch_b[3].shape[0])

    def padded(batch):  # same static shapes for both batches: table width and cache size
        q, k, v, kc, vc, slots, qsl, seq_lens, tables = batch
        tables = torch.nn.functional.pad(tables, (0, width - tables.shape[1]))
        kc = torch.cat([kc, kc.new_zeros(nblk - kc.shape[0], *kc.shape[1:])])
        vc = torch.cat([vc, vc.new_zeros(nblk - vc.shape[0], *vc.shape[1:])])
        return q, kc, vc, qsl, seq_lens, tables

    a, b = padded(batch_a), padded(batch_b)
    static = [x.clone() for x in a]
    out = torch.empty_like(static[0])
    ta.paged_decode(*static, 0.1, out=out)  # warm up / compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ta.paged_decode(*static, 0.1, out=out)
    for batch in (a, b):
        for dst, src in zip(static, batch):
            dst.copy_(src)
        graph.replay()
        ref = _ref_attention(*batch, 0.1)
        _close(out, ref, torch.bfloat16, ATTN_TOL)
