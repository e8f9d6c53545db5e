"""The text-only examples of FastDeploy's offline-inference guide (examples/, copied from the guide
with only the model name changed to the built-in SmolLM2), run as scripts.

The guide asks for up to 6400 tokens at temperature 1; SmolLM2 may use them all, which takes minutes
on a 2-core CPU, so here every request is capped at 64 tokens. Nothing else about the scripts changes."""
import os
import runpy
import sys

import pytest

from fastdeploy.engine.sampling_params import SamplingParams

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
MAX_TOKENS = 64


@pytest.mark.slow
@pytest.mark.parametrize("script", ["offline_chat.py", "offline_generate.py"])
def test_guide_example_runs(script, monkeypatch):
    post_init = SamplingParams.__post_init__

    def capped(self):
        post_init(self)
        self.max_tokens = min(self.max_tokens or MAX_TOKENS, MAX_TOKENS)

    monkeypatch.setattr(SamplingParams, "__post_init__", capped)
    monkeypatch.setattr(sys, "argv", [script])
    scope = runpy.run_path(os.path.join(EXAMPLES, script))
    outputs = scope["outputs"]
    assert outputs and all(o.finished and o.error_code == 200 and o.outputs.text for o in outputs)
    assert scope["generated_text"] == outputs[-1].outputs.text
