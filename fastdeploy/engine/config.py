"""Engine arguments with FastDeploy's names and defaults, validated at construction."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

SUPPORTED_DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16,
                    "bfloat16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16,
                    "bf16": torch.bfloat16, "half": torch.float16, "float": torch.float32}
SUPPORTED_QUANTIZATION = (None, "wint8", "wint4")
SUPPORTED_LOAD_FORMATS = ("auto", "dummy")


@dataclass
class EngineArgs:
    model: str | None = None
    revision: str | None = None
    tokenizer: str | None = None
    chat_template: str | None = None
    enable_logprob: bool = False
    tensor_parallel_size: int = 1
    max_model_len: int = 2048
    block_size: int = 64
    gpu_memory_utilization: float = 0.9
    kv_cache_ratio: float = 0.75
    max_num_seqs: int = 8
    max_num_batched_tokens: int | None = None     # None: max_model_len (FastDeploy's rule)
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    quantization: str | None = None
    dtype: str = "auto"
    reasoning_parser: str | None = None
    enable_mm: bool = False
    limit_mm_per_prompt: dict | None = None
    seed: int = 0
    device: str | None = None                     # None: cuda when available, else cpu
    load_format: str = "auto"
    num_gpu_blocks_override: int | None = None    # fixes the KV cache size instead of profiling
    enforce_eager: bool = False                   # True: no CUDA graphs
    # prepare step N+1 on the host while the device runs step N (text models)
    async_scheduling: bool = True
    skip_tokenizer_init: bool = False             # token ids in and out only (e.g. dummy-weight benchmarks)
    # accepted for compatibility with FastDeploy's serving arguments; unused offline
    port: int | None = None
    metrics_port: int | None = None
    engine_worker_queue_port: int | None = None

    @classmethod
    def from_kwargs(cls, **kwargs) -> "EngineArgs":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown engine argument(s) {unknown}; known: {sorted(known)}")
        return cls(**kwargs)

    def __post_init__(self):
        if self.max_num_batched_tokens is None:
            self.max_num_batched_tokens = self.max_model_len
        self._validate()

    def _validate(self):
        _check_int("tensor_parallel_size", self.tensor_parallel_size, 1)
        _check_int("max_model_len", self.max_model_len, 2)
        _check_int("block_size", self.block_size, 1)
        _check_int("max_num_seqs", self.max_num_seqs, 1)
        _check_int("max_num_batched_tokens", self.max_num_batched_tokens, 1)
        _check_int("seed", self.seed, 0)
        if self.num_gpu_blocks_override is not None:
            _check_int("num_gpu_blocks_override", self.num_gpu_blocks_override, 1)
        _check_fraction("gpu_memory_utilization", self.gpu_memory_utilization)
        _check_fraction("kv_cache_ratio", self.kv_cache_ratio)
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) is smaller than max_model_len "
                f"({self.max_model_len}) with enable_chunked_prefill=False: long prompts could never be "
                "scheduled; raise max_num_batched_tokens or enable chunked prefill")
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(SUPPORTED_DTYPES)}, got {self.dtype!r}")
        if self.quantization not in SUPPORTED_QUANTIZATION:
            raise ValueError(f"quantization must be one of {SUPPORTED_QUANTIZATION}, got {self.quantization!r}")
        if self.load_format not in SUPPORTED_LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {SUPPORTED_LOAD_FORMATS}, got {self.load_format!r}")
        if self.device is not None and str(self.device).split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {self.device!r}")
        if self.device is not None and torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch sees no CUDA device")
        if self.limit_mm_per_prompt is not None and not isinstance(self.limit_mm_per_prompt, dict):
            raise ValueError(f"limit_mm_per_prompt must be a dict such as {{'image': 4}}, "
                             f"got {type(self.limit_mm_per_prompt).__name__}")
        for flag in ("enable_prefix_caching", "enable_chunked_prefill", "enable_mm", "enable_logprob",
                     "enforce_eager", "async_scheduling", "skip_tokenizer_init"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}")

    @property
    def torch_device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_int(name: str, value, minimum: int):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_fraction(name: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
