"""RMSNorm, optionally fused with the residual add."""
from __future__ import annotations

import torch


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None):
    """Returns norm(x) or, with a residual, (norm(x + residual), x + residual). Computed in fp32."""
    orig_dtype = x.dtype
    x = x.float()
    if residual is not None:
        x = x + residual.float()
        residual = x.to(orig_dtype)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    out = (x * weight.float()).to(orig_dtype)
    return out if residual is None else (out, residual)


def _triton():
    """The Triton kernels module, or None where triton is not installed (imported on first use)."""
    global _TRITON
    if _TRITON is False:
        try:
            from fastdeploy.model_executor.ops import triton_elementwise
        except ImportError:
            triton_elementwise = None
        _TRITON = triton_elementwise
    return _TRITON


_TRITON = False


def rms_norm(x, weight, eps, residual=None):
    if x.is_cuda and _triton() is not None:
        return _triton().rms_norm(x, weight, eps, residual)
    return rms_norm_ref(x, weight, eps, residual)
