"""ERNIE 4.5 VL (28B-A3B, 424B-A47B): a vision tower and resampler (layers/vision.py) feeding the ERNIE 4.5
MoE decoder, whose MoE layers keep text experts and vision experts apart (transformers'
modeling_ernie4_5_vl_moe.py).

Engine interface:
    encode_images(pixel_values, grid_thw) / encode_videos(...) -> [placeholder tokens, hidden], run once
        per request (see `fastdeploy.input.multimodal.MultimodalInputs.encode`);
    forward(input_ids [T], positions [3, T] (t/h/w rotary positions; [T] is taken as t = h = w),
        attn_metadata, mm_embeds: MultimodalEmbeds | None) -> hidden [T, H].
`mm_embeds` carries this step's slice of the encoder outputs plus two masks over the T tokens: where the
rows go, and which tokens the vision experts take (placeholders and the image/video start/end tokens of
a prompt). None, as in every decode step, means all text.

Rotary: head_dim / 2 frequencies, each driven by one axis: below sum(mrope_section[:2]) the even ones by
the row (h) and the odd ones by the column (w), the last mrope_section[2] by time (t); interleaved
(GLM) pairs, like ERNIE 4.5 text. With t = h = w it is the plain ERNIE rotary.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from transformers import PretrainedConfig

from fastdeploy.input.multimodal import MultimodalEmbeds
from fastdeploy.model_executor.layers.attention import AttentionMetadata
from fastdeploy.model_executor.layers.embedding import LMHead, VocabEmbedding
from fastdeploy.model_executor.layers.moe import FusedMoE
from fastdeploy.model_executor.layers.norm import RMSNorm
from fastdeploy.model_executor.layers.rotary_embedding import get_rope
from fastdeploy.model_executor.layers.vision import Resampler, VisionTransformer
from fastdeploy.model_executor.models.ernie4_5_moe import load_expert_weights
from fastdeploy.model_executor.models.llama import ArchSpec, DecoderLayer, GatedMLP, head_dim_of


class MRotaryEmbedding(nn.Module):
    """3D rotary over the plain table of `get_rope`: column j of cos/sin is read at the position of j's axis."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.rope = get_rope(config, head_dim_of(config), interleaved=True)
        half = self.rope.rotary_dim // 2
        s_h, s_w, s_t = config.rope_parameters.get("mrope_section", [22, 22, 20])
        if s_h + s_w + s_t != half or s_h != s_w:
            raise ValueError(f"mrope_section {[s_h, s_w, s_t]} does not split {half} rotary frequencies")
        axis = torch.full((half,), 0)                 # 0 = t, 1 = h, 2 = w (rows of the positions)
        axis[0:2 * s_h:2], axis[1:2 * s_h:2] = 1, 2
        self.register_buffer("axis", torch.cat([axis, axis]), persistent=False)   # cos columns | sin columns

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if positions.dim() == 1:
            return self.rope(positions)
        cols = torch.arange(self.axis.numel(), device=positions.device)
        cos_sin = self.rope.cos_sin_cache[positions[self.axis].T, cols]          # [T, rotary_dim]
        cos, sin = cos_sin.chunk(2, dim=-1)
        return cos, sin


