"""FusedMoE: the router, E routed experts stacked for the fused kernels, and optional shared experts.

Parameters (names follow transformers' Ernie4_5_Moe modules):
    gate.weight                   [E, H]      fp32, like transformers (router logits are computed in fp32)
    gate.e_score_correction_bias  [1, E]      fp32; steers which experts are picked, not their weights
    experts.gate_up_proj          [E, 2I, H]  each expert's [gate; up] rows
    experts.down_proj             [E, H, I]
Checkpoints store experts one by one (`experts.N.gate_proj.weight`, ...); `expert_shard` maps such a
name to its stacked parameter and the (expert, piece) shard that the parameter's weight_loader fills.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from fastdeploy.model_executor.layers.linear import default_weight_loader
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
        self.intermediate_size = intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))
        for p in self.parameters():
            p.weight_loader = self.weight_loader

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
        """shard_id: (expert, piece) with piece 0 (gate), 1 (up) or None (the whole [gate; up] or down);
        None loads all experts at once."""
        if shard_id is None:
            return default_weight_loader(param, loaded)
        expert, piece = shard_id
        dst = param.data[expert]
        if piece is not None:
            dst = dst.narrow(0, piece * self.intermediate_size, self.intermediate_size)
        default_weight_loader(dst, loaded)


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
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out
