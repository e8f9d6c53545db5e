"""SiLU(gate) * up over a merged [.., 2 * I] gate_up projection."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdeploy.model_executor.ops import triton_kernels


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    if x.is_cuda and triton_kernels("triton_elementwise") is not None:
        return triton_kernels("triton_elementwise").silu_and_mul(x)
    return silu_and_mul_ref(x)
