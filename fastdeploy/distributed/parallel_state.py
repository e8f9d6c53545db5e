"""This process's place in tensor parallelism: the shard its model is built as, and the process group.

Layers read the rank and world size once, when they are built: `ModelRunner` builds its model inside
`tensor_parallel(rank, world_size)`. Outside that block the world is 1 (no sharding, no collectives), so
single-process code paths are unchanged, even beside a tensor-parallel engine living in the same process.

The process group is torch.distributed's default group (NCCL on CUDA, gloo on CPU) over localhost: one
tensor-parallel engine per process at a time.
"""
from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class _Shard:
    rank: int = 0
    world_size: int = 1


_current = _Shard()


@contextlib.contextmanager
def tensor_parallel(rank: int, world_size: int):
    """Layers built inside this block hold shard `rank` of `world_size`."""
    global _current
    previous, _current = _current, _Shard(rank, world_size)
    try:
        yield
    finally:
        _current = previous


def get_tensor_model_parallel_rank() -> int:
    return _current.rank


def get_tensor_model_parallel_world_size() -> int:
    return _current.world_size


def divide(n: int, world_size: int, what: str) -> int:
    """n // world_size, or a clear error naming `what` when it does not split evenly."""
    if n % world_size:
        raise ValueError(f"tensor_parallel_size {world_size} must divide {what} ({n})")
    return n // world_size


def free_port() -> int:
    """A localhost port free right now (the OS picks it), for the process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_no_process_group() -> None:
    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group already exists in this process: only one "
                           "tensor-parallel LLM can live in a process at a time (del the other one first)")


def init_process_group(rank: int, world_size: int, port: int, device: torch.device) -> None:
    """Joins the tensor-parallel group: NCCL between GPUs, gloo between CPU processes."""
    require_no_process_group()
    cuda = device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, device_id=device if cuda else None)


def destroy_process_group() -> None:
    """Leaves the group. NCCL's communicator is aborted, not shut down: a shutdown waits for the work
    the communicator has pending, which a peer that stopped or failed mid-step never completes. Free
    the CUDA graphs that captured its collectives first: on the H100s both shutdown and abort hung
    while such a graph lived, and both returned once it was freed."""
    if not dist.is_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.distributed_c10d._abort_process_group()
    else:
        dist.destroy_process_group()
