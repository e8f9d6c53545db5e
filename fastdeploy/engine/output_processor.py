"""Turns sampled tokens into text and decides when a request is done."""
from __future__ import annotations

from fastdeploy.engine.request import CompletionOutput, Request, RequestOutput
from fastdeploy.input.detokenizer import IncrementalDetokenizer


class OutputProcessor:
    """Only requests with stop strings are detokenized token by token (they need the text to decide
    when to stop); the others are decoded once when they finish, which keeps detokenization off the
    per-step critical path."""

    def __init__(self, tokenizer, max_model_len: int, reasoning_parser_cls=None):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.reasoning_parser_cls = reasoning_parser_cls
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self.texts: dict[str, str] = {}

    def add_request(self, req: Request) -> None:
        if self.tokenizer is not None and req.sampling_params.stop:
            self.detokenizers[req.request_id] = IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids)
            self.texts[req.request_id] = ""

    def append_token(self, req: Request, token_id: int, logprobs: dict[int, float] | None) -> None:
        """Appends one sampled token and sets `req.finish_reason` when a stop condition is met."""
        req.output_token_ids.append(token_id)
        if logprobs is not None:
            if req.logprobs is None:
                req.logprobs = []
            req.logprobs.append(logprobs)
        params = req.sampling_params
        detokenizer = self.detokenizers.get(req.request_id)
        if detokenizer is not None:
            delta = detokenizer.add(token_id)
            self.texts[req.request_id] += delta
        n = len(req.output_token_ids)       # (this runs for every token: counts as locals, not properties)
        if n >= params.min_tokens:
            if (token_id in req.eos_token_ids and not params.ignore_eos) or token_id in req.stop_token_ids:
                req.finish_reason = "stop"
                return
            if detokenizer is not None and self._apply_stop_strings(req, self.texts[req.request_id], len(delta)):
                return
        if n >= req.max_tokens or len(req.prompt_token_ids) + n >= self.max_model_len:
            req.finish_reason = "length"

    def _apply_stop_strings(self, req: Request, text: str, delta_len: int) -> bool:
        stops = [req.sampling_params.stop] if isinstance(req.sampling_params.stop, str) else req.sampling_params.stop
        # only the tail can hold a stop string that this token completed
        window = max(len(s) for s in stops) + delta_len
        tail_start = max(0, len(text) - window)
        best = None
        for s in stops:
            i = text.find(s, tail_start)
            if i != -1 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return False
        i, s = best
        self.texts[req.request_id] = text[:i + len(s)] if req.sampling_params.include_stop_str_in_output else text[:i]
        req.finish_reason = "stop"
        return True

    def discard(self, req: Request) -> None:
        """Drops an aborted request's text state without decoding anything (nothing here can fail)."""
        self.detokenizers.pop(req.request_id, None)
        self.texts.pop(req.request_id, None)

    def make_output(self, req: Request, enable_thinking: bool = True) -> RequestOutput:
        if self.detokenizers.pop(req.request_id, None) is not None:
            text = self.texts.pop(req.request_id)
        elif self.tokenizer is not None:
            text = self.tokenizer.decode(req.output_token_ids, skip_special_tokens=True)
        else:
            text = ""
        reasoning = None
        if self.reasoning_parser_cls is not None and enable_thinking and not req.error_msg:
            reasoning, text = self.reasoning_parser_cls(self.tokenizer, prompt=req.prompt).extract_reasoning_content(text)
            text = text or ""
        completion = CompletionOutput(index=req.index, send_idx=req.num_output_tokens,
                                      token_ids=list(req.output_token_ids), text=text,
                                      reasoning_content=reasoning, finish_reason=req.finish_reason,
                                      logprobs=req.logprobs)
        return RequestOutput(request_id=req.request_id, prompt=req.prompt,
                             prompt_token_ids=req.prompt_token_ids, outputs=completion, finished=True,
                             metrics=req.metrics, num_cached_tokens=req.num_cached_tokens,
                             error_code=500 if req.error_msg else 200, error_msg=req.error_msg)
