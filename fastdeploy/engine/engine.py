"""The engine: loads the model, admits requests and runs scheduler steps until they finish."""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from fastdeploy.engine.block_manager import BlockManager
from fastdeploy.engine.config import SUPPORTED_DTYPES, EngineArgs
from fastdeploy.engine.output_processor import OutputProcessor
from fastdeploy.engine.request import Request
from fastdeploy.engine.sampling_params import MAX_SEED, SamplingParams
from fastdeploy.engine.scheduler import Scheduler
from fastdeploy.input.multimodal import MultimodalProcessor
from fastdeploy.input.tokenizer import get_eos_token_ids, load_tokenizer
from fastdeploy.model_executor.loader import load_config
from fastdeploy.model_executor.models.registry import MULTIMODAL_ARCHITECTURES
from fastdeploy.reasoning import ReasoningParserManager
from fastdeploy.reasoning.abs_reasoning_parsers import THINK_END
from fastdeploy.utils.logger import get_logger
from fastdeploy.utils.model_resolver import is_gguf_file, resolve_model
from fastdeploy.worker.model_runner import LaunchedStep, ModelRunner, StepOutput
from fastdeploy.worker.worker_process import TensorParallelExecutor


class LLMEngine:
    def __init__(self, args: EngineArgs):
        self.args = args
        reasoning_cls = None
        if args.reasoning_parser is not None:     # an unknown name fails before anything loads
            reasoning_cls = ReasoningParserManager.get_reasoning_parser(args.reasoning_parser)
        self.model_path = resolve_model(args.model)
        self.hf_config = load_config(self.model_path)
        self.device = args.torch_device
        quantized = args.quantization is not None or is_gguf_file(self.model_path)
        self.dtype = _resolve_dtype(args.dtype, self.hf_config, self.device, quantized)
        self.tokenizer = None
        self.eos_token_ids = frozenset()
        if not args.skip_tokenizer_init:
            self.tokenizer = load_tokenizer(self.model_path, args.tokenizer)
            if args.chat_template is not None:
                self.tokenizer.chat_template = _read_template(args.chat_template)
            self.eos_token_ids = frozenset(get_eos_token_ids(self.tokenizer, self.model_path))
        self.generation_config = _read_generation_config(self.model_path)
        self.text_config = self.hf_config.get_text_config()      # a multimodal config nests its LM's
        _check_tensor_parallel(args, self.text_config)
        self.mm_processor = self._multimodal_processor()
        max_pos = getattr(self.text_config, "max_position_embeddings", None)
        if max_pos is not None and args.max_model_len > max_pos:
            get_logger().warning(f"max_model_len {args.max_model_len} exceeds the model's "
                                 f"max_position_embeddings {max_pos}")
            # the rotary table must then cover every position a sequence may reach (transformers computes
            # the angles of any position; the model was not trained on those past its limit)
            self.text_config.max_position_embeddings = args.max_model_len
        if args.tensor_parallel_size > 1:
            self.executor = TensorParallelExecutor(self.model_path, self.hf_config, args, self.dtype, self.device)
            self.runner = self.executor.runner          # rank 0's shard, in this process
        else:
            self.runner = self.executor = ModelRunner(self.model_path, self.hf_config, args, self.dtype, self.device)
        self.block_manager = BlockManager(self.runner.num_blocks, args.block_size, args.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, args.max_num_seqs, args.max_num_batched_tokens,
                                   args.enable_chunked_prefill,
                                   prefill_block_limit=max(1, int(self.runner.num_blocks * args.kv_cache_ratio)))
        self.output_processor = OutputProcessor(self.tokenizer, args.max_model_len, reasoning_cls)
        # what SamplingParams.reasoning_max_tokens forces once a thinking model has thought that long
        self.think_end_ids = None
        if reasoning_cls is not None and self.tokenizer is not None:
            self.think_end_ids = self.tokenizer.encode(THINK_END, add_special_tokens=False)
        self._ids = itertools.count()
        # Async scheduling: each step is queued on the device and the previous one's tokens are processed
        # while it runs; the requests it samples for are scheduled on as if their tokens were known (the
        # device feeds them back). A request that turns out finished costs one wasted row.
        self.async_scheduling = args.async_scheduling and self.mm_processor is None
        self._pending: LaunchedStep | None = None

    def _multimodal_processor(self) -> MultimodalProcessor | None:
        multimodal = self.hf_config.architectures[0] in MULTIMODAL_ARCHITECTURES
        if self.args.enable_mm and not multimodal:
            raise ValueError(f"enable_mm=True needs a multimodal model; {self.hf_config.architectures[0]} is "
                             f"text-only (multimodal: {sorted(MULTIMODAL_ARCHITECTURES)})")
        if not (self.args.enable_mm and multimodal):
            return None
        if self.tokenizer is None:
            raise ValueError("enable_mm=True needs the tokenizer: drop skip_tokenizer_init")
        return MultimodalProcessor(self.model_path, self.tokenizer, self.hf_config, self.args.limit_mm_per_prompt)

    # ---- requests -----------------------------------------------------------------------------
    def make_requests(self, prompt: str | None, prompt_token_ids: list[int] | None, params: SamplingParams,
                      multimodal_data: dict | None = None, enable_thinking: bool = True) -> list[Request]:
        """Validates one prompt against the model and the cache and expands it into n requests.
        With `multimodal_data` the processor tokenizes the prompt and expands its image/video markers.
        `reasoning_max_tokens` applies to thinking models (a reasoning parser is set) with thinking on."""
        mm_inputs = extra_keys = None
        if multimodal_data:
            if self.mm_processor is None:
                raise ValueError("multimodal_data (images, videos) needs a multimodal model loaded with "
                                 "enable_mm=True")
            mm_inputs = self.mm_processor.process(prompt=prompt if prompt_token_ids is None else None,
                                                  prompt_token_ids=prompt_token_ids,
                                                  multimodal_data=multimodal_data)
            prompt_token_ids = mm_inputs.prompt_token_ids
            extra_keys = tuple(mm_inputs.hashes)      # equal tokens with other images must not share KV
        if not prompt_token_ids:
            raise ValueError("prompt is empty: it must have at least one token")
        vocab = self.text_config.vocab_size
        # ids past the vocabulary would index outside the embedding or the sampler's tables mid-step
        for name, ids in (("prompt_token_ids", prompt_token_ids), ("stop_token_ids", params.stop_token_ids),
                          ("bad_words_token_ids", params.bad_words_token_ids)):
            bad = _outside_vocab(ids or [], vocab)
            if bad:
                raise ValueError(f"{name} hold ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        n_prompt = len(prompt_token_ids)
        params = params.resolved(self.generation_config)
        min_tokens = params.min_tokens
        if n_prompt + min_tokens >= self.args.max_model_len or n_prompt >= self.args.max_model_len:
            raise ValueError(f"prompt length {n_prompt} (+ min_tokens {min_tokens}) must be less than "
                             f"max_model_len {self.args.max_model_len}")
        # The KV cache holds the prompt and every output token but the last (never fed back). A
        # request that outgrows the whole cache would preempt itself forever, so max_tokens is
        # clamped to the cache as it is to max_model_len, and a prompt that cannot fit is refused.
        capacity = self.runner.num_blocks * self.args.block_size
        if n_prompt + max(min_tokens, 1) - 1 > capacity:
            raise ValueError(f"prompt length {n_prompt} (+ min_tokens {min_tokens}) does not fit the KV cache "
                             f"({capacity} tokens: num_gpu_blocks {self.runner.num_blocks} x block_size "
                             f"{self.args.block_size})")
        max_tokens = min(params.max_tokens or self.args.max_model_len, self.args.max_model_len - n_prompt,
                         capacity - n_prompt + 1)
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer (the engine was started with skip_tokenizer_init): "
                             "use stop_token_ids")
        stop_ids = frozenset(params.stop_token_ids or ())
        bad_words = self._bad_words_token_ids(params.bad_words)
        bad_words += [[t] for t in params.bad_words_token_ids or () if [t] not in bad_words]
        reasoning_end_ids = None
        if params.reasoning_max_tokens is not None and enable_thinking and self.think_end_ids:
            reasoning_end_ids = self.think_end_ids
        requests = []
        for i in range(params.n):
            # each of the n samples draws its own random stream; wrapping keeps the seed in range
            seed = (params.seed + i) % (MAX_SEED + 1)
            sample_params = params if i == 0 else dataclasses.replace(params, seed=seed)
            requests.append(Request(
                request_id=str(next(self._ids)), prompt=prompt, prompt_token_ids=list(prompt_token_ids),
                sampling_params=sample_params, max_tokens=max_tokens, eos_token_ids=self.eos_token_ids,
                stop_token_ids=stop_ids, bad_words_token_ids=bad_words, index=i, extra_keys=extra_keys,
                mm_inputs=mm_inputs, reasoning_end_ids=reasoning_end_ids))
        return requests

    def _bad_words_token_ids(self, bad_words: list[str] | None) -> list[list[int]]:
        """Each bad word as token ids, with and without a leading space (as it appears mid-text)."""
        if bad_words and self.tokenizer is None:
            raise ValueError("bad_words needs a tokenizer (the engine was started with skip_tokenizer_init)")
        out = []
        for word in bad_words or ():
            for variant in (word, " " + word.lstrip()):
                ids = self.tokenizer.encode(variant, add_special_tokens=False)
                if ids and ids not in out:
                    out.append(ids)
        return out

    # ---- running ------------------------------------------------------------------------------
    def run(self, requests: list[Request], on_finish: Callable[[Request], None] | None = None) -> None:
        """Runs the requests to completion. A failing step aborts them all, frees their blocks and
        re-raises, so the engine stays usable for the next call."""
        for req in requests:
            req.metrics.arrival_time = time.time()
            self.output_processor.add_request(req)
            self.scheduler.add(req)
        try:
            while self.scheduler.has_unfinished() or self._pending is not None:
                for req in self.step():
                    if on_finish is not None:
                        on_finish(req)
        except BaseException:
            self._pending = None
            for req in requests:
                req.num_inflight = 0
                if not req.is_finished:
                    self.scheduler.finish(req)
                    self.runner.block_tables.release(req)
                    self.output_processor.discard(req)
            raise

    def step(self) -> list[Request]:
        """One scheduler step: queues its forward, then processes the previous step's tokens (with async
        scheduling) or its own. Returns the requests it finished."""
        finished = []
        if self._pending is not None and any(r.num_inflight and r.needs_output_history
                                             for r in self.scheduler.running):
            finished += self._complete_pending()      # their sampling reads the tokens in flight
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            if self._pending is not None:
                return finished + self._complete_pending()
            if self.scheduler.has_unfinished():
                raise RuntimeError("the scheduler can make no progress: a request does not fit the KV cache")
            return finished
        now = time.time()
        for s in sched.scheduled:
            m = s.request.metrics
            if not m.inference_start_time:
                m.inference_start_time = now
                m.time_in_queue = now - m.arrival_time
        try:
            if self.async_scheduling:
                launched = self.executor.launch(sched.scheduled, self._pending)
            else:
                out = self.executor.execute(sched.scheduled)
        except Exception as e:
            raise RuntimeError(f"model step failed: {type(e).__name__}: {e}") from e
        self.scheduler.update_after_step(sched.scheduled)
        if not self.async_scheduling:
            return finished + self._process([s.request for s in sched.scheduled if s.samples], out)
        for req in launched.sampling:
            req.num_inflight += 1
        if self._pending is not None:
            finished += self._complete_pending()
        self._pending = launched
        return finished

    def _complete_pending(self) -> list[Request]:
        launched, self._pending = self._pending, None
        try:
            out = self.executor.collect(launched)
        except Exception as e:
            raise RuntimeError(f"model step failed: {type(e).__name__}: {e}") from e
        for req in launched.sampling:
            req.num_inflight -= 1
        return self._process(launched.sampling, out)

    def _process(self, sampling: list[Request], out: StepOutput) -> list[Request]:
        """Appends a step's sampled tokens (one per request of `sampling`, in order) and finishes the
        requests they end. A request that finished after this step was queued (async scheduling) drops
        its token."""
        finished = []
        now = time.time()
        for i, req in enumerate(sampling):
            if req.is_finished:
                continue
            req.metrics.model_forward_time += out.forward_time
            if req.num_output_tokens == 0:
                req.metrics.first_token_time = now - req.metrics.inference_start_time
            try:
                self.output_processor.append_token(req, out.token_ids[i],
                                                   out.logprobs[i] if out.logprobs else None)
                if req.reasoning_end_ids is not None:
                    self._check_thinking_ended(req)
            except Exception as e:     # one request's output failing must not lose the others
                req.finish_reason = "error"
                req.error_msg = f"output processing failed: {type(e).__name__}: {e}"
            if req.finish_reason is not None:
                req.metrics.model_execute_time = now - req.metrics.arrival_time
                req.mm_encoded = None
                self.scheduler.finish(req)
                self.runner.block_tables.release(req)
                finished.append(req)
        return finished

    def _check_thinking_ended(self, req: Request) -> None:
        """For a request with a reasoning limit, at reasoning_max_tokens output tokens: if the thinking already
        ended, nothing is to be forced (checked on the text, as a tokenizer may split `</think>` differently in
        context)."""
        if (req.num_output_tokens == req.sampling_params.reasoning_max_tokens
                and THINK_END in self.tokenizer.decode(req.output_token_ids, skip_special_tokens=False)):
            req.reasoning_end_ids = None


