"""The text-only examples of FastDeploy's offline-inference guide (examples/, copied from the guide
with only the model name changed to the built-in SmolLM2), run as scripts."""
import os
import runpy
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


@pytest.mark.slow
@pytest.mark.parametrize("script", ["offline_chat.py", "offline_generate.py"])
def test_guide_example_runs(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script])
    scope = runpy.run_path(os.path.join(EXAMPLES, script))
    outputs = scope["outputs"]
    assert outputs and all(o.finished and o.error_code == 200 and o.outputs.text for o in outputs)
    assert scope["generated_text"] == outputs[-1].outputs.text
