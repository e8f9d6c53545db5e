"""Split reductions finished in the launch that splits them: the programs of one output tile each take a share
(of K in triton_quant_matmul's GEMM and triton_wint4_gemv's GEMV, of the keys in triton_attention's decode), and
the last to finish combines the shares.

Why in one launch: a second reduce kernel (or a zeroed fp32 buffer and atomics plus a conversion) costs a few
microseconds of launch and tail at batch 1, as much as the split saves on a small linear.
"""
import functools

import torch
import triton
import triton.language as tl


@functools.cache
def tile_counters(device: torch.device) -> torch.Tensor:
    """A device's arrival counters: zero between launches (each tile's last program resets its own), so one
    buffer serves every launch on the device's stream. Allocated at the first launch, which is a warm-up before
    any CUDA graph capture."""
    return torch.zeros(1 << 16, dtype=torch.int32, device=device)


@triton.jit
def arrived_last(counter, num_splits):
    """Counts this program's arrival at `counter` after its stores (every thread's, before the counter's release)
    and tells whether it is the last of num_splits; the last must `reset` the counter once it has read."""
    tl.debug_barrier()
    return tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == num_splits - 1


@triton.jit
def reset(counter):
    tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")


@triton.jit
def split_k_total(part, partials, split_stride, mask, counter, SPLIT_K: tl.constexpr):
    """Stores this program's fp32 share `part` at `partials + split * split_stride` (split = program_id(2)) and
    counts its arrival at `counter`, the tile's. Returns (last, total): whether this program came last, and if
    so the sum of every split's share (else zeros)."""
    tl.store(partials + tl.program_id(2) * split_stride, part, mask=mask)
    last = arrived_last(counter, SPLIT_K)
    total = tl.zeros(part.shape, dtype=tl.float32)
    if last:
        for k in tl.static_range(SPLIT_K):
            total += tl.load(partials + k * split_stride, mask=mask, other=0.0, cache_modifier=".cg")
        reset(counter)
    return last, total


def check_counters(counters: torch.Tensor, tiles: int) -> None:
    assert tiles <= counters.numel(), \
        f"{tiles} output tiles, more than the {counters.numel()} arrival counters of split reductions"
