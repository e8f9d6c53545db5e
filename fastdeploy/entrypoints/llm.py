"""`LLM`: FastDeploy's offline inference entry point."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from fastdeploy.engine.config import EngineArgs
from fastdeploy.engine.engine import LLMEngine
from fastdeploy.engine.request import CompletionOutput, Request, RequestOutput
from fastdeploy.engine.sampling_params import SamplingParams


class LLM:
    """Loads a model and serves batches of prompts or conversations with continuous batching.

    `model`: a local HF or ERNIE-Paddle directory, a `.gguf` file, a hub id (local caches first), or
    None for the built-in SmolLM2-135M-Instruct. Engine arguments use FastDeploy's names.
    """

    def __init__(self, model: str | None = None, revision: str | None = None, tokenizer: str | None = None,
                 enable_logprob: bool = False, chat_template: str | None = None, **engine_args):
        args = EngineArgs.from_kwargs(model=model, revision=revision, tokenizer=tokenizer,
                                      enable_logprob=enable_logprob, chat_template=chat_template,
                                      **engine_args)
        self.llm_engine = LLMEngine(args)
        self.tokenizer = self.llm_engine.tokenizer

    # ---- public API ---------------------------------------------------------------------------
    def generate(self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Completes prompts as given (no chat template). `prompts`: str, list[str], list[int] (one
        tokenized prompt), list[list[int]], a dict with `prompt` / `prompt_token_ids` /
        `multimodal_data`, or a list of such dicts."""
        items = _normalize_prompts(prompts)
        params = self._params_per_prompt(sampling_params, len(items))
        requests = []
        for item, p in zip(items, params):
            text, token_ids = self._tokenize(item)
            requests.append((text, token_ids, p, True, item.get("multimodal_data")))
        return self._run(requests, use_tqdm)

    def chat(self, messages, sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool = True, chat_template_kwargs: dict[str, Any] | None = None,
             chat_template: str | None = None) -> list[RequestOutput]:
        """Renders each conversation with the model's chat template (plus `chat_template_kwargs`,
        e.g. `{"enable_thinking": False}`) and generates the assistant's reply."""
        conversations = _normalize_conversations(messages)
        params = self._params_per_prompt(sampling_params, len(conversations))
        if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, dict):
            raise TypeError(f"chat_template_kwargs must be a dict, got {type(chat_template_kwargs).__name__}")
        kwargs = dict(chat_template_kwargs or {})
        if not isinstance(kwargs.get("enable_thinking", True), bool):
            raise ValueError("chat_template_kwargs['enable_thinking'] must be a bool")
        enable_thinking = kwargs.get("enable_thinking", True)
        requests = []
        for conv, p in zip(conversations, params):
            # a multimodal engine collects the images and videos; a text-only one refuses them
            media = {"image": [], "video": []} if self.llm_engine.mm_processor is not None else None
            prompt = self.render_chat(conv, chat_template=chat_template, media=media, **kwargs)
            if media and (media["image"] or media["video"]):
                requests.append((prompt, None, p, enable_thinking, media))   # the processor tokenizes
            else:
                requests.append((prompt, self.tokenizer.encode(prompt, add_special_tokens=False), p,
                                 enable_thinking, None))
        return self._run(requests, use_tqdm)

    def render_chat(self, conversation: list[dict], chat_template: str | None = None,
                    media: dict[str, list] | None = None, **kwargs) -> str:
        self._require_tokenizer("chat")
        if chat_template is None and not self.tokenizer.chat_template:
            raise ValueError("this model has no chat template: pass chat_template=... or use generate()")
        return self.tokenizer.apply_chat_template(
            [_flatten_content(m, media) for m in conversation], tokenize=False, add_generation_prompt=True,
            chat_template=chat_template, **kwargs)

    # ---- internals ----------------------------------------------------------------------------
    def _params_per_prompt(self, sampling_params, n: int) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams()] * n
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * n
        if isinstance(sampling_params, (list, tuple)):
            if len(sampling_params) != n:
                raise ValueError(f"sampling_params has {len(sampling_params)} entries for {n} prompts: "
                                 "pass one SamplingParams or one per prompt")
            for p in sampling_params:
                if not isinstance(p, SamplingParams):
                    raise TypeError(f"sampling_params entries must be SamplingParams, got {type(p).__name__}")
            return list(sampling_params)
        raise TypeError(f"sampling_params must be a SamplingParams or a list of them, "
                        f"got {type(sampling_params).__name__}")

    def _tokenize(self, item: dict) -> tuple[str | None, list[int] | None]:
        if item.get("multimodal_data"):       # the multimodal processor tokenizes around the images
            ids = item.get("prompt_token_ids")
            return item.get("prompt"), None if ids is None else list(ids)
        if item.get("prompt_token_ids") is not None:
            return item.get("prompt"), list(item["prompt_token_ids"])
        text = item["prompt"]
        self._require_tokenizer("text prompts")
        return text, self.tokenizer.encode(text, add_special_tokens=False)

    def _require_tokenizer(self, what: str) -> None:
        if self.tokenizer is None:
            raise ValueError(f"{what} need a tokenizer, but the engine was started with skip_tokenizer_init=True: "
                             "pass prompt_token_ids instead")

    def _run(self, prompts: list[tuple], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        # validate every prompt before any work starts, so a bad one never half-runs a batch
        groups = [(engine.make_requests(text, ids, p, mm, thinking), thinking) for text, ids, p, thinking, mm in prompts]
        requests = [r for reqs, _ in groups for r in reqs]
        thinking = {r.request_id: t for reqs, t in groups for r in reqs}
        outputs: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(requests), desc="Processed prompts", disable=not use_tqdm)

        def on_finish(req: Request) -> None:
            # one request's output failing (decode, reasoning parser) must not lose the others
            try:
                out = engine.output_processor.make_output(req, thinking[req.request_id])
            except Exception as e:
                out = _error_output(req, f"output processing failed: {type(e).__name__}: {e}")
            outputs[req.request_id] = out
            bar.update(1)

        try:
            engine.run(requests, on_finish)
        finally:
            bar.close()
        return [outputs[r.request_id] for r in requests]