class ModalityMoE(nn.Module):
    """Text experts for text tokens, vision experts for vision tokens, shared experts for all."""

    def __init__(self, config: PretrainedConfig, mlp_bias: bool):
        super().__init__()
        c = config
        text_size, vision_size = c.moe_intermediate_size
        self.text_moe = FusedMoE(c.hidden_size, c.moe_num_experts, c.moe_k, text_size, c.moe_norm_min)
        self.vision_moe = FusedMoE(c.hidden_size, c.moe_num_experts, c.moe_k, vision_size, c.moe_norm_min)
        self.shared_experts = (GatedMLP(c.hidden_size, c.moe_num_shared_experts * text_size, mlp_bias)
                               if c.moe_num_shared_experts else None)

    def forward(self, x: torch.Tensor, split: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """split: (text token indices, vision token indices), or None when all tokens are text."""
        if split is None:
            out = self.text_moe(x)
        else:
            out = torch.empty_like(x)
            for idx, moe in zip(split, (self.text_moe, self.vision_moe)):
                if idx.numel():
                    out[idx] = moe(x[idx])
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out


class VLModel(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        text = config.text_config
        spec = ArchSpec(qkv_bias=text.use_bias, o_bias=text.use_bias, mlp_bias=text.use_bias, interleaved_rope=True)
        self.embed_tokens = VocabEmbedding(text.vocab_size, text.hidden_size)
        self.rotary_emb = MRotaryEmbedding(text)
        self.layers = nn.ModuleList(
            DecoderLayer(text, spec, ModalityMoE(text, spec.mlp_bias) if kind == "sparse"
                         else GatedMLP(text.hidden_size, text.intermediate_size, spec.mlp_bias))
            for kind in text.mlp_layer_types)
        self.norm = RMSNorm(text.hidden_size, text.rms_norm_eps)
        self.vision_model = VisionTransformer(config.vision_config)
        self.resampler_model = Resampler(config)

    def forward(self, input_ids, positions, attn_metadata, mm_embeds: MultimodalEmbeds | None):
        hidden = self.embed_tokens(input_ids)
        split = None
        if mm_embeds is not None:
            if mm_embeds.embeds is not None:
                hidden[mm_embeds.embed_mask] = mm_embeds.embeds.to(hidden.dtype)
            vision = mm_embeds.vision_mask
            split = (torch.nonzero(~vision).flatten(), torch.nonzero(vision).flatten())   # one sync per step
        rope, residual = self.rotary_emb(positions), None
        for layer in self.layers:
            mlp_args = (split,) if isinstance(layer.mlp, ModalityMoE) else ()   # MoE layers route by modality
            hidden, residual = layer(rope, hidden, residual, attn_metadata, *mlp_args)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class Ernie4_5_VLMoeForConditionalGeneration(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.config = config
        text = config.text_config
        self.model = VLModel(config)
        self.lm_head = LMHead(text.vocab_size, text.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)

    def encode_images(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Processor output of some images -> [their placeholder tokens, hidden], image after image."""
        return self.model.resampler_model(self.model.vision_model(pixel_values, grid_thw), grid_thw)

    # frames are patched exactly like images; the resampler pairs them (grid t > 1)
    encode_videos = encode_images

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_metadata: AttentionMetadata,
                mm_embeds: MultimodalEmbeds | None = None) -> torch.Tensor:
        return self.model(input_ids, positions, attn_metadata, mm_embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """(name, tensor) pairs of the -PT checkpoints (also what transformers' save_pretrained writes):
        experts 0..E-1 are text experts and E..2E-1 vision experts, `mlp.gate.weight` / `weight_1` the
        text / vision routers ([hidden, E]), `moe_statics.e_score_correction_bias` [2, E] both biases.
        transformers' in-memory names (`model.language_model.`, `text_moe.`, ...) load too."""
        load_expert_weights(self, _to_our_names(weights, self.config))


_RENAMES = [  # transformers' in-memory names and the resampler's nn.Sequential indices -> ours
    ("model.language_model.", "model."), ("model.vision_tower.", "model.vision_model."),
    (".gate.moe_statics.", ".gate."), ("_linear.0.", "_linear.fc1."), ("_linear.2.", "_linear.fc2."),
    ("_linear.3.", "_linear.ln."),
]


def _to_our_names(weights: Iterable[tuple[str, torch.Tensor]], config: PretrainedConfig) -> Iterator:
    num_experts = config.text_config.moe_num_experts
    for name, t in weights:
        if ".mtp_" in name or "rotary_emb.inv_freq" in name:
            continue
        for old, new in _RENAMES:
            name = name.replace(old, new)
        if name.endswith(".mlp.moe_statics.e_score_correction_bias"):
            prefix = name[:-len("moe_statics.e_score_correction_bias")]
            yield prefix + "text_moe.gate.e_score_correction_bias", t[0:1]
            yield prefix + "vision_moe.gate.e_score_correction_bias", t[1:2]
            continue
        if name.endswith(".mlp.gate.weight"):
            name, t = name.replace(".mlp.gate.", ".mlp.text_moe.gate."), t.T
        elif name.endswith(".mlp.gate.weight_1"):
            name, t = name.replace(".mlp.gate.weight_1", ".mlp.vision_moe.gate.weight"), t.T
        elif ".mlp.experts." in name:
            head, rest = name.split(".mlp.experts.", 1)
            idx, rest = rest.split(".", 1)
            group = "text_moe" if int(idx) < num_experts else "vision_moe"
            name = f"{head}.mlp.{group}.experts.{int(idx) % num_experts}.{rest}"
        yield name, t
