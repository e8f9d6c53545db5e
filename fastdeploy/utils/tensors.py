"""Host-to-device copies that never wait for the device."""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` (a host tensor) on `device`, queued without waiting for the work already queued there.

    On a GPU the copy goes through pinned memory: from pageable memory the driver stages the copy and may
    wait behind the queued kernels, which would serialise the host's preparation of the next step with the
    device's current one. PyTorch's pinned allocator keeps the buffer until the copy has run.
    """
    if torch.device(device).type != "cuda":
        return t.to(device)
    return pinned(t).to(device, non_blocking=True)


def pinned(t: torch.Tensor) -> torch.Tensor:
    """A source for a non-blocking `copy_` to the GPU (see `to_device`): `t` itself if it is on the GPU."""
    return t if t.is_cuda else t.pin_memory()
