"""GGUF quantized weights kept quantized: llama.cpp blocks repacked into our grouped formats.

Dequantizing a Q4 checkpoint to float at load quadruples (bf16) the bytes every decode step streams. Each
supported llama.cpp type maps without loss (up to the fp16 rounding of K-quants' products d * sc and
dmin * m) onto a grouped format of ops/quant_matmul.py, so the kernels there run it directly:

    type   bits  group  value                           llama.cpp block (bytes)
    Q8_0   8     32     d * q                           d f16 | q int8 x32
    Q6_K   8     16     (d * sc) * (q - 32)             ql x128 | qh x64 | sc int8 x16 | d f16
    Q4_0   4     32     d * (n - 8)                     d f16 | nibbles x16
    Q4_1   4     32     d * n + m        (min = -m)     d f16 | m f16 | nibbles x16
    Q4_K   4     32     (d * sc) * n - dmin * m         d f16 | dmin f16 | 6-bit sc, m x12 | nibbles x128

The repacking is numpy, vectorized over the whole tensor. `GGUFQuantMethod` gives a `Linear` parameters of
the repacked shapes before `load_weights`, so that the loader's renaming, q/k row permutation and merged
(qkv, gate/up) slicing, all along the output rows, apply to them unchanged.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from torch import nn

from fastdeploy.model_executor.layers.linear import Linear
from fastdeploy.model_executor.layers.quantization import apply_quantized
from fastdeploy.model_executor.ops.quant_matmul import BLOCK

# the checkpoint tensors of a kept layer, named `<module>.<suffix>`; the layer's parameters have the same names
QWEIGHT, SCALE, MIN = "qweight", "weight_scale", "weight_min"


@dataclass(frozen=True)
class GGUFQuantMethod:
    bits: int
    group: int
    has_min: bool

    def create_weights(self, layer: Linear) -> None:
        """Replace `layer.weight` by empty parameters of the repacked shapes, loaded like the weight was."""
        n, kp = layer.out_features, -(-layer.in_features // BLOCK) * BLOCK
        shapes = {QWEIGHT: ((n, kp * self.bits // 8), torch.int8 if self.bits == 8 else torch.uint8),
                  SCALE: ((n, kp // self.group), torch.float16)}
        if self.has_min:
            shapes[MIN] = shapes[SCALE]
        del layer.weight
        for name, (shape, dtype) in shapes.items():
            param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
            param.weight_loader = layer.weight_loader
            setattr(layer, name, param)
        layer.quant_method = self

    def apply(self, layer: Linear, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        return apply_quantized(layer, x, self.bits, self.group, layer.weight_min if self.has_min else None, gated)


def _f16(b: np.ndarray) -> np.ndarray:
    """[..., 2] bytes -> [...] float32 (the fp16 fields of a block)."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs: np.ndarray, run: int) -> np.ndarray:
    """[..., bytes] -> [..., 2 * bytes] uint8: in each run of `run` bytes, first all low nibbles, then all high."""
    qs = qs.reshape(*qs.shape[:-1], -1, 1, run)
    return np.concatenate([qs & 0xF, qs >> 4], axis=-2).reshape(*qs.shape[:-3], -1)


def _q8_0(b):
    return b[..., 2:].copy().view(np.int8), _f16(b[..., :2]), None


def _q4_0(b):
    return _nibbles(b[..., 2:], 16), _f16(b[..., :2]), None


def _q4_1(b):
    return _nibbles(b[..., 4:], 16), _f16(b[..., :2]), -_f16(b[..., 2:4])


def _q4_k(b):
    # 12 scale bytes for 8 sub-blocks: bytes 0-3 hold sc[0:4] (low 6 bits) and the top 2 bits of sc[4:8],
    # bytes 4-7 the same for m, bytes 8-11 the low 4 bits of sc[4:8] (low nibble) and of m[4:8] (high)
    d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
    sc_bytes, m_bytes, mix = (b[..., i:i + 4].astype(np.int32) for i in (4, 8, 12))
    sc = np.concatenate([sc_bytes & 63, (mix & 0xF) | (sc_bytes >> 6) << 4], axis=-1)
    m = np.concatenate([m_bytes & 63, (mix >> 4) | (m_bytes >> 6) << 4], axis=-1)
    # 128 nibble bytes, 4 runs of 32: sub-block 2i is run i's low nibbles, 2i+1 its high nibbles
    return _nibbles(b[..., 16:], 32), d[..., None] * sc.astype(np.float32), dmin[..., None] * m.astype(np.float32)


def _q6_k(b):
    # 6-bit q = low 4 bits from ql | 2 high bits from qh, stored q + 32. Per half of 128 inputs: ql's 64 bytes
    # hold inputs 0-63 (low nibbles) and 64-127 (high); qh's 32 bytes hold inputs 32 t + j in bits 2t, 2t+1
    ql, qh = b[..., :128], b[..., 128:192]
    sc, d = b[..., 192:208].copy().view(np.int8), _f16(b[..., 208:210])
    low = _nibbles(ql, 64)
    qh = qh.reshape(*qh.shape[:-1], 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    high = (qh & 3).reshape(*qh.shape[:-3], 256)
    q = (low | high << 4).astype(np.int8) - np.int8(32)
    return q, d[..., None] * sc, None


@dataclass(frozen=True)
class _Type:
    method: GGUFQuantMethod
    block: int          # inputs per llama.cpp block
    block_bytes: int
    # uint8 [N, blocks, block_bytes] -> (q [N, blocks, block] int8 or uint8 nibbles, scale, min or None)
    unpack: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray | None]]


TYPES = {
    T.Q8_0: _Type(GGUFQuantMethod(8, 32, False), 32, 34, _q8_0),
    T.Q6_K: _Type(GGUFQuantMethod(8, 16, False), 256, 210, _q6_k),
    T.Q4_0: _Type(GGUFQuantMethod(4, 32, False), 32, 18, _q4_0),
    T.Q4_1: _Type(GGUFQuantMethod(4, 32, True), 32, 20, _q4_1),
    T.Q4_K: _Type(GGUFQuantMethod(4, 32, True), 256, 144, _q4_k),
}


def repack(data: np.ndarray, qtype: T) -> dict[str, torch.Tensor]:
    """A GGUF tensor's raw blocks (uint8 [N, row bytes], as gguf.GGUFReader gives them) -> our tensors
    {qweight, weight_scale[, weight_min]}, K zero-padded to a multiple of BLOCK (zero scales and mins)."""
    t = TYPES[qtype]
    n = data.shape[0]
    q, scale, mins = t.unpack(data.reshape(n, -1, t.block_bytes))
    q = q.reshape(n, -1)
    pad = -q.shape[1] % BLOCK
    q = np.pad(q, ((0, 0), (0, pad)))
    if t.method.bits == 4:     # byte j of each 128 block: input j (low nibble), input 64 + j (high)
        q = q.reshape(n, -1, 2, BLOCK // 2)
        q = q[:, :, 0] | q[:, :, 1] << 4
    out = {QWEIGHT: torch.from_numpy(np.ascontiguousarray(q.reshape(n, -1)))}
    for name, v in ((SCALE, scale), (MIN, mins)):
        if v is not None:
            v = np.pad(v.reshape(n, -1).astype(np.float16), ((0, 0), (0, pad // t.method.group)))
            out[name] = torch.from_numpy(v)
    return out
