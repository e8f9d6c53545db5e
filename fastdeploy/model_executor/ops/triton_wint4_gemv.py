"""wint4 GEMV on the tensor cores: one bf16 row times a wint4 weight (quant_matmul.py's format), the nibbles
dequantized straight into mma.sync fragments from inline PTX (PTX only: the interpreter runs none).

The CUDA-core GEMV of triton_quant_matmul.py spends ~4 SASS instructions per wint4 weight (a byte permute and an
FMA per weight, plus its reductions) and so is bound by its instructions, streaming wint4 at about half the
bandwidth of an H100 and less of an H200's. Here a weight costs ~2 (16 rows, 8 warps: 128 per 64 weights and
thread): the mma does the products and sums a 128-input group across the 4 threads that hold it (see the
kernel). triton_quant_matmul's dispatcher sends single bf16 rows here through `config_for`.
"""
import functools
import warnings
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastdeploy.model_executor.ops.activation import silu_and_mul_ref
from fastdeploy.model_executor.ops.quant_matmul import BLOCK, matmul_ref, quantize_int4
from fastdeploy.model_executor.ops.triton_elementwise import silu_mul
from fastdeploy.model_executor.ops.triton_pdl import launch_options, wait_for_previous
from fastdeploy.model_executor.ops.triton_split_k import check_counters, split_k_total, tile_counters

# wint4 GEMV on the tensor cores (see _gemv_wint4_kernel). In: 4 int32 (a group's quarter) of each of two
# rows, then the bf16 pairs of their inputs (low nibbles: x01, x23; high: x01, x23; 8 registers each, the two
# rows' copies). Out: a quarter of each row's dot product with the group (first and fifth), zeros.
_WINT4_MMA_ASM = tl.constexpr(
    "{\n.reg .b32 la, ha, lb, hb, a0, a1, a2, a3, c0, c1, c2, c3, magic, d0, d1, d2, d3;\n"
    "mov.b32 magic, 0x43;\nmov.b32 d0, 0;\nmov.b32 d1, 0;\nmov.b32 d2, 0;\nmov.b32 d3, 0;\n"
    + "".join(f"""and.b32 la, ${8 + i}, 0x0F0F0F0F;
shr.u32 ha, ${8 + i}, 4;
and.b32 ha, ha, 0x0F0F0F0F;
and.b32 lb, ${12 + i}, 0x0F0F0F0F;
shr.u32 hb, ${12 + i}, 4;
and.b32 hb, hb, 0x0F0F0F0F;
prmt.b32 a0, la, magic, 0x4140;
prmt.b32 a1, lb, magic, 0x4140;
prmt.b32 a2, la, magic, 0x4342;
prmt.b32 a3, lb, magic, 0x4342;
prmt.b32 c0, ha, magic, 0x4140;
prmt.b32 c1, hb, magic, 0x4140;
prmt.b32 c2, ha, magic, 0x4342;
prmt.b32 c3, hb, magic, 0x4342;
mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{d0, d1, d2, d3}}, {{a0, a1, a2, a3}}, {{${16 + i}, ${24 + i}}}, {{d0, d1, d2, d3}};
mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{d0, d1, d2, d3}}, {{c0, c1, c2, c3}}, {{${32 + i}, ${40 + i}}}, {{d0, d1, d2, d3}};
""" for i in range(4))
    + "mul.f32 $0, d0, 0f3E800000;\nmul.f32 $4, d2, 0f3E800000;\n"
    + "".join(f"mov.b32 ${i}, 0;\n" for i in (1, 2, 3, 5, 6, 7)) + "}")
_WINT4_MMA_CONSTRAINTS = tl.constexpr(",".join(["=r"] * 8 + ["r"] * 40))


