"""Per-request sampling parameters (FastDeploy's `SamplingParams`), validated at construction."""
from __future__ import annotations

import dataclasses
import math
import numbers
import random
from dataclasses import dataclass
from typing import Any

# FastDeploy draws unset seeds from, and accepts seeds in, [0, MAX_SEED].
MAX_SEED = 922337203685477580
# FastDeploy caps top logprobs at 20; -1 asks for the whole vocabulary.
MAX_LOGPROBS = 20

# Temperatures below this are greedy (dividing by them overflows float32), as in vLLM.
GREEDY_TEMPERATURE = 1e-5

# Values used for the optional fields when neither the request nor the model's
# generation_config.json sets them: plain sampling from the model's distribution.
NEUTRAL_DEFAULTS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
}


@dataclass
class SamplingParams:
    """How to sample one request's output, with FastDeploy's fields and defaults.

    `temperature`, `top_p` and the three penalties default to None, meaning "the model's
    generation_config.json, else neutral"; `resolved()` fills them in before sampling.
    `stop` is normalised to a list of strings. `top_k` of 0 or -1 disables top-k,
    `logprobs=-1` returns logprobs for the whole vocabulary.
    """

    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int | None = None
    reasoning_max_tokens: int | None = None
    min_tokens: int = 1
    logprobs: int | None = None
    bad_words: list[str] | None = None
    # Token ids that may never be sampled (FastDeploy's pre-tokenized bad words).
    bad_words_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False

    def __post_init__(self):
        if self.seed is None:
            self.seed = random.randint(0, MAX_SEED)
        self._verify_args()

    def _verify_args(self) -> None:
        self.n = _int("n", self.n)
        _require(self.n >= 1, "n", ">= 1", self.n)

        for name in ("presence_penalty", "frequency_penalty"):
            value = _optional(_float, name, getattr(self, name))
            setattr(self, name, value)
            _require(value is None or -2.0 <= value <= 2.0, name, "in [-2, 2]", value)
        self.repetition_penalty = _optional(_float, "repetition_penalty", self.repetition_penalty)
        _require(self.repetition_penalty is None or self.repetition_penalty > 0.0,
                 "repetition_penalty", "> 0", self.repetition_penalty)
        self.temperature = _optional(_float, "temperature", self.temperature)
        _require(self.temperature is None or self.temperature >= 0.0,
                 "temperature", ">= 0 (0 means greedy)", self.temperature)
        self.top_p = _optional(_float, "top_p", self.top_p)
        _require(self.top_p is None or 0.0 <= self.top_p <= 1.0, "top_p", "in [0, 1]", self.top_p)
        self.top_k = _int("top_k", self.top_k)
        _require(self.top_k >= -1, "top_k", "0 or -1 (disabled) or >= 1", self.top_k)
        self.min_p = _float("min_p", self.min_p)
        _require(0.0 <= self.min_p <= 1.0, "min_p", "in [0, 1]", self.min_p)
        self.seed = _int("seed", self.seed)
        _require(0 <= self.seed <= MAX_SEED, "seed", f"in [0, {MAX_SEED}]", self.seed)

        self.max_tokens = _optional(_int, "max_tokens", self.max_tokens)
        _require(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", ">= 1", self.max_tokens)
        self.reasoning_max_tokens = _optional(_int, "reasoning_max_tokens", self.reasoning_max_tokens)
        _require(self.reasoning_max_tokens is None or self.reasoning_max_tokens >= 1,
                 "reasoning_max_tokens", ">= 1", self.reasoning_max_tokens)
        _require(self.reasoning_max_tokens is None or self.max_tokens is None
                 or self.reasoning_max_tokens <= self.max_tokens,
                 "reasoning_max_tokens", f"<= max_tokens={self.max_tokens}", self.reasoning_max_tokens)
        self.min_tokens = _int("min_tokens", self.min_tokens)
        _require(self.min_tokens >= 0, "min_tokens", ">= 0", self.min_tokens)
        _require(self.max_tokens is None or self.min_tokens <= self.max_tokens,
                 "min_tokens", f"<= max_tokens={self.max_tokens}", self.min_tokens)
        self.logprobs = _optional(_int, "logprobs", self.logprobs)
        _require(self.logprobs is None or -1 <= self.logprobs <= MAX_LOGPROBS,
                 "logprobs", f"in [0, {MAX_LOGPROBS}] or -1 (whole vocabulary)", self.logprobs)

        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = _optional(_str_list, "stop", self.stop)
        self.bad_words = _optional(_str_list, "bad_words", self.bad_words)
        self.stop_token_ids = _optional(_token_id_list, "stop_token_ids", self.stop_token_ids)
        self.bad_words_token_ids = _optional(_token_id_list, "bad_words_token_ids", self.bad_words_token_ids)
        for name in ("ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}.")

    @property
    def is_greedy(self) -> bool:
        """Whether the request takes the most likely token (of resolved params)."""
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1 or self.top_p == 0.0

    @property
    def has_penalties(self) -> bool:
        """Whether any penalty (of resolved params) changes the logits."""
        return (self.presence_penalty, self.frequency_penalty, self.repetition_penalty) != (0.0, 0.0, 1.0)

    def resolved(self, generation_config: dict[str, Any] | None = None) -> SamplingParams:
        """A copy with unset temperature/top_p/penalties taken from the model's
        generation_config.json (same key names) or else the neutral defaults.

        The result is validated like any SamplingParams, so a bad value in the
        model's config raises ValueError naming the field. `do_sample` is ignored.
        """
        config = generation_config or {}
        updates = {}
        for name, neutral in NEUTRAL_DEFAULTS.items():
            if getattr(self, name) is None:
                from_config = config.get(name)
                updates[name] = neutral if from_config is None else from_config
        return dataclasses.replace(self, **updates)


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}.")


def _optional(check, name: str, value: Any):
    return None if value is None else check(name, value)


def _int(name: str, value: Any) -> int:
    # bool is an Integral but `n=True` is a bug, not a count.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    return int(value)


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}.")
    value = float(value)
    _require(math.isfinite(value), name, "finite", value)
    return value


def _list(name: str, value: Any, element, element_kind: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of {element_kind}, got {type(value).__name__}.")
    return [element(f"{name}[{i}]", item) for i, item in enumerate(value)]


def _non_empty_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}.")
    _require(value != "", name, "a non-empty string", value)
    return value


def _token_id(name: str, value: Any) -> int:
    value = _int(name, value)
    _require(value >= 0, name, "a token id >= 0", value)
    return value


def _str_list(name: str, value: Any) -> list[str]:
    return _list(name, value, _non_empty_str, "non-empty str")


def _token_id_list(name: str, value: Any) -> list[int]:
    return _list(name, value, _token_id, "token ids")
