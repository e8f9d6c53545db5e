"""Reasoning parsers: one-shot splits, and streaming that adds up to them."""

import random

import pytest

from fastdeploy.reasoning import (
    DeltaMessage,
    ReasoningParserManager,
    make_reasoning_parser,
    thinking_enabled,
)


class FakeTokenizer:
    """No vocab of tags: the parsers must work from the text alone."""

    def get_vocab(self):
        return {}


X1_ANSWER = "\n</think>\n\n<response>\n"

# (parser, prompt, output, expected (reasoning, content))
CASES = [
    # ERNIE-4.5-VL: the prompt opened the thinking; no stripping.
    ("ernie-45-vl", None, "Let me see.\n</think>\n\nIt is a cat.", ("Let me see.\n", "\n\nIt is a cat.")),
    ("ernie-45-vl", None, "Counting: 1 < 2, 2 </ 3\n", ("Counting: 1 < 2, 2 </ 3\n", None)),  # cut off
    ("ernie-45-vl", None, "All done.</think>", ("All done.", None)),  # empty answer
    ("ernie-45-vl", "User: hi\nAssistant: <think>\n\n</think>\n\n", "Hello! a </think> b", (None, "Hello! a </think> b")),
    ("ernie-45-vl", None, "", (None, None)),
    ("ernie-45-vl", None, "<think>r</think>a", ("r", "a")),  # a generated <think> is dropped
    # ERNIE-X1: the answer is the <response> block.
    ("ernie-x1", None, "Think hard." + X1_ANSWER + "Forty-two.\n</response>", ("Think hard.\n", "\nForty-two.\n")),
    ("ernie-x1", None, "Think." + X1_ANSWER + "Forty", ("Think.\n", "\nForty")),  # cut off in the response
    ("ernie-x1", None, "Still thinking <resp", ("Still thinking <resp", None)),  # cut off in the thinking
    ("ernie-x1", None, "Call it.\n</think>\n\n<tool_call>\n{}\n</tool_call>", ("Call it.\n", None)),
    ("ernie-x1", None, "Nothing to say.\n</think>\n\n<response></response>", ("Nothing to say.\n", None)),
    ("ernie-x1", None, "r</think><response>a</response>\ntrailer <response>b", ("r", "a")),
    # Qwen3: <think> generated, or at the end of the prompt, or absent.
    ("qwen3", None, "<think>\nHmm.\n</think>\n\nParis.", ("\nHmm.\n", "\n\nParis.")),
    ("qwen3", None, "Paris.", (None, "Paris.")),
    ("qwen3", None, "a < b and x <th", (None, "a < b and x <th")),
    ("qwen3", None, "<think>\nLet me count: 1, 2", ("\nLet me count: 1, 2", None)),  # cut off
    ("qwen3", None, "<think>\nDone.\n</think>", ("\nDone.\n", None)),
    ("qwen3", "<|im_start|>assistant\n<think>\n", "Hmm.\n</think>\n\nParis.", ("Hmm.\n", "\n\nParis.")),
    ("qwen3", "<|im_start|>assistant\n<think>\n\n</think>\n\n", "Paris.</think>", (None, "Paris.</think>")),
    ("qwen3", None, "<thinker", (None, "<thinker")),
]
IDS = [f"{name}-{i}" for i, (name, *_) in enumerate(CASES)]


def parser_for(name, prompt):
    return ReasoningParserManager.get_reasoning_parser(name)(FakeTokenizer(), prompt=prompt)


def stream(parser, chunks):
    """Feed chunks as the engine does, one call per step; return the joined deltas."""
    reasoning, content, previous = "", "", ""
    for i, chunk in enumerate(chunks):
        current = previous + chunk
        delta = parser.extract_reasoning_content_streaming(
            previous, current, chunk, [], [], [], final=i == len(chunks) - 1
        )
        if delta is not None:
            assert isinstance(delta, DeltaMessage)
            assert delta.reasoning_content or delta.content  # no empty messages
            reasoning += delta.reasoning_content or ""
            content += delta.content or ""
        previous = current
    return reasoning or None, content or None


