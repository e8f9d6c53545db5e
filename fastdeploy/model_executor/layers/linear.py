"""Linear layers whose parameters know how to load themselves from checkpoint tensors.

Every parameter carries a `weight_loader(param, tensor, shard_id=None)`. Merged layers (q/k/v into
`qkv_proj`, gate/up into `gate_up_proj`) load each checkpoint tensor into its slice of the output
dimension. Weights are [out, in] (PyTorch layout); checkpoints in another layout are converted by the loader.

Tensor parallelism (world size N > 1, see fastdeploy/distributed): merged layers are column-parallel (each
rank holds its rows of every block and its output is its shard of the features), `RowParallelLinear` is
row-parallel (each rank holds its input columns and the partial outputs are summed by an all-reduce). The
weight loaders copy only this rank's slice of each checkpoint tensor. At N = 1 both are plain linears.
"""
from __future__ import annotations

import torch
from torch import nn

from fastdeploy.distributed import (divide, get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size,
                                    tensor_model_parallel_all_reduce)
from fastdeploy.model_executor.ops.quant_matmul import linear as dense_linear


def default_weight_loader(param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
    if shard_id is not None:
        raise ValueError(f"this parameter is not merged, got shard {shard_id!r}")
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)}, checkpoint {tuple(loaded.shape)}")
    param.data.copy_(loaded)


def tp_shard(loaded: torch.Tensor, dim: int, index: int, pieces: int) -> torch.Tensor:
    """Piece `index` of `loaded` cut in `pieces` equal pieces along `dim` (a view: only it is copied)."""
    if loaded.shape[dim] % pieces:
        raise ValueError(f"shape mismatch: checkpoint {tuple(loaded.shape)} does not split in {pieces} along dim {dim}")
    size = loaded.shape[dim] // pieces
    return loaded.narrow(dim, index * size, size)


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
        return dense_linear(x, self.weight, self.bias)


class RowParallelLinear(Linear):
    """Input features split across ranks; the partial outputs are summed over the ranks. The bias is
    held by rank 0 only (zeros elsewhere), so the sum adds it once."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        self.tp_rank, self.tp_size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        super().__init__(divide(in_features, self.tp_size, "the input features of a row-parallel linear"),
                         out_features, bias)

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
        if param is self.bias:
            default_weight_loader(param, loaded if self.tp_rank == 0 else torch.zeros_like(loaded), shard_id)
        else:
            default_weight_loader(param, tp_shard(loaded, 1, self.tp_rank, self.tp_size), shard_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if self.tp_size == 1 else tensor_model_parallel_all_reduce(out)


class MergedLinear(Linear):
    """Several projections of the same input stacked along the output dimension, column-parallel.

    `shard_names[i]` names the i-th block (e.g. "q", "k", "v"); a checkpoint tensor for one block is
    loaded with that name, an already merged tensor (shard_id None) block by block. `output_sizes` are
    the full sizes; block i is cut in `tp_pieces[i]` pieces (default: the world size), of which this rank
    holds piece `rank * tp_pieces[i] // world_size`: fewer pieces than ranks replicates each piece.
    """

    def __init__(self, in_features: int, output_sizes: list[int], shard_names: list, bias: bool = False,
                 tp_pieces: list[int] | None = None):
        rank, world = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        self.tp_pieces = tp_pieces or [world] * len(output_sizes)
        self.full_sizes = output_sizes
        self.output_sizes = [divide(size, n, f"the {name!r} block of a merged linear")      # this rank's
                             for size, n, name in zip(output_sizes, self.tp_pieces, shard_names)]
        self.piece = [rank * n // world for n in self.tp_pieces]
        super().__init__(in_features, sum(self.output_sizes), bias)
        self.shard_names = shard_names

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:
            if loaded.shape[0] != sum(self.full_sizes):
                raise ValueError(f"shape mismatch: merged blocks {self.full_sizes}, checkpoint {tuple(loaded.shape)}")
            for name, block in zip(self.shard_names, loaded.split(self.full_sizes)):
                self.weight_loader(param, block, name)
            return
        i = self.shard_names.index(shard_id)
        default_weight_loader(param.data.narrow(0, sum(self.output_sizes[:i]), self.output_sizes[i]),
                              tp_shard(loaded, 0, self.piece[i], self.tp_pieces[i]))

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return out.split(self.output_sizes, dim=-1)


class QKVLinear(MergedLinear):
    """q, k and v for all heads. Each rank holds its num_heads / N query heads and the key/value heads
    they read: num_kv_heads / N of them, or, with fewer key/value heads than ranks, one replicated head.
    `num_heads` and `num_kv_heads` are this rank's counts."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        world = get_tensor_model_parallel_world_size()
        kv_pieces = min(world, num_kv_heads)
        if world % kv_pieces:
            raise ValueError(f"tensor_parallel_size {world} and the {num_kv_heads} key/value heads: "
                             "one must divide the other")
        self.num_heads = divide(num_heads, world, "the number of attention heads")
        self.num_kv_heads = divide(num_kv_heads, kv_pieces, "the number of key/value heads")
        q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
        super().__init__(hidden_size, [q_size, kv_size, kv_size], ["q", "k", "v"], bias,
                         tp_pieces=[world, kv_pieces, kv_pieces])


class GateUpLinear(MergedLinear):
    """gate and up projections stacked as [gate; up], the layout `silu_and_mul` expects."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__(hidden_size, [intermediate_size, intermediate_size], [0, 1], bias)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """silu(gate(x)) * up(x): [..., intermediate_size]. Where the GEMV kernel takes x (a single row on CUDA),
        the activation runs in its launch: one kernel and one round trip through memory fewer per layer."""
        if self.quant_method is not None:
            return self.quant_method.apply(self, x, gated=True)
        return dense_linear(x, self.weight, self.bias, gated=True)
