"""Token embedding and the LM head (which may share the embedding's weight).

Tensor parallelism (world size N > 1): the vocabulary is split across ranks, ceil(vocab / N) rows each
(the last rank's padded with zero rows). The embedding looks up the ids in its range, zeros the others
and sums over the ranks; the LM head computes its vocabulary columns and gathers them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastdeploy.distributed import (get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size,
                                    tensor_model_parallel_all_gather, tensor_model_parallel_all_reduce)


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.tp_size = get_tensor_model_parallel_world_size()
        rows = -(-vocab_size // self.tp_size)
        self.vocab_start = get_tensor_model_parallel_rank() * rows
        self.num_real_rows = max(0, min(rows, vocab_size - self.vocab_start))    # the rest is padding
        self.weight = nn.Parameter(torch.empty(rows, hidden_size))
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is not None:
            raise ValueError(f"this parameter is not merged, got shard {shard_id!r}")
        if loaded.shape != (self.vocab_size, param.shape[1]):
            raise ValueError(f"shape mismatch: vocabulary {self.vocab_size} x hidden {param.shape[1]}, "
                             f"checkpoint {tuple(loaded.shape)}")
        n = self.num_real_rows
        param.data[:n].copy_(loaded.narrow(0, self.vocab_start, n))
        param.data[n:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        elsewhere = (local < 0) | (local >= self.num_real_rows)
        out = F.embedding(local.masked_fill(elsewhere, 0), self.weight)
        return tensor_model_parallel_all_reduce(out.masked_fill_(elsewhere.unsqueeze(-1), 0))


class LMHead(VocabEmbedding):
    """[vocab, hidden] output projection. `tie_to(embedding)` makes it share the embedding's weight."""

    def tie_to(self, embedding: VocabEmbedding) -> None:
        self.weight = embedding.weight

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = F.linear(hidden, self.weight)
        if self.tp_size > 1:
            logits = tensor_model_parallel_all_gather(logits)[..., :self.vocab_size]
        return logits.float()
