"""ERNIE-X1 / ERNIE-4.5-*-Thinking (`--reasoning-parser ernie-x1`)."""

from .abs_reasoning_parsers import CONTENT, REASONING, THINK_END, Phase, ReasoningParser, ReasoningParserManager


@ReasoningParserManager.register_module("ernie-x1")
class ErnieX1ReasoningParser(ReasoningParser):
    """`reasoning</think>\\n\\n<response>\\nanswer\\n</response>`, or a tool call
    (`<tool_call>...</tool_call>`) in place of the response.

    Following FastDeploy's current rules: the answer is what lies inside
    `<response>...</response>`, newlines kept; whatever else follows `</think>`
    (the newlines before `<response>`, tool calls, anything after `</response>`) is
    neither reasoning nor answer (tool calls are the tool parser's business). A
    response cut off before `</response>` runs to the end; an output cut off before
    `</think>` is all reasoning.
    """

    phases = (
        Phase(REASONING, THINK_END),
        Phase(None, "<response>"),
        Phase(CONTENT, "</response>"),
        Phase(None, None),
    )
