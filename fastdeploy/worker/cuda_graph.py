"""CUDA graphs for decode steps.

A decode step launches a few hundred small kernels; replaying them as one graph removes the launch
gaps, which dominate at small batch sizes. Graphs are captured at start for a ladder of batch sizes up
to `max_num_seqs`; a step replays the smallest graph that fits, padding the extra rows (slot -1: no
KV write; seq_len 0: attention writes zeros), and reads the logits of its real rows.

Everything a replay reads lives in one device buffer: first the ids the latest step sampled, then the
step's inputs, laid out per graph size. A step's inputs are packed on the host in that layout and land
there in one copy, and the graph itself gathers each row's token from the sampled ids (async scheduling:
a decode row's last token is still on the device) or from its uploaded id. The graph ends with the argmax
of the logits into the sampled ids, which a greedy batch takes as they are (another batch samples from the
logits and its ids overwrite them). So a greedy step adds no kernel launch outside the graph but that copy.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from fastdeploy.model_executor.layers.attention import AttentionMetadata
from fastdeploy.utils.tensors import PinnedStaging, packed_offsets
from fastdeploy.worker.sampler import argmax


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [s for s in (1, 2, 4, 8) if s < max_num_seqs]
    sizes += list(range(16, max_num_seqs, 16))
    return sizes + [max_num_seqs]


@dataclass
class GraphInputs:
    """A graph size's inputs, as views of one byte buffer (the device's, or a pinned host one laid out alike)."""
    token_ids: torch.Tensor        # [S] int64: the rows' ids where the host knows them
    token_index: torch.Tensor      # [S] int64: each row's token in `DecodeGraphs.token_table`
    positions: torch.Tensor        # [S] int64
    slot_mapping: torch.Tensor     # [S] int64
    seq_lens: torch.Tensor         # [S] int32
    block_tables: torch.Tensor     # [S, max_blocks] int32; last, so a step uploads the rows it has only

    FIELDS = (("token_ids", torch.int64), ("token_index", torch.int64), ("positions", torch.int64),
              ("slot_mapping", torch.int64), ("seq_lens", torch.int32), ("block_tables", torch.int32))

    @classmethod
    @functools.cache        # (read three times by every replay)
    def layout(cls, size: int, max_blocks: int) -> tuple[int, ...]:
        """Byte offsets of the fields for a graph of `size` rows."""
        lengths = [size] * (len(cls.FIELDS) - 1) + [size * max_blocks]
        offsets, _ = packed_offsets([n * dtype.itemsize for n, (_, dtype) in zip(lengths, cls.FIELDS)])
        return tuple(offsets)

    @classmethod
    def view(cls, buffer: torch.Tensor, size: int, max_blocks: int) -> GraphInputs:
        offsets = cls.layout(size, max_blocks)
        fields = {}
        for (name, dtype), off in zip(cls.FIELDS, offsets):
            n = size * max_blocks if name == "block_tables" else size
            fields[name] = buffer[off:off + n * dtype.itemsize].view(dtype)
        fields["block_tables"] = fields["block_tables"].view(size, max_blocks)
        return cls(**fields)


class DecodeGraphs:
    def __init__(self, model, vocab_size: int, max_num_seqs: int, max_blocks_per_seq: int, max_model_len: int,
                 device: torch.device):
        self.model = model
        self.vocab_size = vocab_size
        self.device = device
        self.sizes = capture_sizes(max_num_seqs)
        self.max_blocks = max_blocks_per_seq
        self.max_model_len = max_model_len
        n = self.sizes[-1]
        # the buffer: the sampled ids (int64 [n]), then from byte `inputs_offset` the uploaded inputs
        self.inputs_offset = -(-n * 8 // 16) * 16
        inputs_bytes = self.layout_bytes(n, n)
        self.buffer = torch.zeros(self.inputs_offset + inputs_bytes, dtype=torch.uint8, device=device)
        self.sampled_ids = self.buffer[:n * 8].view(torch.int64)
        # uploaded ids follow the sampled ones, so one gather reads either: row i's own id is entry own_index[i]
        self.token_table = self.buffer[:self.inputs_offset + n * 8].view(torch.int64)
        self.own_index = np.arange(n, dtype=np.int64) + self.inputs_offset // 8
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.inputs_buffer = self.buffer[self.inputs_offset:]
        self.inputs = {s: GraphInputs.view(self.inputs_buffer, s, self.max_blocks) for s in self.sizes}
        self.staging = PinnedStaging(device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def layout_bytes(self, size: int, rows: int) -> int:
        """Bytes of a graph size's inputs through `rows` rows of its block table (the rest are never read)."""
        return GraphInputs.layout(size, self.max_blocks)[-1] + rows * self.max_blocks * 4

    def _forward(self, n: int) -> torch.Tensor:
        x = self.inputs[n]
        md = AttentionMetadata(slot_mapping=x.slot_mapping, query_start_loc=self.query_start_loc[:n + 1],
                               seq_lens=x.seq_lens, block_tables=x.block_tables, max_query_len=1,
                               max_seq_len=self.max_model_len)
        hidden = self.model(self.token_table[x.token_index], x.positions, md)
        logits = self.model.compute_logits(hidden)
        argmax(logits[:, :self.vocab_size], out=self.sampled_ids[:n])
        return logits

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        for n in reversed(self.sizes):          # largest first, so smaller graphs reuse its memory pool
            x = self.inputs[n]                  # padding rows only: the captures write no KV
            x.token_index.copy_(torch.from_numpy(self.own_index[:n]))
            x.token_ids.zero_()
            x.slot_mapping.fill_(-1)
            x.seq_lens.zero_()
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

    def keep_sampled(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Copies a step's sampled ids to where the next replay's in-flight rows read them (unless they are
        there already: the graph's argmax); returns that view."""
        kept = self.sampled_ids[:token_ids.shape[0]]
        if token_ids.data_ptr() != kept.data_ptr():
            kept.copy_(token_ids)
        return kept

    def run(self, input_ids: np.ndarray, positions: np.ndarray, slot_mapping: np.ndarray, seq_lens: list[int],
            block_tables: np.ndarray, inflight: tuple[np.ndarray, np.ndarray] | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replays the graph for a decode step of these host inputs; returns its rows' logits (a view into the
        graph's output) and their argmax (a view of the sampled ids). `inflight` (rows, sampled rows): those
        rows take the latest sampled ids instead of their uploaded ones."""
        n = input_ids.shape[0]
        size = next(s for s in self.sizes if s >= n)
        host = GraphInputs.view(self.staging.host_buffer(self.layout_bytes(size, size)), size, self.max_blocks)
        token_ids, token_index = host.token_ids.numpy(), host.token_index.numpy()
        token_ids[:n] = input_ids
        token_ids[n:] = 0
        token_index[:] = self.own_index[:size]
        if inflight is not None:
            token_index[inflight[0]] = inflight[1]
        _pad(host.positions.numpy(), positions, 0)
        _pad(host.slot_mapping.numpy(), slot_mapping, -1)       # padding rows: no KV write,
        _pad(host.seq_lens.numpy(), seq_lens, 0)                # and an empty context
        host.block_tables.numpy()[:n, :block_tables.shape[1]] = block_tables
        self.staging.send(self.layout_bytes(size, n), self.inputs_buffer)
        graph, logits = self.graphs[size]
        graph.replay()
        return logits[:n], self.sampled_ids[:n]


def _pad(out: np.ndarray, values, fill: int) -> None:
    out[:len(values)] = values
    out[len(values):] = fill
