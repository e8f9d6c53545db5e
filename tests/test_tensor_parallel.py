"""Tensor parallelism on the CPU (gloo, 2 processes) and, where two GPUs are present, on the GPUs (NCCL,
CUDA graphs): the same greedy tokens as one process, worker processes that never outlive their LLM,
and clear errors for sizes that cannot work."""
import gc
import os
import subprocess
import sys

import pytest
import torch

from fastdeploy import LLM, SamplingParams
from tiny_models import make_tiny_model, make_tiny_moe_model

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tensor parallelism on the CPU needs 2 cores")

PROMPTS = [[5, 6, 7, 8, 9], list(range(10, 33)), list(range(40, 80))]
PARAMS = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=1)


def tiny_llm(path, tensor_parallel_size=2, device="cpu", **engine_args):
    # chunks of 32 tokens: some steps only prefill (no sampling row), which the workers must follow too;
    # float32 on the GPU too, so that the logprobs compare at 1e-4
    return LLM(model=str(path), skip_tokenizer_init=True, device=device, dtype="float32", block_size=16,
               max_model_len=128, max_num_batched_tokens=32, tensor_parallel_size=tensor_parallel_size,
               **engine_args)


def worker_pids(llm) -> list[int]:
    return [p.pid for p in llm.llm_engine.executor._workers.processes]


def assert_gone(pids: list[int]) -> None:
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


MODELS = {
    "llama": lambda path: make_tiny_model("llama", path),
    # one key/value head for two ranks (replicated) and a vocabulary that does not split evenly
    "llama-kv1-vocab509": lambda path: make_tiny_model("llama", path, num_key_value_heads=1, vocab_size=509),
    "ernie4_5": lambda path: make_tiny_model("ernie4_5", path),
    "ernie4_5_moe": make_tiny_moe_model,
}


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=two_gpus)])
@pytest.mark.parametrize("name", MODELS)
def test_greedy_matches_one_process_and_workers_exit(name, device, tmp_path):
    path = MODELS[name](tmp_path / name)
    single = tiny_llm(path, tensor_parallel_size=1, device=device)
    ref = single.generate(PROMPTS, PARAMS, use_tqdm=False)
    del single          # on the GPU its KV cache takes what gpu_memory_utilization allows
    gc.collect()
    torch.cuda.empty_cache()
    llm = tiny_llm(path, device=device)
    pids = worker_pids(llm)
    assert len(pids) == 1
    outs = llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    for out, expected in zip(outs, ref):
        # the all-reduces sum in another order (~1e-6 apart in fp32): no near-tie flips on these models
        assert out.outputs.token_ids == expected.outputs.token_ids
        tokens = expected.outputs.token_ids
        diffs = [abs(a[t] - b[t]) for a, b, t in zip(out.outputs.logprobs, expected.outputs.logprobs, tokens)]
        assert max(diffs) < 1e-4
    del llm, outs
    gc.collect()
    assert_gone(pids)


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("llama"))


# exception classes, not instances: a raised instance's traceback would keep this test's frame (and its
# LLM) alive in pytest's parameters after the test
@pytest.mark.parametrize("fault", [RuntimeError, KeyboardInterrupt], ids=["exception", "interrupt"])
def test_failed_step_stops_the_workers(llama_path, monkeypatch, fault):
    llm = tiny_llm(llama_path)
    pids = worker_pids(llm)
    model = llm.llm_engine.runner.model
    forward, calls = model.forward, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:         # after the step's inputs went to the worker: the ranks are out of step
            raise fault("injected fault")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)
    with pytest.raises(fault, match="injected fault"):
        llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    assert_gone(pids)
    with pytest.raises(RuntimeError, match="workers have stopped"):
        llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    del llm
    gc.collect()
    # the process group is gone with them: a new tensor-parallel LLM starts
    llm = tiny_llm(llama_path)
    assert llm.generate(PROMPTS[:1], PARAMS, use_tqdm=False)[0].error_code == 200


# run at interpreter start-up in every process of the test's subprocess: rank 1's model loading fails
FAIL_RANK_1_LOADING = """
import multiprocessing
from fastdeploy.worker import model_runner

def get_model(*args, _load=model_runner.get_model, **kwargs):
    if multiprocessing.current_process().name == "fastdeploy-tp-rank1":
        raise MemoryError("injected: rank 1 ran out of memory loading its shard")
    return _load(*args, **kwargs)

model_runner.get_model = get_model
"""


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=two_gpus)])
def test_worker_that_fails_to_load_is_reported(llama_path, device, tmp_path):
    """A rank that fails while loading its shard (e.g. out of memory on its GPU) makes the LLM constructor
    raise with that rank's traceback; the driver does not wait in its first collective for a peer that
    will never join (with NCCL it would until the timeout, which then kills the process)."""
    (tmp_path / "sitecustomize.py").write_text(FAIL_RANK_1_LOADING)
    script = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
              "from test_tensor_parallel import tiny_llm\n"
              "if __name__ == '__main__':\n"
              "    try:\n"
              f"        tiny_llm({str(llama_path)!r}, device={device!r})\n"
              "    except RuntimeError as e:\n"
              "        print('raised:', e)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "raised: tensor-parallel worker 1 failed" in out.stdout        # reported by the load handshake
    assert "injected: rank 1 ran out of memory loading its shard" in out.stdout


def test_synchronous_steps_match(llama_path):
    """The default (async scheduling) feeds rank 0's sampled ids back on every rank; without it each step
    waits for them on the host."""
    want = tiny_llm(llama_path, tensor_parallel_size=1).generate(PROMPTS, PARAMS, use_tqdm=False)
    got = tiny_llm(llama_path, async_scheduling=False).generate(PROMPTS, PARAMS, use_tqdm=False)
    assert [o.outputs.token_ids for o in got] == [o.outputs.token_ids for o in want]


def test_one_tensor_parallel_llm_per_process(llama_path):
    llm = tiny_llm(llama_path)
    with pytest.raises(RuntimeError, match="only one tensor-parallel LLM"):
        tiny_llm(llama_path)
    single = tiny_llm(llama_path, tensor_parallel_size=1)      # unsharded, beside it
    assert single.generate(PROMPTS, PARAMS, use_tqdm=False)[2].outputs.token_ids == \
        llm.generate(PROMPTS, PARAMS, use_tqdm=False)[2].outputs.token_ids


def test_workers_exit_with_the_interpreter(llama_path):
    script = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
              "from test_tensor_parallel import tiny_llm, worker_pids\n"
              "if __name__ == '__main__':\n"
              f"    llm = tiny_llm({str(llama_path)!r})\n"
              "    print(*worker_pids(llm))\n")          # and exits without deleting it
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert_gone([int(pid) for pid in out.stdout.split()])


@pytest.mark.parametrize("overrides, size, message", [
    (dict(), 3, "must divide the number of attention heads"),
    (dict(num_attention_heads=6, num_key_value_heads=3), 2, "key/value heads"),
], ids=["heads", "kv-heads"])
def test_sizes_that_cannot_split(tmp_path, overrides, size, message):
    path = make_tiny_model("qwen3", tmp_path / "qwen3", **overrides)
    with pytest.raises(ValueError, match=f"tensor_parallel_size {size} .*{message}"):
        tiny_llm(path, tensor_parallel_size=size)


def test_more_ranks_than_cores(llama_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    with pytest.raises(ValueError, match="tensor_parallel_size 2 exceeds the 1 CPU cores"):
        tiny_llm(llama_path)

