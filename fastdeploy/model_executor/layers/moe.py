"""FusedMoE: the router, E routed experts stacked for the fused kernels, and optional shared experts.

Parameters (names follow transformers' Ernie4_5_Moe modules):
    gate.weight                   [E, H]      fp32, like transformers (router logits are computed in fp32)
    gate.e_score_correction_bias  [1, E]      fp32; steers which experts are picked, not their weights
    experts.gate_up_proj          [E, 2I, H]  each expert's [gate; up] rows
    experts.down_proj             [E, H, I]
Checkpoints store experts one by one (`experts.N.gate_proj.weight`, ...); `expert_shard` maps such a
name to its stacked parameter and the (expert, piece) shard that the parameter's weight_loader fills.

Tensor parallelism (world size N > 1) splits each expert's intermediate dimension: every rank holds all E
experts with I / N of their intermediate rows (its slice of gate and of up, the matching columns of down),
routes every token alike (the router is replicated) and the ranks' partial outputs are summed. Unlike
splitting whole experts across ranks, this keeps the fused kernels as they are and the load balanced.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from fastdeploy.distributed import (divide, get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size,
                                    tensor_model_parallel_all_reduce)
from fastdeploy.model_executor.layers.linear import default_weight_loader, tp_shard
from fastdeploy.model_executor.ops.fused_moe import fused_moe, select_experts


class Router(nn.Module):
    def __init__(self, hidden_size: int, num_experts: int, top_k: int, norm_min: float):
        super().__init__()
        self.top_k = top_k
        self.norm_min = norm_min
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size, dtype=torch.float32))
        self.e_score_correction_bias = nn.Parameter(torch.empty(1, num_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(routing weights fp32 [T, K], expert ids [T, K])."""
        logits = torch.nn.functional.linear(x.float(), self.weight)
        return select_experts(logits, self.e_score_correction_bias, self.top_k, self.norm_min)


class StackedExperts(nn.Module):
    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.tp_rank, self.tp_size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        # this rank's share of each expert's intermediate rows
        self.intermediate_size = divide(intermediate_size, self.tp_size, "the experts' intermediate size")
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * self.intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, self.intermediate_size))
        for p in self.parameters():
            p.weight_loader = self.weight_loader

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
        """shard_id: (expert, piece) with piece 0 (gate), 1 (up) or None (the whole [gate; up] or down);
        None loads all experts at once. Only this rank's intermediate rows (columns of down) are copied."""
        if shard_id is None:
            if len(loaded) != len(param):
                raise ValueError(f"shape mismatch: {len(param)} experts, checkpoint {tuple(loaded.shape)}")
            for expert, weights in enumerate(loaded):
                self.weight_loader(param, weights, (expert, None))
            return
        expert, piece = shard_id
        dst = param.data[expert]
        if param is self.down_proj:
            return default_weight_loader(dst, tp_shard(loaded, 1, self.tp_rank, self.tp_size))
        if piece is None:           # [gate; up]: each half sharded on its own
            for piece, half in enumerate(loaded.chunk(2)):
                self.weight_loader(param, half, (expert, piece))
            return
        rows = dst.narrow(0, piece * self.intermediate_size, self.intermediate_size)
        default_weight_loader(rows, tp_shard(loaded, 0, self.tp_rank, self.tp_size))


# experts.N.{gate,up,gate_up,down}_proj.weight -> (stacked parameter, piece)
_EXPERT_NAME = re.compile(r"(.*\.experts)\.(\d+)\.(gate_proj|up_proj|gate_up_proj|down_proj)\.weight")
_PIECES = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
           "gate_up_proj": ("gate_up_proj", None), "down_proj": ("down_proj", None)}


def expert_shard(name: str) -> tuple[str, tuple[int, int | None]] | None:
    """`model.layers.1.mlp.experts.3.up_proj.weight` -> (`model.layers.1.mlp.experts.gate_up_proj`, (3, 1));
    None for a name that is not a single expert's weight."""
    m = _EXPERT_NAME.fullmatch(name)
    if m is None:
        return None
    param, piece = _PIECES[m[3]]
    return f"{m[1]}.{param}", (int(m[2]), piece)


class FusedMoE(nn.Module):
    """out = sum over the top-k experts of weight * expert(x), plus shared_experts(x) when given."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, intermediate_size: int,
                 norm_min: float = 1e-12, shared_experts: nn.Module | None = None):
        super().__init__()
        self.gate = Router(hidden_size, num_experts, top_k, norm_min)
        self.experts = StackedExperts(num_experts, hidden_size, intermediate_size)
        self.shared_experts = shared_experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = self.gate(x)
        out = fused_moe(x, self.experts.gate_up_proj, self.experts.down_proj, weights, ids)
        if self.experts.tp_size > 1:
            out = tensor_model_parallel_all_reduce(out)
        if self.shared_experts is not None:         # reduces its own output (row-parallel down_proj)
            out = out + self.shared_experts(x)
        return out
