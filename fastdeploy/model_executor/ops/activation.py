"""SiLU(gate) * up over a merged [.., 2 * I] gate_up projection."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


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


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    if x.is_cuda and _triton() is not None:
        return _triton().silu_and_mul(x)
    return silu_and_mul_ref(x)
