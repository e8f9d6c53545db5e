"""Triton weight-only quantized matmul (formats in quant_matmul.py), dequantizing in the inner loop.

- `_gemv_kernel` (M <= GEMV_MAX_M, single-row decode; not wint4 rows much longer than there are rows): memory
  bound, so it is built to stream the weight bytes at bandwidth. Each program owns a few (BLOCK_N) whole weight
  rows and walks K in wide chunks: every thread issues 16-byte loads of one row's contiguous bytes, and with few
  rows per program there are N / BLOCK_N programs (1024 for N = 4096) to keep enough loads in flight. Products
  accumulate elementwise in an fp32 register tile and are reduced across K once, after the loop (no shuffles
  inside it; wint4 reduces each step's groups, see below). The integers become floats without the slow
  int-to-float unit: a small integer OR'ed (int4 nibble) or added (int8) into the bit pattern of 2^23 (resp.
  1.5 * 2^23) is that float plus the integer, exactly, and one subtraction removes the offset. wint4 goes
  further, as it would be bound by these integer and float instructions rather than by memory (H100): a nibble
  n enters as the float 128 + n, made from its byte by one byte permute, and each group's dot product sheds the
  bias (136 times the group's sum of x) before its scale multiplies it. The int8 per-channel scale is applied
  once at the end. Rows run as separate programs (grid axis 0 is the row, fastest), so the few rows of a decode
  batch re-read each weight tile from L2. With `gated` (16-bit weights: an MLP's [gate; up]) each program takes
  the gate and the up row of its outputs and stores silu(gate) * up: the activation costs no launch of its own.
- wint4 with one bf16 row goes to the tensor-core GEMV of triton_wint4_gemv.py instead, where it fits: the
  CUDA-core GEMV above spends ~4 instructions per weight on it and so streams wint4 at half the bandwidth.
- `_gemm_kernel` (larger M): tensor-core tiles of y^T = W x^T, walking K one 128-wide block at a time as a low
  and a high half of 64 (the two nibbles of an int4 byte; for int8 simply the two halves). The weight tile is
  the dot's first operand, K-contiguous as stored: on the H100 Triton then streams it into shared memory
  asynchronously and feeds the dequantized registers straight to wgmma (with the weight as the second operand
  it went through shared memory once more, and the bytes were loaded one by one: 1.6x slower at M = 4096).
  The integer weights enter the products as exact small floats and the scales are applied to the fp32
  partial sums. int4 nibbles become bf16/fp16 through `_nibbles_to_half` (PTX); under the interpreter, and
  for fp32 activations, through fp32. For small M the weight stream is split along K too (SPLIT_K programs per
  tile), so that enough programs stream weights at once. The split is reduced serially in the same launch
  (triton_split_k.py): every program stores its fp32 partial tile, and the last of a tile's programs to arrive
  (an atomic counter) adds them up in split order and writes y. This spares the zeroed buffer and the final
  cast that fp32 atomics into y would need (two more launches per linear, a fifth of a small decode GEMM's
  time), and the result does not depend on the order the programs ran in.

Grouped formats (GGUF, GROUP > 0; GROUP 0 compiles exactly the wint8/wint4 code): the GEMV tiles K as
[groups, GROUP] (int8) or, for int4, each 64-wide half of a 128 block as [HALF / GROUP, GROUP], so that a
group's scale (and min) is loaded once and broadcast over its inputs; it dequantizes each weight
(scale * n - min) in fp32 before the product. The GEMM dequantizes its [BLOCK_N, 64] weight half-tiles with
their scales broadcast per group, then runs the same tl.dot's as above: dequantizing costs one FMA per weight
per tile (shared by BLOCK_M rows), where rescaling fp32 partial sums per group would cost one per output per
group and run narrower dots. The price is that each weight enters the dot rounded to the activation dtype, as
in a float model dequantized at load (H100, bf16, 4096 x 4096: the same max error as F.linear on those).

This module imports triton at the top: the dispatcher in quant_matmul.py imports it lazily.
"""
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastdeploy.model_executor.ops import triton_wint4_gemv as wint4_gemv
from fastdeploy.model_executor.ops.triton_elementwise import silu_and_mul, silu_mul
from fastdeploy.model_executor.ops.triton_pdl import launch_options, wait_for_previous
from fastdeploy.model_executor.ops.triton_split_k import check_counters, split_k_total, tile_counters
from fastdeploy.model_executor.ops.quant_matmul import BLOCK

