"""Thinking models end to end: ERNIE's tokenizer and template through `LLM.chat`, and the reasoning
split of an output forced (by a test-side logits processor) to contain a thinking block."""
import itertools

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from fastdeploy import LLM, SamplingParams
from test_input import _train_tiny_sentencepiece, _write_ernie_dir
from tiny_models import make_tiny_model

# ERNIE-style template with a thinking switch: thinking off closes an empty think block up front
TEMPLATE = (
    "{{- cls_token -}}{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}{{- 'User: ' + m.content + '\\n' -}}"
    "{%- elif m.role == 'assistant' -%}{{- 'Assistant: ' + m.content + sep_token -}}"
    "{%- else -%}{{- m.content + '\\n' -}}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant: ' -}}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- else -%}{{- '<think>\\n' -}}{%- endif -%}{%- endif -%}"
)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]
FORCED = "the quick fox</think>\n\nhello world"


@pytest.fixture(scope="module")
def ernie_model(tmp_path_factory):
    path = make_tiny_model("ernie4_5", tmp_path_factory.mktemp("ernie_thinking"))
    _write_ernie_dir(path, _train_tiny_sentencepiece(), TEMPLATE)
    return path


@pytest.fixture(scope="module")
def llm(ernie_model):
    return LLM(model=str(ernie_model), device="cpu", block_size=16, max_model_len=256,
               reasoning_parser="ernie-45-vl")


def force_output(llm, token_ids):
    """Makes the model emit `token_ids`, then eos: logits are replaced step by step (batch of one). Eos
    repeats: with async scheduling the step after the eos is already queued when the eos arrives."""
    model = llm.llm_engine.runner.model
    script = itertools.chain(token_ids, itertools.repeat(min(llm.llm_engine.eos_token_ids)))

    def compute_logits(hidden):
        logits = torch.full((hidden.shape[0], llm.llm_engine.hf_config.vocab_size), -30.0)
        logits[:, next(script)] = 30.0
        return logits

    model.compute_logits = compute_logits


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_chat_prompt_matches_transformers_rendering(llm, enable_thinking):
    tok = llm.tokenizer
    reference = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                        cls_token=tok.cls_token, sep_token=tok.sep_token, chat_template=TEMPLATE)
    expected = reference.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=enable_thinking)
    out = llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=2), use_tqdm=False,
                   chat_template_kwargs={"enable_thinking": enable_thinking})[0]
    assert out.prompt == expected
    assert out.prompt_token_ids == tok.encode(expected, add_special_tokens=False)


def test_forced_thinking_is_split_from_the_answer(llm):
    force_output(llm, llm.tokenizer.encode(FORCED, add_special_tokens=False))
    out = llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=64), use_tqdm=False)[0]
    assert out.outputs.finish_reason == "stop"
    assert out.outputs.reasoning_content == "the quick fox"
    assert out.outputs.text == "\n\nhello world"


def test_thinking_off_leaves_the_output_whole(llm):
    force_output(llm, llm.tokenizer.encode("hello world", add_special_tokens=False))
    out = llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=64), use_tqdm=False,
                   chat_template_kwargs={"enable_thinking": False})[0]
    assert out.outputs.reasoning_content is None
    assert out.outputs.text == "hello world"


def test_cut_off_inside_thinking_is_all_reasoning(llm):
    force_output(llm, llm.tokenizer.encode(FORCED, add_special_tokens=False))
    out = llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)[0]
    assert out.outputs.finish_reason == "length"
    assert out.outputs.text == "" and out.outputs.reasoning_content
    assert "the quick fox".startswith(out.outputs.reasoning_content.strip())


def test_unknown_parser_lists_the_known_ones(ernie_model):
    with pytest.raises(ValueError, match="ernie-45-vl"):
        LLM(model=str(ernie_model), device="cpu", reasoning_parser="no-such-parser")


# ---- reasoning_max_tokens -------------------------------------------------------------------------
THOUGHTS = "the quick brown fox jumps over the lazy dog and runs"


def test_reasoning_max_tokens_forces_the_end_of_thinking(llm):
    """After reasoning_max_tokens output tokens the end-of-thinking ids are forced, one per step (here
    `</think>` is several tokens), and the model then goes on; the split puts the first tokens in the
    reasoning."""
    script = llm.tokenizer.encode(THOUGHTS, add_special_tokens=False)
    end = llm.llm_engine.think_end_ids
    assert len(end) > 1
    force_output(llm, script)
    out = llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=20, reasoning_max_tokens=3),
                   use_tqdm=False)[0]
    ids = out.outputs.token_ids
    assert ids[:3] == script[:3] and ids[3:3 + len(end)] == end
    assert ids[3 + len(end):] == script[3 + len(end):20]       # the script ran on under the forced steps
    assert out.outputs.reasoning_content.strip() == llm.tokenizer.decode(script[:3])
    assert out.outputs.text == llm.tokenizer.decode(ids, skip_special_tokens=True).split("</think>", 1)[1]


@pytest.mark.parametrize("case", ["thinking ended within the limit", "thinking off"])
def test_reasoning_max_tokens_leaves_other_outputs_alone(llm, case):
    text = FORCED if case == "thinking ended within the limit" else THOUGHTS
    script = llm.tokenizer.encode(text, add_special_tokens=False)
    kwargs = {"enable_thinking": False} if case == "thinking off" else None
    force_output(llm, script)
    out = llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=len(script), reasoning_max_tokens=len(script) - 2,
                                            ignore_eos=True), use_tqdm=False, chat_template_kwargs=kwargs)[0]
    assert out.outputs.token_ids == script
