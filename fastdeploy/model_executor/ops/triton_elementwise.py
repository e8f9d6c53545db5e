"""Triton elementwise kernels: RMSNorm (optionally fused with the residual add), rotary embedding on q and k
in one launch (NeoX and interleaved layouts), SiLU-and-mul. All math in fp32, one rounding at the store.

This module imports triton at the top: the public dispatchers import it lazily and fall back to the
PyTorch references when triton is missing.
"""
import torch
import triton
import triton.language as tl

from fastdeploy.model_executor.ops.triton_pdl import launch_options, wait_for_previous


def _warps(block: int) -> int:
    return 4 if block <= 2048 else (8 if block <= 8192 else 16)


# ----------------------------------------------------------------------------------------------------------
# RMSNorm
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
                     stride_x, stride_r, stride_o, stride_ro, N, eps,
                     HAS_RES: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    # one program per row; the whole row sits in registers
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(res_ptr + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(res_out_ptr + row * stride_ro + offs, x.to(res_out_ptr.dtype.element_ty), mask=mask)
    rstd = tl.rsqrt(tl.sum(x * x, 0) / N + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """Same contract as rms_norm_ref: norm(x), or (norm(x + residual), x + residual); new tensors."""
    N = x.shape[-1]
    x2 = x.reshape(-1, N)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out2 = out.view(-1, N)
    if residual is not None:
        r2 = residual.reshape(-1, N)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        ro2 = res_out.view(-1, N)
    else:
        r2, ro2 = x2, out2  # unused
    rows = x2.shape[0]
    if rows:
        block = triton.next_power_of_2(N)
        _rms_norm_kernel[(rows,)](
            x2, r2, weight, out2, ro2,
            x2.stride(0), r2.stride(0), out2.stride(0), ro2.stride(0), N, eps,
            HAS_RES=residual is not None, BLOCK=block, num_warps=_warps(block), **launch_options(x.device),
        )
    return out if residual is None else (out, res_out)


# ----------------------------------------------------------------------------------------------------------
# rotary embedding
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def _rotate_heads(x_ptr, o_ptr, t, cos, sin, stride_xt, stride_xh, stride_ot, stride_oh, num_heads,
                  HEAD_DIM: tl.constexpr, ROT_HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, INTERLEAVED: tl.constexpr):
    """Rotate every head of token t; dims past 2 * ROT_HALF are copied through."""
    offs_h = tl.arange(0, BLOCK_HEADS)
    offs_r = tl.arange(0, BLOCK_R)
    x_row = x_ptr + t * stride_xt + offs_h[:, None] * stride_xh
    o_row = o_ptr + t * stride_ot + offs_h[:, None] * stride_oh
    mask = (offs_h[:, None] < num_heads) & (offs_r[None, :] < ROT_HALF)
    if INTERLEAVED:   # GPT-J / GLM: pairs (2i, 2i + 1)
        i1 = 2 * offs_r
        i2 = i1 + 1
    else:             # NeoX / Llama: pairs (i, i + rot / 2)
        i1 = offs_r
        i2 = offs_r + ROT_HALF
    x1 = tl.load(x_row + i1[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + i2[None, :], mask=mask, other=0.0).to(tl.float32)
    dt = o_ptr.dtype.element_ty
    tl.store(o_row + i1[None, :], (x1 * cos - x2 * sin).to(dt), mask=mask)
    tl.store(o_row + i2[None, :], (x2 * cos + x1 * sin).to(dt), mask=mask)
    if 2 * ROT_HALF < HEAD_DIM:  # partial rotary
        offs_p = 2 * ROT_HALF + tl.arange(0, BLOCK_P)
        pmask = (offs_h[:, None] < num_heads) & (offs_p[None, :] < HEAD_DIM)
        xp = tl.load(x_row + offs_p[None, :], mask=pmask)
        tl.store(o_row + offs_p[None, :], xp, mask=pmask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr,
                   stride_qt, stride_qh, stride_kt, stride_kh,
                   stride_qot, stride_qoh, stride_kot, stride_koh, stride_ct, stride_st,
                   num_q_heads, num_k_heads,
                   v_ptr, v_cache_ptr, slot_ptr, stride_vt, stride_vh, stride_cb, stride_cs,
                   HEAD_DIM: tl.constexpr, ROT_HALF: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, INTERLEAVED: tl.constexpr,
                   STORE_KV: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    # one program per token: cos/sin are loaded once and applied to all q and k heads. With STORE_KV, ko_ptr
    # is the K cache: the rotated k goes straight to the token's slot (stride_koh: the cache's head stride)
    # and v is copied to the same place in the V cache; slot < 0 (padding) stores nothing.
    wait_for_previous(PDL)
    t = tl.program_id(0).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < ROT_HALF
    cos = tl.load(cos_ptr + t * stride_ct + offs_r, mask=r_mask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + t * stride_st + offs_r, mask=r_mask, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(q_ptr, qo_ptr, t, cos, sin, stride_qt, stride_qh, stride_qot, stride_qoh, num_q_heads,
                  HEAD_DIM, ROT_HALF, BLOCK_QH, BLOCK_R, BLOCK_P, INTERLEAVED)
    if STORE_KV:
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot >= 0:
            dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs
            _rotate_heads(k_ptr, ko_ptr + dst, t, cos, sin, stride_kt, stride_kh, 0, stride_koh, num_k_heads,
                          HEAD_DIM, ROT_HALF, BLOCK_KH, BLOCK_R, BLOCK_P, INTERLEAVED)
            offs_h = tl.arange(0, BLOCK_KH)[:, None]
            offs_d = tl.arange(0, BLOCK_D)[None, :]
            mask = (offs_h < num_k_heads) & (offs_d < HEAD_DIM)
            v = tl.load(v_ptr + t * stride_vt + offs_h * stride_vh + offs_d, mask=mask)
            tl.store(v_cache_ptr + dst + offs_h * stride_koh + offs_d, v.to(v_cache_ptr.dtype.element_ty), mask=mask)
    else:
        _rotate_heads(k_ptr, ko_ptr, t, cos, sin, stride_kt, stride_kh, stride_kot, stride_koh, num_k_heads,
                      HEAD_DIM, ROT_HALF, BLOCK_KH, BLOCK_R, BLOCK_P, INTERLEAVED)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 interleaved: bool, kv_cache: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q: [T, heads, head_dim], k: [T, kv_heads, head_dim], cos/sin: [T, rot_dim // 2].

    Rotates the first rot_dim dims of every head (the rest are copied); returns new q, k. With `kv_cache`
    = (v, k_cache, v_cache, slot_mapping) the rotated k and v go into the cache slots instead (as
    `store_kvcache` writes them) and no k is returned.
    """
    T, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    rot_half = cos.shape[-1]
    assert 2 * rot_half <= head_dim and k.shape[2] == head_dim
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if cos.stride(-1) != 1:
        cos = cos.contiguous()
    if sin.stride(-1) != 1:
        sin = sin.contiguous()
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if kv_cache is None:
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        v, v_cache, slots, kv_strides, k_dst = k, k_out, k_out, (0, 0, 0, 0), k_out
        k_dst_strides, block_size = (k_out.stride(0), k_out.stride(1)), 1
    else:
        v, k_cache, v_cache, slots = kv_cache
        assert v.stride(-1) == 1 and k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
        k_out, k_dst = None, k_cache
        kv_strides = (v.stride(0), v.stride(1), k_cache.stride(0), k_cache.stride(1))
        k_dst_strides, block_size = (0, k_cache.stride(2)), k_cache.shape[1]
    if T:
        _rotary_kernel[(T,)](
            q, k, q_out, k_dst, cos, sin,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), *k_dst_strides, cos.stride(0), sin.stride(0),
            num_q_heads, num_k_heads,
            v, v_cache, slots, *kv_strides,
            HEAD_DIM=head_dim, ROT_HALF=rot_half,
            BLOCK_QH=triton.next_power_of_2(num_q_heads), BLOCK_KH=triton.next_power_of_2(num_k_heads),
            BLOCK_R=triton.next_power_of_2(rot_half),
            BLOCK_P=triton.next_power_of_2(max(head_dim - 2 * rot_half, 1)),
            INTERLEAVED=bool(interleaved), STORE_KV=kv_cache is not None, BLOCK_SIZE=block_size,
            BLOCK_D=triton.next_power_of_2(head_dim),
            num_warps=4, **launch_options(q.device),
        )
    return q_out, k_out


# ----------------------------------------------------------------------------------------------------------
# SiLU and mul
# ----------------------------------------------------------------------------------------------------------

@triton.jit
def silu_mul(gate, up):
    """silu(gate) * up in fp32; also the epilogue of the GEMVs that take a [gate; up] weight."""
    return gate / (1.0 + tl.exp(-gate)) * up


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, N, BLOCK: tl.constexpr, PDL: tl.constexpr):
    # grid: (rows, column blocks); x row = [gate (N) | up (N)]
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + N + offs, mask=mask, other=0.0).to(tl.float32)
    y = silu_mul(gate, up)
    tl.store(out_ptr + row * stride_o + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2 * I] -> SiLU(x[..., :I]) * x[..., I:]: [..., I]."""
    N = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * N)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(*x.shape[:-1], N, dtype=x.dtype, device=x.device)
    out2 = out.view(-1, N)
    rows = x2.shape[0]
    if rows and N:
        block = min(triton.next_power_of_2(N), 1024)
        _silu_and_mul_kernel[(rows, triton.cdiv(N, block))](
            x2, out2, x2.stride(0), out2.stride(0), N, BLOCK=block, num_warps=4, **launch_options(x.device))
    return out