@triton.jit
def _gemv_wint4_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, partial_ptr, counter_ptr, N, K, num_blocks, stride_xm,
                       stride_w32, stride_sn, stride_ym, HAS_BIAS: tl.constexpr, REPS: tl.constexpr,
                       WARPS: tl.constexpr, EVEN: tl.constexpr, SPLIT_K: tl.constexpr, GATED: tl.constexpr,
                       PDL: tl.constexpr):
    """y = x W^T for one bf16 row x and wint4 W, dequantizing into mma.sync (PTX only). Each step, warp w takes
    group g0 + w (128 inputs: a row's 64 bytes, as 16 int32) of the program's 8 REPS rows. The tile is 2D,
    [REPS * WARPS * 8, 16] int32, its row i = (rep, w, j) holding weight row 8 rep + j: as Triton lays out a 2D
    tile of 16-byte vectors, a warp's 8 x 4 threads are 8 rows x a group's 4 quarters, and each thread holds
    the same quarter of REPS rows. That is the row/column split of the mma's fragments: the 4 threads of a
    'quad' hold one row, and each thread feeds the nibbles of two of its rows as A's two 8-row halves (bf16
    128 + n, one byte permute per pair) and their inputs' bf16 pairs as B (as loaded: the nibble pairs are
    picked to match). The mma sums the products over the quad's 4 threads, i.e. over the whole group; B is the
    same in every quad, so every output column holds the rows' results. The quad's threads each return a
    quarter of it (exact), which the sum over the tile's last axis adds up; then sum (128 + n) x - 136 sum(x)
    = sum (n - 8) x. `checked_config` tests this reliance on Triton's layout once per launch config.
    x loads as int64 (4 bf16): K % 4 == 0 and an 8-byte aligned row. EVEN: K is a multiple of WARPS groups.
    SPLIT_K > 1: program_id(2) takes a share of the steps, summed by triton_split_k (fp32 partials [SPLIT_K, M, N]).
    GATED: W is [gate; up] (2N rows) and y = silu(gate) * up: the program's first REPS / 2 reps read the gate rows
    of its 4 REPS outputs and the others their up rows (the mma does not care which rows a tile holds)."""
    m = tl.program_id(0).to(tl.int64)
    # this split's groups: [g_start, g_end), whole steps of WARPS groups
    steps_per_split = tl.cdiv(tl.cdiv(num_blocks, WARPS), SPLIT_K)
    g_start = tl.program_id(2) * steps_per_split * WARPS
    g_end = tl.minimum(num_blocks, g_start + steps_per_split * WARPS)
    T: tl.constexpr = REPS * WARPS * 8
    i = tl.arange(0, T)
    warp = (i // 8) % WARPS
    OUT_REPS: tl.constexpr = REPS // 2 if GATED else REPS   # reps of output rows; GATED: then as many of up rows
    rep = i // (8 * WARPS)
    row = tl.program_id(1) * (8 * OUT_REPS) + (rep % OUT_REPS) * 8 + i % 8
    # clamped (the weight loads need no row mask), then moved to the up half for the second reps
    row = (tl.minimum(row, N - 1) + (rep // OUT_REPS) * N).to(tl.int64)
    offs_q = tl.arange(0, 16)
    w_ptrs = (w_ptr.to(tl.pointer_type(tl.int32)) + row[:, None] * stride_w32 + (g_start + warp[:, None]) * 16
              + offs_q[None, :])
    s_ptrs = s_ptr + row * stride_sn + g_start + warp
    # x per warp's group: [WARPS, 16] int64 (quarter q holds inputs 4q..4q+3 and 64 + 4q..), spread over the
    # tile; sum(x) per group from [WARPS, 128]
    k4 = tl.arange(0, WARPS)[:, None] * 32 + offs_q[None, :]
    x4 = (x_ptr + m * stride_xm).to(tl.pointer_type(tl.int64)) + g_start * 32 + k4
    k_group = tl.arange(0, WARPS)[:, None] * 128 + tl.arange(0, 128)[None, :]
    x_group = x_ptr + m * stride_xm + g_start * 128 + k_group
    acc = tl.zeros([T], dtype=tl.float32)
    # the weights of the step after the one being computed are in flight, so a step does not wait a full memory
    # latency for its own. Triton's pipeliner (tl.range num_stages: cp.async into shared memory) does this too,
    # but was slower at every Llama-3-8B shape on an H200 (the layer's four GEMVs 47.7 -> 62.4 us)
    packed, s = _load_weights(w_ptrs, s_ptrs, g_start + warp < g_end)
    # the first weights are requested before waiting for the kernel before (they are no output of it): with PDL
    # the program is resident while that kernel still runs, and its first loads overlap that kernel's end
    wait_for_previous(PDL)
    for g0 in range(g_start, g_end, WARPS):
        w_ptrs += WARPS * 16
        s_ptrs += WARPS
        next_packed, next_s = _load_weights(w_ptrs, s_ptrs, g0 + WARPS + warp < g_end)
        if EVEN:
            x_lo = tl.load(x4)
            x_hi = tl.load(x4 + 16)
            x_sum = tl.sum(tl.load(x_group).to(tl.float32), axis=1)
        else:
            x_lo = tl.load(x4, mask=(g0 * 32 + k4) * 4 < K, other=0)
            x_hi = tl.load(x4 + 16, mask=(g0 * 32 + k4) * 4 + 64 < K, other=0)
            x_sum = tl.sum(tl.load(x_group, mask=g0 * 128 + k_group < K, other=0.0).to(tl.float32), axis=1)
        x_lo, x_hi = _spread_over_rows(x_lo, REPS), _spread_over_rows(x_hi, REPS)
        quarters = tl.inline_asm_elementwise(
            _WINT4_MMA_ASM, _WINT4_MMA_CONSTRAINTS,
            [packed, x_lo.to(tl.int32), (x_lo >> 32).to(tl.int32), x_hi.to(tl.int32), (x_hi >> 32).to(tl.int32)],
            dtype=tl.float32, is_pure=True, pack=8)
        x_sum = tl.reshape(tl.broadcast_to(x_sum[None, :, None], (REPS, WARPS, 8)), (T,))
        acc += (tl.sum(quarters, axis=1) - 136.0 * x_sum) * s.to(tl.float32)
        packed, s = next_packed, next_s
        x4 += WARPS * 32
        x_group += WARPS * 128
    out = tl.sum(tl.reshape(acc, (REPS, WARPS, 8)), axis=1)                   # [REPS, 8]: rows 8 rep + j
    reps = tl.arange(0, REPS)[:, None]
    rows = tl.program_id(1) * (8 * OUT_REPS) + (reps % OUT_REPS) * 8 + tl.arange(0, 8)[None, :]   # output rows
    w_rows = rows + (reps // OUT_REPS) * N                                                        # weight rows
    if SPLIT_K > 1:
        W_ROWS = 2 * N if GATED else N
        counter = counter_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        last, out = split_k_total(out, partial_ptr + m * W_ROWS + w_rows, tl.num_programs(0) * W_ROWS, rows < N,
                                  counter, SPLIT_K)
        if last:
            _store_row(out, rows, w_rows, b_ptr, y_ptr + m * stride_ym, N, HAS_BIAS, GATED)
    else:
        _store_row(out, rows, w_rows, b_ptr, y_ptr + m * stride_ym, N, HAS_BIAS, GATED)


@triton.jit
def _load_weights(w_ptrs, s_ptrs, in_k):
    """A step's weight tile and scales, zeros for the groups outside `in_k` (per tile row: its warp's group)."""
    return tl.load(w_ptrs, mask=in_k[:, None], other=0), tl.load(s_ptrs, mask=in_k, other=0.0)


@triton.jit
def _store_row(out, rows, w_rows, b_ptr, y_row_ptr, N, HAS_BIAS: tl.constexpr, GATED: tl.constexpr):
    """Stores the program's [REPS, 8] results (weight rows w_rows, output rows `rows`) plus bias; GATED: the
    first half are gate rows and the second their up rows, stored as silu(gate) * up."""
    if HAS_BIAS:
        out += tl.load(b_ptr + w_rows, mask=rows < N, other=0.0).to(tl.float32)
    if GATED:
        REPS: tl.constexpr = out.shape[0]
        gate, up = tl.split(tl.permute(tl.reshape(out, (2, REPS * 4)), (1, 0)))
        out = silu_mul(gate, up)
        rows = tl.reshape(rows, (2, REPS * 4))
        rows, _ = tl.split(tl.permute(rows, (1, 0)))
    tl.store(y_row_ptr + rows, out.to(y_row_ptr.dtype.element_ty), mask=rows < N)


@triton.jit
def _spread_over_rows(v, REPS: tl.constexpr):
    """[WARPS, 16] per-warp values -> the [REPS * WARPS * 8, 16] tile's rows (rep, w, j) <- v[w]."""
    WARPS: tl.constexpr = v.shape[0]
    return tl.reshape(tl.broadcast_to(v[None, :, None, :], (REPS, WARPS, 8, 16)), (REPS * WARPS * 8, 16))


@dataclass(frozen=True)
class MmaGemvConfig:
    """`_gemv_wint4_kernel`'s launch: 8 * reps weight rows per program, a 128-input group per warp and step, the
    steps shared by split_k programs."""
    reps: int = 2
    num_warps: int = 8
    num_stages: int = 2
    split_k: int = 1

    def __post_init__(self):
        assert self.reps % 2 == 0, "the kernel's mma takes two rows per thread"


# least time over a Llama-3-8B layer's linears on an H200 (`benchmarks/quant_kernels.py --sweep`; the two configs
# below, against DEFAULT_CONFIG for gate/up and r4 w8 k4 for down: batch-1 wint4 2.187 -> 2.084 ms/token): 16 rows
# and 8 warps per program, i.e. many programs, each reading 8 groups of its rows per step
DEFAULT_CONFIG = MmaGemvConfig()
# many more rows than inputs (the [gate; up] of an MLP, N = 7K): 64 rows of 4 groups per program, fewer programs
# with more bytes each (gated gate_up: 22.5 us against 23.5)
MANY_ROWS_CONFIG = MmaGemvConfig(reps=8, num_warps=4)
# rows much longer than there are rows (Llama-3-8B's down_proj, K = 3.5 N): few row tiles, so K is split in 4 to
# have enough programs streaming (13.2 us, against 14.3 for r4 w8, 17.0 for the split-K GEMM and 17.9 unsplit)
LONG_ROWS_CONFIG = MmaGemvConfig(reps=2, num_warps=4, split_k=4)


def shape_config(n: int, k: int) -> MmaGemvConfig:
    """The tensor-core wint4 GEMV's launch config for an [n, k] weight."""
    return LONG_ROWS_CONFIG if k > 2 * n else MANY_ROWS_CONFIG if n >= 4 * k else DEFAULT_CONFIG


def gemv_wint4(x2: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
               config: MmaGemvConfig, gated: bool = False) -> torch.Tensor:
    """`_gemv_wint4_kernel` over the rows of x2 ([M, K] bf16, unit stride, rows 8-byte aligned): y [M, N]
    (gated: [M, N / 2], silu(gate) * up of a [gate; up] weight)."""
    M, K, W = x2.shape[0], x2.shape[1], qweight.shape[0]
    N = W // 2 if gated else W
    y = torch.empty(M, N, dtype=x2.dtype, device=x2.device)
    grid = (M, triton.cdiv(N, 8 * (config.reps // 2 if gated else config.reps)), config.split_k)
    partials = torch.empty(config.split_k, M, W, dtype=torch.float32, device=x2.device) if config.split_k > 1 else y
    counters = tile_counters(x2.device)
    check_counters(counters, grid[0] * grid[1])
    _gemv_wint4_kernel[grid](
        x2, qweight, scale, bias if bias is not None else y, y, partials, counters, N, K, triton.cdiv(K, BLOCK),
        x2.stride(0), qweight.stride(0) // 4, scale.stride(0), y.stride(0), HAS_BIAS=bias is not None,
        REPS=config.reps, WARPS=config.num_warps, EVEN=K % (BLOCK * config.num_warps) == 0,
        SPLIT_K=config.split_k, GATED=gated, num_warps=config.num_warps, num_stages=config.num_stages,
        **launch_options(x2.device))
    return y


def config_for(x2: torch.Tensor, qweight: torch.Tensor) -> MmaGemvConfig | None:
    """The launch config for these operands ([M, K] activations, [N, K / 2] wint4 weight), or None where the
    kernel does not take them."""
    config = shape_config(qweight.shape[0], x2.shape[1])
    return config if fits(x2, qweight, config) else None


def fits(x2: torch.Tensor, qweight: torch.Tensor, config: MmaGemvConfig) -> bool:
    """Whether `_gemv_wint4_kernel` takes these operands: bf16 rows it can read as int64 (4 values), on a GPU
    with bf16 mma.sync (sm_80+), int32-aligned weight rows, and a launch config that passed its check."""
    return (x2.dtype == torch.bfloat16 and x2.shape[1] % 4 == 0 and x2.stride(0) % 4 == 0
            and x2.data_ptr() % 8 == 0 and qweight.stride(0) % 4 == 0 and qweight.data_ptr() % 16 == 0
            and _compute_capability(x2.device) >= (8, 0) and checked_config(config, x2.device))


_CHECKED: dict[tuple[MmaGemvConfig, torch.device, bool], bool] = {}


def checked_config(config: MmaGemvConfig, device: torch.device, gated: bool = False) -> bool:
    """Whether `_gemv_wint4_kernel` computes right with this config (and gated form) on this device. Its mma
    relies on how Triton lays out the tile in registers, which is the compiler's choice, so each config is checked
    once against the dequantized reference (K and N not multiples of the tile: the masked paths); on a mismatch
    the GEMV falls back to triton_quant_matmul's CUDA-core GEMV (gated: to this GEMV then the activation kernel).
    Unchecked configs are not used during a CUDA graph capture, which cannot sync."""
    key = (config, device, gated)
    if key not in _CHECKED:
        if torch.cuda.is_current_stream_capturing():
            return False
        gen = torch.Generator().manual_seed(0)
        # a last step with part of its groups, and with split_k > 2 a split with no steps
        n, k = 8 * config.reps + 5, BLOCK * config.num_warps * config.split_k + 68
        q, s = quantize_int4(torch.randn(2 * n if gated else n, k, generator=gen))
        x = torch.randn(1, k, generator=gen).to(torch.bfloat16)
        want = matmul_ref(x.float(), q, s.float(), 4)
        if gated:
            want = silu_and_mul_ref(want)
        got = gemv_wint4(x.to(device), q.to(device), s.to(device), None, config, gated).float().cpu()
        _CHECKED[key] = bool(((got - want).abs().max() / (1 + want.abs().max())) < 1e-2)
        if not _CHECKED[key]:
            fallback = "it, then silu_and_mul" if gated else "the CUDA-core GEMV"
            warnings.warn(f"wint4 tensor-core GEMV {config}{' (gated)' if gated else ''} is wrong with this Triton "
                          f"({triton.__version__}): using {fallback}")
    return _CHECKED[key]


@functools.cache
def _compute_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)
