"""ERNIE-4.5-VL (`--reasoning-parser ernie-45-vl`)."""

from .abs_reasoning_parsers import THINK_THEN_ANSWER, ReasoningParser, ReasoningParserManager


@ReasoningParserManager.register_module("ernie-45-vl")
class ErnieVLReasoningParser(ReasoningParser):
    """`reasoning</think>answer`; the `<think>` is in the prompt, not the output.

    As in FastDeploy, nothing is stripped: the newlines around `</think>` stay in the
    reasoning and the answer. The output starts in the reasoning, so one cut off by
    max_tokens before `</think>` is all reasoning (FastDeploy's "thinking" status);
    with thinking switched off the prompt ends with `</think>` and the whole output
    is the answer.
    """

    phases = THINK_THEN_ANSWER
