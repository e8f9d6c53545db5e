"""PinnedStaging (GPU only): mixed host arrays come back intact on the device, across buffer turns and
growth, while earlier copies are still queued behind device work."""
import numpy as np
import pytest
import torch

from fastdeploy.utils.tensors import PinnedStaging

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned staging is for GPUs")


def test_round_trip_across_turns_and_growth():
    staging = PinnedStaging(torch.device("cuda"))
    rng = np.random.default_rng(0)
    kept = []
    busy = torch.randn(4096, 4096, device="cuda")
    for step in range(40):
        busy @= busy.T.clamp(-1, 1) / 4096          # keeps the stream busy, so copies queue behind it
        n = int(rng.integers(0, 300 * (1 + step // 10)))    # grows: buffers are reallocated
        arrays = [rng.integers(-2**40, 2**40, n, dtype=np.int64), rng.integers(0, 9, (3, n + 1), dtype=np.int32),
                  rng.standard_normal(n + 5).astype(np.float32), np.zeros(0, dtype=np.int64)]
        got = staging.to_device(arrays)
        kept.append((arrays, got))
    for arrays, got in kept:
        for a, g in zip(arrays, got):
            assert g.is_cuda and tuple(g.shape) == a.shape
            np.testing.assert_array_equal(g.cpu().numpy(), a)


def test_send_into_a_given_device_buffer():
    """host_buffer + send (the decode graphs' upload): the bytes land at the given device view and nowhere else,
    across buffer turns."""
    staging = PinnedStaging(torch.device("cuda"))
    dest = torch.zeros(64, dtype=torch.uint8, device="cuda")
    for step in range(1, 4):
        host = staging.host_buffer(40).numpy()
        host[:40] = np.arange(40, dtype=np.uint8) + step
        staging.send(40, dest[8:])
    want = np.zeros(64, dtype=np.uint8)
    want[8:48] = np.arange(40, dtype=np.uint8) + 3
    np.testing.assert_array_equal(dest.cpu().numpy(), want)
