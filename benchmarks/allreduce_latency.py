"""Latency of the all-reduce a tensor-parallel layer ends with, on two GPUs through NCCL: eager, and
replayed from a CUDA graph of 64 of them (one Llama-3-8B decode step at TP=2 has 64).

    python benchmarks/allreduce_latency.py
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from bench import timed  # noqa: E402

from fastdeploy.distributed import free_port  # noqa: E402

SIZES = [(1, 4096), (16, 4096), (256, 4096)]     # rows x hidden, bf16: batch 1, 16, 256 of the 8B shape
PER_GRAPH = 64


def rank_main(rank: int, port: int) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            device_id=torch.device("cuda", rank))
    for shape in SIZES:
        x = torch.ones(shape, dtype=torch.bfloat16, device="cuda")
        for _ in range(20):
            dist.all_reduce(x)
        _, secs = timed(lambda: [dist.all_reduce(x) for _ in range(200)])
        eager_us = secs / 200 * 1e6
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(PER_GRAPH):
                dist.all_reduce(x)
        graph.replay()
        _, secs = timed(lambda: [graph.replay() for _ in range(20)])
        graph_us = secs / 20 / PER_GRAPH * 1e6
        del graph           # before the group ends: a live graph with captured collectives hangs it
        if rank == 0:
            print(f"{shape[0]:>4} x {shape[1]} bf16 ({x.numel() * 2 / 1024:.0f} KiB): eager {eager_us:.1f} us, "
                  f"in a CUDA graph {graph_us:.1f} us per all-reduce", flush=True)
    torch.cuda.synchronize()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(rank_main, args=(free_port(),), nprocs=2)
