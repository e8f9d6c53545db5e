"""Qwen3 (`--reasoning-parser qwen3`)."""

from .abs_reasoning_parsers import THINK_THEN_ANSWER, ReasoningParser, ReasoningParserManager


@ReasoningParserManager.register_module("qwen3")
class Qwen3ReasoningParser(ReasoningParser):
    """`<think>reasoning</think>answer`, the `<think>` either generated (hybrid Qwen3)
    or put at the end of the prompt by the template (Qwen3 *-Thinking-2507).

    Without a `<think>` at the start of the output or the end of the prompt there is
    no reasoning: the whole output is the answer, as in vLLM's qwen3 parser (which
    also strips nothing). An output cut off inside the thinking is all reasoning.
    """

    phases = THINK_THEN_ANSWER
    default_phase = 1
