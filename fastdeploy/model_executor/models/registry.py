"""Maps a config's `architectures[0]` to the model class that serves it."""
from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig

from fastdeploy.model_executor.models.ernie4_5 import Ernie4_5ForCausalLM
from fastdeploy.model_executor.models.ernie4_5_moe import Ernie4_5_MoeForCausalLM
from fastdeploy.model_executor.models.ernie4_5_vl_moe import Ernie4_5_VLMoeForConditionalGeneration
from fastdeploy.model_executor.models.llama import LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

_MODELS: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Ernie4_5ForCausalLM": Ernie4_5ForCausalLM,
    "Ernie4_5_ForCausalLM": Ernie4_5ForCausalLM,   # name in ERNIE's Paddle checkpoints
    "Ernie4_5_MoeForCausalLM": Ernie4_5_MoeForCausalLM,
    "Ernie4_5_VLMoeForConditionalGeneration": Ernie4_5_VLMoeForConditionalGeneration,
}

# architectures that take images and videos (through enable_mm and the multimodal processor)
MULTIMODAL_ARCHITECTURES = frozenset({"Ernie4_5_VLMoeForConditionalGeneration"})


def register_model(name: str, cls: type[nn.Module]) -> None:
    _MODELS[name] = cls


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(config: PretrainedConfig) -> type[nn.Module]:
    archs = getattr(config, "architectures", None) or []
    if not archs or archs[0] not in _MODELS:
        raise ValueError(f"unsupported model architecture {archs[0] if archs else None!r}; "
                         f"supported: {', '.join(supported_architectures())}")
    return _MODELS[archs[0]]
