"""The token sampler: logits processing, filtering and seeded sampling, vectorised over the batch.

Per row, in order (as FastDeploy's and vLLM's samplers do):
  1. logprobs of the raw logits, when requested;
  2. repetition penalty (tokens seen in prompt or output: positive logits divided by it,
     negative ones multiplied), then frequency and presence penalties on output counts;
  3. bans: eos/stop ids while the output is shorter than min_tokens, and bad words;
  4. greedy rows take the argmax; the others divide by temperature, keep the top-k, then the
     top-p nucleus, then tokens with at least min_p times the top token's probability, and sample.

Sampling is seeded and batch-invariant: the noise for (seed, step, token id) comes from a
counter-based integer hash, so a request draws the same tokens whatever row it sits in, whatever
else is in the batch, and on CPU or GPU alike. Nothing here syncs with the host per row.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from fastdeploy.engine.sampling_params import NEUTRAL_DEFAULTS, SamplingParams
from fastdeploy.model_executor.ops import triton_kernels
from fastdeploy.utils.tensors import to_device

_MASK32 = 0xFFFFFFFF


@dataclass
class SamplingMetadata:
    """Per-row sampling state for one step, on the logits' device.

    Token-id tensors are padded with `vocab_size`, an id that lands in a scratch column
    and is dropped (see `_token_counts`). The plain Python fields are known on the host,
    so branching on them costs no device sync. `argmax_only()` is the metadata of a batch that only
    takes argmaxes (every row greedy, nothing penalised, banned or forced, no logprobs): its tensors
    are None, and such a step copies nothing to the device for sampling.
    """

    temperature: torch.Tensor  # [B] float32, 1.0 on greedy rows
    top_k: torch.Tensor  # [B] int64, vocab_size when disabled
    top_p: torch.Tensor  # [B] float32
    min_p: torch.Tensor  # [B] float32
    presence_penalty: torch.Tensor  # [B] float32
    frequency_penalty: torch.Tensor  # [B] float32
    repetition_penalty: torch.Tensor  # [B] float32
    greedy: torch.Tensor  # [B] bool
    seeds: torch.Tensor  # [B] int64
    steps: torch.Tensor  # [B] int64: tokens the request has generated so far (the hash counter)
    prompt_token_ids: torch.Tensor  # [B, Lp] int64; empty unless some row is penalised
    output_token_ids: torch.Tensor  # [B, Lo] int64; empty unless some row is penalised
    banned_token_ids: torch.Tensor  # [B, Lb] int64: min_tokens and bad-word bans for this step
    forced_token_ids: torch.Tensor  # [B] int64: the only token row b may take this step; -1: free
    max_num_logprobs: int | None  # top logprobs to return (max over rows); None: no logprobs
    all_greedy: bool
    apply_penalties: bool
    apply_filters: bool  # some sampled row uses top-k, top-p or min-p
    any_banned: bool
    any_forced: bool

    @classmethod
    def argmax_only(cls) -> SamplingMetadata:
        return cls(**dict.fromkeys(_TENSOR_FIELDS), max_num_logprobs=None, all_greedy=True,
                   apply_penalties=False, apply_filters=False, any_banned=False, any_forced=False)

    @property
    def takes_argmax(self) -> bool:
        """Every row takes the argmax of its logits as they come: greedy, no processing, no logprobs."""
        return self.all_greedy and self.max_num_logprobs is None and not (
            self.apply_penalties or self.any_banned or self.any_forced)

    @classmethod
    def build(cls, params: list[SamplingParams], prompt_token_ids: list[list[int]],
              output_token_ids: list[list[int]], ban_token_ids: list[list[int]],
              bad_words_token_ids: list[list[list[int]]], vocab_size: int,
              device: torch.device | str, num_inflight: list[int] | None = None,
              forced_token_ids: list[int | None] | None = None) -> SamplingMetadata:
        """Gathers the batch's state into tensors. `params` must be `resolved()`.

        `ban_token_ids[b]` (eos and stop ids) is banned while row b's output is shorter than
        its min_tokens. Each `bad_words_token_ids[b]` entry is a token sequence: its last token
        is banned when the output ends with the rest (always, for a single token).
        `num_inflight[b]` output tokens of row b are sampled but not in `output_token_ids` yet (async
        scheduling): they count towards the output length; their values are not needed.
        `forced_token_ids[b]`, when not None, is the one token row b may take (the reasoning limit's
        end of thinking), whatever its logits.
        """
        rows = len(params)
        if not rows:
            raise ValueError("SamplingMetadata.build: empty batch")
        if not all(len(x) == rows for x in (prompt_token_ids, output_token_ids, ban_token_ids,
                                             bad_words_token_ids)):
            raise ValueError("SamplingMetadata.build: every per-row list needs one entry per row")
        per_row = [_row(p, vocab_size) for p in params]
        greedy = [r.greedy for r in per_row]
        apply_penalties = any(r.penalized for r in per_row)
        apply_filters = any(r.filtered for r in per_row)
        num_inflight = num_inflight or [0] * rows
        num_output = [len(out) + k for out, k in zip(output_token_ids, num_inflight)]
        banned = [_banned_tokens(p, out, n, bans, bad_words) if bans or bad_words else []
                  for p, out, n, bans, bad_words in zip(params, output_token_ids, num_output, ban_token_ids,
                                                         bad_words_token_ids)]
        requested = [p.logprobs for p in params if p.logprobs is not None]
        if not requested:
            max_num_logprobs = None
        else:
            max_num_logprobs = vocab_size if -1 in requested else min(max(requested), vocab_size)

        # Per-row scalars travel in two tensors, one host-to-device copy each: a step's host cost
        # must not grow by a copy per field.
        # (numpy builds them from nested lists several times faster than torch.tensor)
        floats = torch.from_numpy(np.array([r.floats for r in per_row], dtype=np.float32))
        forced = [-1 if t is None else t for t in forced_token_ids or [None] * rows]
        ints = torch.from_numpy(np.array([(r.top_k, r.seed, n, f) for r, n, f in zip(per_row, num_output, forced)],
                                         dtype=np.int64))
        floats, ints = to_device(floats, device), to_device(ints, device)
        # Penalties need the token history; without them it is not worth the copy to the device.
        no_history = [[] for _ in params]
        return cls(
            temperature=floats[:, 0], top_p=floats[:, 1], min_p=floats[:, 2], presence_penalty=floats[:, 3],
            frequency_penalty=floats[:, 4], repetition_penalty=floats[:, 5], greedy=floats[:, 6] > 0.5,
            top_k=ints[:, 0], seeds=ints[:, 1], steps=ints[:, 2], forced_token_ids=ints[:, 3],
            prompt_token_ids=_padded("prompt_token_ids",
                                     prompt_token_ids if apply_penalties else no_history,
                                     vocab_size, device),
            output_token_ids=_padded("output_token_ids",
                                     output_token_ids if apply_penalties else no_history,
                                     vocab_size, device),
            banned_token_ids=_padded("banned token ids", banned, vocab_size, device),
            max_num_logprobs=max_num_logprobs,
            all_greedy=all(greedy),
            apply_penalties=apply_penalties,
            apply_filters=apply_filters,
            any_banned=any(banned),
            any_forced=any(f >= 0 for f in forced),
        )


_TENSOR_FIELDS = [f.name for f in dataclasses.fields(SamplingMetadata) if f.type == "torch.Tensor"]


@dataclass(frozen=True)
class _Row:
    """What one request's SamplingParams contribute to every step, computed once per request."""
    floats: tuple[float, ...]    # temperature, top_p, min_p, presence, frequency, repetition, greedy
    top_k: int
    seed: int
    greedy: bool
    penalized: bool
    filtered: bool


