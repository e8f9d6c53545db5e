"""Weight-only quantization of the linear layers: `LLM(..., quantization="wint8" | "wint4")`.

Weights are quantized once at load time from the float checkpoint (or dummy weights): after
`load_weights`, `quantize_model` swaps every `Linear`'s float `weight` for `qweight` + `weight_scale`
buffers (formats in ops/quant_matmul.py) and hands its forward to the method, which runs the quantized
matmul. The embedding and the LM head are not `Linear`s and stay in the model dtype, as do biases.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastdeploy.model_executor.layers.linear import Linear
from fastdeploy.model_executor.ops.activation import silu_and_mul
from fastdeploy.model_executor.ops.quant_matmul import (METHODS, QUANTIZE, cpu_packed_matmul, pack_for_cpu,
                                                        quant_matmul)


@dataclass(frozen=True)
class WeightOnlyQuantMethod:
    bits: int       # 8: int8 per output channel; 4: int4 per group of 128 inputs

    def quantize(self, layer: Linear) -> None:
        qweight, scale = QUANTIZE[self.bits](layer.weight.data)
        del layer.weight            # frees the float weight
        layer.register_buffer("qweight", qweight)
        layer.register_buffer("weight_scale", scale)
        layer.quant_method = self

    def apply(self, layer: Linear, x: torch.Tensor, gated: bool = False) -> torch.Tensor:
        return apply_quantized(layer, x, self.bits, gated=gated)


_UNPACKED = object()       # layer.cpu_packed not made yet (None: made, and no CPU kernel fits)


def apply_quantized(layer: Linear, x: torch.Tensor, bits: int, group: int = 0,
                    mins: torch.Tensor | None = None, gated: bool = False) -> torch.Tensor:
    """`quant_matmul` over a layer's quantized buffers (gated: and silu_and_mul). bf16 activations on the CPU
    go to PyTorch's weight-only CPU kernels, through a copy of the weight in their layout made on first use."""
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        # a plain attribute, not a buffer: derived from the buffers, never saved or moved with them
        packed = layer.__dict__.get("cpu_packed", _UNPACKED)
        if packed is _UNPACKED:
            packed = layer.__dict__["cpu_packed"] = pack_for_cpu(layer.qweight, layer.weight_scale, bits,
                                                                 layer.in_features, group, mins)
        if packed is not None:
            y = cpu_packed_matmul(x, packed, layer.bias)
            return silu_and_mul(y) if gated else y
    return quant_matmul(x, layer.qweight, layer.weight_scale, bits, layer.bias, group, mins, gated)


@torch.no_grad()
def quantize_model(model: nn.Module, method: str | None) -> None:
    """Quantize every `Linear` of `model` in place with `method` ("wint8", "wint4"; None: nothing)."""
    if method is None:
        return
    if method not in METHODS:
        raise ValueError(f"unknown quantization {method!r}; use one of {sorted(METHODS)}")
    quant_method = WeightOnlyQuantMethod(METHODS[method])
    for module in model.modules():
        if isinstance(module, Linear):
            quant_method.quantize(module)
