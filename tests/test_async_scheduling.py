"""Async scheduling (the host prepares step N+1 while the device runs step N) changes no output: the same
requests give the same tokens, finish reasons and logprobs as the synchronous engine, through early
stops, stop strings and ids, min_tokens, penalties and multi-token bad words (which fall back to waiting
for the tokens), seeded sampling, chunked prefill, prefix hits and preemption."""
import random

import pytest
import torch

from fastdeploy import LLM, SamplingParams
from tiny_models import make_tiny_model

VOCAB = 512      # tiny_models' vocab_size


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("llama"))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def engine(path, async_scheduling, device="cpu", **kwargs):
    # float32 on the GPU too: bf16 rounding could flip near-tied greedy tokens between batch shapes
    args = dict(skip_tokenizer_init=True, device=device, dtype="float32", block_size=16, max_model_len=128,
                max_num_seqs=8, max_num_batched_tokens=48) | kwargs
    return LLM(model=str(path), async_scheduling=async_scheduling, **args)


def mixed_requests(seed: int, n: int):
    rng = random.Random(seed)
    shared = [rng.randrange(VOCAB) for _ in range(20)]       # a prefix some prompts share
    prompts, params = [], []
    for i in range(n):
        tail = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 40))]
        prompts.append(shared + tail if i % 3 == 0 else tail)
        kind = i % 6
        p = dict(max_tokens=rng.randint(1, 24), temperature=0.0)
        if kind == 1:
            p |= dict(temperature=1.0, top_p=0.9, seed=rng.randrange(1000))
        elif kind == 2:     # stop ids that the tiny model's outputs hit early
            p |= dict(stop_token_ids=rng.sample(range(VOCAB), 60), min_tokens=2)
        elif kind == 3:
            p |= dict(repetition_penalty=1.3, presence_penalty=0.5)
        elif kind == 4:
            p |= dict(bad_words_token_ids=[rng.randrange(VOCAB) for _ in range(5)], logprobs=3)
        elif kind == 5:
            p |= dict(temperature=0.8, top_k=20, seed=rng.randrange(1000), ignore_eos=True)
        prompts[-1] = {"prompt_token_ids": prompts[-1]}
        params.append(SamplingParams(**p))
    return prompts, params


def summary(outs):
    return [(o.outputs.token_ids, o.outputs.finish_reason, o.outputs.logprobs) for o in outs]


def assert_same(a, b):
    """Tokens and finish reasons exactly; logprobs to 1e-4 (a different batch shape changes the float
    rounding of the matmuls)."""
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for (_, _, la), (_, _, lb) in zip(a, b):
        assert (la is None) == (lb is None)
        for da, db in zip(la or [], lb or []):
            assert da.keys() == db.keys() and da == pytest.approx(db, abs=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("blocks", [None, 6])      # 6 blocks of 16: requests preempt and recompute
def test_async_equals_sync(tiny_path, blocks, device):
    prompts, params = mixed_requests(0, 24)
    results = {}
    for mode in (False, True):
        # a fixed cache (not profiled): on a GPU the other engine of the pair still holds its memory
        llm = engine(tiny_path, mode, device, num_gpu_blocks_override=blocks or 256, kv_cache_ratio=1.0)
        results[mode] = summary(llm.generate(prompts, params, use_tqdm=False))
        results[mode, "again"] = summary(llm.generate(prompts, params, use_tqdm=False))    # prefix hits
        if blocks:
            assert llm.llm_engine.scheduler.num_preemptions > 0
        assert not llm.llm_engine.scheduler.has_unfinished() and llm.llm_engine._pending is None
        assert llm.llm_engine.block_manager.num_used_blocks == 0
    for other in (results[True], results[True, "again"], results[False, "again"]):
        assert_same(other, results[False])
    assert any(reason == "stop" for _, reason, _ in results[True])


def test_multi_token_bad_words_wait_for_the_tokens(tiny_path):
    """A two-token bad word needs the previous token's value: the engine waits for it. (Multi-token bad
    words come from `bad_words` strings through a tokenizer; this tokenizer-less engine gets the ids
    set on the request directly.)"""
    prompt, greedy = [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=12)
    free = engine(tiny_path, True).generate({"prompt_token_ids": prompt}, greedy, use_tqdm=False)[0]
    pair = free.outputs.token_ids[3:5]          # forbid the pair the model produces at steps 3-4
    outs = {}
    for mode in (False, True):
        llm = engine(tiny_path, mode)
        reqs = llm.llm_engine.make_requests(None, prompt, greedy)
        reqs[0].bad_words_token_ids = [pair]
        llm.llm_engine.run(reqs)
        outs[mode] = reqs[0].output_token_ids
    assert outs[True] == outs[False]
    assert outs[True][:4] == free.outputs.token_ids[:4] and outs[True][4] != free.outputs.token_ids[4]
