"""Reasoning parsers: split a reasoning model's output into reasoning and answer.

A parser describes its output format as a list of phases, each one closed by a tag
(`</think>`, `<response>`, ...). The whole output and every streamed prefix go
through the same split, and a streaming delta is what the split of the new text
adds to the split of the old one. That way the streamed deltas always add up to
the one-shot result, however the text is cut into deltas.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

REASONING = "reasoning_content"
CONTENT = "content"
THINK_START = "<think>"
THINK_END = "</think>"


@dataclass
class DeltaMessage:
    """What one streaming step adds to the reasoning and to the answer."""

    reasoning_content: Optional[str] = None
    content: Optional[str] = None


@dataclass(frozen=True)
class Phase:
    """A stretch of the output: the field its text goes to (None: dropped) and the
    tag that closes it (None: it runs to the end)."""

    field: Optional[str]
    end_tag: Optional[str]


# Thinking, `</think>`, then the answer: ERNIE-4.5-VL and Qwen3.
THINK_THEN_ANSWER = (Phase(REASONING, THINK_END), Phase(CONTENT, None))


def _held_back(text: str, start: int, tag: str) -> int:
    """Length of the longest end of text[start:] that is a proper prefix of tag: a tag
    the next tokens may complete, so it can't be given out yet."""
    for size in range(min(len(tag) - 1, len(text) - start), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ReasoningParser:
    """Base class: subclasses set `phases` and `default_phase`.

    Tags are found in the decoded text, so the tokenizer is not consulted (it is
    accepted for FastDeploy's constructor signature). `prompt` is the prompt after
    the chat template: when it ends with `<think>` the output starts in the reasoning,
    when it ends with a phase's closing tag (e.g. `</think>` for thinking switched off)
    it starts in the next phase, otherwise in `default_phase`. An output that itself
    begins with `<think>` starts in the reasoning whatever the prompt said.
    """

    phases: tuple[Phase, ...]
    default_phase: int = 0

    def __init__(self, tokenizer, prompt: Optional[str] = None):
        self.start_phase = self._phase_after(prompt)

    def _phase_after(self, prompt: Optional[str]) -> int:
        tail = (prompt or "").rstrip()
        if tail.endswith(THINK_START):
            return 0
        for index, phase in enumerate(self.phases):
            if phase.end_tag and tail.endswith(phase.end_tag):
                return index + 1
        return self.default_phase

    def spans(self, text: str, final: bool) -> list[tuple[str, int, int]]:
        """(field, start, stop) of the stretches of text that are reasoning or content,
        in order. Unless final, text that may still become a tag when more tokens come
        is left out, so the fields only ever grow as the text does."""
        spans = []
        phase, pos = self.start_phase, 0
        if text.startswith(THINK_START):
            phase, pos = 0, len(THINK_START)
        elif not final and THINK_START.startswith(text):
            return spans  # "" or "<thi": can't tell yet whether a <think> opens the output
        while True:
            field, end_tag = self.phases[phase].field, self.phases[phase].end_tag
            end = text.find(end_tag, pos) if end_tag else -1
            if end == -1:
                stop = len(text) if final or not end_tag else len(text) - _held_back(text, pos, end_tag)
                if field:
                    spans.append((field, pos, stop))
                return spans
            if field:
                spans.append((field, pos, end))
            pos, phase = end + len(end_tag), phase + 1

    def extract_reasoning_content(self, model_output: str) -> tuple[Optional[str], Optional[str]]:
        """(reasoning, content) of a finished output; an empty part is None."""
        spans = self.spans(model_output, final=True)
        reasoning, content = (_field_text(model_output, spans, field) for field in (REASONING, CONTENT))
        return reasoning or None, content or None

    def extract_reasoning_content_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
        *,
        final: bool = False,
    ) -> Optional[DeltaMessage]:
        """What the step from previous_text to current_text adds, or None if nothing
        (a tag, or the start of one, is held back). Pass final=True on the last step
        so that text held back as a possible tag start comes out. The token ids are
        accepted for FastDeploy's signature; the text alone decides.

        Both texts are split again at each step, which costs a few `str.find`s over
        the output; only the new characters are copied.
        """
        old = self.spans(previous_text, final=False)
        new = self.spans(current_text, final=final)
        reasoning, content = (
            _field_text(current_text, new, field, skip=_field_length(old, field)) for field in (REASONING, CONTENT)
        )
        if not reasoning and not content:
            return None
        return DeltaMessage(reasoning_content=reasoning or None, content=content or None)


def _field_length(spans: list[tuple[str, int, int]], field: str) -> int:
    return sum(stop - start for name, start, stop in spans if name == field)


def _field_text(text: str, spans: list[tuple[str, int, int]], field: str, skip: int = 0) -> str:
    """The text of field's spans, less its first `skip` characters."""
    parts = []
    for name, start, stop in spans:
        if name == field:
            cut = min(start + skip, stop)
            skip -= cut - start
            parts.append(text[cut:stop])
    return "".join(parts)


class ReasoningParserManager:
    """Registry of reasoning parser classes by name (`--reasoning-parser`)."""

    reasoning_parsers: dict[str, type[ReasoningParser]] = {}

    @classmethod
    def register_module(cls, name: str) -> Callable[[type[ReasoningParser]], type[ReasoningParser]]:
        def register(parser_cls: type[ReasoningParser]) -> type[ReasoningParser]:
            cls.reasoning_parsers[name] = parser_cls
            return parser_cls

        return register

    @classmethod
    def get_reasoning_parser(cls, name: str) -> type[ReasoningParser]:
        # FastDeploy accepts both spellings, e.g. ernie_x1 and ernie-x1.
        parser_cls = cls.reasoning_parsers.get(name.replace("_", "-"))
        if parser_cls is None:
            known = ", ".join(sorted(cls.reasoning_parsers))
            raise ValueError(f"unknown reasoning parser {name!r}; known parsers: {known}")
        return parser_cls


def thinking_enabled(chat_template_kwargs: Optional[dict]) -> bool:
    """Thinking is on unless the request sets `enable_thinking` to False (the ERNIE
    and Qwen3 templates think by default)."""
    return (chat_template_kwargs or {}).get("enable_thinking", True) is not False


def make_reasoning_parser(
    name: Optional[str],
    tokenizer,
    chat_template_kwargs: Optional[dict] = None,
    prompt: Optional[str] = None,
) -> Optional[ReasoningParser]:
    """The parser for one request, or None when there is nothing to parse: no parser
    configured, or thinking switched off (then the whole output is the answer)."""
    if not name or not thinking_enabled(chat_template_kwargs):
        return None
    return ReasoningParserManager.get_reasoning_parser(name)(tokenizer, prompt=prompt)
