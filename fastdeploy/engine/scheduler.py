"""Continuous batching: which requests run in the next step, and how many tokens each.

Each step has a budget of `max_num_batched_tokens` tokens and `max_num_seqs` sequences. Running
requests go first (decodes, and prompts still being prefilled in chunks), in admission order; then
waiting requests are admitted first come, first served while blocks and budget last. When a running
request cannot get a block, the most recently admitted running request is preempted: its blocks are
freed and it goes back to the front of the queue, to be recomputed later.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fastdeploy.engine.block_manager import BlockManager
from fastdeploy.engine.request import Request, RequestStatus


@dataclass(slots=True)
class ScheduledRequest:
    request: Request
    num_new_tokens: int
    samples: bool       # the step reaches the end of the request's tokens: its logits give a token


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 enable_chunked_prefill: bool = True, prefill_block_limit: int | None = None):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        # FastDeploy's kv_cache_ratio: new requests are admitted while the used blocks stay under
        # this many, keeping the rest for running requests to grow into (fewer preemptions)
        self.prefill_block_limit = prefill_block_limit or block_manager.num_blocks
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens

        # (this loop runs for every running request at every step: the request's counts are read once, as
        # locals, rather than through its properties)
        running, allocate, scheduled = RequestStatus.RUNNING, self.block_manager.allocate, out.scheduled
        for req in list(self.running):
            if budget == 0:
                break
            if req.status is not running:               # preempted earlier in this loop
                continue
            known = len(req.output_token_ids) + req.num_inflight
            if known >= req.max_tokens:
                continue        # its last token is on the device: done once that arrives
            num_tokens = len(req.prompt_token_ids) + known
            num_new = num_tokens - req.num_computed_tokens
            if num_new > budget and not self.enable_chunked_prefill:
                continue
            num_new = min(num_new, budget)
            while not allocate(req, num_new):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    break
            if req.status is not running:
                continue
            scheduled.append(ScheduledRequest(req, num_new, req.num_computed_tokens + num_new == num_tokens))
            budget -= num_new

        if out.preempted:        # memory is tight: admitting more would only preempt again
            return out

        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            cached = self.block_manager.find_cached_prefix(req)
            num_new = req.num_tokens - req.num_computed_tokens - len(cached) * self.block_manager.block_size
            if num_new > budget and not self.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if self.running and (self.block_manager.num_used_blocks
                                 + self.block_manager.blocks_needed(req.num_tokens) - len(cached)
                                 > self.prefill_block_limit):
                break
            if not self.block_manager.allocate(req, num_new, cached):
                break
            self.waiting.popleft()
            if req.num_preemptions == 0:     # a readmission's hits are its own earlier blocks
                req.num_cached_tokens = len(cached) * self.block_manager.block_size
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            samples = req.num_computed_tokens + num_new == req.num_tokens_with_inflight
            out.scheduled.append(ScheduledRequest(req, num_new, samples))
            budget -= num_new
        return out

    def _preempt(self, req: Request) -> None:
        self.block_manager.free(req)
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.running.remove(req)
        self.waiting.appendleft(req)

    def update_after_step(self, scheduled: list[ScheduledRequest]) -> None:
        """Advances computed-token counts once the step's forward has run (before new tokens are
        appended), and registers the blocks it filled with the prefix cache."""
        caching, bs = self.block_manager.enable_prefix_caching, self.block_manager.block_size
        for s in scheduled:
            req = s.request
            req.num_computed_tokens += s.num_new_tokens
            if caching and req.num_computed_tokens >= (len(req.block_hashes) + 1) * bs:   # a block may be full
                self.block_manager.cache_full_blocks(req)

    def finish(self, req: Request) -> None:
        req.status = RequestStatus.FINISHED
        if req in self.running:
            self.running.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        self.block_manager.free(req)
