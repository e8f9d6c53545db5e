"""Mixture-of-experts FFN: routing, a plain reference, the CPU path, and the dispatcher to the Triton kernels.

Expert weights are stacked: `w13` [E, 2I, H] holds each expert's [gate; up] rows, `w2` [E, H, I] its down
projection. An assignment is one (token, k) pair of `topk_ids` [T, K]; flat assignment a = t * K + k.

    out[t] = sum_k  topk_weights[t, k] * w2[e] @ (silu(gate_e(x[t])) * up_e(x[t])),   e = topk_ids[t, k]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastdeploy.model_executor.ops import triton_kernels
from fastdeploy.model_executor.ops.activation import silu_and_mul_ref


def select_experts(router_logits: torch.Tensor, correction_bias: torch.Tensor | None, top_k: int,
                   norm_min: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """ERNIE 4.5 routing: softmax over all experts in fp32; the top k are picked on softmax + correction
    bias, but weighted by the softmax alone, renormalised to sum 1 (the sum clamped at `norm_min`).
    Returns (weights fp32 [T, K], expert ids int64 [T, K])."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    scores = probs if correction_bias is None else probs + correction_bias.reshape(-1)
    ids = torch.topk(scores, top_k, dim=-1).indices
    weights = probs.gather(-1, ids)
    return weights / weights.sum(-1, keepdim=True).clamp(min=norm_min), ids


def fused_moe_ref(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor) -> torch.Tensor:
    """Every assignment with its own gathered expert weights; obviously right, memory-hungry (tests only)."""
    h = torch.einsum("th,tkoh->tko", x.float(), w13[topk_ids].float())
    y = torch.einsum("tki,tkhi->tkh", silu_and_mul_ref(h), w2[topk_ids].float())
    return (y * topk_weights.float()[..., None]).sum(1).to(x.dtype)


def fused_moe_grouped(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                      topk_ids: torch.Tensor) -> torch.Tensor:
    """The CPU path: assignments sorted by expert, then one grouped matmul per projection over the
    contiguous per-expert row ranges (no Python loop over tokens or experts)."""
    T, K = topk_ids.shape
    flat = topk_ids.flatten()
    order = flat.argsort(stable=True)                         # assignments grouped by expert
    counts = torch.zeros(w13.shape[0], dtype=torch.int64).index_add_(0, flat, torch.ones_like(flat))
    offs = counts.cumsum(0).to(torch.int32)                   # end row of each expert's group
    xs = x[order // K]
    h = torch._grouped_mm(xs, w13.transpose(1, 2), offs=offs)
    y = torch._grouped_mm(silu_and_mul_ref(h), w2.transpose(1, 2), offs=offs)
    y = y.float() * topk_weights.flatten()[order, None]
    out = torch.empty_like(y).index_copy_(0, order, y)        # back to assignment order
    return out.view(T, K, -1).sum(1).to(x.dtype)


@dataclass
class ExpertBlocks:
    """Assignments sorted by expert and padded so that every `block_m` rows belong to one expert.

    sorted_ids [max_padded]: flat assignment ids, `num_assignments` in the padding rows;
    block_expert [max_padded // block_m]: the expert of each block;
    num_padded [1]: rows in use (a device tensor: no host sync, so CUDA graphs can capture it).
    """
    sorted_ids: torch.Tensor
    block_expert: torch.Tensor
    num_padded: torch.Tensor
    block_m: int


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> ExpertBlocks:
    """Sort assignments by expert and pad each expert's group to a multiple of block_m, with sizes known
    up front (n + E * (block_m - 1) rows at most) so nothing is read back to the host."""
    flat = topk_ids.flatten()
    n, dev = flat.numel(), flat.device
    counts = torch.zeros(num_experts, dtype=torch.int64, device=dev).index_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    order = flat.argsort(stable=True)
    expert = flat[order]
    rank = torch.arange(n, device=dev) - (counts.cumsum(0) - counts)[expert]     # place within its expert
    max_padded = (n + num_experts * (block_m - 1) + block_m - 1) // block_m * block_m
    sorted_ids = torch.full((max_padded,), n, dtype=torch.int32, device=dev)
    sorted_ids[padded_end[expert] - padded[expert] + rank] = order.to(torch.int32)
    block_start = torch.arange(0, max_padded, block_m, device=dev)
    # the expert whose padded range holds the block (empty experts have empty ranges and are skipped);
    # blocks past the end get E, never read since the kernel stops at num_padded
    block_expert = torch.searchsorted(padded_end, block_start, right=True).to(torch.int32)
    return ExpertBlocks(sorted_ids, block_expert, padded_end[-1:].to(torch.int32), block_m)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """[T, H] -> [T, H]: the routed experts' weighted sum (Triton on CUDA, grouped matmuls elsewhere)."""
    if x.is_cuda and triton_kernels("triton_fused_moe") is not None:
        return triton_kernels("triton_fused_moe").fused_moe(x, w13, w2, topk_weights, topk_ids)
    return fused_moe_grouped(x, w13, w2, topk_weights, topk_ids)

