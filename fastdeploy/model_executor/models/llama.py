"""Llama-family decoder (Llama, Qwen2, Qwen3) over the paged KV cache.

The blocks here are generic: `ArchSpec` holds the per-family differences (biases, per-head q/k norm,
rotary layout), so ERNIE 4.5 (dense here, MoE elsewhere) reuses the attention block, the MLP and
the decoder stack. Parameter names follow the HF checkpoints (`model.layers.N.self_attn...`),
except that q/k/v are merged into `qkv_proj` and gate/up into `gate_up_proj`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from fastdeploy.model_executor.layers.attention import Attention, AttentionMetadata
from fastdeploy.model_executor.layers.embedding import LMHead, VocabEmbedding
from fastdeploy.model_executor.layers.linear import GateUpLinear, QKVLinear, RowParallelLinear, default_weight_loader
from fastdeploy.model_executor.layers.norm import RMSNorm
from fastdeploy.model_executor.layers.rotary_embedding import get_rope


@dataclass(frozen=True)
class ArchSpec:
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False              # Qwen3: RMSNorm over each head of q and k before rotary
    interleaved_rope: bool = False     # ERNIE pairs dims (2i, 2i+1); Llama/Qwen pair (i, i + d/2)


def head_dim_of(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class SelfAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, spec: ArchSpec):
        super().__init__()
        num_heads = config.num_attention_heads
        self.head_dim = head_dim_of(config)
        self.qkv_proj = QKVLinear(config.hidden_size, self.head_dim, num_heads,
                                  config.num_key_value_heads or num_heads, spec.qkv_bias)
        # this rank's heads (all of them without tensor parallelism)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(num_heads * self.head_dim, config.hidden_size, spec.o_bias)
        if spec.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = spec.qk_norm
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5, self.num_kv_heads,
                              spec.interleaved_rope)

    def forward(self, rope: tuple[torch.Tensor, torch.Tensor], hidden: torch.Tensor,
                attn_metadata: AttentionMetadata):
        """rope: the (cos, sin) rows of this step's positions, looked up once for all layers."""
        T = hidden.shape[0]
        q, k, v = self.qkv_proj.split(self.qkv_proj(hidden))
        q = q.view(T, self.num_heads, self.head_dim)
        k = k.view(T, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        out = self.attn(q, k, v.view(T, self.num_kv_heads, self.head_dim), rope, attn_metadata)
        return self.o_proj(out)


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False):
        super().__init__()
        self.gate_up_proj = GateUpLinear(hidden_size, intermediate_size, bias)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj.silu_and_mul(x))


class DecoderLayer(nn.Module):
    """Pre-norm block; the residual travels alongside so each norm can fuse the residual add."""

    def __init__(self, config: PretrainedConfig, spec: ArchSpec, mlp: nn.Module):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SelfAttention(config, spec)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp

    def forward(self, rope, hidden, residual, attn_metadata, *mlp_args):
        """`mlp_args` go to the feed-forward (e.g. the token modality a multimodal MoE routes by)."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(rope, hidden, attn_metadata)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden, *mlp_args), residual


class DecoderModel(nn.Module):
    def __init__(self, config: PretrainedConfig, spec: ArchSpec, make_mlp: Callable[[int], nn.Module]):
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        # one cos/sin table for all layers, indexed once per forward
        self.rotary_emb = get_rope(config, head_dim_of(config), spec.interleaved_rope)
        self.layers = nn.ModuleList(DecoderLayer(config, spec, make_mlp(i))
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, positions, attn_metadata):
        hidden, residual = self.embed_tokens(input_ids), None
        rope = self.rotary_emb(positions)
        for layer in self.layers:
            hidden, residual = layer(rope, hidden, residual, attn_metadata)
        hidden, _ = self.norm(hidden, residual)
        return hidden


# (merged parameter, checkpoint name, shard) for checkpoints that store the pieces separately
STACKED_PARAMS = [
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
]


class CausalLM(nn.Module):
    """Decoder + LM head. Subclasses give the family's `ArchSpec` and may override `make_mlp`."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.config = config
        self.model = DecoderModel(config, self.arch_spec(config), self.make_mlp)
        self.lm_head = LMHead(config.vocab_size, config.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)

    @classmethod
    def arch_spec(cls, config: PretrainedConfig) -> ArchSpec:
        raise NotImplementedError

    def make_mlp(self, layer_idx: int) -> nn.Module:
        return GatedMLP(self.config.hidden_size, self.config.intermediate_size,
                        self.arch_spec(self.config).mlp_bias)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn_metadata: AttentionMetadata) -> torch.Tensor:
        return self.model(input_ids, positions, attn_metadata)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load (HF name, tensor) pairs; names of merged pieces go into their slice of the merged param."""
        params = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue  # saved by old transformers versions; we build our own table
            if self.config.tie_word_embeddings and name == "lm_head.weight":
                continue  # shares model.embed_tokens.weight
            shard = None
            for merged, piece, shard_id in STACKED_PARAMS:
                if f".{piece}." in name:
                    name, shard = name.replace(f".{piece}.", f".{merged}."), shard_id
                    break
            if name not in params:
                raise KeyError(f"checkpoint tensor {name!r} has no parameter in {type(self).__name__}")
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor, shard)
            loaded.add(name)
        missing = params.keys() - loaded
        if missing:
            raise ValueError(f"checkpoint lacks {sorted(missing)}")


class LlamaForCausalLM(CausalLM):
    @classmethod
    def arch_spec(cls, config):
        bias = getattr(config, "attention_bias", False)
        return ArchSpec(qkv_bias=bias, o_bias=bias, mlp_bias=getattr(config, "mlp_bias", False))


class Qwen2ForCausalLM(CausalLM):
    @classmethod
    def arch_spec(cls, config):
        return ArchSpec(qkv_bias=True)


class Qwen3ForCausalLM(CausalLM):
    @classmethod
    def arch_spec(cls, config):
        bias = getattr(config, "attention_bias", False)
        return ArchSpec(qkv_bias=bias, o_bias=bias, qk_norm=True)
