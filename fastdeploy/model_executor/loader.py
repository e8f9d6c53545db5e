"""Model config and weight loading: HF safetensors directories, ERNIE "-Paddle" directories, GGUF files.

Weights stream one tensor at a time, renamed to HF names, into parameters that were built directly on
the target device and dtype, so a checkpoint is never held twice in memory.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Iterator
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, Ernie4_5Config, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from fastdeploy.distributed import get_tensor_model_parallel_world_size
from fastdeploy.model_executor.layers import gguf_quant
from fastdeploy.model_executor.layers.linear import Linear
from fastdeploy.model_executor.layers.norm import RMSNorm
from fastdeploy.model_executor.layers.quantization import quantize_model
from fastdeploy.model_executor.models.llama import STACKED_PARAMS
from fastdeploy.model_executor.models.registry import get_model_class
from fastdeploy.utils.model_resolver import is_gguf_file

Weights = Iterator[tuple[str, torch.Tensor]]

PADDLE_ERNIE_ARCH = "Ernie4_5_ForCausalLM"
# ERNIEKit's Paddle config class defaults, where they differ from transformers' Ernie4_5Config, for
# keys a Paddle config.json may leave out (notably head_dim: None means hidden_size / heads).
_PADDLE_ERNIE_DEFAULTS = dict(rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, head_dim=None,
                              max_position_embeddings=32768, use_bias=False)


# ---------------------------------------------------------------------------------------------- config

def load_config(model_path: str) -> PretrainedConfig:
    path = Path(model_path)
    if is_gguf_file(path):
        # transformers rebuilds the config from the GGUF metadata but leaves `architectures` unset
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
        return config
    raw = json.loads((path / "config.json").read_text())
    if (raw.get("architectures") or [None])[0] == PADDLE_ERNIE_ARCH:
        return _paddle_ernie_config(raw)
    return AutoConfig.from_pretrained(path)


def _paddle_ernie_config(raw: dict) -> PretrainedConfig:
    """ERNIE 4.5 dense Paddle config.json -> transformers' Ernie4_5Config (architectures kept).

    Paddle-only keys (fuse_*, use_flash_attention, ...) ride along unused. Paddle divides positions by
    `compression_ratio` before the rotary, which is linear rope scaling.
    """
    raw = {**_PADDLE_ERNIE_DEFAULTS, **raw}
    raw.pop("auto_map", None)      # older configs point at remote code we do not run
    ratio = raw.pop("compression_ratio", 1.0)
    if ratio != 1.0:
        raw["rope_scaling"] = {"rope_type": "linear", "factor": ratio, "rope_theta": raw["rope_theta"]}
    return Ernie4_5Config(**raw)


# ----------------------------------------------------------------------------------------------- model

def get_model(model_path: str, config: PretrainedConfig, dtype: torch.dtype, device: torch.device,
              load_format: str = "auto", quantization: str | None = None,
              gguf_keep_quantized: bool | None = None) -> nn.Module:
    """The model for `config`, built on `device` in `dtype`, in eval mode, with its weights read from
    `model_path` ("auto") or random ("dummy": no reading at all, for benchmarks), then its linear
    layers quantized if `quantization` is "wint8" or "wint4" (layers/quantization.py).

    A GGUF file's quantized linear weights stay quantized (layers/gguf_quant.py) when `gguf_keep_quantized`
    (None: on CUDA, where the Triton kernels run, and on the CPU in bfloat16, where PyTorch's weight-only
    CPU kernels run; a float32 CPU model is dequantized, exact against other float32 engines) and there is
    no `quantization` and no tensor parallelism; the rest is dequantized to `dtype`."""
    if load_format not in ("auto", "dummy"):
        raise ValueError(f"unknown load_format {load_format!r}; use 'auto' or 'dummy'")
    cls = get_model_class(config)
    if gguf_keep_quantized is None:
        gguf_keep_quantized = torch.device(device).type == "cuda" or dtype == torch.bfloat16
    keep_gguf = (load_format == "auto" and is_gguf_file(model_path) and gguf_keep_quantized
                 and quantization is None and get_tensor_model_parallel_world_size() == 1)
    with _default_dtype(dtype), torch.device(device), torch.no_grad():
        model = cls(config)
        if load_format == "dummy":
            _init_dummy(model)
        else:
            kept = _keep_gguf_quantized(model, Path(model_path)) if keep_gguf else set()
            model.load_weights(iterate_weights(model_path, config, kept))
        quantize_model(model, quantization)
    return model.eval()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _init_dummy(model: nn.Module) -> None:
    for p in model.parameters():
        p.normal_(0.0, 0.02)
    for m in model.modules():
        if isinstance(m, RMSNorm):   # unit norms keep activations in a sane range
            m.weight.fill_(1.0)


# --------------------------------------------------------------------------------------------- weights

def iterate_weights(model_path: str, config: PretrainedConfig, gguf_quantized: Collection[str] = ()) -> Weights:
    """(HF name, tensor) pairs of a checkpoint in any supported format, one tensor at a time.
    `gguf_quantized`: see `_iterate_gguf`."""
    path = Path(model_path)
    if is_gguf_file(path):
        return _iterate_gguf(path, config, gguf_quantized)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    with safe_open(files[0], framework="pt") as f:
        paddle = any(name.startswith("ernie.") for name in f.keys())
    weights = _iterate_safetensors(files)
    return _paddle_to_hf(weights, config) if paddle else weights


def _iterate_safetensors(files: list[Path]) -> Weights:
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _paddle_to_hf(weights: Weights, config: PretrainedConfig) -> Weights:
    """ERNIE's Paddle layout -> HF names: `ernie.` prefix, Linear weights stored [in, out], fused
    `qkv_proj` (q|k|v, or interleaved per head when there is no GQA) and `up_gate_proj` ([gate; up],
    the same order as our `gate_up_proj`). The LM head is [hidden, vocab] unless tied to the embedding;
    an MoE router (`mlp.gate.weight`) is [hidden, experts]."""
    heads = config.num_attention_heads
    per_head_qkv = (config.num_key_value_heads or heads) == heads
    for name, t in weights:
        if name.startswith("ernie."):
            name = "model." + name[len("ernie."):]
        name = name.replace(".up_gate_proj.", ".gate_up_proj.")
        if (name.endswith(("proj.weight", ".mlp.gate.weight"))
                or (name == "lm_head.weight" and not config.tie_word_embeddings)):
            t = t.T
        if per_head_qkv and ".qkv_proj." in name:
            # [head][q|k|v][head_dim] -> [q|k|v][head][head_dim]
            t = t.unflatten(0, (heads, 3, -1)).transpose(0, 1).flatten(0, 2)
        yield name, t


# llama.cpp tensor names -> HF module names
_GGUF_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GGUF_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def _gguf_hf_name(gguf_name: str, path: Path) -> str:
    module, kind = gguf_name.rsplit(".", 1)
    if module == "rope_freqs":
        raise NotImplementedError(f"{path}: GGUF rope frequency factors (Llama 3.1 rope scaling) are "
                                  "not supported; load the HF checkpoint instead")
    if module.startswith("blk."):
        _, layer, part = module.split(".", 2)
        return f"model.layers.{layer}.{_GGUF_LAYER_NAMES[part]}.{kind}"
    return f"{_GGUF_NAMES[module]}.{kind}"


def _keep_gguf_quantized(model: nn.Module, path: Path) -> set[str]:
    """Give every `Linear` of `model` whose GGUF weights (all its pieces, for merged layers) have one
    supported quantized type that type's `GGUFQuantMethod`, and return the HF module names of those weights.
    Mixed merged layers (llama.cpp's Q4_K_M puts Q6_K beside Q4_K in some) stay float."""
    pieces: dict[str, list[tuple[str, gguf.GGMLQuantizationType]]] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        name = _gguf_hf_name(tensor.name, path)
        if not name.endswith(".weight"):
            continue
        layer = name
        for merged, piece, _ in STACKED_PARAMS:
            layer = layer.replace(f".{piece}.", f".{merged}.")
        pieces.setdefault(layer.removesuffix(".weight"), []).append((name.removesuffix(".weight"),
                                                                     tensor.tensor_type))
    modules = dict(model.named_modules())
    kept = set()
    for layer, parts in pieces.items():
        qtypes = {qtype for _, qtype in parts}
        if isinstance(modules.get(layer), Linear) and len(qtypes) == 1 and (qtype := qtypes.pop()) in gguf_quant.TYPES:
            gguf_quant.TYPES[qtype].method.create_weights(modules[layer])
            kept.update(name for name, _ in parts)
    return kept


def _iterate_gguf(path: Path, config: PretrainedConfig, quantized: Collection[str] = ()) -> Weights:
    """Every GGUF tensor under its HF name, dequantized to fp32, except the weights of the modules named in
    `quantized`: those come repacked (layers/gguf_quant.py) as `<module>.qweight`, `.weight_scale` (and
    `.weight_min`), rows first like a weight, for the parameters `GGUFQuantMethod` gave the layer.

    llama.cpp's converter permutes the q/k rows of llama-architecture models (each head's NeoX halves
    become interleaved pairs); that is undone here, on quantized rows alike.
    """
    reader = gguf.GGUFReader(path)
    permuted = reader.fields["general.architecture"].contents() == "llama"
    for tensor in reader.tensors:
        name = _gguf_hf_name(tensor.name, path)
        module, kind = name.rsplit(".", 1)
        if kind == "weight" and module in quantized:
            packed = gguf_quant.repack(tensor.data, tensor.tensor_type)
            tensors = {f"{module}.{suffix}": t for suffix, t in packed.items()}
        else:
            # a copy: the reader's arrays are read-only views of the memory-mapped file
            data = np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
            # ggml lists dimensions fastest-first, torch slowest-first
            tensors = {name: torch.from_numpy(data).reshape(tuple(reversed(tensor.shape.tolist())))}
        for name, t in tensors.items():
            if permuted and module.endswith(("self_attn.q_proj", "self_attn.k_proj")):
                heads = config.num_attention_heads if module.endswith("q_proj") else config.num_key_value_heads
                t = t.unflatten(0, (heads, -1, 2)).transpose(1, 2).reshape(t.shape)
            yield name, t
