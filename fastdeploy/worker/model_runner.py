"""Runs the model for one scheduled step: builds the flat batch, runs the forward, samples.

Owns the model, the paged KV cache (sized by profiling free memory) and the sampler. With tensor
parallelism it holds one rank's shard of the model; rank 0's (in the engine's process) prepares each
step, hands its inputs to `send_inputs` so that the other ranks (worker_process.py) run the same
`forward`, and samples.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fastdeploy.distributed import min_over_ranks, tensor_model_parallel_broadcast, tensor_parallel
from fastdeploy.engine.request import Request
from fastdeploy.engine.sampling_params import SamplingParams
from fastdeploy.engine.scheduler import ScheduledRequest
from fastdeploy.model_executor.layers.attention import Attention, AttentionMetadata
from fastdeploy.input.multimodal import MultimodalEmbeds
from fastdeploy.model_executor.loader import get_model
from fastdeploy.model_executor.models.registry import MULTIMODAL_ARCHITECTURES
from fastdeploy.utils.logger import get_logger
from fastdeploy.utils.tensors import PinnedStaging
from fastdeploy.worker.cuda_graph import DecodeGraphs
from fastdeploy.worker.sampler import LogprobsTensors, Sampler, SamplingMetadata

# On the CPU the KV cache takes this share of the RAM that is available after the weights load,
# leaving the rest to activations, the tokenizer and whatever else runs on the machine; and no more
# than this many times what max_num_seqs full-length sequences need (the CPU allocator writes every
# page of the cache, so an oversized one costs start-up time and real memory).
CPU_KV_CACHE_FRACTION = 0.25
CPU_KV_CACHE_MAX_SEQ_FACTOR = 4


@dataclass
class StepInputs:
    input_ids: torch.Tensor        # [T] host tensors
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor     # [B, max_blocks]
    query_lens: list[int]
    seq_lens: list[int]
    sample_rows: list[int]         # index in T of each sampling request's last token
    mm_embeds: MultimodalEmbeds | None = None     # multimodal models: this step's image/video rows
    # async scheduling: input_ids[dst] = last_token_ids[src] on the device, for the tokens the previous
    # step sampled (still on the device; their host copy is a placeholder)
    inflight: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def is_decode(self) -> bool:
        return len(self.query_lens) == len(self.sample_rows) == self.input_ids.shape[0]


@dataclass
class StepOutput:
    token_ids: list[int]                          # one per sampling request, in scheduled order
    logprobs: list[dict[int, float]] | None       # idem, when any request asked for logprobs
    forward_time: float


@dataclass
class LaunchedStep:
    """A step whose forward and sampling are queued on the device. Its sampled ids stay there for the
    next step's inputs (`rows`: request id -> row of `token_ids`) while a copy travels to the host;
    `ModelRunner.collect` waits for that copy alone, not for steps queued after this one."""
    sampling: list[Request]                       # the requests that sample, in row order
    launch_time: float = 0.0                      # host seconds spent queueing it (on a CPU: running it)
    token_ids: torch.Tensor | None = None         # [S] on the model's device; None: no row samples
    rows: dict[str, int] | None = None
    host_token_ids: torch.Tensor | None = None    # pinned, filled once `ready` has passed
    ready: torch.cuda.Event | None = None
    logprobs: LogprobsTensors | None = None


class ModelRunner:
    def __init__(self, model_path: str, hf_config, args, dtype: torch.dtype, device: torch.device, rank: int = 0,
                 on_loaded: Callable[[], None] | None = None):
        """`on_loaded` runs once the weights are in, before the first collective (tensor parallelism: the
        ranks' handshake, so that a rank that fails to load is reported instead of leaving the others
        blocked in the profiling run's all-reduce until NCCL's timeout)."""
        self.args = args
        self.hf_config = hf_config
        self.dtype = dtype
        self.device = device
        self.block_size = args.block_size
        self.world_size = args.tensor_parallel_size
        self.send_inputs = None         # rank 0 under tensor parallelism: StepInputs -> the other ranks
        # the ids the latest sampling step drew, on the device, on every rank: async scheduling feeds
        # them back as the next step's inputs (`StepInputs.inflight`) without waiting for the host
        self.last_token_ids: torch.Tensor | None = None
        torch.manual_seed(args.seed)
        with tensor_parallel(rank, self.world_size):
            self.model = get_model(model_path, hf_config, dtype, device, args.load_format,
                                   quantization=args.quantization)
        if on_loaded is not None:
            on_loaded()
        self.attention_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.sampler = Sampler()
        self.vocab_size = hf_config.get_text_config().vocab_size
        # multimodal models take [3, T] (t, h, w) rotary positions and vision-encoder outputs
        self.multimodal = hf_config.architectures[0] in MULTIMODAL_ARCHITECTURES
        self.staging = PinnedStaging(device) if device.type == "cuda" else None
        self.graphs = None      # captured once the cache exists; profiling runs eagerly
        self.num_blocks = self._profile_num_blocks()
        self._allocate_kv_cache(self.num_blocks)
        if device.type == "cuda":
            self._compile_kernels()
        self.block_tables = PersistentBlockTables(-(-args.max_model_len // self.block_size))
        # decode graphs are captured with 1-D positions, so multimodal models run eagerly
        if device.type == "cuda" and not args.enforce_eager and not self.multimodal:
            self.graphs = DecodeGraphs(self.model, self.vocab_size, args.max_num_seqs,
                                       -(-args.max_model_len // self.block_size), args.max_model_len, device)
            self.graphs.capture()

    # ---- KV cache -----------------------------------------------------------------------------
    def _kv_block_bytes(self) -> int:
        a = self.attention_layers[0]
        per_layer = 2 * self.block_size * a.num_kv_heads * a.head_dim
        return per_layer * len(self.attention_layers) * torch.empty((), dtype=self.dtype).element_size()

    def _profile_num_blocks(self) -> int:
        log = get_logger()
        if self.args.num_gpu_blocks_override is not None:
            num_blocks = self.args.num_gpu_blocks_override
        elif self.device.type == "cuda":
            num_blocks = self._profile_cuda()
        else:
            useful = CPU_KV_CACHE_MAX_SEQ_FACTOR * self.args.max_num_seqs * -(-self.args.max_model_len // self.block_size)
            # the ranks' processes share the RAM
            ram = _available_ram() * CPU_KV_CACHE_FRACTION / self.world_size
            num_blocks = min(int(ram // self._kv_block_bytes()), useful)
        if self.world_size > 1:       # every rank's cache must hold the same blocks
            num_blocks = min_over_ranks(num_blocks, self.device)
        if num_blocks < 1:
            raise RuntimeError("no memory is left for the KV cache after loading the model: lower "
                               "max_num_batched_tokens or raise gpu_memory_utilization")
        log.info(f"Doing profile, the total_block_num:{num_blocks}")
        log.info(f"Reset block num, the total_block_num:{num_blocks}, "
                 f"prefill_kvcache_block_num:{int(num_blocks * self.args.kv_cache_ratio)}")
        return num_blocks

    def _profile_cuda(self) -> int:
        """Runs a fake prefill of max_num_batched_tokens tokens to measure peak activation memory;
        the KV cache gets what gpu_memory_utilization leaves after it."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        n = self.args.max_num_batched_tokens
        seq_lens = []
        while n > 0:
            seq_lens.append(min(n, self.args.max_model_len))
            n -= seq_lens[-1]
        self._allocate_kv_cache(self._fresh_blocks(seq_lens))
        # logits for max_num_seqs rows, as a step can have
        self.forward(self._fresh_sequences(seq_lens, list(range(min(self.args.max_num_seqs, sum(seq_lens))))))
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        self._free_kv_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        # memory other processes hold is not ours to take
        used_by_others = total - free - torch.cuda.memory_reserved(self.device)
        budget = total * self.args.gpu_memory_utilization - peak - used_by_others
        return int(budget // self._kv_block_bytes())

    def _fresh_blocks(self, query_lens: list[int]) -> int:
        """The blocks `_fresh_sequences(query_lens)` writes into: 0 up to this."""
        return len(query_lens) * -(-max(query_lens) // self.block_size)

    def _fresh_sequences(self, query_lens: list[int], sample_rows: list[int] | None = None) -> StepInputs:
        """A step of new sequences with these lengths, from position 0, each in its own blocks (0, 1, ... in
        order); by default each samples its last token."""
        tables = np.arange(self._fresh_blocks(query_lens), dtype=np.int32).reshape(len(query_lens), -1)
        positions = np.concatenate([np.arange(n) for n in query_lens])
        slots = _slot_mapping(tables, np.repeat(np.arange(len(query_lens)), query_lens), positions, self.block_size)
        if sample_rows is None:
            sample_rows = (np.cumsum(query_lens) - 1).tolist()
        return StepInputs(torch.zeros(len(positions), dtype=torch.long), torch.from_numpy(positions),
                          torch.from_numpy(slots), torch.from_numpy(tables), query_lens, query_lens, sample_rows)

    # (query lengths of a step): prefills of token counts in each of the quantized GEMM's row-count classes, and
    # prefill chunks of <= 64 and > 64 tokens (the attention's two query tiles) alone and beside a decode row
    WARM_UP_STEPS = ([16], [32], [64], [100], [1, 40], [1, 99])

    def _compile_kernels(self) -> None:
        """Runs, once at start, the step shapes whose kernel variants neither the profiling prefill nor the decode
        graphs compile, and random sampling (compiled by torch.compile), so that their JIT compilation (about
        a second each on an H200 host) is not paid inside the first requests that need them. The steps write
        K/V into blocks that no request holds yet."""
        start = time.perf_counter()
        limit = min(self.args.max_model_len, self.args.max_num_batched_tokens)
        for query_lens in self.WARM_UP_STEPS:
            if (sum(query_lens) <= limit and len(query_lens) <= self.args.max_num_seqs
                    and self._fresh_blocks(query_lens) <= self.num_blocks):
                self.forward(self._fresh_sequences(query_lens))
        for rows in (1, 2):         # torch.compile specializes on one row
            params = [SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=0).resolved()] * rows
            meta = SamplingMetadata.build(params, [[0]] * rows, [[]] * rows, [[]] * rows, [[]] * rows,
                                          self.vocab_size, self.device)
            self.sampler(torch.zeros(rows, self.vocab_size, device=self.device), meta)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        # long only on a machine whose Triton / torch.compile caches are cold
        get_logger().info(f"warm-up steps (kernel compilation) took {time.perf_counter() - start:.1f} s")

    def _allocate_kv_cache(self, num_blocks: int) -> None:
        a = self.attention_layers[0]
        self.kv_cache = torch.zeros(2, len(self.attention_layers), num_blocks, self.block_size,
                                    a.num_kv_heads, a.head_dim, dtype=self.dtype, device=self.device)
        for i, layer in enumerate(self.attention_layers):
            layer.k_cache = self.kv_cache[0, i]
            layer.v_cache = self.kv_cache[1, i]

    def _free_kv_cache(self) -> None:
        for layer in self.attention_layers:
            layer.k_cache = layer.v_cache = torch.empty(0)
        del self.kv_cache
        torch.cuda.empty_cache()

    # ---- one step -----------------------------------------------------------------------------
    def _prepare(self, scheduled: list[ScheduledRequest], prev: LaunchedStep | None = None) -> StepInputs:
        """The step's flat batch as host tensors (one copy for all of them to the device later). A request whose
        last token `prev` sampled gets a placeholder, filled on the device from `last_token_ids`.
        Positions and slots are computed by numpy over the whole batch: a decode step of hundreds of
        requests must not cost Python work per token."""
        reqs = [s.request for s in scheduled]
        rows = self.block_tables.rows_for(reqs)
        # one pass over the requests (its counts read once, as locals: it runs for every request at every
        # step); the rest is numpy over the whole batch
        query_lens, starts, sample_rows = [], [], []
        input_ids, fill_dst, fill_src = [], [], []
        max_blocks = 0
        for s in scheduled:
            req, n = s.request, s.num_new_tokens
            start = req.num_computed_tokens
            query_lens.append(n)
            starts.append(start)
            if len(req.block_table) > max_blocks:
                max_blocks = len(req.block_table)
            num_known = len(req.prompt_token_ids) + len(req.output_token_ids)
            if n == 1 and start >= num_known:               # (the common decode step under async scheduling)
                in_flight = True
            else:
                input_ids += req.tokens(start, start + n)
                in_flight = req.num_inflight and start + n > num_known
            if in_flight:                                   # its last token is still on the device
                fill_dst.append(len(input_ids))
                fill_src.append(prev.rows[req.request_id])
                input_ids.append(0)
            if s.samples:
                sample_rows.append(len(input_ids) - 1)
        tables = self.block_tables.table[rows, :max_blocks]
        q = np.asarray(query_lens)
        ends = np.cumsum(q)
        token_row = np.repeat(np.arange(len(q)), q)
        positions = np.repeat(np.asarray(starts) - (ends - q), q) + np.arange(ends[-1])
        slots = _slot_mapping(tables, token_row, positions, self.block_size)
        seq_lens = (np.asarray(starts) + q).tolist()
        # (lists to tensors through numpy: torch.tensor takes 3x as long on a list of a few hundred ints)
        x = StepInputs(torch.from_numpy(np.array(input_ids, dtype=np.int64)), torch.from_numpy(positions),
                       torch.from_numpy(slots), torch.from_numpy(tables), query_lens, seq_lens, sample_rows)
        if fill_dst:
            x.inflight = (torch.from_numpy(np.array(fill_dst, dtype=np.int64)),
                          torch.from_numpy(np.array(fill_src, dtype=np.int64)))
        if self.multimodal:
            self._add_multimodal(x, scheduled)
        return x

    def _add_multimodal(self, x: StepInputs, scheduled: list[ScheduledRequest]) -> None:
        """[3, T] positions, and the encoder rows of the image/video tokens in this step. Each request's
        images are encoded once, on its first step, and kept (chunks and recomputes reuse them)."""
        positions, parts = [], []
        for s in scheduled:
            req, start = s.request, s.request.num_computed_tokens
            end = start + s.num_new_tokens
            mm = req.mm_inputs
            if mm is not None and req.mm_encoded is None:
                req.mm_encoded = mm.encode(self.model)
            positions.append(mm.get_positions(start, end) if mm is not None
                             else torch.arange(start, end).expand(3, -1))
            parts.append((mm, req.mm_encoded, start, end))
        x.positions = torch.cat(positions, dim=1)
        x.mm_embeds = MultimodalEmbeds.for_step(parts, self.device)

    def execute(self, scheduled: list[ScheduledRequest]) -> StepOutput:
        return self.collect(self.launch(scheduled))

    @torch.inference_mode()
    def launch(self, scheduled: list[ScheduledRequest], prev: LaunchedStep | None = None) -> LaunchedStep:
        """Queues the step's forward and sampling on the device without waiting for it. `prev`, the step
        queued before, provides the tokens it sampled that this step feeds back."""
        start = time.perf_counter()
        step = LaunchedStep([s.request for s in scheduled if s.samples])
        x = self._prepare(scheduled, prev)
        if self.send_inputs is not None:
            self.send_inputs(x)
        out = self.forward(x)
        if out is not None:
            self._sample(step, *out)
            self.last_token_ids = step.token_ids if self.graphs is None else self.graphs.keep_sampled(step.token_ids)
            if self.world_size > 1:
                tensor_model_parallel_broadcast(self.last_token_ids)
        step.launch_time = time.perf_counter() - start
        return step

    def _sample(self, step: LaunchedStep, logits: torch.Tensor, argmax_ids: torch.Tensor | None) -> None:
        """Queues sampling (none where the batch takes `argmax_ids`, the argmax a decode graph computed), and the
        copy of the sampled ids to pinned host memory, marked by an event."""
        meta = self._sampling_metadata(step.sampling)
        if argmax_ids is not None and meta.takes_argmax:
            step.token_ids = argmax_ids
        else:
            out = self.sampler(logits[:, :self.vocab_size], meta)
            step.token_ids, step.logprobs = out.token_ids, out.logprobs
        step.rows = {req.request_id: i for i, req in enumerate(step.sampling)}
        if step.token_ids.is_cuda:
            step.host_token_ids = torch.empty(step.token_ids.shape, dtype=step.token_ids.dtype, pin_memory=True)
            step.host_token_ids.copy_(step.token_ids, non_blocking=True)
            step.ready = torch.cuda.Event()
            step.ready.record()
        else:
            step.host_token_ids = step.token_ids

    def collect(self, step: LaunchedStep) -> StepOutput:
        """Waits for the step's sampled tokens and returns them (with their logprobs) on the host. The
        forward time is the step's queueing plus this wait: the host time the step itself took."""
        start = time.perf_counter()
        if step.token_ids is None:
            return StepOutput([], None, step.launch_time)
        if step.ready is not None:
            step.ready.synchronize()
        token_ids = step.host_token_ids.tolist()
        logprobs = None if step.logprobs is None else _logprobs_as_dicts(step.logprobs, token_ids, step.sampling)
        return StepOutput(token_ids, logprobs, step.launch_time + time.perf_counter() - start)

    @torch.inference_mode()
    def follow(self, x: StepInputs) -> None:
        """A worker rank's step: the forward rank 0 runs, on this rank's shard, then receiving the ids
        rank 0 sampled, which the next step may feed back."""
        if self.forward(x) is not None:
            k = len(x.sample_rows)
            self.last_token_ids = (torch.empty(k, dtype=torch.long, device=self.device) if self.graphs is None
                                   else self.graphs.sampled_ids[:k])
            tensor_model_parallel_broadcast(self.last_token_ids)

    @torch.inference_mode()
    def forward(self, x: StepInputs) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The logits of the sampling rows and, from a decode graph, their argmax; None when no row samples
        (prefill chunks only)."""
        inflight = None if x.inflight is None else (x.inflight[0].numpy(), x.inflight[1].numpy())
        if self.graphs is not None and x.is_decode and self.graphs.fits(len(x.query_lens)):
            return self.graphs.run(x.input_ids.numpy(), x.positions.numpy(), x.slot_mapping.numpy(), x.seq_lens,
                                   x.block_tables.numpy(), inflight)
        query_lens = np.asarray(x.query_lens, dtype=np.int32)
        query_start_loc = np.zeros(len(query_lens) + 1, dtype=np.int32)
        np.cumsum(query_lens, out=query_start_loc[1:])
        mixed = query_lens.size > 0 and 1 == query_lens.min() < query_lens.max()
        host = [x.input_ids.numpy(), x.positions.numpy(), x.slot_mapping.numpy(), x.block_tables.numpy(),
                np.asarray(x.seq_lens, dtype=np.int32), query_start_loc, np.asarray(x.sample_rows, dtype=np.int64)]
        if mixed:
            host.append(np.flatnonzero(query_lens > 1).astype(np.int32))
        if inflight is not None:
            host += inflight
        input_ids, positions, slots, tables, seq_lens, query_start_loc, rows, *rest = self._upload(host)
        prefill_rows = rest.pop(0) if mixed else None
        if rest:        # the previous step's tokens, still on the device, into their slots
            dst, src = rest
            input_ids.index_copy_(0, dst, self.last_token_ids[src])
        md = AttentionMetadata(slot_mapping=slots, query_start_loc=query_start_loc, seq_lens=seq_lens,
                               block_tables=tables, max_query_len=max(x.query_lens), max_seq_len=max(x.seq_lens),
                               query_lens_cpu=x.query_lens, seq_lens_cpu=x.seq_lens, prefill_rows=prefill_rows)
        extra = {} if x.mm_embeds is None else {"mm_embeds": x.mm_embeds}
        hidden = self.model(input_ids, positions, md, **extra)
        if not x.sample_rows:
            return None
        return self.model.compute_logits(hidden[rows]), None

    def _upload(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """The step's host arrays on the device: one copy through pinned memory on a GPU."""
        if self.staging is not None:
            return self.staging.to_device(arrays)
        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]

    def _sampling_metadata(self, reqs: list[Request]) -> SamplingMetadata:
        # checked first, in one cheap pass: the common greedy batch needs nothing built per row
        if all(r.argmax_only and len(r.output_token_ids) + r.num_inflight >= r.sampling_params.min_tokens
               for r in reqs):
            return SamplingMetadata.argmax_only()
        # eos and stop ids are banned until min_tokens are out
        bans = [r.min_tokens_ban_ids if r.num_output_tokens + r.num_inflight < r.sampling_params.min_tokens else []
                for r in reqs]
        return SamplingMetadata.build(
            [r.sampling_params for r in reqs], [r.prompt_token_ids for r in reqs],
            [r.output_token_ids for r in reqs], bans, [r.bad_words_token_ids for r in reqs],
            self.vocab_size, self.device, num_inflight=[r.num_inflight for r in reqs],
            forced_token_ids=[r.forced_token() for r in reqs])


