"""Streaming detokenization: one generated token in, the new text out.

Decoding each token on its own is wrong in two ways: a multi-byte UTF-8
character may be split over several tokens (byte-level BPE, SentencePiece byte
fallback), and SentencePiece drops the leading space of the first piece it
decodes. Decoding the whole output every step is right but quadratic.

Like vLLM, we decode only a small window of recent ids twice: the part already
emitted (`prefix_offset:read_offset`) and the same part plus the new ids
(`prefix_offset:`). Both decodes start at the same token, so whatever the
tokenizer does at the start of a window cancels out, and the difference is the
new text. Text ending in U+FFFD is an incomplete character: nothing is emitted
and the window grows until the character is complete.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

# Prompt tokens kept before the first generated one, so that the first piece is
# decoded in context (e.g. keeps its leading space).
_PROMPT_CONTEXT_TOKENS = 5

_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_token_ids: list[int],
        skip_special_tokens: bool = True,
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids = list(prompt_token_ids)
        self._prefix_offset = max(len(self._ids) - _PROMPT_CONTEXT_TOKENS, 0)
        self._read_offset = len(self._ids)
        self._text = ""

    @property
    def text(self) -> str:
        """All output text emitted so far."""
        return self._text

    def add(self, token_id: int) -> str:
        """Append a generated token; return the text it completes (maybe "")."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT_CHAR):
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._text += delta
        return delta

    def _decode(self, ids: list[int]) -> str:
        # Clean-up of spaces around punctuation depends on the neighbouring
        # text, so it would make window decodes disagree with each other.
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False
        )
