"""RMSNorm layer over `ops.rms_norm` (which a Triton kernel may replace)."""
from __future__ import annotations

import torch
from torch import nn

from fastdeploy.model_executor.ops.norm import rms_norm


class RMSNorm(nn.Module):
    """norm(x) * weight; with a residual, returns (norm(x + residual), x + residual) so the add is fused."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return rms_norm(x, self.weight, self.eps, residual)
