"""ERNIE 4.5 VL vision side: the ViT tower and the resampler that turns its patches into LLM tokens
(transformers' modeling_ernie4_5_vl_moe.py, checkpoint names of its saved layout).

Patches arrive flattened, [N, C * patch * patch], in the processor's block-major order: every run of
merge * merge consecutive patches is one spatial merge block, so the resampler merges them by a
reshape. A video's patches are frame after frame; each frame attends only to itself.

Plain `nn.Linear` layers on purpose: weight-only quantization (`layers.quantization`) is for the LLM
and skips them, as FastDeploy does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig

from fastdeploy.model_executor.layers.norm import RMSNorm
from fastdeploy.model_executor.ops.rotary import apply_rotary


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                frames: list[tuple[int, int]]) -> torch.Tensor:
        """frames: (number of frames, patches per frame) of each image/video, in order."""
        N = x.shape[0]
        q, k, v = self.qkv(x).view(N, 3, self.num_heads, self.head_dim).unbind(1)
        q, k = apply_rotary(q, k, *rope, interleaved=False)
        out, start = [], 0
        for t, hw in frames:    # the frames of one item share a size: one batched call per item
            sl = slice(start, start + t * hw)
            qi, ki, vi = (y[sl].view(t, hw, self.num_heads, self.head_dim).transpose(1, 2) for y in (q, k, v))
            out.append(F.scaled_dot_product_attention(qi, ki, vi).transpose(1, 2).reshape(t * hw, -1))
            start += t * hw
        return self.proj(torch.cat(out))


class VisionMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(quick_gelu(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, config.rms_norm_eps)
        self.norm2 = nn.LayerNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = VisionAttention(config.hidden_size, config.num_heads)
        self.mlp = VisionMLP(config.hidden_size, config.intermediate_size)

    def forward(self, x, rope, frames):
        x = x + self.attn(self.norm1(x), rope, frames)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.proj = nn.Linear(config.in_channels * config.patch_size ** 2, config.hidden_size, bias=False)

    def forward(self, pixels):
        return self.proj(pixels.to(self.proj.weight.dtype))


class VisionTransformer(nn.Module):
    """[N, C * p * p] patches of items with grids (t, h, w) -> [N, vision hidden]."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        self.merge = config.spatial_merge_size
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.ln = nn.LayerNorm(config.hidden_size, config.rms_norm_eps)
        # 2D (axial) rotary: a quarter of head_dim frequencies for h, the same for w (NeoX layout)
        head_dim = config.hidden_size // config.num_heads
        theta = (config.rope_parameters or {}).get("rope_theta", 10000.0)
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim // 2, 2, dtype=torch.float32) / (head_dim // 2))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _rope(self, grid_thw: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [N, head_dim / 2] of each patch's (row, column), in the block-major patch order."""
        m, pos = self.merge, []
        for t, h, w in grid_thw:
            rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
            hw = torch.stack([rows, cols], -1).view(h // m, m, w // m, m, 2).transpose(1, 2).reshape(-1, 2)
            pos.append(hw.repeat(t, 1))
        freqs = (torch.cat(pos)[..., None].float() * self.inv_freq.float()).flatten(1)   # [N, (h freqs | w freqs)]
        return freqs.cos(), freqs.sin()

    def forward(self, pixels: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        grid = grid_thw.tolist()
        rope = self._rope(grid, pixels.device)
        frames = [(t, h * w) for t, h, w in grid]
        x = self.patch_embed(pixels)
        for block in self.blocks:
            x = block(x, rope, frames)
        return self.ln(x)


class ResamplerMLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)
        self.ln = nn.LayerNorm(out_dim, eps)

    def forward(self, x):
        return self.ln(self.fc2(F.gelu(self.fc1(x))))


class Resampler(nn.Module):
    """Vision patches -> LLM tokens: each merge x merge block becomes one vector (spatial_linear), then
    two frames become one token (temporal_linear; an image is paired with itself), then a projection
    to the LLM width and an RMSNorm."""

    def __init__(self, config: PretrainedConfig):
        super().__init__()
        vision, text = config.vision_config, config.text_config
        if vision.temporal_merge_size != 2:
            raise ValueError("ERNIE 4.5 VL pairs frames: temporal_merge_size must be 2")
        self.merge = vision.spatial_merge_size
        dim = vision.hidden_size * self.merge ** 2
        self.spatial_linear = ResamplerMLP(dim, dim, vision.rms_norm_eps)
        self.temporal_linear = ResamplerMLP(2 * dim, dim, vision.rms_norm_eps)
        self.mlp = nn.Linear(dim, text.hidden_size)
        self.after_norm = RMSNorm(text.hidden_size, text.rms_norm_eps)

    def forward(self, x: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        x = self.spatial_linear(x.reshape(-1, x.shape[-1] * self.merge ** 2))
        paired, start = [], 0
        for t, h, w in grid_thw.tolist():
            per_frame = h * w // self.merge ** 2
            item = x[start:start + t * per_frame].view(t, per_frame, -1)
            start += t * per_frame
            if t == 1:
                paired.append(torch.cat([item[0], item[0]], -1))
            elif t % 2 == 0:     # frames (0, 1), (2, 3), ...: the processor pads odd counts
                paired.append(torch.cat([item[0::2], item[1::2]], -1).flatten(0, 1))
            else:
                raise ValueError(f"a video needs an even number of frames, got grid {(t, h, w)}")
        x = self.temporal_linear(torch.cat(paired))
        return self.after_norm(self.mlp(x))
