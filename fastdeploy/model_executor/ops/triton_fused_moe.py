"""Triton fused MoE: two grouped GEMMs over assignments sorted and padded by expert (`align_by_expert`).

1. gate_up: inter[a] = silu(x[t] @ w13[e, :I].T) * (x[t] @ w13[e, I:].T)   (both halves in one program)
2. down:    y[a] = topk_weight[a] * inter[a] @ w2[e].T
then out[t] = sum_k y[t * K + k]. Each program multiplies one block of BLOCK_M assignments, all of one
expert, by one BLOCK_N-wide slice of that expert's weights; there is no loop over experts anywhere, and
no host sync (sizes are bounded up front), so decode steps can be captured in CUDA graphs.

Decode (T <= GEMV_MAX_TOKENS) takes another path: at a few tokens the GEMMs only stream the chosen experts'
weights, and tensor-core tiles padded to 16 rows, the sort and padding (`align_by_expert`, a dozen small
launches) and the final sum are all overhead. There `_moe_gemv_up_kernel` runs one program per (assignment,
BLOCK_N rows of the expert's gate and up), reading the expert id straight from `topk_ids`, and
`_moe_gemv_down_kernel` one per (token, BLOCK_N output columns), looping over the token's K experts and
summing their weighted outputs in registers: two launches, each with a thousand or so programs streaming
whole weight rows with wide loads, products accumulated in fp32 registers and reduced once after the loop.
Assignments sharing an expert sit next to each other on grid axis 0, so their programs re-read the same
weight rows from L2.

This module imports triton at the top: `fused_moe.fused_moe` imports it lazily and falls back to the
PyTorch path when triton is missing.
"""
import torch
import triton
import triton.language as tl

from fastdeploy.model_executor.ops.fused_moe import align_by_expert
from fastdeploy.model_executor.ops.triton_pdl import launch_options, wait_for_previous


@triton.jit
def _moe_gemm_kernel(a_ptr, w_ptr, out_ptr, topk_w_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                     num_assignments, N, K, a_row_div, stride_am, stride_we, stride_wn, stride_om,
                     GATED: tl.constexpr, WEIGHTED: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    # axis 0 walks the N slices of one row block, so neighbouring programs share the gathered A rows
    wait_for_previous(PDL)
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    ids = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = ids < num_assignments                       # padding rows hold num_assignments
    rows = (ids // a_row_div).to(tl.int64)              # gate_up reads token a // K, down reads row a
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_mask = offs_n < N
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :]
    # weights are [N, K] row-major per expert; load a [BLOCK_K, BLOCK_N] tile of the transpose
    w_ptrs = w_ptr + expert * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if GATED:
        acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=valid[:, None] & k_mask[None, :], other=0.0)
        w_mask = k_mask[:, None] & n_mask[None, :]
        acc += tl.dot(a, tl.load(w_ptrs, mask=w_mask, other=0.0), input_precision="ieee")
        if GATED:   # the up rows sit N rows below the gate rows
            acc_up += tl.dot(a, tl.load(w_ptrs + N * stride_wn, mask=w_mask, other=0.0), input_precision="ieee")
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    if WEIGHTED:
        acc *= tl.load(topk_w_ptr + ids, mask=valid, other=0.0)[:, None]
    out_ptrs = out_ptr + ids.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])