def _error_output(req: Request, error_msg: str) -> RequestOutput:
    completion = CompletionOutput(index=req.index, send_idx=req.num_output_tokens,
                                  token_ids=list(req.output_token_ids), finish_reason="error")
    return RequestOutput(request_id=req.request_id, prompt=req.prompt, prompt_token_ids=req.prompt_token_ids,
                         outputs=completion, finished=True, metrics=req.metrics,
                         num_cached_tokens=req.num_cached_tokens, error_code=500, error_msg=error_msg)


def _normalize_prompts(prompts) -> list[dict]:
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    elif isinstance(prompts, (list, tuple)) and prompts and _as_token_ids(prompts) is not None:
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise TypeError("prompts must be a str, a list of str, a list of token ids, a list of token-id "
                        f"lists, a dict or a list of dicts; got {type(prompts).__name__} {prompts!r:.80}")
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt")
    items = []
    for p in prompts:
        if isinstance(p, str):
            items.append({"prompt": p})
        elif _as_token_ids(p) is not None:
            items.append({"prompt_token_ids": _as_token_ids(p)})
        elif isinstance(p, dict):
            unknown = set(p) - {"prompt", "prompt_token_ids", "multimodal_data"}
            if unknown:
                raise ValueError(f"prompt dict has unknown keys {sorted(unknown)}; allowed: prompt, "
                                 "prompt_token_ids, multimodal_data")
            if p.get("prompt") is None and p.get("prompt_token_ids") is None:
                raise ValueError("prompt dict needs 'prompt' or 'prompt_token_ids'")
            if p.get("prompt") is not None and not isinstance(p["prompt"], str):
                raise TypeError(f"prompt must be a str, got {type(p['prompt']).__name__}")
            ids = p.get("prompt_token_ids")
            if ids is not None:
                token_ids = _as_token_ids(ids)
                if token_ids is None:
                    raise TypeError("prompt_token_ids must be a list of int token ids")
                p = {**p, "prompt_token_ids": token_ids}
            items.append(p)
        else:
            raise TypeError("each prompt must be a str, a list of token ids or a dict, "
                            f"got {type(p).__name__} {p!r:.80}")
    return items


