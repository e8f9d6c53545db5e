"""Weight-only quantized matmul: y = x @ dequant(W).T (+ bias), weights int8 or int4, activations float.

Formats (W is [N, K], PyTorch's [out, in]; K is zero-padded to Kp, a multiple of BLOCK = 128, so the
kernels step through K in whole blocks and never mask a weight load along K):
- wint8: `qweight` int8 [N, Kp], symmetric per output channel; `scale` fp32 [N] (in bf16 a scale's own
  rounding would be as large as the int8 rounding), W ~= qweight * scale[:, None].
- wint4: symmetric per group of 128 along K, values in [-7, 7] stored as nibbles q + 8; `scale` [N, Kp/128]
  in the weight's dtype (its rounding is small beside int4's). Two nibbles per byte, llama.cpp Q4_0 style
  within each group: byte j of group g holds k = 128g + j (low nibble) and k = 128g + 64 + j (high), so a
  kernel reads each half's activations as one contiguous run. `qweight` is uint8 [N, Kp/2].

- grouped (GGUF checkpoints, layers/gguf_quant.py): either layout with a scale per `group` inputs along K
  (`scale` [N, Kp/group], fp16) instead of the above; int4 optionally with a per-group `mins` [N, Kp/group]
  subtracted, the nibble then read unsigned: W = scale * n - min (without `mins`, scale * (n - 8)).
  `group` 0 means the wint8/wint4 formats above.

`linear` is the unquantized layers' F.linear, which hands single rows on CUDA to the same GEMV kernel with
16-bit (or fp32) weights.

The `*_ref` functions (dequantize, then matmul in PyTorch) are the CPU path and the kernels' test oracle;
`quant_matmul` runs the Triton kernels (triton_quant_matmul.py) on CUDA tensors. With bf16 activations on
the CPU, `pack_for_cpu` / `cpu_packed_matmul` run PyTorch's own weight-only CPU kernels instead, which read
the 4- or 8-bit weights directly (decode on a CPU is bound by the bytes of weight it reads).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dataclasses import dataclass

from fastdeploy.model_executor.ops import triton_kernels
from fastdeploy.model_executor.ops.activation import silu_and_mul

BLOCK = 128          # K padding and the int4 group size
METHODS = {"wint8": 8, "wint4": 4}


def _pad_k(w: torch.Tensor) -> torch.Tensor:
    return F.pad(w, (0, -w.shape[1] % BLOCK))


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (int8 [N, Kp], fp32 scale [N])."""
    w = _pad_k(w.float())
    scale = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(qweight: torch.Tensor, scale: torch.Tensor, k: int, dtype: torch.dtype,
                    group: int = 0) -> torch.Tensor:
    if group == 0:
        return (qweight[:, :k].float() * scale[:, None]).to(dtype)
    n = qweight.shape[0]
    w = qweight.float().view(n, -1, group) * scale.float()[..., None]
    return w.view(n, -1)[:, :k].to(dtype)


def quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (packed uint8 [N, Kp/2], scale [N, Kp/128] in w's dtype)."""
    n = w.shape[0]
    groups = _pad_k(w.float()).view(n, -1, BLOCK)
    # the scale is rounded to its storage dtype first, so that q matches the scale actually stored
    scale = (groups.abs().amax(dim=2) / 7).clamp_min(torch.finfo(w.dtype).tiny).to(w.dtype)
    q = (torch.round(groups / scale.float()[..., None]).clamp_(-7, 7) + 8).to(torch.uint8)
    half = BLOCK // 2
    packed = q[..., :half] | (q[..., half:] << 4)
    return packed.view(n, -1), scale


def dequantize_int4(qweight: torch.Tensor, scale: torch.Tensor, k: int, dtype: torch.dtype,
                    group: int = 0, mins: torch.Tensor | None = None) -> torch.Tensor:
    n = qweight.shape[0]
    packed = qweight.view(n, -1, BLOCK // 2)
    q = torch.cat([packed & 0xF, packed >> 4], dim=2).float().view(n, -1, group or BLOCK)
    w = (q - 8 if mins is None else q) * scale.float()[..., None]
    if mins is not None:
        w -= mins.float()[..., None]
    return w.view(n, -1)[:, :k].to(dtype)


def dequantize(qweight: torch.Tensor, scale: torch.Tensor, bits: int, k: int, dtype: torch.dtype,
               group: int = 0, mins: torch.Tensor | None = None) -> torch.Tensor:
    """The [N, k] weight of any format above, in dtype."""
    if bits == 8:
        if mins is not None:
            raise ValueError("int8 weights have no per-group minimum")
        return dequantize_int8(qweight, scale, k, dtype, group)
    return dequantize_int4(qweight, scale, k, dtype, group, mins)


def matmul_ref(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bits: int,
               bias: torch.Tensor | None = None, group: int = 0, mins: torch.Tensor | None = None
               ) -> torch.Tensor:
    """The reference for any format (`quant_matmul`'s arguments)."""
    return F.linear(x, dequantize(qweight, scale, bits, x.shape[-1], x.dtype, group, mins), bias)


QUANTIZE = {8: quantize_int8, 4: quantize_int4}


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           gated: bool = False) -> torch.Tensor:
    """F.linear; a single row on CUDA (decode at batch 1) goes through the Triton GEMV instead, which streams
    the weight closer to bandwidth than cuBLAS's split-K kernels at M = 1 (Llama-3-8B layer on the H100:
    153 against 168 us). gated: silu_and_mul of the result (weight [gate; up]), which the GEMV applies in its
    own launch."""
    gemv = triton_kernels("triton_quant_matmul") if x.is_cuda else None
    if (gemv is not None and x.numel() == x.shape[-1] == weight.shape[1] and weight.shape[0] <= gemv.FLOAT_GEMV_MAX_N
            and weight.stride(1) == 1):     # (anything else, a shape mismatch included, is F.linear's)
        return gemv.float_gemv(x, weight, bias, gated=gated)
    y = F.linear(x, weight, bias)
    return silu_and_mul(y) if gated else y


def quant_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bits: int,
                 bias: torch.Tensor | None = None, group: int = 0, mins: torch.Tensor | None = None,
                 gated: bool = False) -> torch.Tensor:
    """x [..., K] @ dequant(W).T (+ bias) -> [..., N] in x's dtype: Triton on CUDA, the reference elsewhere.
    gated: silu_and_mul of it ([..., N / 2]), for a [gate; up] weight."""
    if x.is_cuda and triton_kernels("triton_quant_matmul") is not None:
        return triton_kernels("triton_quant_matmul").quant_matmul(x, qweight, scale, bits, bias,
                                                                   group=group, mins=mins, gated=gated)
    y = matmul_ref(x, qweight, scale, bits, bias, group, mins)
    return silu_and_mul(y) if gated else y


@dataclass(frozen=True)
class CpuPacked:
    """A quantized weight in the layout of PyTorch's CPU weight-only kernels (which take bf16 activations):
    int4 as `_weight_int4pack_mm_for_cpu` wants it (value = (n - 8) * scale + zero per group), or int8 with
    per-channel scales for `_weight_int8pack_mm`."""
    weight: torch.Tensor        # int4: packed uint8 [N, Kp / 2]; int8: [N, Kp]
    scales: torch.Tensor        # int4: [Kp / group, N, 2] bf16 (scale, zero); int8: [N] bf16
    group: int                  # int4 group size; 0 for int8
    kp: int


def pack_for_cpu(qweight: torch.Tensor, scale: torch.Tensor, bits: int, k: int, group: int = 0,
                 mins: torch.Tensor | None = None) -> CpuPacked | None:
    """The CPU kernels' form of a weight in any format above, cut to the K padding its groups need (`k`:
    the real input size), so that activations mostly need none; None where no kernel fits (grouped int8,
    i.e. GGUF Q8_0/Q6_K; int4 with N not a multiple of 16) or this PyTorch lacks them. Scales and zeros are
    rounded to bf16."""
    aten = torch.ops.aten
    n = qweight.shape[0]
    if bits == 8:
        if group or not hasattr(aten, "_weight_int8pack_mm"):
            return None
        return CpuPacked(qweight[:, :k].contiguous(), scale.to(torch.bfloat16), 0, k)
    if not hasattr(aten, "_weight_int4pack_mm_for_cpu") or n % 16:     # the kernel packs rows 16 at a time
        return None
    group = group or BLOCK
    kg = -(-k // group) * group
    packed = qweight.view(n, -1, BLOCK // 2)
    nibbles = torch.cat([packed & 0xF, packed >> 4], dim=2).view(n, -1)[:, :kg].to(torch.int32)   # k order
    s = scale[:, :kg // group].float()
    # ours: s * (n - 8), or s * n - min; theirs: (n - 8) * scale + zero
    zero = torch.zeros_like(s) if mins is None else 8 * s - mins[:, :kg // group].float()
    scales = torch.stack([s.T, zero.T], dim=-1).to(torch.bfloat16).contiguous()
    return CpuPacked(aten._convert_weight_to_int4pack_for_cpu(nibbles.contiguous(), 1), scales, group, kg)


def cpu_packed_matmul(x: torch.Tensor, p: CpuPacked, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] (bf16, CPU) @ the packed weight's W.T (+ bias) -> [..., N]."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[1] < p.kp:
        x2 = F.pad(x2, (0, p.kp - x2.shape[1]))
    x2 = x2.contiguous()
    if p.group:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, p.weight, p.group, p.scales)
    else:
        y = torch.ops.aten._weight_int8pack_mm(x2, p.weight, p.scales)
    if bias is not None:
        y = y + bias
    return y.view(*x.shape[:-1], -1)
