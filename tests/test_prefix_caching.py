"""Prefix caching end to end: the same tokens with and without it, and the prompt tokens it served."""
import random

import pytest

from fastdeploy import LLM, SamplingParams
from tiny_models import make_tiny_model

BLOCK = 16
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module", params=["llama", "ernie4_5"])
def model_path(request, tmp_path_factory):
    return make_tiny_model(request.param, tmp_path_factory.mktemp(request.param))


def prompts_sharing(prefix_len: int, n: int = 6, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(3, 500) for _ in range(prefix_len)]
    return [prefix + [rng.randrange(3, 500) for _ in range(rng.randrange(1, 20))] for _ in range(n)]


def engine(path, caching: bool, **kw):
    return LLM(model=str(path), skip_tokenizer_init=True, device="cpu", block_size=BLOCK, max_model_len=128,
               enable_prefix_caching=caching, **kw)


@pytest.mark.parametrize("prefix_len", [0, BLOCK, 3 * BLOCK + 5, 64])
@pytest.mark.parametrize("pressure", [False, True], ids=["roomy", "preempting"])
def test_same_tokens_with_and_without_caching(model_path, prefix_len, pressure):
    prompts = prompts_sharing(prefix_len)
    # under pressure: 7 blocks for 6 requests of up to 6 blocks each, admitted greedily, so running
    # requests outgrow the cache and get preempted
    kw = dict(num_gpu_blocks_override=7, max_num_seqs=6, kv_cache_ratio=1.0) if pressure else dict(max_num_seqs=2)
    plain = engine(model_path, False, **kw).generate(prompts, GREEDY, use_tqdm=False)
    cached_llm = engine(model_path, True, **kw)
    cached = cached_llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs.token_ids for o in cached] == [o.outputs.token_ids for o in plain]
    assert all(o.num_cached_tokens == 0 for o in plain)
    if pressure:
        assert cached_llm.llm_engine.scheduler.num_preemptions > 0
    else:
        # with two at a time, every request after the first two finds the prefix's full blocks
        full = (prefix_len // BLOCK) * BLOCK
        assert [o.num_cached_tokens for o in cached[2:]] == [full] * 4
    # a second call over the same prompts is served from the blocks the first one left behind
    again = cached_llm.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs.token_ids for o in again] == [o.outputs.token_ids for o in plain]


def test_wholly_cached_prompt_recomputes_only_its_last_token(model_path):
    llm = engine(model_path, True)
    prompt = prompts_sharing(2 * BLOCK, n=1)[0][:2 * BLOCK]          # exactly two full blocks
    first = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
    second = llm.generate([prompt], GREEDY, use_tqdm=False)[0]
    assert second.outputs.token_ids == first.outputs.token_ids
    assert second.num_cached_tokens == BLOCK          # the last block holds the token that must run


def test_turning_it_off_serves_nothing(model_path):
    llm = engine(model_path, False)
    prompts = prompts_sharing(3 * BLOCK, n=2)
    llm.generate(prompts, GREEDY, use_tqdm=False)
    assert all(o.num_cached_tokens == 0 for o in llm.generate(prompts, GREEDY, use_tqdm=False))


@pytest.mark.slow
def test_smollm2_multi_turn_chat_hits_the_cache():
    llm = LLM(max_model_len=1024, max_num_seqs=4)
    system = {"role": "system", "content": "You are a careful assistant. " * 20}
    convs = [[system, {"role": "user", "content": q}] for q in ("Name a fruit.", "Name a city.", "Name a tree.")]
    params = SamplingParams(temperature=0, max_tokens=24)
    off = LLM(max_model_len=1024, max_num_seqs=4, enable_prefix_caching=False).chat(convs, params, use_tqdm=False)
    first = llm.chat(convs[:1], params, use_tqdm=False)
    rest = llm.chat(convs[1:], params, use_tqdm=False)
    assert [o.outputs.text for o in first + rest] == [o.outputs.text for o in off]
    assert all(o.num_cached_tokens >= 64 for o in rest)
