"""Attention over the paged KV cache.

The model runner builds one `AttentionMetadata` per step for a flat (varlen) batch: the new tokens of
every scheduled sequence are concatenated, `query_start_loc` marks where each sequence's tokens start,
and `seq_lens` counts each sequence's tokens in the cache once this step's keys are written. A new
token of sequence b at query offset i sits at absolute position `seq_lens[b] - query_len_b + i` and
attends to cache positions 0..that position (causal, with earlier chunks and cached prefix blocks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastdeploy.model_executor.ops import paged_attention as ops
from fastdeploy.model_executor.ops.rotary import apply_rotary_and_store_kv


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor      # [T] int64: cache slot (block * block_size + offset) of each new token, -1 = skip
    query_start_loc: torch.Tensor   # [B + 1] int32: cumulative query lengths
    seq_lens: torch.Tensor          # [B] int32: tokens in the cache per sequence after this step
    block_tables: torch.Tensor      # [B, max_blocks] int32: physical block ids, padded with 0
    max_query_len: int
    max_seq_len: int
    # host copies, so the CPU path can split decodes from prefills without a device sync
    query_lens_cpu: list[int] | None = None
    seq_lens_cpu: list[int] | None = None
    # [P] int32, in steps that mix single-token rows with longer chunks: the rows with more than one token
    prefill_rows: torch.Tensor | None = None

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


class Attention(nn.Module):
    """Rotates q and k, writes this step's K/V into the layer's cache and attends over the cache.

    `k_cache` / `v_cache` ([num_blocks, block_size, num_kv_heads, head_dim]) are bound by the model
    runner after it sizes the cache.
    """

    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int, interleaved_rope: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        self.interleaved_rope = interleaved_rope
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        """q: [T, num_heads, head_dim], k/v: [T, num_kv_heads, head_dim], rope: this step's (cos, sin) rows
        -> [T, num_heads * head_dim]."""
        T = q.shape[0]
        q = apply_rotary_and_store_kv(q, k, v, *rope, self.interleaved_rope, self.k_cache, self.v_cache,
                                      attn_metadata.slot_mapping)
        out = ops.paged_attention(q, self.k_cache, self.v_cache, attn_metadata, self.scale)
        return out.view(T, self.num_heads * self.head_dim)