class PersistentBlockTables:
    """A host mirror of the running requests' block tables, one row per request kept across steps, so
    a step writes only the entries added since the last one. Blocks are only ever appended to a
    request's table; freeing gives the request a new list, which is then mirrored afresh."""

    def __init__(self, max_blocks: int, rows: int = 64):
        self.table = np.zeros((rows, max_blocks), dtype=np.int32)
        self.free_rows = list(range(rows - 1, -1, -1))
        self.mirrored: dict[str, tuple[int, list[int], int]] = {}   # request id -> (row, table, entries)

    def rows_for(self, reqs: list[Request]) -> np.ndarray:
        rows = []
        for req in reqs:
            entry = self.mirrored.get(req.request_id)
            row, mirrored, n = entry or (self._new_row(), None, 0)
            table = req.block_table
            if table is not mirrored:
                n = 0
            if entry is None or len(table) > n:     # (most decode steps add no block: nothing to write)
                self.table[row, n:len(table)] = table[n:]
                self.mirrored[req.request_id] = (row, table, len(table))
            rows.append(row)
        return np.asarray(rows)

    def release(self, req: Request) -> None:
        entry = self.mirrored.pop(req.request_id, None)
        if entry is not None:
            self.free_rows.append(entry[0])

    def _new_row(self) -> int:
        if not self.free_rows:
            n = self.table.shape[0]
            self.table = np.concatenate([self.table, np.zeros_like(self.table)])
            self.free_rows = list(range(2 * n - 1, n - 1, -1))
        return self.free_rows.pop()


def _slot_mapping(tables: np.ndarray, token_row: np.ndarray, positions: np.ndarray, block_size: int) -> np.ndarray:
    """Each token's KV-cache slot: the block its position falls in, from its sequence's row of `tables`."""
    return tables[token_row, positions // block_size].astype(np.int64) * block_size + positions % block_size


def _logprobs_as_dicts(lp, token_ids: list[int], reqs: list[Request]) -> list[dict[int, float] | None]:
    """Per row: {token: logprob} for the sampled token and the request's top `logprobs` tokens."""
    top_ids, top_lps, sampled = lp.top_token_ids.tolist(), lp.top_logprobs.tolist(), lp.sampled_logprobs.tolist()
    out = []
    for i, req in enumerate(reqs):
        k = req.sampling_params.logprobs
        if k is None:
            out.append(None)
            continue
        row = {token_ids[i]: sampled[i]}
        top = slice(None) if k == -1 else slice(k)      # -1: the whole vocabulary
        for t, v in zip(top_ids[i][top], top_lps[i][top]):
            row.setdefault(t, v)
        out.append(row)
    return out


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
