"""Load the tokenizer of a model, whatever form the model comes in.

* a ``.gguf`` file: the tokenizer is rebuilt from the GGUF metadata by
  `transformers` (``gguf_file=``);
* an ERNIE Paddle directory (SentencePiece ``tokenizer.model`` and a
  tokenizer_config.json naming an ERNIE tokenizer class): `ErnieBotTokenizer`;
* any other Hugging Face directory: `AutoTokenizer`.

All three give a `transformers` tokenizer object.
"""

from __future__ import annotations

import json
import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fastdeploy.input.ernie_tokenizer import ErnieBotTokenizer
from fastdeploy.utils.model_resolver import is_gguf_file

GGUF_CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


def load_tokenizer(model_path: str, tokenizer: str | None = None) -> PreTrainedTokenizerBase:
    """Tokenizer for the local model at `model_path`, or at `tokenizer` if given."""
    path = tokenizer or model_path
    if is_gguf_file(path):
        return _load_gguf_tokenizer(path)
    if _is_ernie_dir(path):
        return ErnieBotTokenizer.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def get_eos_token_ids(tokenizer: PreTrainedTokenizerBase, model_path: str) -> set[int]:
    """Ids that end generation: the tokenizer's eos plus generation_config.json's.

    Chat models often stop on an end-of-turn token that generation_config.json
    lists next to the tokenizer's eos (e.g. ``[2, 100272]``).
    """
    eos_ids = set() if tokenizer.eos_token_id is None else {tokenizer.eos_token_id}
    config = _read_json(os.path.join(model_path, "generation_config.json")) if os.path.isdir(model_path) else {}
    configured = config.get("eos_token_id")
    if isinstance(configured, int):
        eos_ids.add(configured)
    elif isinstance(configured, list):
        eos_ids.update(configured)
    return eos_ids


def read_gguf_chat_template(gguf_path: str) -> str | None:
    """The chat template stored in a GGUF file's metadata, if any."""
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get(GGUF_CHAT_TEMPLATE_KEY)
    return None if field is None else field.contents()


def _load_gguf_tokenizer(gguf_path: str) -> PreTrainedTokenizerBase:
    directory, filename = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    # Not every transformers version carries the GGUF chat template over.
    if not tokenizer.chat_template:
        tokenizer.chat_template = read_gguf_chat_template(gguf_path)
    return tokenizer


def _is_ernie_dir(path: str) -> bool:
    if not os.path.isfile(os.path.join(path, "tokenizer.model")):
        return False
    tokenizer_class = _read_json(os.path.join(path, "tokenizer_config.json")).get("tokenizer_class") or ""
    # "ErnieBotTokenizer", "Ernie4_5_Tokenizer", "Ernie4_5Tokenizer", ...
    return "ernie" in tokenizer_class.lower()


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)