def random_chunks(text, rng):
    """Token-like pieces of 1 to 6 characters."""
    chunks, pos = [], 0
    while pos < len(text):
        size = rng.randint(1, 6)
        chunks.append(text[pos : pos + size])
        pos += size
    return chunks or [""]


@pytest.mark.parametrize("name,prompt,output,expected", CASES, ids=IDS)
def test_one_shot(name, prompt, output, expected):
    assert parser_for(name, prompt).extract_reasoning_content(output) == expected


@pytest.mark.parametrize("name,prompt,output,expected", CASES, ids=IDS)
def test_streaming_matches_one_shot(name, prompt, output, expected):
    parser = parser_for(name, prompt)
    for cut in range(len(output) + 1):
        assert stream(parser, [output[:cut], output[cut:]]) == expected, cut
    assert stream(parser, list(output) or [""]) == expected
    rng = random.Random(0)
    for _ in range(20):
        assert stream(parser, random_chunks(output, rng)) == expected


def test_partial_tag_is_held_back():
    parser = parser_for("ernie-45-vl", None)
    first = parser.extract_reasoning_content_streaming("", "abc</thi", "abc</thi", [], [], [])
    assert first == DeltaMessage(reasoning_content="abc")
    second = parser.extract_reasoning_content_streaming("abc</thi", "abc</think>x", "nk>x", [], [], [])
    assert second == DeltaMessage(content="x")


def test_whole_tag_token_gives_no_delta():
    parser = parser_for("qwen3", None)
    assert parser.extract_reasoning_content_streaming("", "<think>", "<think>", [], [], [1]) is None
    assert parser.extract_reasoning_content_streaming("<think>r", "<think>r</think>", "</think>", [], [], [2]) is None


def test_held_back_text_comes_out_on_the_final_step():
    parser = parser_for("ernie-45-vl", None)
    step = parser.extract_reasoning_content_streaming("", "x <", "x <", [], [], [])
    assert step == DeltaMessage(reasoning_content="x ")
    last = parser.extract_reasoning_content_streaming("x <", "x <", "", [], [], [], final=True)
    assert last == DeltaMessage(reasoning_content="<")


def test_registry():
    for name in ("ernie-45-vl", "ernie-x1", "qwen3"):
        assert ReasoningParserManager.get_reasoning_parser(name).__name__.endswith("ReasoningParser")
    assert ReasoningParserManager.get_reasoning_parser("ernie_x1") is ReasoningParserManager.get_reasoning_parser(
        "ernie-x1"
    )
    with pytest.raises(ValueError) as error:
        ReasoningParserManager.get_reasoning_parser("deepseek-r1")
    for name in ("ernie-45-vl", "ernie-x1", "qwen3"):
        assert name in str(error.value)


def test_enable_thinking_switch():
    assert thinking_enabled(None) and thinking_enabled({}) and thinking_enabled({"enable_thinking": True})
    assert not thinking_enabled({"enable_thinking": False})
    assert make_reasoning_parser("qwen3", FakeTokenizer(), {"enable_thinking": False}) is None
    assert make_reasoning_parser(None, FakeTokenizer()) is None
    parser = make_reasoning_parser("qwen3", FakeTokenizer(), {"enable_thinking": True}, prompt="<think>\n")
    assert parser.extract_reasoning_content("r</think>a") == ("r", "a")


@pytest.mark.parametrize("name", ["ernie-45-vl", "ernie-x1", "qwen3"])
@pytest.mark.parametrize("prompt", [None, "<think>\n", "</think>\n\n"])
def test_streaming_matches_one_shot_on_random_texts(name, prompt):
    """Texts made of tags, tag fragments and text, cut into random token-like pieces."""
    pieces = ["<think>", "</think>", "<response>", "</response>", "<", "</", "<thi", "</resp", "\n", "a", "b c"]
    parser = parser_for(name, prompt)
    rng = random.Random(name)
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        expected = parser.extract_reasoning_content(text)
        assert stream(parser, random_chunks(text, rng)) == expected, text
