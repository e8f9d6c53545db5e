"""Requests inside the engine, and the outputs a user gets back (FastDeploy's RequestOutput family)."""
from __future__ import annotations

import enum
import functools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastdeploy.engine.sampling_params import SamplingParams


@dataclass
class RequestMetrics:
    """Timestamps are `time.time()` seconds; the other fields are durations in seconds."""
    arrival_time: float = 0.0            # the request reached the engine
    inference_start_time: float = 0.0    # first scheduled into a batch
    first_token_time: float = 0.0        # duration from inference start to the first output token
    time_in_queue: float = 0.0           # inference_start_time - arrival_time
    model_forward_time: float = 0.0      # summed forward time of the steps this request took part in
    model_execute_time: float = 0.0      # arrival to finish: queueing, pre/post-processing, forwards


@dataclass
class CompletionOutput:
    index: int = 0
    send_idx: int = 0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    reasoning_content: str | None = None
    finish_reason: str | None = None
    # per output token: {token_id: logprob} of the sampled token and the top `logprobs` tokens
    logprobs: list[dict[int, float]] | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: CompletionOutput
    finished: bool = False
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    num_cached_tokens: int = 0
    error_code: int = 200
    error_msg: str = ""


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    """One sequence being generated. Preemption frees its blocks and resets `num_computed_tokens`:
    when readmitted it recomputes its prompt and the tokens it already produced."""
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    max_tokens: int                                   # resolved against max_model_len
    eos_token_ids: frozenset[int] = frozenset()
    stop_token_ids: frozenset[int] = frozenset()
    bad_words_token_ids: list[list[int]] = field(default_factory=list)
    index: int = 0                                    # which of the n samples of its prompt
    extra_keys: Any = None                            # e.g. image hashes, mixed into prefix-cache keys
    mm_inputs: Any = None                             # MultimodalInputs of an image/video prompt
    mm_encoded: Any = None                            # its vision-encoder output, kept across preemption
    # the end-of-thinking token ids that sampling_params.reasoning_max_tokens forces, when it applies
    reasoning_end_ids: list[int] | None = None
    output_token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] | None = None
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    # tokens sampled by steps still on the device (async scheduling): scheduled on, not yet in output_token_ids
    num_inflight: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)   # chained keys of its full blocks, in order
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    finish_reason: str | None = None
    error_msg: str = ""
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(arrival_time=time.time()))

    @property
    def min_tokens_ban_ids(self) -> list[int]:
        """The ids that would end the request, banned while fewer than min_tokens are out."""
        ids = self.stop_token_ids if self.sampling_params.ignore_eos else self.stop_token_ids | self.eos_token_ids
        return sorted(ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens_with_inflight(self) -> int:
        """The tokens the scheduler plans with: the known ones and those still on the device."""
        return len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_inflight

    @functools.cached_property
    def needs_output_history(self) -> bool:
        """Whether sampling this request's next token reads its earlier output tokens' values (penalties,
        multi-token bad words): then it cannot be scheduled while one of them is still on the device."""
        return (self.sampling_params.has_penalties or any(len(word) > 1 for word in self.bad_words_token_ids)
                or self.reasoning_end_ids is not None)

    @functools.cached_property
    def argmax_only(self) -> bool:
        """Whether the request's tokens are the raw logits' argmax once min_tokens are out: greedy, with no
        penalty, bad word, forced token or logprobs. (A reasoning limit cleared later keeps it False.)"""
        p = self.sampling_params
        return (p.is_greedy and not p.has_penalties and p.logprobs is None and not self.bad_words_token_ids
                and self.reasoning_end_ids is None)

    def forced_token(self) -> int | None:
        """The token the reasoning limit forces next, if any: after reasoning_max_tokens output tokens,
        the end-of-thinking ids one by one (the engine clears `reasoning_end_ids` when the thinking
        ended within the limit)."""
        ids = self.reasoning_end_ids
        if ids is None:
            return None
        i = len(self.output_token_ids) + self.num_inflight - self.sampling_params.reasoning_max_tokens
        return ids[i] if 0 <= i < len(ids) else None

    def tokens(self, start: int, end: int) -> list[int]:
        n = len(self.prompt_token_ids)
        if end <= n:
            return self.prompt_token_ids[start:end]
        if start >= n:
            return self.output_token_ids[start - n:end - n]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - n]

    @property
    def is_finished(self) -> bool:
        return self.status == RequestStatus.FINISHED