def _row(params: SamplingParams, vocab_size: int) -> _Row:
    # cached on the params object: the engine gives each request its own resolved copy
    row = params.__dict__.get("_sampler_row")
    if row is None or row.top_k > vocab_size:
        if any(getattr(params, f) is None for f in NEUTRAL_DEFAULTS):
            raise ValueError(f"SamplingMetadata.build needs resolved SamplingParams, got {params}")
        p = params
        greedy = p.is_greedy
        row = _Row(floats=(1.0 if greedy else p.temperature, p.top_p, p.min_p, p.presence_penalty,
                           p.frequency_penalty, p.repetition_penalty, float(greedy)),
                   top_k=p.top_k if p.top_k > 0 else vocab_size, seed=p.seed, greedy=greedy,
                   penalized=p.has_penalties,
                   filtered=not greedy and (p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0))
        params.__dict__["_sampler_row"] = row
    return row


def _banned_tokens(params: SamplingParams, output: list[int], num_output: int, ban_ids: list[int],
                   bad_words: list[list[int]]) -> list[int]:
    banned = list(ban_ids) if num_output < params.min_tokens else []
    for word in bad_words:
        if not word:
            raise ValueError("bad_words_token_ids: empty token sequence")
        prefix = word[:-1]
        if not prefix or output[len(output) - len(prefix):] == prefix:
            banned.append(word[-1])
    return banned


