"""Kernels: each Triton module sits beside the plain-PyTorch reference it is tested against."""
import functools
import importlib


@functools.cache
def triton_kernels(module: str):
    """The Triton kernel module `ops.<module>`, or None where triton is not installed. Imported on first
    use, so that the package imports (and the PyTorch references run) on machines without triton."""
    try:
        return importlib.import_module(f"{__name__}.{module}")
    except ImportError:
        return None