def _outside_vocab(ids: list[int], vocab: int) -> list:
    """The ids that are not ints in [0, vocab), checked by numpy (long prompts cost no per-id Python)."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return []
    if arr.dtype.kind not in "iu" or bool in map(type, ids):      # numpy casts True to 1
        return [t for t in ids if not isinstance(t, int) or isinstance(t, bool)]
    return arr[(arr < 0) | (arr >= vocab)].tolist()


def _resolve_dtype(name: str, hf_config, device: torch.device, quantized: bool) -> torch.dtype:
    """"auto": the checkpoint's 16-bit dtype on the GPU. On the CPU float32 (exact, and 16-bit matmuls are
    slow on CPUs without bf16 instructions), but bfloat16 for quantized weights (a GGUF file, or
    `quantization`) where the CPU has bf16 instructions: PyTorch's weight-only CPU kernels, which read the
    quantized weights as they are, take bf16 activations, while float32 runs dense dequantized weights
    (the built-in Q4_1 SmolLM2 decodes about 4x faster so)."""
    if SUPPORTED_DTYPES[name] is not None:
        return SUPPORTED_DTYPES[name]
    if device.type == "cpu":
        return torch.bfloat16 if quantized and cpu_has_bf16() else torch.float32
    ckpt = getattr(hf_config, "torch_dtype", None) or getattr(hf_config, "dtype", None)
    ckpt = getattr(torch, ckpt) if isinstance(ckpt, str) else ckpt
    return ckpt if ckpt in (torch.float16, torch.bfloat16) else torch.bfloat16


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (x86 AVX512-BF16; AMX CPUs have it too)."""
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def _read_generation_config(model_path: str) -> dict:
    path = os.path.join(model_path, "generation_config.json")
    if os.path.isdir(model_path) and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _read_template(template: str) -> str:
    if os.path.exists(template):
        with open(template) as f:
            return f.read()
    return template


def _check_tensor_parallel(args: EngineArgs, hf_config) -> None:
    """N must split the attention heads evenly, and the key/value heads (or be a multiple of them: each
    is then replicated). One GPU per rank; on the CPU one process per rank, at most one per core."""
    n = args.tensor_parallel_size
    if n == 1:
        return
    heads = hf_config.num_attention_heads
    if heads % n:
        raise ValueError(f"tensor_parallel_size {n} must divide the number of attention heads ({heads})")
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    if kv_heads % n and n % kv_heads:
        raise ValueError(f"tensor_parallel_size {n} and the number of key/value heads ({kv_heads}): "
                         "one must divide the other")
    if args.torch_device.type == "cuda":
        available, what = torch.cuda.device_count(), "GPUs"
    else:
        available, what = os.cpu_count() or 1, "CPU cores"
    if n > available:
        raise ValueError(f"tensor_parallel_size {n} exceeds the {available} {what} present")
