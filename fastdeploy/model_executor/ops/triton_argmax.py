"""Greedy sampling's argmax over a batch of logit rows in one launch; the reference is torch.argmax.

PyTorch reduces a long row in one thread block: 28 us for Llama-3's 128k logits on an H200, a tenth of its LM
head. Here each row is cut into chunks of BLOCK logits, one program per chunk; each stores its chunk's maximum
and first index of it, and the row's last program to arrive (triton_split_k) picks the first chunk holding the
largest and writes that index. A split in PyTorch (chunk maxima, then the chunk) takes five small launches.

Equal maxima resolve to the first index, as torch.argmax does. NaN logits are not ordered as torch orders
them (it takes a NaN as the maximum); a model that produces them has no meaningful argmax either way.

This module imports triton at the top: `argmax` in sampler.py imports it lazily.
"""
import torch
import triton
import triton.language as tl

from fastdeploy.model_executor.ops.triton_pdl import launch_options, wait_for_previous
from fastdeploy.model_executor.ops.triton_split_k import arrived_last, check_counters, reset, tile_counters

MAX_CHUNKS = 128        # chunks per row at most: the last program reads them all in one tile


@triton.jit
def _argmax_kernel(x_ptr, value_ptr, index_ptr, out_ptr, counter_ptr, V, stride_x,
                   BLOCK: tl.constexpr, NUM_CHUNKS: tl.constexpr, CHUNKS_POW2: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous(PDL)
    row, chunk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * stride_x + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
    tl.store(value_ptr + row * NUM_CHUNKS + chunk, tl.max(x, 0))
    tl.store(index_ptr + row * NUM_CHUNKS + chunk, chunk * BLOCK + tl.argmax(x, 0, tie_break_left=True))
    if arrived_last(counter_ptr + row, NUM_CHUNKS):
        chunks = tl.arange(0, CHUNKS_POW2)
        values = tl.load(value_ptr + row * NUM_CHUNKS + chunks, mask=chunks < NUM_CHUNKS, other=-float("inf"),
                         cache_modifier=".cg")
        first = tl.argmax(values, 0, tie_break_left=True)
        index = tl.load(index_ptr + row * NUM_CHUNKS + first, cache_modifier=".cg")
        tl.store(out_ptr + row, index.to(tl.int64))
        reset(counter_ptr + row)


def argmax(logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """logits.argmax(-1) for [B, V] logits with unit stride along V: int64 [B] (into `out` if given)."""
    B, V = logits.shape
    assert logits.stride(1) == 1, "logits rows must be contiguous"
    block = max(1024, triton.next_power_of_2(triton.cdiv(V, MAX_CHUNKS)))
    num_chunks = triton.cdiv(V, block)
    if out is None:
        out = torch.empty(B, dtype=torch.long, device=logits.device)
    values = torch.empty(B, num_chunks, dtype=torch.float32, device=logits.device)
    indices = torch.empty(B, num_chunks, dtype=torch.int32, device=logits.device)
    counters = tile_counters(logits.device)
    check_counters(counters, B)
    _argmax_kernel[(B, num_chunks)](
        logits, values, indices, out, counters, V, logits.stride(0),
        BLOCK=block, NUM_CHUNKS=num_chunks, CHUNKS_POW2=triton.next_power_of_2(num_chunks),
        num_warps=4, **launch_options(logits.device))
    return out