def _padded(name: str, rows: list[list[int]], vocab_size: int, device) -> torch.Tensor:
    if not any(rows):
        return torch.empty(len(rows), 0, dtype=torch.int64, device=device)
    tensors = [torch.tensor(r, dtype=torch.int64) for r in rows]
    # Range-checked on the host copy, where it is a cheap vectorised reduction.
    flat = torch.cat(tensors)
    if flat.numel() and (flat.min() < 0 or flat.max() >= vocab_size):
        raise ValueError(f"{name}: token ids must be in [0, {vocab_size})")
    return to_device(pad_sequence(tensors, batch_first=True, padding_value=vocab_size), device)


@dataclass
class LogprobsTensors:
    """Logprobs of the raw (unprocessed) logits; the top ones ordered best first."""

    top_token_ids: torch.Tensor  # [B, k] int64
    top_logprobs: torch.Tensor  # [B, k] float32
    sampled_logprobs: torch.Tensor  # [B] float32
    sampled_ranks: torch.Tensor  # [B] int64: 1 + number of tokens at least as likely, others


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    logprobs: LogprobsTensors | None


class Sampler(nn.Module):
    def forward(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        if meta.takes_argmax:
            # nothing to process: the argmax of the logits as they come (a bf16/fp16 value converts to fp32
            # exactly, so the fp32 copy would pick the same token)
            return SamplerOutput(token_ids=argmax(logits), logprobs=None)
        logits = logits.float()
        if meta.all_greedy:
            token_ids = self.process_logits(logits, meta).argmax(dim=-1)
        else:
            probs = self.compute_probs(logits, meta)
            race = _compiled_race() if probs.is_cuda else _exponential_race
            token_ids = race(probs, meta.seeds, meta.steps)
        logprobs = None
        if meta.max_num_logprobs is not None:
            logprobs = _logprobs(torch.log_softmax(logits, dim=-1), token_ids, meta.max_num_logprobs)
        return SamplerOutput(token_ids=token_ids, logprobs=logprobs)

    @staticmethod
    def process_logits(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """Steps 2-3: penalties, bans and forced tokens, out of place."""
        vocab_size = logits.shape[-1]
        if meta.apply_penalties:
            counts = _token_counts(meta.output_token_ids, vocab_size)
            seen = (counts > 0) | (_token_counts(meta.prompt_token_ids, vocab_size) > 0)
            penalty = meta.repetition_penalty[:, None]
            logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
            logits = (logits - counts * meta.frequency_penalty[:, None]
                      - (counts > 0) * meta.presence_penalty[:, None])
        if meta.any_banned:
            banned = _token_counts(meta.banned_token_ids, vocab_size) > 0
            logits = logits.masked_fill(banned, float("-inf"))
        if meta.any_forced:
            forced = meta.forced_token_ids[:, None]
            others = torch.arange(vocab_size, device=logits.device)[None, :] != forced
            logits = logits.masked_fill((forced >= 0) & others, float("-inf"))
        return logits

    def compute_probs(self, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """The distribution each row samples from: one-hot on the argmax for greedy rows."""
        logits = self.process_logits(logits.float(), meta)
        one_hot = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
        if meta.all_greedy:
            return one_hot
        logits = logits / meta.temperature[:, None]
        if meta.apply_filters:
            logits = _filter(logits, meta)
        return torch.where(meta.greedy[:, None], one_hot, logits.softmax(dim=-1))


def _token_counts(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, V] float32 occurrence counts of each id per row; the padding id is dropped."""
    counts = torch.zeros(token_ids.shape[0], vocab_size + 1, device=token_ids.device)
    counts.scatter_add_(1, token_ids, torch.ones_like(token_ids, dtype=counts.dtype))
    return counts[:, :vocab_size]


def _filter(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """Top-k, then top-p on the top-k renormalised distribution, then min-p; one sort."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    keep = ranks[None, :] < meta.top_k[:, None]
    top_k_probs = probs * keep
    top_k_probs = top_k_probs / top_k_probs.sum(dim=-1, keepdim=True)
    # A token stays in the nucleus while the mass ranked above it is short of top_p. top_p=1
    # keeps everything outright: the float32 cumsum may reach 1.0 before the tail ends.
    mass_above = top_k_probs.cumsum(dim=-1) - top_k_probs
    top_p = meta.top_p[:, None]
    keep &= (mass_above < top_p) | (top_p >= 1.0)
    # min_p compares with the top token's probability; ratios do not depend on normalisation.
    keep &= probs >= meta.min_p[:, None] * probs[:, :1]
    keep[:, 0] = True  # the most likely token always survives
    return logits.scatter(1, order, sorted_logits.masked_fill(~keep, float("-inf")))


def argmax(logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """logits.argmax(-1) for [B, V] logits, the first index among equal maxima (into `out`, int64 [B], if given):
    on a GPU in one launch (triton_argmax.py; PyTorch's argmax reduces a row of 128k logits in a single thread
    block)."""
    kernels = triton_kernels("triton_argmax") if logits.is_cuda else None
    if kernels is None or logits.stride(-1) != 1:
        return torch.argmax(logits, dim=-1, out=out)
    return kernels.argmax(logits, out)


def _exponential_race(probs: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """argmax_v p_v / E_v with E_v ~ Exp(1) picks token v with probability p_v."""
    noise = -torch.log(hash_uniform(seeds, steps, probs.shape[-1]))
    return (probs / noise).argmax(dim=-1)


@functools.cache
def _compiled_race():
    """On GPU the hash's ~30 elementwise int64 passes over [B, V] fuse into one kernel.
    Compiled on first use: importing the compiler is slow and CPU runs do not need it."""
    return torch.compile(_exponential_race, dynamic=True)


def _logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor, k: int) -> LogprobsTensors:
    top_logprobs, top_token_ids = logprobs.topk(k, dim=-1)
    sampled = logprobs.gather(1, token_ids[:, None])
    return LogprobsTensors(
        top_token_ids=top_token_ids,
        top_logprobs=top_logprobs,
        sampled_logprobs=sampled[:, 0],
        sampled_ranks=(logprobs >= sampled).sum(dim=-1),
    )


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for x in [0, 2**32), in 16-bit halves so that no int64
    product overflows (signed overflow is undefined behaviour in the kernels)."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection on [0, 2**32) with full avalanche."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def hash_uniform(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, V] float32 uniforms in (0, 1), a pure function of (seed, step, token id).

    Integer ops only, so CPU and GPU agree bit for bit. 23 bits per value: (k + 0.5) / 2**23
    is exact in float32, so u is never 0 or 1 and -log(u) is finite and positive.
    """
    key = _fmix32(seeds & _MASK32)
    key = _fmix32(key ^ (seeds >> 32))  # seeds < 2**60: the high half fits in 32 bits
    key = _fmix32(key ^ (steps & _MASK32))
    # Multiplying by an odd constant spreads neighbouring ids over all 32 bits (still a bijection).
    spread = _mul32(torch.arange(vocab_size, device=seeds.device), 0x9E3779B1)
    bits = _fmix32(key[:, None] ^ spread[None, :])
    return ((bits >> 9).float() + 0.5) * 2.0 ** -23
