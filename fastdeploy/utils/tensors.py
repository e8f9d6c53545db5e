"""Host-to-device copies that never wait for the device."""
from __future__ import annotations

import numpy as np
import torch


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` (a host tensor) on `device`, queued without waiting for the work already queued there.

    On a GPU the copy goes through pinned memory: from pageable memory the driver stages the copy and may
    wait behind the queued kernels, which would serialise the host's preparation of the next step with the
    device's current one. PyTorch's pinned allocator keeps the buffer until the copy has run.
    """
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def packed_offsets(nbytes: list[int], align: int = 16) -> tuple[list[int], int]:
    """Byte offsets of arrays of these sizes packed one after another at `align`-byte boundaries, and the end."""
    offsets, end = [], 0
    for n in nbytes:
        offsets.append(end)
        end += -(-n // align) * align
    return offsets, end


class PinnedStaging:
    """Host arrays to the GPU in one copy: packed into a pinned buffer at aligned offsets, copied once, and
    handed back as typed views of the device copy. A step's dozen inputs then cost one copy call and no
    pinned-memory allocation (PyTorch's pinned allocator checks the events of every block still in flight
    on each allocation, which adds up while the previous step runs). Two buffers alternate, each guarded by
    the event of its last copy, so a buffer is never refilled before the device has read it.

    `host_buffer` then `send` is the same copy for a caller that lays out the buffer itself and copies it into
    a device buffer of its own (the decode graphs' inputs)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.buffers: list[torch.Tensor | None] = [None, None]
        self.copied: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """The next pinned buffer (uint8, at least nbytes), once the device has read what it held."""
        self.turn ^= 1
        if self.copied[self.turn] is not None:
            self.copied[self.turn].synchronize()
        buf = self.buffers[self.turn]
        if buf is None or buf.numel() < nbytes:
            buf = self.buffers[self.turn] = torch.empty(max(nbytes, 2 * (0 if buf is None else buf.numel())),
                                                        dtype=torch.uint8, pin_memory=True)
        return buf

    def send(self, nbytes: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Queues the copy of the current host buffer's first nbytes into `out` (a uint8 device tensor) or, by
        default, a new device tensor, which it returns."""
        src = self.buffers[self.turn][:max(nbytes, 1)]
        if out is None:
            out = src.to(self.device, non_blocking=True)
        else:
            out[:nbytes].copy_(src[:nbytes], non_blocking=True)
        self.copied[self.turn] = torch.cuda.Event()
        self.copied[self.turn].record()
        return out

    def to_device(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        offsets, end = packed_offsets([a.nbytes for a in arrays])
        host = self.host_buffer(end).numpy()
        for a, off in zip(arrays, offsets):
            host[off:off + a.nbytes] = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        dev = self.send(end)
        return [dev[off:off + a.nbytes].view(_TORCH_DTYPES[a.dtype]).view(a.shape) for a, off in zip(arrays, offsets)]


_TORCH_DTYPES = {np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32,
                 np.dtype(np.float32): torch.float32}
