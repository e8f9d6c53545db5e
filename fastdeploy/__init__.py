"""fastdeploy: offline LLM inference with FastDeploy's API, on PyTorch."""
from fastdeploy.engine.sampling_params import SamplingParams
from fastdeploy.entrypoints.llm import LLM

__all__ = ["LLM", "SamplingParams"]
__version__ = "0.1.0"
