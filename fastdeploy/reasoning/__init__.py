from .abs_reasoning_parsers import (
    DeltaMessage,
    ReasoningParser,
    ReasoningParserManager,
    make_reasoning_parser,
    thinking_enabled,
)

# Imported for their registration with ReasoningParserManager.
from .ernie_vl_reasoning_parsers import ErnieVLReasoningParser
from .ernie_x1_reasoning_parsers import ErnieX1ReasoningParser
from .qwen3_reasoning_parsers import Qwen3ReasoningParser

__all__ = [
    "DeltaMessage",
    "ErnieVLReasoningParser",
    "ErnieX1ReasoningParser",
    "Qwen3ReasoningParser",
    "ReasoningParser",
    "ReasoningParserManager",
    "make_reasoning_parser",
    "thinking_enabled",
]
