"""Programmatic dependent launch (PDL, sm_90+) for the engine's Triton kernels.

A batch-1 decode step is a chain of ~230 short kernels, and between two of them the GPU idles while the next
grid is launched and its programs start. Launched with PDL, a kernel's programs start while the kernel before
it in the stream is still running; each waits (`griddepcontrol.wait`) until that kernel has finished and its
writes are visible, then lets the kernel after it launch in turn. So every kernel launched this way calls
`wait_for_previous` first, before it reads or writes memory and before any early return: then a kernel
finishes only after the one before it did, and kernels launched without PDL (PyTorch's) keep the stream's
plain order behind it. The exception is memory that the kernel just before does not write (when a kernel starts,
the one before that has finished: the kernel before waited for it): the wint4 GEMV loads its first weights
before the wait, so their latency overlaps the end of the kernel before (Llama-3-8B shape, wint4, batch 1:
2.069 -> 2.040 ms/token), and the decode attention its row's bounds, block table entry and first K tile, all
but the newest token's row, which the rotary kernel before it stores (2.01 -> 1.97).

CUDA-graph replays of one decode step on an H200 (`benchmarks/pdl_ab.py`), without -> with PDL: Llama-3-8B
shape 4225 -> 4163 us (bf16) and 2358 -> 2183 us (wint4), SmolLM2 shape 722 -> 597 us at batch 1; at batch 64,
where cuBLAS runs the linears, SmolLM2 998 -> 1020 us and Llama-3-8B (batch 32) 4958 -> 4904. Prefetching each
GEMV's first weight tiles into L2 before the wait, with extra prefetch instructions, was slower for the 8B shape
(4487 us bf16, 2416 wint4); loading them into the registers the first step reads anyway is what helped.
"""
import functools

import torch
import triton
import triton.language as tl

ENABLED = True   # read at each launch, so at a CUDA graph's capture; benchmarks A/B it


def launch_options(device: torch.device) -> dict:
    """Keyword arguments for a kernel launch on `device`: the kernel's PDL flag, and Triton's `launch_pdl`
    where the GPU has PDL (the interpreter and older GPUs get PDL=False)."""
    return {"PDL": True, "launch_pdl": True} if ENABLED and _has_pdl(device) else {"PDL": False}


@functools.cache
def _has_pdl(device: torch.device) -> bool:
    return (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)
            and hasattr(tl.extra.cuda, "gdc_wait"))


@triton.jit
def wait_for_previous(PDL: tl.constexpr):
    """Top of a kernel: with PDL, wait for the kernel before it, then let the next one's programs launch (they
    wait in turn, so the early signal costs only their idle slots)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