def _as_token_ids(seq) -> list[int] | None:
    """`seq` as a list of int token ids, or None when it is not a flat list or tuple of integers (numpy
    integers count, bools do not). Checked by numpy, so a long prompt costs no Python work per id."""
    if not isinstance(seq, (list, tuple)):
        return None
    if not seq:
        return []
    try:
        arr = np.asarray(seq)
    except (ValueError, TypeError):          # ragged nesting
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or bool in map(type, seq):   # numpy casts True to 1
        return None
    return arr.tolist()


def _normalize_conversations(messages) -> list[list[dict]]:
    if not isinstance(messages, (list, tuple)):
        raise TypeError("messages must be a conversation (a list of message dicts) or a list of them, "
                        f"got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: pass a conversation (a list of message dicts) or a list of them")
    conversations = [messages] if isinstance(messages[0], dict) else messages
    for conv in conversations:
        if not isinstance(conv, (list, tuple)):
            raise TypeError(f"each conversation must be a list of message dicts, got {type(conv).__name__}")
        if not conv:
            raise ValueError("each conversation must be a non-empty list of message dicts")
        for m in conv:
            if not isinstance(m, dict):
                raise TypeError(f"each message must be a dict with a 'role' and a 'content', got {m!r:.80}")
            if "role" not in m:
                raise ValueError(f"each message must be a dict with a 'role', got {m!r:.80}")
            if not isinstance(m["role"], str):
                raise TypeError(f"message role must be a str, got {type(m['role']).__name__}")
            if "content" not in m:
                raise ValueError(f"message with role {m['role']!r} has no 'content'")
            _flatten_content(m, {"image": [], "video": []})   # checks the content before anything renders
    return [list(c) for c in conversations]


# content part type -> (modality, marker left in the text: ERNIE-VL's picture/video markup)
MEDIA_PARTS = {
    "image_url": ("image", "Picture {n}:<|IMAGE_START|><|image@placeholder|><|IMAGE_END|>"),
    "image": ("image", "Picture {n}:<|IMAGE_START|><|image@placeholder|><|IMAGE_END|>"),
    "video_url": ("video", "Video {n}:<|VIDEO_START|><|video@placeholder|><|VIDEO_END|>"),
    "video": ("video", "Video {n}:<|VIDEO_START|><|video@placeholder|><|VIDEO_END|>"),
}


def _flatten_content(message: dict, media: dict[str, list] | None) -> dict:
    """Flattens OpenAI-style content parts to text. Image and video parts go, in order, to `media`
    (a multimodal engine's) and leave their marker in the text; without `media` they are an error."""
    content = message["content"]
    if content is None or isinstance(content, str):
        return message
    if not isinstance(content, (list, tuple)):
        raise TypeError(f"message content must be a str or a list of parts, got {type(content).__name__}")
    texts = []
    for part in content:
        if not isinstance(part, dict):
            raise TypeError(f"each content part must be a dict with a 'type', got {part!r:.80}")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text", "")
            if not isinstance(text, str):
                raise TypeError(f"content part 'text' must be a str, got {type(text).__name__}")
            texts.append(text)
        elif kind in MEDIA_PARTS:
            if media is None:
                raise ValueError(f"content part of type {kind!r} needs a multimodal model loaded with "
                                 "enable_mm=True")
            modality, marker = MEDIA_PARTS[kind]
            source = part.get(kind)
            if isinstance(source, dict) and "url" in source:
                source = source["url"]
            if source is None:
                raise ValueError(f"content part of type {kind!r} has no {kind!r} field")
            media[modality].append(source)
            texts.append(marker.format(n=len(media[modality])))
        else:
            raise ValueError(f"unknown content part type {kind!r}; known: text, {', '.join(MEDIA_PARTS)}")
    return {**message, "content": "".join(texts)}