# The GEMV only for a single row: from M = 2 the tensor-core kernel, which reads each weight tile once for
# all rows, is as fast or faster (H100, Llama-3-8B shapes, CUDA-graph timings).
GEMV_MAX_M = 1


@triton.jit
def _i8_to_f32(q):
    """int8 -> float32 exactly, by integer add into the bits of 1.5 * 2^23 (no I2F)."""
    return (q.to(tl.int32) + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0


@triton.jit
def _nibble_to_f32(n):
    """int32 nibble in [0, 15] -> float32 n - 8 exactly, by OR into the bits of 2^23 (no I2F)."""
    return (n | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0


@triton.jit
def _u4_to_f32(n):
    """int32 nibble in [0, 15] -> float32 n exactly (the unsigned nibble of formats with a min)."""
    return (n | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


# Triton's interpreter (CI's CPU runs of these kernels) cannot run PTX: there the GEMM takes the plain path
PTX = os.environ.get("TRITON_INTERPRET", "0") != "1"

# nibble -> 16-bit float by OR'ing it into the mantissa of 2^10 (fp16: 0x6400) or 2^7 (bf16: 0x4300), then one
# packed FMA (x * 1 - (magic + offset)) that is exact; per 4 bytes: 2 byte permutes, 2 shifts, 4 LOP3s, 4 FMAs
_NIBBLE_ASM = """{
.reg .b32 lo01, lo23, hi01, hi23, one, bias;
prmt.b32 lo01, $4, 0, 0x4140;
prmt.b32 lo23, $4, 0, 0x4342;
shr.u32 hi01, lo01, 4;
shr.u32 hi23, lo23, 4;
lop3.b32 $0, lo01, 0x000F000F, MAGIC, 0xEA;
lop3.b32 $1, lo23, 0x000F000F, MAGIC, 0xEA;
lop3.b32 $2, hi01, 0x000F000F, MAGIC, 0xEA;
lop3.b32 $3, hi23, 0x000F000F, MAGIC, 0xEA;
mov.b32 one, ONE;
mov.b32 bias, BIAS;
fma.rn.TYPEx2 $0, $0, one, bias;
fma.rn.TYPEx2 $1, $1, one, bias;
fma.rn.TYPEx2 $2, $2, one, bias;
fma.rn.TYPEx2 $3, $3, one, bias;
}"""
# (magic, one, -(magic value + 8), -(magic value)) as 16-bit patterns, both halves
_NIBBLE_CONSTANTS = {"f16": (0x6400, 0x3C00, 0xE408, 0xE400), "bf16": (0x4300, 0x3F80, 0xC308, 0xC300)}


def _nibble_asm(ty: str, offset: int) -> tl.constexpr:
    magic, one, bias8, bias0 = (f"0x{c:04X}{c:04X}" for c in _NIBBLE_CONSTANTS[ty])
    return tl.constexpr(_NIBBLE_ASM.replace("MAGIC", magic).replace("ONE", one).replace("TYPE", ty)
                        .replace("BIAS", bias8 if offset == 8 else bias0))


_ASM_BF16, _ASM_BF16_UNSIGNED = _nibble_asm("bf16", 8), _nibble_asm("bf16", 0)
_ASM_F16, _ASM_F16_UNSIGNED = _nibble_asm("f16", 8), _nibble_asm("f16", 0)

# 4 bytes -> their 8 nibbles n as float32 128 + n: each is the bits 0x430n0000 (bf16's 128 + n in the upper half),
# one byte permute per value from the masked low and high nibbles; 11 instructions per 4 bytes
_BIASED_NIBBLE_ASM = tl.constexpr("""{
.reg .b32 lo, hi, magic;
mov.b32 magic, 0x43000000;
and.b32 lo, $8, 0x0F0F0F0F;
shr.u32 hi, $8, 4;
and.b32 hi, hi, 0x0F0F0F0F;
prmt.b32 $0, lo, magic, 0x7054;
prmt.b32 $1, lo, magic, 0x7154;
prmt.b32 $2, lo, magic, 0x7254;
prmt.b32 $3, lo, magic, 0x7354;
prmt.b32 $4, hi, magic, 0x7054;
prmt.b32 $5, hi, magic, 0x7154;
prmt.b32 $6, hi, magic, 0x7254;
prmt.b32 $7, hi, magic, 0x7354;
}""")


@triton.jit
def _nibbles_to_half(packed, dt: tl.constexpr, OFFSET: tl.constexpr):
    """uint8 bytes -> (low nibble - OFFSET, high nibble - OFFSET) in the 16-bit float dt, exactly, without the
    int-to-float unit (which converts 16 values per clock per SM and bounds the plain path)."""
    if dt == tl.bfloat16:
        return tl.inline_asm_elementwise(_ASM_BF16 if OFFSET == 8 else _ASM_BF16_UNSIGNED, "=r,=r,=r,=r,r",
                                         [packed], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    else:
        return tl.inline_asm_elementwise(_ASM_F16 if OFFSET == 8 else _ASM_F16_UNSIGNED, "=r,=r,=r,=r,r",
                                         [packed], dtype=(tl.float16, tl.float16), is_pure=True, pack=4)


@triton.jit
def _biased_nibbles(packed, USE_PTX: tl.constexpr):
    """uint8 bytes -> (128 + low nibble, 128 + high nibble) as float32, exactly. With the bias, the PTX makes
    each float with one byte permute (the plain path: integer ops and the int-to-float unit, for the interpreter)."""
    if USE_PTX:
        return tl.inline_asm_elementwise(_BIASED_NIBBLE_ASM, "=r,=r,=r,=r,=r,=r,=r,=r,r", [packed],
                                         dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
    else:
        return (packed & 0xF).to(tl.float32) + 128.0, (packed >> 4).to(tl.float32) + 128.0


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, y_ptr, N, K, num_blocks,
                 stride_xm, stride_wn, stride_sn, stride_ym,
                 BITS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 HALF: tl.constexpr, GROUP: tl.constexpr, HAS_MIN: tl.constexpr, USE_PTX: tl.constexpr,
                 GATED: tl.constexpr, PDL: tl.constexpr):
    # GATED: the weight is [gate; up] (2N rows) and y = silu(gate) * up, so each program takes the gate and the
    # up row of its outputs (interleaved in `rows`), and the activation needs no launch of its own
    wait_for_previous(PDL)
    m = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)          # clamped: weight loads need no N mask
    if GATED:
        rows = tl.reshape(tl.join(rows, rows + N), (2 * BLOCK_N,))
    out = _gemv_rows(x_ptr + m * stride_xm, w_ptr, s_ptr, m_ptr, b_ptr, rows, K, num_blocks, stride_wn, stride_sn,
                     BITS, HAS_BIAS, BLOCK_K, HALF, GROUP, HAS_MIN, USE_PTX)
    if GATED:
        gate, up = tl.split(tl.reshape(out, (BLOCK_N, 2)))
        out = silu_mul(gate, up)
    tl.store(y_ptr + m * stride_ym + offs_n, out.to(y_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _gemv_rows(x_row, w_ptr, s_ptr, m_ptr, b_ptr, rows, K, num_blocks, stride_wn, stride_sn,
               BITS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, HALF: tl.constexpr,
               GROUP: tl.constexpr, HAS_MIN: tl.constexpr, USE_PTX: tl.constexpr):
    """`_gemv_kernel`'s dot products of weight rows `rows` with x, plus their bias: fp32, rows' shape."""
    BLOCK_N: tl.constexpr = rows.shape[0]
    if GROUP > 0:
        out = _gemv_grouped(x_row, w_ptr, s_ptr, m_ptr, rows, K, num_blocks, stride_wn, stride_sn,
                            BITS, BLOCK_K, HALF, GROUP, HAS_MIN)
    elif BITS >= 8:         # int8, or (BITS 16) an unquantized float weight [N, K]
        Kp = num_blocks * (2 * HALF) if BITS == 8 else K
        offs_k = tl.arange(0, BLOCK_K)
        w_ptrs = w_ptr + rows[:, None] * stride_wn + offs_k[None, :]
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, Kp, BLOCK_K):
            k = k0 + offs_k
            w = tl.load(w_ptrs, mask=(k < Kp)[None, :], other=0)
            x = tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32)
            acc += (_i8_to_f32(w) if BITS == 8 else w.to(tl.float32)) * x[None, :]
            w_ptrs += BLOCK_K
        out = tl.sum(acc, axis=1)
        if BITS == 8:
            out *= tl.load(s_ptr + rows)
    else:
        G: tl.constexpr = BLOCK_K // (2 * HALF)              # 128-wide groups per step (HALF bytes each)
        offs_g = tl.arange(0, G)
        offs_j = tl.arange(0, HALF)
        w_ptrs = w_ptr + rows[:, None, None] * stride_wn + offs_g[None, :, None] * HALF + offs_j[None, None, :]
        s_ptrs = s_ptr + rows[:, None] * stride_sn + offs_g[None, :]
        # each weight enters as 128 + nibble (one instruction from the byte, see _biased_nibbles) and a group's
        # dot product drops the bias afterwards: sum (128 + n) x - 136 sum x = sum (n - 8) x. The products are
        # exact (8-bit times bf16's 8-bit significand) and the bias costs ~2^-24 * 136 * 128 |x| of fp32 rounding.
        acc = tl.zeros([BLOCK_N, G], dtype=tl.float32)
        for g0 in range(0, num_blocks, G):
            g = g0 + offs_g
            g_mask = g < num_blocks
            packed = tl.load(w_ptrs, mask=g_mask[None, :, None], other=0)
            k_lo = g[:, None] * (2 * HALF) + offs_j[None, :]
            x_lo = tl.load(x_row + k_lo, mask=k_lo < K, other=0.0).to(tl.float32)
            x_hi = tl.load(x_row + k_lo + HALF, mask=k_lo + HALF < K, other=0.0).to(tl.float32)
            s = tl.load(s_ptrs, mask=g_mask[None, :], other=0.0).to(tl.float32)
            lo, hi = _biased_nibbles(packed, USE_PTX)
            dots = tl.sum(lo * x_lo[None, :, :] + hi * x_hi[None, :, :], axis=2)
            acc += (dots - 136.0 * tl.sum(x_lo + x_hi, axis=1)[None, :]) * s
            w_ptrs += G * HALF
            s_ptrs += G
        out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(b_ptr + rows).to(tl.float32)
    return out


@triton.jit
def _gemv_grouped(x_row, w_ptr, s_ptr, m_ptr, rows, K, num_blocks, stride_wn, stride_sn,
                  BITS: tl.constexpr, BLOCK_K: tl.constexpr, HALF: tl.constexpr, GROUP: tl.constexpr,
                  HAS_MIN: tl.constexpr):
    """`_gemv_rows` for the grouped formats."""
    BLOCK_N: tl.constexpr = rows.shape[0]
    if BITS == 8:
        NG: tl.constexpr = BLOCK_K // GROUP                  # groups per step
        Kp = num_blocks * (2 * HALF)
        offs_g = tl.arange(0, NG)
        offs_k = offs_g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]           # [NG, GROUP]
        w_ptrs = w_ptr + rows[:, None, None] * stride_wn + offs_k[None, :, :]
        s_ptrs = s_ptr + rows[:, None] * stride_sn + offs_g[None, :]
        acc = tl.zeros([BLOCK_N, NG, GROUP], dtype=tl.float32)
        for k0 in range(0, Kp, BLOCK_K):
            k = k0 + offs_k
            w = tl.load(w_ptrs, mask=(k < Kp)[None, :, :], other=0)
            x = tl.load(x_row + k, mask=k < K, other=0.0).to(tl.float32)
            s = tl.load(s_ptrs, mask=(k0 + offs_g * GROUP < Kp)[None, :], other=0.0).to(tl.float32)
            acc += _i8_to_f32(w) * s[:, :, None] * x[None, :, :]
            w_ptrs += BLOCK_K
            s_ptrs += NG
        return tl.sum(tl.sum(acc, axis=2), axis=1)
    else:
        # [BLOCK_N, G blocks, SUB groups per half, GROUP]: byte j of a block's half-group s holds input
        # 128 g + s GROUP + j (low nibble, group 2 SUB g + s) and the same + 64 (high nibble, group + SUB)
        G: tl.constexpr = BLOCK_K // (2 * HALF)
        SUB: tl.constexpr = HALF // GROUP
        offs_g = tl.arange(0, G)
        offs_sj = tl.arange(0, SUB)[:, None] * GROUP + tl.arange(0, GROUP)[None, :]      # [SUB, GROUP]
        offs_gs = offs_g[:, None] * (2 * SUB) + tl.arange(0, SUB)[None, :]               # [G, SUB]
        w_ptrs = w_ptr + rows[:, None, None, None] * stride_wn + (offs_g[:, None, None] * HALF + offs_sj)[None]
        s_ptrs = s_ptr + rows[:, None, None] * stride_sn + offs_gs[None]
        m_ptrs = m_ptr + rows[:, None, None] * stride_sn + offs_gs[None]
        acc = tl.zeros([BLOCK_N, G, SUB, GROUP], dtype=tl.float32)
        for g0 in range(0, num_blocks, G):
            g = g0 + offs_g
            g_mask = (g < num_blocks)[None, :, None]
            packed = tl.load(w_ptrs, mask=g_mask[:, :, :, None], other=0).to(tl.int32)
            k_lo = g[:, None, None] * (2 * HALF) + offs_sj[None]
            x_lo = tl.load(x_row + k_lo, mask=k_lo < K, other=0.0).to(tl.float32)[None]
            x_hi = tl.load(x_row + k_lo + HALF, mask=k_lo + HALF < K, other=0.0).to(tl.float32)[None]
            s_lo = tl.load(s_ptrs, mask=g_mask, other=0.0).to(tl.float32)[:, :, :, None]
            s_hi = tl.load(s_ptrs + SUB, mask=g_mask, other=0.0).to(tl.float32)[:, :, :, None]
            if HAS_MIN:
                m_lo = tl.load(m_ptrs, mask=g_mask, other=0.0).to(tl.float32)[:, :, :, None]
                m_hi = tl.load(m_ptrs + SUB, mask=g_mask, other=0.0).to(tl.float32)[:, :, :, None]
                acc += (_u4_to_f32(packed & 0xF) * s_lo - m_lo) * x_lo
                acc += (_u4_to_f32(packed >> 4) * s_hi - m_hi) * x_hi
            else:
                acc += _nibble_to_f32(packed & 0xF) * s_lo * x_lo
                acc += _nibble_to_f32(packed >> 4) * s_hi * x_hi
            w_ptrs += G * HALF
            s_ptrs += G * 2 * SUB
            m_ptrs += G * 2 * SUB
        return tl.sum(tl.sum(tl.sum(acc, axis=3), axis=2), axis=1)


@triton.jit
def _load_halves(w_ptr, rows, blocks, offs_j, stride_wn, BITS: tl.constexpr, HALF: tl.constexpr,
                 NIBBLE_OFFSET: tl.constexpr, dt: tl.constexpr, USE_PTX: tl.constexpr):
    """The weight values of K blocks `blocks` for weight rows `rows` (in range) as two tensors (low and high
    half of each block) of the broadcast shape of rows, blocks and offs_j (int4: nibble - offset): float32,
    or int4 in the 16-bit float dt when USE_PTX."""
    if BITS == 4:
        packed = tl.load(w_ptr + rows * stride_wn + blocks * HALF + offs_j)
        if USE_PTX:
            lo, hi = _nibbles_to_half(packed, dt, NIBBLE_OFFSET)
        else:
            lo = (packed & 0xF).to(tl.float32) - NIBBLE_OFFSET
            hi = (packed >> 4).to(tl.float32) - NIBBLE_OFFSET
    else:
        ptr = w_ptr + rows * stride_wn + blocks * (2 * HALF) + offs_j
        lo = tl.load(ptr).to(tl.float32)
        hi = tl.load(ptr + HALF).to(tl.float32)
    return lo, hi


@triton.jit
def _per_group(v, SUB: tl.constexpr, GROUP: tl.constexpr):
    """[BLOCK_N, SUB] -> [BLOCK_N, SUB * GROUP]: each group's value repeated over its GROUP inputs."""
    BN: tl.constexpr = v.shape[0]
    return tl.reshape(tl.broadcast_to(v[:, :, None], (BN, SUB, GROUP)), (BN, SUB * GROUP))


@triton.jit
def _dequant_half(w, s_ptr, m_ptr, rows, first_group, stride_sn, SUB: tl.constexpr, GROUP: tl.constexpr,
                  HAS_MIN: tl.constexpr):
    """The float weights of one [BLOCK_N, HALF] half-tile `w` (integers) of groups first_group + [0, SUB)."""
    offs = rows * stride_sn + first_group + tl.arange(0, SUB)[None, :]
    w = w * _per_group(tl.load(s_ptr + offs).to(tl.float32), SUB, GROUP)
    if HAS_MIN:
        w -= _per_group(tl.load(m_ptr + offs).to(tl.float32), SUB, GROUP)
    return w


# M, the step's token count, is not specialized on: its divisibility would compile a variant per class of
# prompt length in the middle of serving
@triton.jit(do_not_specialize=["M"])
def _gemm_kernel(x_ptr, w_ptr, s_ptr, m_ptr, b_ptr, y_ptr, partial_ptr, counter_ptr, M, N, K, num_blocks,
                 stride_xm, stride_wn, stride_sn, stride_ym,
                 BITS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HALF: tl.constexpr, DOT_PRECISION: tl.constexpr, SPLIT_K: tl.constexpr,
                 GROUP: tl.constexpr, HAS_MIN: tl.constexpr, USE_PTX: tl.constexpr, PDL: tl.constexpr):
    # computes y^T = W x^T per [BLOCK_N, BLOCK_M] tile: the weight tile is the dot's first operand, K-contiguous
    # as stored, so it is loaded in wide vectors and dequantized in registers. Axis 0 walks M fastest, so
    # programs running together share a weight tile through L2.
    wait_for_previous(PDL)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    pid_k = tl.program_id(2)
    offs_j = tl.arange(0, HALF)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_cols = x_ptr + offs_m[None, :].to(tl.int64) * stride_xm
    rows = tl.minimum(offs_n, N - 1)[:, None].to(tl.int64)
    dt = x_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    per_split = tl.cdiv(num_blocks, SPLIT_K)
    blk_end = tl.minimum(num_blocks, (pid_k + 1) * per_split)
    for blk in range(pid_k * per_split, blk_end):
        k_lo = blk * (2 * HALF) + offs_j[:, None]
        x_lo = tl.load(x_cols + k_lo, mask=m_mask[None, :] & (k_lo < K), other=0.0)
        x_hi = tl.load(x_cols + k_lo + HALF, mask=m_mask[None, :] & (k_lo + HALF < K), other=0.0)
        # int4 with a min reads the nibble unsigned; the other int4 formats are nibble - 8
        w_lo, w_hi = _load_halves(w_ptr, rows, blk, offs_j[None, :], stride_wn, BITS, HALF,
                                  0 if HAS_MIN else 8, dt, USE_PTX)
        if GROUP > 0:
            SUB: tl.constexpr = HALF // GROUP
            w_lo = _dequant_half(w_lo, s_ptr, m_ptr, rows, blk * (2 * SUB), stride_sn, SUB, GROUP, HAS_MIN)
            w_hi = _dequant_half(w_hi, s_ptr, m_ptr, rows, blk * (2 * SUB) + SUB, stride_sn, SUB, GROUP, HAS_MIN)
        if BITS == 4 and GROUP == 0:        # wint4: the block's scale goes on the fp32 partial sums
            part = tl.dot(w_lo.to(dt), x_lo, input_precision=DOT_PRECISION)
            part = tl.dot(w_hi.to(dt), x_hi, part, input_precision=DOT_PRECISION)
            s = tl.load(s_ptr + rows * stride_sn + blk).to(tl.float32)
            acc += part * s
        else:
            acc = tl.dot(w_lo.to(dt), x_lo, acc, input_precision=DOT_PRECISION)
            acc = tl.dot(w_hi.to(dt), x_hi, acc, input_precision=DOT_PRECISION)
    if BITS == 8 and GROUP == 0:
        acc *= tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)[:, None]
    mask = n_mask[:, None] & m_mask[None, :]
    if SPLIT_K > 1:
        # partials are [SPLIT_K, M, N] fp32
        partials = partial_ptr + offs_m[None, :].to(tl.int64) * N + offs_n[:, None]
        tile = counter_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        last, acc = split_k_total(acc, partials, M * N, mask, tile, SPLIT_K)
        if last:
            _store_output(acc, b_ptr, y_ptr, offs_m, offs_n, n_mask, mask, stride_ym, HAS_BIAS)
    else:
        _store_output(acc, b_ptr, y_ptr, offs_m, offs_n, n_mask, mask, stride_ym, HAS_BIAS)


@triton.jit
def _store_output(acc, b_ptr, y_ptr, offs_m, offs_n, n_mask, mask, stride_ym, HAS_BIAS: tl.constexpr):
    """y[m, n] = acc[n, m] (+ bias[n]), in y's dtype."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
    y = y_ptr + offs_m[None, :].to(tl.int64) * stride_ym + offs_n[:, None]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 4
    block_k: int = 512              # K elements per step, a multiple of 128
    num_warps: int = 2
    num_stages: int = 3


# picked by `benchmarks/quant_kernels.py --sweep` on an H100 at M=1 (Llama-3-8B shapes): few warps, so that
# each thread holds several rows of one K slice and reuses its activations. 16-bit weights (float_gemv) were
# swept again on an H200 (4.2 TB/s; benchmarks/results/gpu-20261202-0352-gemv-config.log): 4 rows per program
# instead of the H100's 1 times qkv/o/down within a microsecond of it (15.2/10.7/31.2 against 15.0/11.1/31.4 us;
# cuBLAS 17.6/14.2/34.0) and, with 4x the rows in CUDA's grid limit, also takes Llama-3's 128k-row LM head
# from cuBLAS (248 against 254 us). A Llama-3-8B decode step: 4077 against 4108 us, in two engines each.
GEMV_DEFAULT = {16: GemvConfig(4, 1024, 2, 3), 8: GemvConfig(4, 512, 2, 3), 4: GemvConfig(4, 1024, 2, 3)}
# wint4 (its biased-nibble loop has fewer instructions per byte): least summed time over a layer's linears
GEMV_WINT4 = GemvConfig(8, 2048, 4, 1)
# the gated form of the 16-bit GEMV (Llama-3-8B's [gate; up] at M=1, `quant_kernels.py --gated` on an H200):
# 57.2 us against 60.4 with the H100 config at half its K step (the best few configs swap places from run to
# run within 1.5 us). A Llama-3-8B decode step against the GEMV then the activation kernel: 4108 against 4163 us
GEMV_GATED = GemvConfig(4, 256, 2, 3)


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    split_k: int = 1


def gemm_config(m: int, n: int, num_blocks: int) -> GemmConfig:
    if m <= 32:
        # weight streaming: narrow tiles, and K split until about 8 programs per SM stream weights
        bm, bn = max(16, triton.next_power_of_2(m)), 32
        tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
        split = 1
        while tiles * split < 1024 and num_blocks // (split * 2) >= 4:
            split *= 2
        return GemmConfig(bm, bn, 2, 3, split)
    if m <= 64:
        return GemmConfig(64, 64, 4, 4)
    return GemmConfig(128, 128, 8, 3)


# the GEMV's grid has a program per BLOCK_N rows on CUDA's grid axis 1, which takes at most 65535
FLOAT_GEMV_MAX_N = 65535 * GEMV_DEFAULT[16].block_n


def float_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               config: GemvConfig | None = None, gated: bool = False) -> torch.Tensor:
    """F.linear(x, weight, bias) for one row of x, by the GEMV kernel (weight [N, K], contiguous rows); gated:
    silu_and_mul of it, in the same launch."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K).contiguous()
    assert x2.shape[0] == 1 and weight.stride(1) == 1
    y = _gemv(x2, weight, weight, None, bias, 16, config, gated=gated)
    return y.view(*x.shape[:-1], y.shape[1])


def _gemv(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, mins: torch.Tensor | None,
          bias: torch.Tensor | None, bits: int, config: GemvConfig | None, num_blocks: int = 0, stride_sn: int = 0,
          group: int = 0, use_ptx: bool = False, gated: bool = False) -> torch.Tensor:
    """`_gemv_kernel` over the rows of x2 ([M, K], unit stride): y [M, N] in x2's dtype (gated: [M, N / 2],
    silu(gate) * up of a [gate; up] weight)."""
    M, K = x2.shape
    N = weight.shape[0] // 2 if gated else weight.shape[0]
    c = config or (GEMV_GATED if gated else GEMV_WINT4 if bits == 4 and not group else GEMV_DEFAULT[bits])
    y = torch.empty(M, N, dtype=x2.dtype, device=x2.device)
    _gemv_kernel[(M, triton.cdiv(N, c.block_n))](
        x2, weight, scale, mins if mins is not None else scale, bias if bias is not None else y, y, N, K, num_blocks,
        x2.stride(0), weight.stride(0), stride_sn, y.stride(0),
        BITS=bits, HAS_BIAS=bias is not None, BLOCK_N=c.block_n, BLOCK_K=c.block_k,
        HALF=BLOCK // 2, GROUP=group, HAS_MIN=mins is not None, USE_PTX=use_ptx, GATED=gated,
        num_warps=c.num_warps, num_stages=c.num_stages, **launch_options(x2.device))
    return y


def quant_matmul(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bits: int,
                 bias: torch.Tensor | None = None,
                 config: GemvConfig | wint4_gemv.MmaGemvConfig | GemmConfig | None = None, *,
                 group: int = 0, mins: torch.Tensor | None = None, gated: bool = False) -> torch.Tensor:
    """Same contract as quant_matmul.quant_matmul; `config` overrides the launch heuristics (benchmarks)."""
    K, N = x.shape[-1], qweight.shape[0]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    if M == 0:
        return torch.empty(*x.shape[:-1], N // 2 if gated else N, dtype=x.dtype, device=x.device)
    num_blocks = triton.cdiv(K, BLOCK)
    stride_sn = scale.stride(0) if bits == 4 or group else 0
    if mins is not None:
        assert bits == 4 and group and mins.stride() == scale.stride(), "mins: int4 grouped, laid out as scale"
    use_ptx = PTX and bits == 4 and not group          # wint4's nibble conversions in PTX (not the interpreter's)
    if config is None and M <= GEMV_MAX_M and use_ptx:
        config = wint4_gemv.config_for(x2, qweight)
    if isinstance(config, wint4_gemv.MmaGemvConfig):
        fuse = gated and wint4_gemv.checked_config(config, x2.device, gated=True)
        y = wint4_gemv.gemv_wint4(x2, qweight, scale, bias, config, fuse)
        gated = gated and not fuse
    # wint4 rows much longer than there are rows (Llama-3-8B's down_proj: K = 3.5 N) that the tensor-core GEMV
    # does not take leave the CUDA-core GEMV too few programs to stream at bandwidth; the split-K GEMM takes them
    # (H100: 17.8 against 20.3 us)
    elif isinstance(config, GemvConfig) or (config is None and M <= GEMV_MAX_M and not (use_ptx and K > 2 * N)):
        # SiLU-and-mul stays a launch of its own after the quantized GEMV: in the GEMV's launch it made the
        # Llama-3-8B wint8 step slower (H200 graph replays: +39 and +115 us per token in two engines), though
        # the kernel alone timed the same as the two launches
        y = _gemv(x2, qweight, scale, mins, bias, bits, config, num_blocks, stride_sn, group, use_ptx)
    else:
        c = config if isinstance(config, GemmConfig) else gemm_config(M, N, num_blocks)
        y = _gemm(x2, qweight, scale, mins, bias, bits, c, num_blocks, stride_sn, group, use_ptx)
    y = y.view(*x.shape[:-1], y.shape[1])
    return silu_and_mul(y) if gated else y


def _gemm(x2: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, mins: torch.Tensor | None,
          bias: torch.Tensor | None, bits: int, c: GemmConfig, num_blocks: int, stride_sn: int, group: int,
          use_ptx: bool) -> torch.Tensor:
    """`_gemm_kernel` over x2 ([M, K], unit stride): y [M, N] in x2's dtype."""
    M, K, N = x2.shape[0], x2.shape[1], qweight.shape[0]
    split = max(1, min(c.split_k, num_blocks))
    grid = (triton.cdiv(M, c.block_m), triton.cdiv(N, c.block_n), split)
    y = torch.empty(M, N, dtype=x2.dtype, device=x2.device)
    partials = torch.empty(split, M, N, dtype=torch.float32, device=x2.device) if split > 1 else y
    counters = tile_counters(x2.device)
    check_counters(counters, grid[0] * grid[1])
    _gemm_kernel[grid](
        x2, qweight, scale, mins if mins is not None else scale, bias if bias is not None else y, y, partials,
        counters, M, N, K, num_blocks, x2.stride(0), qweight.stride(0), stride_sn, y.stride(0),
        BITS=bits, HAS_BIAS=bias is not None, BLOCK_M=c.block_m, BLOCK_N=c.block_n,
        HALF=BLOCK // 2, DOT_PRECISION="ieee" if x2.dtype == torch.float32 else "tf32", SPLIT_K=split,
        USE_PTX=use_ptx and x2.dtype in (torch.bfloat16, torch.float16), GROUP=group, HAS_MIN=mins is not None,
        num_warps=c.num_warps, num_stages=c.num_stages, **launch_options(x2.device))
    return y
