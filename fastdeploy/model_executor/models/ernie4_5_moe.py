"""ERNIE 4.5 MoE (21B-A3B, 300B-A47B): the ERNIE 4.5 decoder with FusedMoE feed-forward layers
(transformers' modeling_ernie4_5_moe.py).

Layer i is MoE when (i + 1) % moe_layer_interval == 0 and moe_layer_start_index <= i <= moe_layer_end_index,
dense (intermediate_size) otherwise. An MoE layer routes each token to moe_k of moe_num_experts experts
(moe_intermediate_size each) and adds moe_num_shared_experts shared experts, run as one gated MLP of
moe_num_shared_experts * moe_intermediate_size. Training-only settings (moe_capacity, aux losses) do not
change inference, and the checkpoints' multi-token-prediction weights (`mtp_*`) are not loaded.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn
from transformers import PretrainedConfig

from fastdeploy.model_executor.layers.linear import default_weight_loader
from fastdeploy.model_executor.layers.moe import FusedMoE, expert_shard
from fastdeploy.model_executor.models.ernie4_5 import Ernie4_5ForCausalLM
from fastdeploy.model_executor.models.llama import STACKED_PARAMS, GatedMLP


def is_moe_layer(config: PretrainedConfig, layer_idx: int) -> bool:
    end = config.moe_layer_end_index
    if end is None or end < 0:          # transformers turns -1 into the last layer; Paddle may leave None
        end = config.num_hidden_layers - 1
    return (layer_idx + 1) % config.moe_layer_interval == 0 and config.moe_layer_start_index <= layer_idx <= end


class Ernie4_5_MoeForCausalLM(Ernie4_5ForCausalLM):
    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        # unlike dense ERNIE 4.5, transformers gives this LM head a bias when use_bias (released
        # checkpoints have use_bias False)
        self.lm_head.bias = nn.Parameter(torch.empty(config.vocab_size)) if config.use_bias else None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().compute_logits(hidden)
        return logits if self.lm_head.bias is None else logits + self.lm_head.bias.float()

    def make_mlp(self, layer_idx: int):
        c = self.config
        if not is_moe_layer(c, layer_idx):
            return super().make_mlp(layer_idx)
        shared = None
        if c.moe_num_shared_experts:
            shared = GatedMLP(c.hidden_size, c.moe_num_shared_experts * c.moe_intermediate_size,
                              self.arch_spec(c).mlp_bias)
        return FusedMoE(c.hidden_size, c.moe_num_experts, c.moe_k, c.moe_intermediate_size, c.moe_norm_min,
                        shared)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """CausalLM.load_weights plus: single experts go into their slice of the stacked expert
        parameters, `mlp.moe_statics.*` into the router, and MTP tensors are skipped."""
        load_expert_weights(self, ((name.replace(".mlp.moe_statics.", ".mlp.gate."), tensor)
                                   for name, tensor in weights
                                   if ".mtp_" not in name and "rotary_emb.inv_freq" not in name))


def load_expert_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Loads (name, tensor) pairs already in our names: single experts into their slice of the stacked
    expert parameters, q/k/v and gate/up into the merged ones. Every element of every parameter must
    be written, which catches a missing expert or shard too."""
    params = dict(model.named_parameters())
    loaded = Counter()        # elements written per parameter
    for name, tensor in weights:
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue
        name, shard = expert_shard(name) or _stacked_shard(name)
        if name not in params:
            raise KeyError(f"checkpoint tensor {name!r} has no parameter in {type(model).__name__}")
        param = params[name]
        getattr(param, "weight_loader", default_weight_loader)(param, tensor, shard)
        loaded[name] += tensor.numel()
    missing = [name for name, p in params.items() if loaded[name] < p.numel()]
    if missing:
        raise ValueError(f"checkpoint lacks {sorted(missing)}")


def _stacked_shard(name: str) -> tuple[str, object]:
    for merged, piece, shard_id in STACKED_PARAMS:
        if f".{piece}." in name:
            return name.replace(f".{piece}.", f".{merged}."), shard_id
    return name, None
