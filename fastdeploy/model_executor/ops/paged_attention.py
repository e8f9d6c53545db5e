"""Paged attention in plain PyTorch: the CPU path, and the reference the Triton kernels are tested against.

Cache layout per layer: k_cache, v_cache of shape [num_blocks, block_size, num_kv_heads, head_dim].
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from fastdeploy.model_executor.ops import triton_kernels


def store_kvcache_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      slot_mapping: torch.Tensor) -> None:
    """Write k/v ([T, kv_heads, head_dim]) into the cache slots; slots < 0 are skipped (padding)."""
    keep = slot_mapping >= 0
    if not bool(keep.all()):
        k, v, slot_mapping = k[keep], v[keep], slot_mapping[keep]
    kc = k_cache.view(-1, *k_cache.shape[2:])
    vc = v_cache.view(-1, *v_cache.shape[2:])
    kc.index_copy_(0, slot_mapping, k.to(kc.dtype))
    vc.index_copy_(0, slot_mapping, v.to(vc.dtype))


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` cached tokens of one sequence: [length, kv_heads, head_dim]."""
    block_size = cache.shape[1]
    nblocks = (length + block_size - 1) // block_size
    return cache[block_table[:nblocks].long()].flatten(0, 1)[:length]


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                        scale: float, query_lens_cpu: list[int] | None = None,
                        seq_lens_cpu: list[int] | None = None) -> torch.Tensor:
    """Causal attention of q ([T, heads, head_dim], flat over sequences) over each sequence's cache.

    Decodes (one query token) are batched into one padded SDPA call; prefill chunks run one SDPA call
    each with a mask that offsets the causal diagonal by the tokens already in the cache.
    """
    if query_lens_cpu is None:
        query_lens_cpu = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
    if seq_lens_cpu is None:
        seq_lens_cpu = seq_lens.tolist()
    out = torch.empty_like(q)
    starts = [0, *itertools.accumulate(query_lens_cpu)]
    decode_rows = [b for b, n in enumerate(query_lens_cpu) if n == 1]
    if decode_rows:
        _decode_batch(q, k_cache, v_cache, block_tables, scale, out, decode_rows, starts, seq_lens_cpu)
    for b, n in enumerate(query_lens_cpu):
        if n <= 1:
            continue
        s, L = starts[b], seq_lens_cpu[b]
        k = gather_kv(k_cache, block_tables[b], L)
        v = gather_kv(v_cache, block_tables[b], L)
        qpos = torch.arange(L - n, L, device=q.device)[:, None]
        mask = torch.arange(L, device=q.device)[None, :] <= qpos
        out[s:s + n] = _sdpa(q[s:s + n].unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), mask, scale)[0]
    return out


def _decode_batch(q, k_cache, v_cache, block_tables, scale, out, rows, starts, seq_lens_cpu):
    """The single-token queries of sequences `rows`, as one padded batch: attention in fp32, written out as
    two batched matmuls and a softmax rather than through SDPA, whose CPU kernel and layout changes cost more
    than the whole computation for one query token (SmolLM2 decode on 2 cores: 223 -> 60 us per layer). Each
    (sequence, kv head) is one matrix of the 3-D products: PyTorch's 4-D matmul of the same shapes took twice
    as long, and advanced indexing of the cache blocks three times as long as index_select."""
    block_size = k_cache.shape[1]
    lens = [seq_lens_cpu[b] for b in rows]
    max_len = max(lens)
    nblocks = (max_len + block_size - 1) // block_size
    every_row = len(rows) == q.shape[0]          # a decode-only step: sequence b is token b
    tables = block_tables[:len(rows)] if every_row else block_tables[torch.tensor(rows, device=q.device)]
    blocks = tables[:, :nblocks].reshape(-1).long()
    R, kvh, d = len(rows), k_cache.shape[2], k_cache.shape[3]
    k, v = (cache.index_select(0, blocks).view(R, nblocks * block_size, kvh, d)[:, :max_len]
            .transpose(1, 2).float().reshape(R * kvh, max_len, d) for cache in (k_cache, v_cache))
    tok = None if every_row else torch.tensor([starts[b] for b in rows], device=q.device)
    qh = (q if every_row else q[tok]).float().reshape(R * kvh, -1, d) * scale   # [R * kvh, group, d]
    scores = torch.bmm(qh, k.transpose(1, 2))                                   # [R * kvh, group, L]
    if min(lens) < max_len:
        pad = torch.arange(max_len, device=q.device)[None, :] >= torch.tensor(lens, device=q.device)[:, None]
        scores.view(R, kvh, -1, max_len).masked_fill_(pad[:, None, None, :], float("-inf"))
    o = torch.bmm(scores.softmax(dim=-1), v).view(R, -1, d).to(q.dtype)
    if every_row:
        out.copy_(o)
    else:
        out[tok] = o


def _sdpa(q, k, v, mask, scale):
    """q: [B, Tq, H, d], k/v: [B, L, kvh, d], mask: [B or 1, Tq, L] bool -> [B, Tq, H, d]."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1) if mask.dim() == 3 else mask,
                                       scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return o.transpose(1, 2)


def store_kvcache(k, v, k_cache, v_cache, slot_mapping) -> None:
    if k.is_cuda and triton_kernels("triton_attention") is not None:
        triton_kernels("triton_attention").store_kvcache(k, v, k_cache, v_cache, slot_mapping)
    else:
        store_kvcache_ref(k, v, k_cache, v_cache, slot_mapping)


def paged_attention(q, k_cache, v_cache, md, scale: float) -> torch.Tensor:
    if q.is_cuda and triton_kernels("triton_attention") is not None:
        return triton_kernels("triton_attention").paged_attention(
            q, k_cache, v_cache, md.query_start_loc, md.seq_lens, md.block_tables, scale, md.max_query_len,
            md.prefill_rows)
    return paged_attention_ref(q, k_cache, v_cache, md.query_start_loc, md.seq_lens, md.block_tables, scale,
                               md.query_lens_cpu, md.seq_lens_cpu)
