"""The text-only examples of FastDeploy's offline-inference guide (examples/, copied from the guide
with only the model name changed to the built-in SmolLM2), run as scripts.

The guide asks for up to 6400 tokens at temperature 1; SmolLM2 may use them all, which takes minutes
on a 2-core CPU, so here every request is capped at 64 tokens. Nothing else about the scripts changes."""
import os
import runpy
import sys

import pytest

from fastdeploy.engine.sampling_params import SamplingParams

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
MAX_TOKENS = 64


@pytest.fixture
def capped_requests(monkeypatch):
    """Every SamplingParams built while the test runs asks for at most MAX_TOKENS tokens."""
    post_init = SamplingParams.__post_init__

    def capped(self):
        post_init(self)
        self.max_tokens = min(self.max_tokens or MAX_TOKENS, MAX_TOKENS)

    monkeypatch.setattr(SamplingParams, "__post_init__", capped)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["offline_chat.py", "offline_generate.py"])
def test_guide_example_runs(script, capped_requests, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script])
    scope = runpy.run_path(os.path.join(EXAMPLES, script))
    outputs = scope["outputs"]
    assert outputs and all(o.finished and o.error_code == 200 and o.outputs.text for o in outputs)
    assert scope["generated_text"] == outputs[-1].outputs.text


VL_TEMPLATE = (
    "{%- set pictures = namespace(n=0) -%}{{- '<|begin_of_sentence|>' -}}"
    "{%- for m in messages -%}{{- 'User: ' if m.role == 'user' else 'Assistant: ' -}}"
    "{%- if m.content is string -%}{{- m.content -}}{%- else -%}{%- for part in m.content -%}"
    "{%- if part.type == 'image_url' -%}{%- set pictures.n = pictures.n + 1 -%}"
    "{{- 'Picture ' ~ pictures.n ~ ':<|IMAGE_START|><|image@placeholder|><|IMAGE_END|>' -}}"
    "{%- elif part.type == 'text' -%}{{- part.text -}}{%- endif -%}{%- endfor -%}{%- endif -%}{{- '\\n' -}}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- 'Assistant: ' -}}"
    "{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- else -%}{{- '<think>\\n' -}}{%- endif -%}{%- endif -%}")


@pytest.fixture(scope="module")
def tiny_vl_with_ernie_tokenizer(tmp_path_factory):
    """A tiny random ERNIE 4.5 VL whose tokenizer is an `ErnieBotTokenizer` (SentencePiece trained here,
    its special pieces at the ids the tiny config uses), as the guide's generate example needs."""
    import io
    import json

    import sentencepiece as spm
    from tiny_models import VL_SPECIAL_TOKENS, make_tiny_vl_model

    path = make_tiny_vl_model(tmp_path_factory.mktemp("vl_ernie") / "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (path / name).unlink(missing_ok=True)
    words = "picture image video what is in the describe 文物 年代 图中 属于 哪个".split()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(words[i % len(words):] + words[:i % len(words)]) for i in range(200)]),
        model_writer=model, vocab_size=300, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        pad_piece="<pad>", user_defined_symbols=VL_SPECIAL_TOKENS[4:])   # ids 4.. as in the tiny config
    (path / "tokenizer.model").write_bytes(model.getvalue())
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "ErnieBotTokenizer", "chat_template": VL_TEMPLATE}))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("script", ["offline_vl_chat.py", "offline_vl_generate.py"])
def test_guide_multimodal_example_runs(script, tiny_vl_with_ernie_tokenizer, tmp_path, capped_requests,
                                       monkeypatch):
    from test_vl import _image
    image = tmp_path / "example2.png"
    _image(60, 90, 0).save(image)
    monkeypatch.setattr(sys, "argv", [script, str(tiny_vl_with_ernie_tokenizer), str(image)])
    scope = runpy.run_path(os.path.join(EXAMPLES, script))
    outputs = scope["outputs"]
    assert len(outputs) == 1 and outputs[0].finished and outputs[0].error_code == 200
    assert "<|IMAGE_START|>" in outputs[0].prompt and outputs[0].outputs.token_ids
    assert scope["generated_text"] == outputs[0].outputs.text
    assert scope["reasoning_text"] == outputs[0].outputs.reasoning_content
