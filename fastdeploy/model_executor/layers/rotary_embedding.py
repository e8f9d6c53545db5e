"""Rotary position embedding: a fp32 cos/sin table built once, indexed by each token's position."""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PretrainedConfig



def rope_parameters(config: PretrainedConfig) -> dict:
    """The config's rope settings as one dict with at least `rope_type` and `rope_theta`.

    transformers >= 5 keeps them in `config.rope_parameters`; 4.x splits them between `rope_theta`
    and `rope_scaling` (whose type key was once called `type`).
    """
    params = getattr(config, "rope_parameters", None)
    if params is None:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params = dict(params)
    params["rope_type"] = params.get("rope_type", params.get("type")) or "default"
    return params


def _llama3_inv_freq(inv_freq: torch.Tensor, params: dict) -> torch.Tensor:
    """Llama 3.1 scaling: long wavelengths are divided by `factor`, short ones kept, and the band in
    between interpolated smoothly in 1/wavelength."""
    factor = params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    old_context = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # smooth = 1 keeps the frequency, smooth = 0 divides it by factor
    smooth = ((old_context / wavelen - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


class RotaryEmbedding(nn.Module):
    def __init__(self, rotary_dim: int, max_position: int, params: dict, interleaved: bool):
        super().__init__()
        self.rotary_dim = rotary_dim
        self.interleaved = interleaved
        base = params["rope_theta"]
        inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)
        rope_type = params["rope_type"]
        if rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, params)
        elif rope_type == "linear":
            inv_freq = inv_freq / params["factor"]
        elif rope_type != "default":
            raise ValueError(f"unsupported rope type {rope_type!r} (supported: default, linear, llama3)")
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
        # [max_position, rotary_dim]: cos in the first half, sin in the second. Not persistent (not
        # in checkpoints); keep the model out of `.to(dtype)` so it stays fp32.
        self.register_buffer("cos_sin_cache", torch.cat((freqs.cos(), freqs.sin()), dim=-1), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) rows for the positions, each [T, rotary_dim // 2] fp32, for `ops.apply_rotary`."""
        cos, sin = self.cos_sin_cache[positions].chunk(2, dim=-1)
        return cos, sin


def get_rope(config: PretrainedConfig, head_dim: int, interleaved: bool) -> RotaryEmbedding:
    params = rope_parameters(config)
    rotary_dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    return RotaryEmbedding(rotary_dim, config.max_position_embeddings, params, interleaved)
