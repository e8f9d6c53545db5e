"""Triton weight-only quantized matmul (formats in quant_matmul.py), dequantizing in the inner loop.

Both kernels walk K one 128-wide block at a time, as a low and a high half of 64 (the two nibbles of an
int4 byte; for int8 simply the two halves). The integer weights go into the products as exact small floats
and the scales are applied to the fp32 partial sums: per block for int4, once at the end for int8.

- `_gemv_kernel` (M <= GEMV_MAX_M, decode): one activation row per program over BLOCK_N weight rows, several
  blocks per step, no tensor cores; memory bound, so the grid is the N blocks (and the few rows, which
  run side by side and re-read the same weight tile from L2).
- `_gemm_kernel` (larger M): tl.dot tiles; BLOCK_N shrinks for small M so that enough programs stream
  the weights at once.

This module imports triton at the top: the dispatcher in quant_matmul.py imports it lazily.
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastdeploy.model_executor.ops.quant_matmul import BLOCK

GEMV_MAX_M = 4


@triton.jit
def _load_halves(w_ptr, rows, blocks, offs_j, mask, stride_wn, BITS: tl.constexpr, HALF: tl.constexpr):
    """The weight values of K blocks `blocks` for weight rows `rows` as two float32 tensors (low and high
    half of each block) of the broadcast shape of rows, blocks and offs_j."""
    if BITS == 4:
        packed = tl.load(w_ptr + rows * stride_wn + blocks * HALF + offs_j, mask=mask, other=0)
        lo = (packed & 0xF).to(tl.float32) - 8.0
        hi = (packed >> 4).to(tl.float32) - 8.0
    else:
        ptr = w_ptr + rows * stride_wn + blocks * (2 * HALF) + offs_j
        lo = tl.load(ptr, mask=mask, other=0).to(tl.float32)
        hi = tl.load(ptr + HALF, mask=mask, other=0).to(tl.float32)
    return lo, hi


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, N, K, num_blocks,
                 stride_xm, stride_wn, stride_sn, stride_ym,
                 BITS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCKS_PER_STEP: tl.constexpr,
                 HALF: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_b = tl.arange(0, BLOCKS_PER_STEP)
    offs_j = tl.arange(0, HALF)
    x_row = x_ptr + m * stride_xm
    rows = offs_n[:, None].to(tl.int64)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for b0 in range(0, num_blocks, BLOCKS_PER_STEP):
        blocks = b0 + offs_b                                           # [S]
        k_lo = blocks[:, None] * (2 * HALF) + offs_j[None, :]         # [S, HALF]
        x_lo = tl.load(x_row + k_lo, mask=k_lo < K, other=0.0).to(tl.float32)
        x_hi = tl.load(x_row + k_lo + HALF, mask=k_lo + HALF < K, other=0.0).to(tl.float32)
        w_mask = n_mask[:, None, None] & (blocks < num_blocks)[None, :, None]
        w_lo, w_hi = _load_halves(w_ptr, rows[:, :, None], blocks[None, :, None], offs_j[None, None, :], w_mask,
                                  stride_wn, BITS, HALF)
        part = tl.sum(w_lo * x_lo[None, :, :] + w_hi * x_hi[None, :, :], axis=2)   # [BLOCK_N, S]
        if BITS == 4:
            s_mask = n_mask[:, None] & (blocks < num_blocks)[None, :]
            s = tl.load(s_ptr + rows * stride_sn + blocks[None, :], mask=s_mask, other=0.0)
            part = part * s.to(tl.float32)
        acc += tl.sum(part, axis=1)
    if BITS == 8:
        acc *= tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _gemm_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, M, N, K, num_blocks,
                 stride_xm, stride_wn, stride_sn, stride_ym,
                 BITS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HALF: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # axis 0 walks M fastest, so programs running together share a weight tile through L2
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, HALF)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    rows = offs_n[None, :].to(tl.int64)
    dt = x_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for blk in range(num_blocks):
        k_lo = blk * (2 * HALF) + offs_j[None, :]
        x_lo = tl.load(x_rows + k_lo, mask=m_mask[:, None] & (k_lo < K), other=0.0)
        x_hi = tl.load(x_rows + k_lo + HALF, mask=m_mask[:, None] & (k_lo + HALF < K), other=0.0)
        w_lo, w_hi = _load_halves(w_ptr, rows, blk, offs_j[:, None], n_mask[None, :], stride_wn, BITS, HALF)
        if BITS == 4:
            part = tl.dot(x_lo, w_lo.to(dt), input_precision=DOT_PRECISION)
            part = tl.dot(x_hi, w_hi.to(dt), part, input_precision=DOT_PRECISION)
            s = tl.load(s_ptr + offs_n * stride_sn + blk, mask=n_mask, other=0.0).to(tl.float32)
            acc += part * s[None, :]
        else:
            acc = tl.dot(x_lo, w_lo.to(dt), acc, input_precision=DOT_PRECISION)
            acc = tl.dot(x_hi, w_hi.to(dt), acc, input_precision=DOT_PRECISION)
    if BITS == 8:
        acc *= tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    y = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 16
    blocks_per_step: int = 0        # 0: 8 for int4, 4 for int8 (4 KiB of int8/int4 weights per 16 rows)
    num_warps: int = 8
    num_stages: int = 2


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def gemm_config(m: int) -> GemmConfig:
    if m <= 32:
        return GemmConfig(max(16, triton.next_power_of_2(m)), 32, 4, 4)
    if m <= 64:
        return GemmConfig(64, 64, 4, 4)
    return GemmConfig(128, 128, 8, 3)


def quant_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bits: int,
                 bias: torch.Tensor | None = None, config: GemvConfig | GemmConfig | None = None) -> torch.Tensor:
    """Same contract as quant_matmul.quant_matmul; `config` overrides the launch heuristics (benchmarks)."""
    K, N = x.shape[-1], qweight.shape[0]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return y.view(*x.shape[:-1], N)
    num_blocks = triton.cdiv(K, BLOCK)
    stride_sn = scale.stride(0) if bits == 4 else 0
    args = (x2, qweight, scale, bias if bias is not None else y, y, N, K, num_blocks,
            x2.stride(0), qweight.stride(0), stride_sn, y.stride(0))
    if M <= GEMV_MAX_M and not isinstance(config, GemmConfig):
        c = config or GemvConfig()
        per_step = c.blocks_per_step or (8 if bits == 4 else 4)
        _gemv_kernel[(M, triton.cdiv(N, c.block_n))](
            *args, BITS=bits, HAS_BIAS=bias is not None, BLOCK_N=c.block_n, BLOCKS_PER_STEP=per_step,
            HALF=BLOCK // 2, num_warps=c.num_warps, num_stages=c.num_stages)
    else:
        c = config if isinstance(config, GemmConfig) else gemm_config(M)
        _gemm_kernel[(triton.cdiv(M, c.block_m), triton.cdiv(N, c.block_n))](
            *args[:5], M, *args[5:], BITS=bits, HAS_BIAS=bias is not None, BLOCK_M=c.block_m, BLOCK_N=c.block_n,
            HALF=BLOCK // 2, DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
            num_warps=c.num_warps, num_stages=c.num_stages)
    return y.view(*x.shape[:-1], N)
