"""ERNIE 4.5 dense (0.3B): a Llama-style decoder with GPT-J style (interleaved) rotary and one
`use_bias` switch for every projection (transformers' modeling_ernie4_5.py)."""
from __future__ import annotations

from fastdeploy.model_executor.models.llama import ArchSpec, CausalLM


class Ernie4_5ForCausalLM(CausalLM):
    @classmethod
    def arch_spec(cls, config):
        bias = bool(getattr(config, "use_bias", False))
        return ArchSpec(qkv_bias=bias, o_bias=bias, mlp_bias=bias, interleaved_rope=True)