@triton.jit
def _moe_gemv_up_kernel(x_ptr, w_ptr, out_ptr, topk_ids_ptr, N, K, top_k,
                        stride_xm, stride_we, stride_wn, stride_om,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous(PDL)
    a = tl.program_id(0)
    expert = tl.load(topk_ids_ptr + a).to(tl.int64)
    x_row = x_ptr + (a // top_k).to(tl.int64) * stride_xm
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + expert * stride_we + rows[:, None] * stride_wn + offs_k[None, :]
    up_off = N * stride_wn                               # the up rows sit N rows below the gate rows
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = k0 + offs_k < K
        xv = tl.load(x_row + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)[None, :]
        acc += tl.load(w_ptrs, mask=k_mask[None, :], other=0.0).to(tl.float32) * xv
        acc_up += tl.load(w_ptrs + up_off, mask=k_mask[None, :], other=0.0).to(tl.float32) * xv
        w_ptrs += BLOCK_K
    h = tl.sum(acc, axis=1)
    h = h * tl.sigmoid(h) * tl.sum(acc_up, axis=1)
    tl.store(out_ptr + a * stride_om + offs_n, h.to(out_ptr.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _moe_gemv_down_kernel(a_ptr, w_ptr, out_ptr, topk_w_ptr, topk_ids_ptr, N, K, top_k,
                          stride_am, stride_we, stride_wn, stride_om,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous(PDL)
    t = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    out = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for j in range(0, top_k):
        a = t * top_k + j
        expert = tl.load(topk_ids_ptr + a).to(tl.int64)
        a_row = a_ptr + a.to(tl.int64) * stride_am
        w_ptrs = w_ptr + expert * stride_we + rows[:, None] * stride_wn + offs_k[None, :]
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_mask = k0 + offs_k < K
            xv = tl.load(a_row + k0 + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            acc += tl.load(w_ptrs, mask=k_mask[None, :], other=0.0).to(tl.float32) * xv[None, :]
            w_ptrs += BLOCK_K
        out += tl.sum(acc, axis=1) * tl.load(topk_w_ptr + a)
    tl.store(out_ptr + t.to(tl.int64) * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=offs_n < N)


# up to here the decode path beats the sorted tensor-core path (H100, 21B-A3B shape, CUDA-graph timings:
# 67 vs 117 us at 1 token, 210 vs 235 at 4, 351 vs 342 at 8)
GEMV_MAX_TOKENS = 4
# (BLOCK_N, BLOCK_K, num_warps, num_stages) of the decode kernels, BLOCK_K in elements: swept at 1 token
GEMV_UP = (2, 512, 4, 1)
GEMV_DOWN = (4, 1024, 2, 3)


def fused_moe_gemv(x, w13, w2, topk_weights, topk_ids, up=None, down=None):
    """The decode path (module docstring); `up` / `down` override the launch configs (benchmarks)."""
    T, H = x.shape
    I = w2.shape[2]
    K = topk_ids.shape[1]
    ids = topk_ids.reshape(-1)
    topk_w = topk_weights.reshape(-1).float()
    inter = torch.empty(T * K, I, dtype=x.dtype, device=x.device)
    bn, bk, warps, stages = up or GEMV_UP
    _moe_gemv_up_kernel[(T * K, triton.cdiv(I, bn))](
        x, w13, inter, ids, I, H, K, x.stride(0), w13.stride(0), w13.stride(1), inter.stride(0),
        BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages, **launch_options(x.device))
    out = torch.empty(T, H, dtype=x.dtype, device=x.device)
    bn, bk, warps, stages = down or GEMV_DOWN
    _moe_gemv_down_kernel[(T, triton.cdiv(H, bn))](
        inter, w2, out, topk_w, ids, H, I, K, inter.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
        BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages, **launch_options(x.device))
    return out


def _tiles(assignments_per_expert: float, element_size: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): thin row blocks when experts see few tokens (decode),
    where the GEMMs only stream weights; square-ish tiles once rows can reuse each weight tile.
    BLOCK_K shrinks with wider elements so three pipeline stages of A and two W tiles fit in shared
    memory (about 120 KB)."""
    if assignments_per_expert <= 16:
        m, n, k, warps = 16, 64, 128, 4
    elif assignments_per_expert <= 48:
        m, n, k, warps = 32, 64, 128, 4
    else:
        m, n, k, warps = 64, 128, 64, 8
    return m, n, k * 2 // element_size, warps


def _gemm(a, w, out, topk_w, blocks, num_assignments, a_row_div, gated, tiles):
    _, block_n, block_k, num_warps = tiles
    N = out.shape[1]
    grid = (triton.cdiv(N, block_n), blocks.block_expert.numel())
    _moe_gemm_kernel[grid](
        a, w, out, topk_w, blocks.sorted_ids, blocks.block_expert, blocks.num_padded,
        num_assignments, N, a.shape[1], a_row_div, a.stride(0), w.stride(0), w.stride(1), out.stride(0),
        GATED=gated, WEIGHTED=not gated, BLOCK_M=blocks.block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=3, **launch_options(a.device))


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """Same contract as fused_moe_ref: x [T, H], w13 [E, 2I, H], w2 [E, H, I], topk [T, K] -> [T, H]."""
    T, H = x.shape
    E, I = w2.shape[0], w2.shape[2]
    K = topk_ids.shape[1]
    n = T * K
    if x.stride(-1) != 1:
        x = x.contiguous()
    assert w13.stride(-1) == 1 and w2.stride(-1) == 1, "expert weights must be contiguous along the input"
    if T <= GEMV_MAX_TOKENS:
        return fused_moe_gemv(x, w13, w2, topk_weights, topk_ids)
    tiles = _tiles(n / E, x.element_size())
    blocks = align_by_expert(topk_ids, E, tiles[0])
    topk_w = topk_weights.reshape(-1).float()
    inter = torch.empty(n, I, dtype=x.dtype, device=x.device)
    _gemm(x, w13, inter, topk_w, blocks, n, K, True, tiles)
    y = torch.empty(n, H, dtype=x.dtype, device=x.device)
    _gemm(inter, w2, y, topk_w, blocks, n, 1, False, tiles)
    return y.view(T, K, H).sum(1)
