"""Linear layers whose parameters know how to load themselves from checkpoint tensors.

Every parameter carries a `weight_loader(param, tensor, shard_id=None)`. Merged layers (q/k/v into
`qkv_proj`, gate/up into `gate_up_proj`) load each checkpoint tensor into its slice of the output
dimension; the same hook is where tensor-parallel sharding and quantized formats will plug in.
Weights are [out, in] (PyTorch layout); checkpoints in another layout are converted by the loader.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def default_weight_loader(param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
    if shard_id is not None:
        raise ValueError(f"this parameter is not merged, got shard {shard_id!r}")
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)}, checkpoint {tuple(loaded.shape)}")
    param.data.copy_(loaded)


class Linear(nn.Module):
    quant_method = None     # set by layers.quantization.quantize_model: it then owns the weight and the matmul

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        for p in self.parameters():
            p.weight_loader = self.weight_loader

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
        default_weight_loader(param, loaded, shard_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_method is not None:
            return self.quant_method.apply(self, x)
        return F.linear(x, self.weight, self.bias)


class MergedLinear(Linear):
    """Several projections of the same input stacked along the output dimension.

    `shard_names[i]` names the i-th block (e.g. "q", "k", "v"); a checkpoint tensor for one block is
    loaded with that name, an already merged tensor (shard_id None) is loaded whole.
    """

    def __init__(self, in_features: int, output_sizes: list[int], shard_names: list, bias: bool = False):
        super().__init__(in_features, sum(output_sizes), bias)
        self.output_sizes = output_sizes
        self.shard_names = shard_names

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:
            return default_weight_loader(param, loaded)
        i = self.shard_names.index(shard_id)
        offset = sum(self.output_sizes[:i])
        default_weight_loader(param.data.narrow(0, offset, self.output_sizes[i]), loaded)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return out.split(self.output_sizes, dim=-1)


class QKVLinear(MergedLinear):
    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
        super().__init__(hidden_size, [q_size, kv_size, kv_size], ["q", "k", "v"], bias)


class GateUpLinear(MergedLinear):
    """gate and up projections stacked as [gate; up], the layout `silu_and_mul` expects."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__(hidden_size, [intermediate_size, intermediate_size], [0, 1], bias)
