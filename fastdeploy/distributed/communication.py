"""Collectives over the tensor-parallel group; layers call them only when their world size is > 1."""
from __future__ import annotations

import torch
import torch.distributed as dist


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sums `x` over the ranks, in place; returns it. (The sum order differs from one process's matmul,
    so results move by rounding: ~1e-6 relative in fp32.)"""
    dist.all_reduce(x)
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Every rank's `x` concatenated along `dim`, in rank order."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)


def tensor_model_parallel_broadcast(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's `x` on every rank, in place; returns it."""
    dist.broadcast(x, src=0)
    return x


def min_over_ranks(n: int, device: torch.device) -> int:
    """The smallest of every rank's `n` (e.g. KV cache blocks, so that all ranks size the cache alike)."""
    t = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())
