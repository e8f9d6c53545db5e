"""Triton kernels over the paged KV cache: store K/V, varlen (prefill) attention, split-K decode attention.

Cache layout per layer: [num_blocks, block_size, num_kv_heads, head_dim] (head_dim contiguous). Sequences
are flat (varlen): `query_start_loc` [B + 1] marks each sequence's new tokens, `seq_lens` [B] counts its
tokens in the cache after this step, and new token i of sequence b sits at position
`seq_lens[b] - query_len_b + i` and attends causally to cache positions 0..that position.

Query head h reads kv head h // (num_heads // num_kv_heads), the same grouping as SDPA's `enable_gqa`.

Softmax runs in the exp2 domain: scores are multiplied by scale * log2(e) once, so exp2 replaces exp.

This module imports triton at the top: the public dispatchers import it lazily and fall back to the
PyTorch references when triton is missing.
"""
import functools

import torch
import triton
import triton.language as tl

from fastdeploy.model_executor.ops.triton_pdl import launch_options, wait_for_previous
from fastdeploy.model_executor.ops.triton_split_k import arrived_last, check_counters, reset, tile_counters

LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------------------
# store K/V
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cb, stride_cs, stride_ch,
                     num_kv_heads,
                     BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    # one program per token: copies all kv heads of that token into its cache slot
    wait_for_previous(PDL)
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:  # padding token
        return
    offs_h = tl.arange(0, BLOCK_H)[:, None]
    offs_d = tl.arange(0, BLOCK_D)[None, :]
    mask = (offs_h < num_kv_heads) & (offs_d < HEAD_DIM)
    dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + offs_h * stride_ch + offs_d
    k = tl.load(k_ptr + t * stride_kt + offs_h * stride_kh + offs_d, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + offs_h * stride_vh + offs_d, mask=mask)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kvcache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  slot_mapping: torch.Tensor) -> None:
    """Write k/v ([T, kv_heads, head_dim]) into the cache slots; slots < 0 are skipped."""
    T, num_kv_heads, head_dim = k.shape
    if T == 0:
        return
    assert k.stride(-1) == 1 and v.stride(-1) == 1, "head_dim must be contiguous"
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    _store_kv_kernel[(T,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_kv_heads,
        BLOCK_SIZE=k_cache.shape[1], HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
        **launch_options(k.device),
    )


# ----------------------------------------------------------------------------------------------------------
# shared inner step: one tile of BLOCK_N cached keys, online softmax
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _attn_tile(q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, head_off, start, kv_end, q_pos,
               sm_scale_log2, stride_cb, stride_cs, offs_n, offs_d, d_mask,
               BLOCK_SIZE: tl.constexpr, MASK_KV: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """q: [M, D] rows against keys start..start+BLOCK_N of one sequence/kv head.

    acc [M, D], m_i [M] (running max, log2 domain), l_i [M] (running sum) are the online-softmax state.
    MASK_KV masks keys >= kv_end; CAUSAL masks key n for row r when n > q_pos[r].
    """
    n = start + offs_n
    offs = _kv_tile_offsets(bt_row, head_off, start, n < kv_end, start < kv_end, stride_cb, stride_cs, offs_n,
                            offs_d, BLOCK_SIZE)
    ld_mask = (n < kv_end)[:, None] & d_mask[None, :]
    k = tl.load(k_cache_ptr + offs, mask=ld_mask, other=0.0)
    v = tl.load(v_cache_ptr + offs, mask=ld_mask, other=0.0)
    return _online_softmax_step(q, acc, m_i, l_i, k, v, n, kv_end, q_pos, sm_scale_log2, MASK_KV, CAUSAL, IEEE)


@triton.jit
def _kv_tile_offsets(bt_row, head_off, start, n_mask, any_in_mask, stride_cb, stride_cs, offs_n, offs_d,
                     BLOCK_SIZE: tl.constexpr):
    """[BLOCK_N, BLOCK_D] element offsets in the K (or V) cache of the rows of sequence positions start + offs_n
    (their block table entries read where n_mask; any_in_mask: whether it holds any). `start` is a multiple of
    the tile's BLOCK_N rows."""
    BLOCK_N = offs_n.shape[0]
    # token n of the sequence lives in physical block block_table[n // BLOCK_SIZE], row n % BLOCK_SIZE
    if BLOCK_SIZE % BLOCK_N == 0:
        # the tile lies in one block: one table entry, a scalar base
        blk = tl.load(bt_row + start // BLOCK_SIZE, mask=any_in_mask, other=0).to(tl.int64)
        return blk * stride_cb + (start % BLOCK_SIZE) * stride_cs + head_off + (offs_n[:, None] * stride_cs
                                                                                + offs_d[None, :])
    n = start + offs_n
    blk = tl.load(bt_row + n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
    return (blk * stride_cb + (n % BLOCK_SIZE) * stride_cs + head_off)[:, None] + offs_d[None, :]


@triton.jit
def _online_softmax_step(q, acc, m_i, l_i, k, v, n, kv_end, q_pos, sm_scale_log2, MASK_KV: tl.constexpr,
                         CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """_attn_tile's update of the online-softmax state by the keys at positions n, given their K and V."""
    k = k.to(q.dtype)
    if IEEE:  # fp32 inputs: keep full precision instead of tf32
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * sm_scale_log2
    if MASK_KV:
        s = tl.where((n < kv_end)[None, :], s, float("-inf"))
    if CAUSAL:
        s = tl.where(n[None, :] <= q_pos[:, None], s, float("-inf"))
    # m_i starts at a finite -1e30, so a row whose scores are all masked gets p = 0, never NaN
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = v.to(q.dtype)
    if IEEE:
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    acc = acc * alpha[:, None] + pv
    return acc, m_new, l_i


# ----------------------------------------------------------------------------------------------------------
# prefill / varlen attention
# ----------------------------------------------------------------------------------------------------------

# the block table's row stride is the step's widest table: not specialized on (its divisibility would compile
# a variant per width class in the middle of serving)
@triton.jit(do_not_specialize=["stride_bt"])
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, qsl_ptr, seq_lens_ptr, bt_ptr, rows_ptr,
                    sm_scale_log2,
                    stride_qt, stride_qh, stride_ot, stride_oh,
                    stride_cb, stride_cs, stride_ch, stride_bt,
                    GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, HAS_ROWS: tl.constexpr,
                    PDL: tl.constexpr):
    # grid: (query blocks of the longest chunk, query heads, sequences, or with HAS_ROWS the listed ones)
    wait_for_previous(PDL)
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.load(rows_ptr + tl.program_id(2)) if HAS_ROWS else tl.program_id(2)
    q_start = tl.load(qsl_ptr + b)
    q_len = tl.load(qsl_ptr + b + 1) - q_start
    m_start = pid_m * BLOCK_M
    if m_start >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + b)
    ctx = seq_len - q_len                      # tokens cached before this chunk

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < q_len
    d_mask = offs_d < HEAD_DIM
    tok = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + tok[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    q_pos = ctx + offs_m

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    bt_row = bt_ptr + b.to(tl.int64) * stride_bt
    head_off = (h // GROUP) * stride_ch

    # keys before this block's first query position are visible to every row: whole tiles, no mask
    full_end = (ctx + m_start) // BLOCK_N * BLOCK_N
    for start in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _attn_tile(q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, head_off, start,
                                   seq_len, q_pos, sm_scale_log2, stride_cb, stride_cs, offs_n, offs_d, d_mask,
                                   BLOCK_SIZE, False, False, IEEE)
    # the diagonal: causal mask, up to the block's last query position
    end = tl.minimum(seq_len, ctx + m_start + BLOCK_M)
    for start in range(full_end, end, BLOCK_N):
        acc, m_i, l_i = _attn_tile(q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, head_off, start,
                                   seq_len, q_pos, sm_scale_log2, stride_cb, stride_cs, offs_n, offs_d, d_mask,
                                   BLOCK_SIZE, True, True, IEEE)

    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    tl.store(out_ptr + tok[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def paged_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, query_start_loc: torch.Tensor,
                  seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float, max_query_len: int,
                  out: torch.Tensor | None = None, block_m: int | None = None,
                  block_n: int | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Causal varlen attention of q ([T, heads, head_dim]) over the paged cache; any query lengths.

    `max_query_len` (a host int) sizes the grid. `rows` (int32 sequence indices) limits it to those
    sequences; the others' outputs are left untouched. Returns out ([T, heads, head_dim], q's dtype).
    """
    T, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    B = seq_lens.shape[0] if rows is None else rows.shape[0]
    if out is None:
        out = torch.empty_like(q)
    if T == 0 or B == 0:
        return out
    _check(q, k_cache, v_cache, out)
    fp32 = q.dtype == torch.float32
    if block_m is None:
        # fp32 tiles are twice the bytes: halve them to stay inside shared memory
        block_m = 64 if (max_query_len <= 64 or fp32) else 128
    if block_n is None:
        block_n = 32 if fp32 else 64
    num_warps = 8 if (block_m >= 128 and head_dim >= 128) else 4
    grid = (triton.cdiv(max_query_len, block_m), num_heads, B)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, query_start_loc, seq_lens, block_tables, rows if rows is not None else seq_lens,
        scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        GROUP=num_heads // num_kv_heads, BLOCK_SIZE=k_cache.shape[1], HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_M=block_m, BLOCK_N=block_n, IEEE=fp32,
        HAS_ROWS=rows is not None, num_warps=num_warps, num_stages=2 if fp32 else 3, **launch_options(q.device),
    )
    return out


# ----------------------------------------------------------------------------------------------------------
# decode attention (flash-decoding)
# ----------------------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["num_splits", "stride_bt"])
def _decode_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_out_ptr, part_lse_ptr, counter_ptr,
                   qsl_ptr, seq_lens_ptr, bt_ptr, sm_scale_log2, num_splits,
                   stride_qt, stride_qh, stride_ot, stride_oh,
                   stride_cb, stride_cs, stride_ch, stride_bt,
                   stride_pb, stride_ph, stride_ps,
                   GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, BLOCK_S: tl.constexpr,
                   IEEE: tl.constexpr, PDL: tl.constexpr):
    # grid: (sequences, kv heads, splits). One program takes every query head of its kv head, so each
    # K/V tile is read once for the whole group; the rows are padded to BLOCK_H >= 16 for tl.dot.
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    # Before waiting for the kernel before (see triton_pdl): the loads of what no kernel of this step writes,
    # i.e. the step's inputs and the split's first K tile but for the newest token's row, which that kernel
    # (rotary and the K/V store) writes. A chain of dependent loads (the row's bounds, its block table entry,
    # K) then overlaps that kernel instead of following it.
    tok = tl.load(qsl_ptr + b)
    is_decode = tl.load(qsl_ptr + b + 1) - tok == 1     # else (e.g. CUDA-graph padding) the row is left alone
    seq_len = tl.load(seq_lens_ptr + b)
    # each split takes an equal, BLOCK_N-aligned share of this sequence's keys; the grid stays static,
    # and splits past the end of a short sequence do no work and report an empty partial
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    lo = split * split_len
    hi = tl.minimum(lo + split_len, seq_len)

    offs_g = tl.arange(0, BLOCK_H)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    bt_row = bt_ptr + b.to(tl.int64) * stride_bt
    head_off = kvh * stride_ch
    n = lo + offs_n
    newest = seq_len - 1
    tile_end = tl.where(is_decode, hi, 0)
    offs = _kv_tile_offsets(bt_row, head_off, lo, n < tile_end, lo < tile_end, stride_cb, stride_cs, offs_n,
                            offs_d, BLOCK_SIZE)
    k = tl.load(k_cache_ptr + offs, mask=((n < tile_end) & (n != newest))[:, None] & d_mask[None, :], other=0.0)
    wait_for_previous(PDL)
    if not is_decode:
        return
    heads = kvh * GROUP + offs_g
    tok = tok.to(tl.int64)
    q = tl.load(q_ptr + tok * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    # the newest token's K row, where it falls in the first tile (zeros there in k), and the tile's V
    k += tl.load(k_cache_ptr + offs, mask=(n == newest)[:, None] & d_mask[None, :], other=0.0)
    v = tl.load(v_cache_ptr + offs, mask=(n < hi)[:, None] & d_mask[None, :], other=0.0)

    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], -1e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc, m_i, l_i = _online_softmax_step(q, acc, m_i, l_i, k, v, n, hi, 0, sm_scale_log2, True, False, IEEE)
    for start in range(lo + BLOCK_N, hi, BLOCK_N):
        acc, m_i, l_i = _attn_tile(q, acc, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, head_off, start,
                                   hi, 0, sm_scale_log2, stride_cb, stride_cs, offs_n, offs_d, d_mask,
                                   BLOCK_SIZE, True, False, IEEE)

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    mask = g_mask[:, None] & d_mask[None, :]
    if SPLIT:
        # partial result normalised within the split, plus its log2-sum-exp2; the last split to finish merges
        lse = tl.where(l_i > 0.0, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), float("-inf"))
        part = b.to(tl.int64) * stride_pb + heads * stride_ph
        tl.store(part_out_ptr + (part + split * stride_ps)[:, None] * HEAD_DIM + offs_d[None, :], out, mask=mask)
        tl.store(part_lse_ptr + part + split * stride_ps, lse, mask=g_mask)
        counter = counter_ptr + b * tl.num_programs(1) + kvh
        if arrived_last(counter, num_splits):
            _merge_splits(out_ptr + tok * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                          part_out_ptr, part_lse_ptr, part, stride_ps, num_splits, offs_d, g_mask, d_mask,
                          HEAD_DIM, BLOCK_S)
            reset(counter)
    else:
        tl.store(out_ptr + tok * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _merge_splits(out_ptrs, part_out_ptr, part_lse_ptr, part, stride_ps, num_splits, offs_d, g_mask, d_mask,
                  HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    """out [BLOCK_H, BLOCK_D] = the splits' partial softmaxes of each head (row offsets `part`) merged by weight."""
    offs_s = tl.arange(0, BLOCK_S)
    rows = part[:, None] + offs_s[None, :] * stride_ps                                  # [BLOCK_H, BLOCK_S]
    hs_mask = g_mask[:, None] & (offs_s < num_splits)[None, :]
    lse = tl.load(part_lse_ptr + rows, mask=hs_mask, other=float("-inf"), cache_modifier=".cg")
    m = tl.max(lse, 1)
    m = tl.where(m == float("-inf"), 0.0, m)    # empty sequence: every weight is 0, output 0
    w = tl.exp2(lse - m[:, None])
    denom = tl.sum(w, 1)
    denom = tl.where(denom == 0.0, 1.0, denom)
    o = tl.load(part_out_ptr + rows[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                mask=hs_mask[:, :, None] & d_mask[None, None, :], other=0.0, cache_modifier=".cg")
    out = tl.sum(o * w[:, :, None], 1) / denom[:, None]
    tl.store(out_ptrs, out.to(out_ptrs.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 8


def default_num_splits(batch: int, num_kv_heads: int, max_context: int, device: torch.device) -> int:
    """Splits per sequence from static quantities only (so a captured CUDA graph stays valid).

    Aim for about two programs per SM, with at least 128 keys of max_context per split, at most 64 splits;
    rounded to a power of two so only a few kernel variants get compiled. The splits past a shorter
    sequence's end return at once, so short contexts lose little to a grid sized for max_context. Batch 1,
    Llama-3-8B heads, max_context 1024, H200 (benchmarks/attention_splits.py): 4 -> 8 splits took 4.9 -> 5.1 us
    at 128 keys, 5.2 -> 5.4 at 256, 7.1 -> 5.5 at 384 and 10.9 -> 7.8 at 1024; batch-1 wint4 decode (256 tokens
    after 128) 2.069 -> 2.046 ms/token.
    """
    want = triton.cdiv(2 * _num_sms(device), max(batch * num_kv_heads, 1))
    splits = max(1, min(want, triton.cdiv(max_context, 128), 64))
    return triton.next_power_of_2(splits)


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, query_start_loc: torch.Tensor,
                 seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float,
                 out: torch.Tensor | None = None, num_splits: int | None = None,
                 block_n: int | None = None) -> torch.Tensor:
    """Attention for sequences with one new token each (rows with another query length are left untouched).

    No host syncs and a grid from static shapes: (batch, kv heads, num_splits), where num_splits comes
    from batch size, kv heads and block_tables.shape[1] unless given.
    """
    T, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    B = seq_lens.shape[0]
    if out is None:
        out = torch.empty_like(q)
    if T == 0 or B == 0:
        return out
    _check(q, k_cache, v_cache, out)
    group = num_heads // num_kv_heads
    if num_splits is None:
        num_splits = default_num_splits(B, num_kv_heads, block_tables.shape[1] * block_size, q.device)
    fp32 = q.dtype == torch.float32
    if block_n is None:
        block_n = 32 if fp32 else 64
    split = num_splits > 1
    if split:
        part_out = torch.empty(B, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(B, num_heads, num_splits, dtype=torch.float32, device=q.device)
        pstrides = part_lse.stride()
    else:
        part_out = part_lse = out  # unused
        pstrides = (0, 0, 0)
    counters = tile_counters(q.device)
    check_counters(counters, B * num_kv_heads)
    _decode_kernel[(B, num_kv_heads, num_splits)](
        q, k_cache, v_cache, out, part_out, part_lse, counters,
        query_start_loc, seq_lens, block_tables, scale * LOG2E, num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        *pstrides,
        GROUP=group, BLOCK_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, SPLIT=split,
        BLOCK_S=triton.next_power_of_2(num_splits), IEEE=fp32, num_warps=4, num_stages=2 if fp32 else 3,
        **launch_options(q.device),
    )
    return out


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, query_start_loc: torch.Tensor,
                    seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float,
                    max_query_len: int, prefill_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Decode kernel when every row has one new token, else the varlen kernel. In a step that mixes both,
    `prefill_rows` (int32 indices of the sequences with more than one new token) splits them: the decode
    kernel takes the single-token rows, reading each kv head's cache once for its whole query group, and
    the varlen kernel only the listed ones; without the split, its [BLOCK_M, d] query tiles would each
    carry one real row and read the cache once per query head (the Llama-3-8B throughput workload spent
    4.8 of its 34 GPU seconds in its mixed steps' attention)."""
    if max_query_len == 1:
        return paged_decode(q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, scale)
    if prefill_rows is None:
        return paged_prefill(q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, scale, max_query_len)
    out = paged_decode(q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, scale)
    return paged_prefill(q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, scale, max_query_len,
                         out=out, rows=prefill_rows)


def _check(q, k_cache, v_cache, out):
    assert q.stride(-1) == 1 and out.stride(-1) == 1, "head_dim must be contiguous"
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    assert q.shape[1] % k_cache.shape[2] == 0, "num_heads must be a multiple of num_kv_heads"
    assert q.shape[2] == k_cache.shape[3]
