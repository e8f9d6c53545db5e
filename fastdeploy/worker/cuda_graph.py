"""CUDA graphs for decode steps.

A decode step launches a few hundred small kernels; replaying them as one graph removes the launch
gaps, which dominate at small batch sizes. Graphs are captured at start for a ladder of batch sizes up
to `max_num_seqs`; a step replays the smallest graph that fits, padding the extra rows (slot -1: no
KV write; seq_len 0: attention writes zeros), and reads the logits of its real rows.
"""
from __future__ import annotations

import torch

from fastdeploy.model_executor.layers.attention import AttentionMetadata


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [s for s in (1, 2, 4, 8) if s < max_num_seqs]
    sizes += list(range(16, max_num_seqs, 16))
    return sizes + [max_num_seqs]


class DecodeGraphs:
    def __init__(self, model, max_num_seqs: int, max_blocks_per_seq: int, block_size: int,
                 max_model_len: int, device: torch.device):
        self.model = model
        self.device = device
        self.sizes = capture_sizes(max_num_seqs)
        n = self.sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.max_model_len = max_model_len
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _metadata(self, n: int) -> AttentionMetadata:
        return AttentionMetadata(slot_mapping=self.slot_mapping[:n], query_start_loc=self.query_start_loc[:n + 1],
                                 seq_lens=self.seq_lens[:n], block_tables=self.block_tables[:n],
                                 max_query_len=1, max_seq_len=self.max_model_len)

    def _forward(self, n: int) -> torch.Tensor:
        hidden = self.model(self.input_ids[:n], self.positions[:n], self._metadata(n))
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        for n in reversed(self.sizes):          # largest first, so smaller graphs reuse its memory pool
            self._forward(n)                    # warm-up: compiles kernels, settles allocations
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self._forward(n)
            pool = graph.pool()
            self.graphs[n] = (graph, logits)
        torch.cuda.synchronize(self.device)

    def fits(self, num_seqs: int) -> bool:
        return num_seqs <= self.sizes[-1]

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
            seq_lens: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
        """Inputs are the real rows', on the device; returns their logits (a view into the graph's output)."""
        n = input_ids.shape[0]
        size = next(s for s in self.sizes if s >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(slot_mapping)
        self.seq_lens[:n].copy_(seq_lens)
        self.block_tables[:n, :block_tables.shape[1]].copy_(block_tables)
        if size > n:                            # padding rows: no KV write, empty context
            self.slot_mapping[n:size].fill_(-1)
            self.seq_lens[n:size].zero_()
        graph, logits = self.graphs[size]
        graph.replay()
        return logits[:n]
