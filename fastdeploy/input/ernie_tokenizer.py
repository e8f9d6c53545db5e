"""SentencePiece tokenizer for ERNIE models (FastDeploy's `ErnieBotTokenizer`).

ERNIE 4.5 Paddle checkpoints ship a SentencePiece `tokenizer.model` and a
`tokenizer_config.json` naming a Paddle tokenizer class that `transformers`
cannot load. This class wraps the SentencePiece model in a
`transformers.PreTrainedTokenizer`, so the rest of the engine can use the
usual API (`encode`, `decode`, `apply_chat_template`, `eos_token_id`, ...).
"""

from __future__ import annotations

import sentencepiece as spm
from transformers import PreTrainedTokenizer

# Chat template of ERNIE-4.5-0.3B (its tokenizer_config.json), used when the
# checkpoint provides none.
ERNIE_CHAT_TEMPLATE = (
    "{%- if not add_generation_prompt is defined -%}\n"
    "    {%- set add_generation_prompt = true -%}\n"
    "{%- endif -%}\n"
    "{%- if not cls_token is defined -%}\n"
    '    {%- set cls_token = "<|begin_of_sentence|>" -%}\n'
    "{%- endif -%}\n"
    "{%- if not sep_token is defined -%}\n"
    '    {%- set sep_token = "<|end_of_sentence|>" -%}\n'
    "{%- endif -%}\n"
    "{{- cls_token -}}\n"
    "{%- for message in messages -%}\n"
    '    {%- if message["role"] == "user" -%}\n'
    '        {{- "User: " + message["content"] + "\\n" -}}\n'
    '    {%- elif message["role"] == "assistant" -%}\n'
    '        {{- "Assistant: " + message["content"] + sep_token -}}\n'
    '    {%- elif message["role"] == "system" -%}\n'
    '        {{- message["content"] + "\\n" -}}\n'
    "    {%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    '    {{- "Assistant: " -}}\n'
    "{%- endif -%}"
)

# Named special tokens of ERNIE checkpoints. A value given by the checkpoint's
# tokenizer_config.json (or the caller) wins over these defaults.
DEFAULT_SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "cls_token": "<|begin_of_sentence|>",
    "sep_token": "<|end_of_sentence|>",
}

# Further ERNIE control tokens (chat markers; image/video markers of the VL
# models) that must never be split by SentencePiece.
EXTRA_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|IMAGE_START|>",
    "<|IMAGE_END|>",
    "<|IMAGE_PLACEHOLDER|>",
    "<|VIDEO_START|>",
    "<|VIDEO_END|>",
)


class ErnieBotTokenizer(PreTrainedTokenizer):
    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, chat_template: str | dict | None = None, **kwargs):
        # Must exist before the base __init__, which queries the vocabulary.
        self.vocab_file = vocab_file
        self.sp_model = spm.SentencePieceProcessor(model_file=vocab_file)

        # Defaults are only taken when the SentencePiece model has the piece:
        # the base class would otherwise append it with an id past the model's
        # embedding table (e.g. the VL markers in a text-only model).
        for role, token in DEFAULT_SPECIAL_TOKENS.items():
            if role not in kwargs and self._has_piece(token):
                kwargs[role] = token
        # "additional_special_tokens" is the pre-v5 name of the same setting.
        extra = kwargs.pop("extra_special_tokens", kwargs.pop("additional_special_tokens", None))
        if extra is None:
            extra = [token for token in EXTRA_SPECIAL_TOKENS if self._has_piece(token)]
        # ERNIE's own tokenizers never clean up spaces around punctuation.
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(
            chat_template=chat_template or ERNIE_CHAT_TEMPLATE,
            extra_special_tokens=extra,
            **kwargs,
        )

    def _has_piece(self, token: str) -> bool:
        unk_id = self.sp_model.unk_id()
        return self.sp_model.piece_to_id(token) != unk_id or token == self.sp_model.id_to_piece(unk_id)

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        if 0 <= index < self.vocab_size:
            return self.sp_model.id_to_piece(index)
        return self.unk_token

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        # SentencePiece decodes control pieces to "", so added/special tokens
        # are copied verbatim and only the runs between them are decoded.
        pieces: list[str] = []
        out = ""
        for token in tokens:
            if token in self._added_tokens_encoder:
                out += self.sp_model.decode(pieces) + token
                pieces = []
            else:
                pieces.append(token)
        return out + self.sp_model.decode(pieces)
