"""Rotary position embedding applied to q and k."""
from __future__ import annotations

import torch

from fastdeploy.model_executor.ops import triton_kernels
from fastdeploy.model_executor.ops.paged_attention import store_kvcache


def apply_rotary_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """x: [T, heads, rot_dim], cos/sin: [T, rot_dim // 2] (fp32).

    interleaved=False is the NeoX/Llama layout (pairs are (i, i + d/2)); interleaved=True is the
    GPT-J/GLM layout ERNIE uses (pairs are (2i, 2i + 1)). Computed in fp32.
    """
    cos, sin = cos[:, None, :], sin[:, None, :]
    xf = x.float()
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = xf.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 interleaved: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [T, heads, head_dim], k: [T, kv_heads, head_dim]; rotates the first 2 * cos.shape[-1] dims."""
    if q.is_cuda and triton_kernels("triton_elementwise") is not None:  # q and k in one launch
        return triton_kernels("triton_elementwise").apply_rotary(q, k, cos, sin, interleaved)
    # q and k as one tensor: on a CPU each op costs microseconds whatever its size
    qk, rot = torch.cat((q, k), dim=1), 2 * cos.shape[-1]
    out = apply_rotary_ref(qk[..., :rot], cos, sin, interleaved)
    if rot < qk.shape[-1]:
        out = torch.cat((out, qk[..., rot:]), dim=-1)
    return out[:, :q.shape[1]], out[:, q.shape[1]:]


def apply_rotary_and_store_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                              sin: torch.Tensor, interleaved: bool, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              slot_mapping: torch.Tensor) -> torch.Tensor:
    """`apply_rotary`, then `store_kvcache` of the rotated k and v; returns the rotated q. On CUDA one
    kernel does both: a launch less per layer, and the rotated k is never written anywhere but the cache."""
    if q.is_cuda and triton_kernels("triton_elementwise") is not None:
        return triton_kernels("triton_elementwise").apply_rotary(
            q, k, cos, sin, interleaved, kv_cache=(v, k_cache, v_cache, slot_mapping))[0]
    q, k = apply_rotary(q, k, cos, sin, interleaved)
    store_kvcache(k, v, k_cache, v_cache, slot_mapping)
    return q
