"""RMSNorm, optionally fused with the residual add."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdeploy.model_executor.ops import triton_kernels


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None):
    """Returns norm(x) or, with a residual, (norm(x + residual), x + residual). Computed in fp32."""
    orig_dtype = x.dtype
    x = x.float()
    if residual is not None:
        x = x + residual.float()
        residual = x.to(orig_dtype)
    out = F.rms_norm(x, x.shape[-1:], weight.float(), eps).to(orig_dtype)     # x * rsqrt(mean(x^2) + eps) * w
    return out if residual is None else (out, residual)


def rms_norm(x, weight, eps, residual=None):
    if x.is_cuda and triton_kernels("triton_elementwise") is not None:
        return triton_kernels("triton_elementwise").rms_norm(x, weight, eps, residual)
    return rms_norm_ref(x, weight, eps, residual)
