"""fastdeploy: offline LLM inference with FastDeploy's API, on PyTorch."""
__all__ = ["LLM", "SamplingParams"]
__version__ = "0.1.0"


def __getattr__(name):
    # imported on first use, so that `import fastdeploy.engine.x` does not load the whole engine
    if name == "LLM":
        from fastdeploy.entrypoints.llm import LLM
        return LLM
    if name == "SamplingParams":
        from fastdeploy.engine.sampling_params import SamplingParams
        return SamplingParams
    raise AttributeError(f"module 'fastdeploy' has no attribute {name!r}")
