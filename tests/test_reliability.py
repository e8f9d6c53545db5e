"""Reliability: bad input is refused at the door (before any work starts), faults inside a step fail
only what they must and leave the LLM usable, random input never escapes as anything but
ValueError/TypeError nor hangs, 10,000 requests under preemption come back complete and exact, and
seeded sampling repeats whatever else shares the batch."""
import contextlib
import random
import signal

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastdeploy import LLM, SamplingParams
from fastdeploy.engine.sampling_params import MAX_SEED
from tiny_models import make_tiny_model

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
TINY_VOCAB = 512      # tiny_models' vocab_size


@pytest.fixture(scope="module")
def smol():
    """The real SmolLM2 (it has a tokenizer and a chat template): for text and chat input."""
    return LLM(max_model_len=256, max_num_seqs=4)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("llama"))


def tiny_llm(path, **engine_args):
    args = dict(skip_tokenizer_init=True, device="cpu", block_size=16, max_model_len=128) | engine_args
    return LLM(model=str(path), **args)


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return tiny_llm(tiny_path, max_num_seqs=4)


@pytest.fixture(scope="module")
def tiny_small(tiny_path):
    # max_model_len 64 and a KV cache of 3 x 16 = 48 tokens: both limits can be hit
    return tiny_llm(tiny_path, max_model_len=64, num_gpu_blocks_override=3, max_num_seqs=4)


@pytest.fixture
def one_thread():
    """The tiny model gains nothing from intra-op threads, and on a busy 2-core machine OpenMP
    threads waiting on each other make its steps tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_idle(llm):
    """No request is left behind: nothing queued or running, every KV block free, no output state."""
    engine = llm.llm_engine
    assert not engine.scheduler.waiting and not engine.scheduler.running
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert not engine.output_processor.detokenizers and not engine.output_processor.texts


def assert_serves(llm):
    """A good request right after: one token (SmolLM2 on a CPU takes a while per token)."""
    prompt = [1, 2, 3] if llm.tokenizer is None else "Hi"
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True), use_tqdm=False)
    assert len(out) == 1 and out[0].error_code == 200 and len(out[0].outputs.token_ids) == 1
    assert_idle(llm)


# ---- 1. bad input --------------------------------------------------------------------------------
def gen(prompts, params=GREEDY, **kwargs):
    return lambda llm: llm.generate(prompts, params, use_tqdm=False, **kwargs)


def sp(**kwargs):
    """SamplingParams(**kwargs), built inside the case so that pytest.raises sees its error."""
    return lambda llm: llm.generate([[1, 2, 3]], SamplingParams(**kwargs), use_tqdm=False)


def chat(messages, params=GREEDY, **kwargs):
    return lambda llm: llm.chat(messages, params, use_tqdm=False, **kwargs)


def user(content):
    return [{"role": "user", "content": content}]


# token ids, sampling params and lengths on the tiny model (512-token vocabulary)
TINY_BAD_INPUTS = [
    # every SamplingParams field out of range or of the wrong type
    (sp(n=0), ValueError, "n"),
    (sp(n="2"), TypeError, "n"),
    (sp(presence_penalty=2.5), ValueError, "presence_penalty"),
    (sp(presence_penalty="0"), TypeError, "presence_penalty"),
    (sp(frequency_penalty=-3), ValueError, "frequency_penalty"),
    (sp(frequency_penalty=[0.1]), TypeError, "frequency_penalty"),
    (sp(repetition_penalty=0), ValueError, "repetition_penalty"),
    (sp(repetition_penalty="1"), TypeError, "repetition_penalty"),
    (sp(temperature=-0.1), ValueError, "temperature"),
    (sp(temperature=float("nan")), ValueError, "temperature"),
    (sp(temperature=float("inf")), ValueError, "temperature"),
    (sp(temperature=True), TypeError, "temperature"),
    (sp(top_p=1.5), ValueError, "top_p"),
    (sp(top_p=-0.1), ValueError, "top_p"),
    (sp(top_p="0.9"), TypeError, "top_p"),
    (sp(top_k=-2), ValueError, "top_k"),
    (sp(top_k=2.5), TypeError, "top_k"),
    (sp(min_p=1.5), ValueError, "min_p"),
    (sp(min_p=None), TypeError, "min_p"),
    (sp(seed=-1), ValueError, "seed"),
    (sp(seed=MAX_SEED + 1), ValueError, "seed"),
    (sp(seed="1"), TypeError, "seed"),
    (sp(max_tokens=0), ValueError, "max_tokens"),
    (sp(max_tokens=1.5), TypeError, "max_tokens"),
    (sp(min_tokens=-1), ValueError, "min_tokens"),
    (sp(min_tokens=5, max_tokens=2), ValueError, "min_tokens"),
    (sp(min_tokens="1"), TypeError, "min_tokens"),
    (sp(reasoning_max_tokens=0), ValueError, "reasoning_max_tokens"),
    (sp(reasoning_max_tokens=10, max_tokens=5), ValueError, "reasoning_max_tokens"),
    (sp(logprobs=21), ValueError, "logprobs"),
    (sp(logprobs=-2), ValueError, "logprobs"),
    (sp(logprobs="1"), TypeError, "logprobs"),
    (sp(stop=5), TypeError, "stop"),
    (sp(stop=[""]), ValueError, "stop"),
    (sp(stop=["no tokenizer to match it"]), ValueError, "stop"),
    (sp(stop_token_ids=[-1]), ValueError, "stop_token_ids"),
    (sp(stop_token_ids="1"), TypeError, "stop_token_ids"),
    (sp(stop_token_ids=[TINY_VOCAB]), ValueError, "stop_token_ids"),     # would crash the sampler mid-step
    (sp(bad_words=[1]), TypeError, "bad_words"),
    (sp(bad_words=["no tokenizer"]), ValueError, "bad_words"),
    (sp(bad_words_token_ids=[TINY_VOCAB]), ValueError, "bad_words_token_ids"),
    (sp(ignore_eos="yes"), TypeError, "ignore_eos"),
    (sp(include_stop_str_in_output=1), TypeError, "include_stop_str_in_output"),
    # prompt types outside the API
    (gen(None), TypeError, "prompts"),
    (gen(5), TypeError, "prompts"),
    (gen(1.5), TypeError, "prompts"),
    (gen(b"bytes"), TypeError, "prompts"),
    (gen(x for x in [[1, 2]]), TypeError, "prompts"),
    (gen([b"bytes"]), TypeError, "prompt"),
    (gen([[1, 2], "a", 3]), TypeError, "prompt"),
    (gen([[1, 2], ["a"]]), TypeError, "prompt"),
    (gen([[1.0, 2.0]]), TypeError, "prompt"),
    (gen([[1, True]]), TypeError, "prompt"),
    (gen({"prompt_token_ids": {"a": 1}}), TypeError, "prompt_token_ids"),
    (gen({"prompt_token_ids": [[1, 2]]}), TypeError, "prompt_token_ids"),
    (gen([{"prompt_token_ids": [1]}, {"prompt": None}]), ValueError, "prompt"),
    (gen({"tokens": [1, 2]}), ValueError, "prompt"),
    (gen({"prompt_token_ids": [1], "multimodal_data": {"image": ["img.png"]}}), ValueError, "enable_mm"),
    # empty prompts
    (gen([]), ValueError, "prompts"),
    (gen([[]]), ValueError, "prompt"),
    (gen({"prompt_token_ids": []}), ValueError, "prompt"),
    # token ids outside the vocabulary
    (gen([[1, -5]]), ValueError, "prompt_token_ids"),
    (gen([[1, TINY_VOCAB]]), ValueError, "prompt_token_ids"),
    (gen({"prompt_token_ids": [10 ** 12]}), ValueError, "prompt_token_ids"),
    # too long: for max_model_len (64), for the whole KV cache (48 tokens), or with min_tokens
    (gen([[5] * 70]), ValueError, "max_model_len"),
    (gen([[5] * 50]), ValueError, "KV cache"),
    (gen([[5] * 30], SamplingParams(min_tokens=20, max_tokens=25)), ValueError, "KV cache"),
    (gen([[5] * 60], SamplingParams(min_tokens=5)), ValueError, "max_model_len"),
    (gen([[1, 2], [5] * 70]), ValueError, "max_model_len"),       # the bad one second: nothing runs
    # sampling_params of the wrong length or type
    (gen([[1], [2]], [GREEDY]), ValueError, "sampling_params"),
    (gen([[1]], []), ValueError, "sampling_params"),
    (gen([[1], [2]], [GREEDY, {"temperature": 0}]), TypeError, "sampling_params"),
    (gen([[1]], {"temperature": 0}), TypeError, "sampling_params"),
    # text input needs a tokenizer
    (gen("text"), ValueError, "tokenizer"),
]

# text and chat on SmolLM2
SMOL_BAD_INPUTS = [
    (gen({"prompt": {"nested": "dict"}}), TypeError, "prompt"),
    (gen(["a", 1]), TypeError, "prompt"),
    (gen(""), ValueError, "prompt"),
    (gen({"prompt": ""}), ValueError, "prompt"),
    (gen(["fine", "hello " * 300]), ValueError, "max_model_len"),
    (gen({"prompt": "x", "multimodal_data": {"image": ["img.png"]}}), ValueError, "enable_mm"),
    (chat([{"content": "no role"}]), ValueError, "role"),
    (chat([{"role": 5, "content": "x"}]), TypeError, "role"),
    (chat([{"role": "user"}]), ValueError, "content"),
    (chat(user(5)), TypeError, "content"),
    (chat(user({"type": "text"})), TypeError, "content"),
    (chat(user(["a bare string part"])), TypeError, "part"),
    (chat(user([{"type": "audio_url", "audio_url": "x"}])), ValueError, "type"),
    (chat(user([{"text": "no type"}])), ValueError, "type"),
    (chat(user([{"type": "text", "text": 5}])), TypeError, "text"),
    (chat(user([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])), ValueError, "enable_mm"),
    (chat(user([{"type": "video_url", "video_url": {"url": "http://x/y.mp4"}}])), ValueError, "enable_mm"),
    (chat("hello"), TypeError, "messages"),
    (chat([]), ValueError, "messages"),
    (chat([[]]), ValueError, "conversation"),
    (chat(["hello"]), TypeError, "conversation"),
    (chat([user("fine"), [{"role": "user"}]]), ValueError, "content"),  # the bad one second
    (chat(user("hello " * 300)), ValueError, "max_model_len"),
    (chat(user("hi"), chat_template_kwargs="enable_thinking"), TypeError, "chat_template_kwargs"),
    (chat(user("hi"), chat_template_kwargs={"enable_thinking": "no"}), ValueError, "enable_thinking"),
    (chat(user("hi"), [GREEDY, GREEDY]), ValueError, "sampling_params"),
]
BAD_INPUTS = [("tiny_small", *case) for case in TINY_BAD_INPUTS] + [("smol", *case) for case in SMOL_BAD_INPUTS]


@pytest.mark.parametrize("target, call, error, field", BAD_INPUTS,
                         ids=[f"{t}-{i}-{f}" for i, (t, _, _, f) in enumerate(BAD_INPUTS)])
def test_bad_input_is_refused_before_any_work(request, target, call, error, field):
    llm = request.getfixturevalue(target)
    with pytest.raises(error, match=field):
        call(llm)
    assert_idle(llm)
    assert_serves(llm)


@pytest.mark.parametrize("max_tokens", [100, None])
def test_long_max_tokens_is_clamped_to_the_kv_cache(tiny_small, max_tokens):
    """max_tokens beyond what the cache holds (or unset) is clamped, as it is to max_model_len,
    instead of the request preempting itself forever once it outgrows the cache."""
    prompt = [5] * 30                       # 48-token cache: room for 19 output tokens
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=max_tokens)
    out = tiny_small.generate(prompt, params, use_tqdm=False)[0]
    assert out.error_code == 200 and out.outputs.finish_reason == "length"
    assert len(out.outputs.token_ids) == 19
    assert_idle(tiny_small)


def test_numpy_token_ids_are_accepted(tiny):
    ids = [3, 17, 42]
    ref = tiny.generate([ids], GREEDY, use_tqdm=False)[0].outputs.token_ids
    assert tiny.generate([list(np.array(ids))], GREEDY, use_tqdm=False)[0].outputs.token_ids == ref
    assert tiny.generate({"prompt_token_ids": tuple(np.array(ids))}, GREEDY,
                         use_tqdm=False)[0].outputs.token_ids == ref


def test_bad_words_token_ids_are_never_sampled(tiny):
    ids = [3, 17, 42]
    free = tiny.generate([ids], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    banned = sorted(set(free[0].outputs.token_ids))
    out = tiny.generate([ids], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True,
                                              bad_words_token_ids=banned), use_tqdm=False)[0]
    assert not set(out.outputs.token_ids) & set(banned)


def test_n_with_the_largest_seed_stays_in_range(tiny):
    outs = tiny.generate([[3, 4]], SamplingParams(n=3, seed=MAX_SEED, temperature=1.0, max_tokens=4,
                                                   ignore_eos=True), use_tqdm=False)
    assert len(outs) == 3 and all(o.error_code == 200 for o in outs)


@pytest.mark.parametrize("kwargs, name", [
    (dict(max_model_len=0), "max_model_len"), (dict(max_model_len="2048"), "max_model_len"),
    (dict(block_size=0), "block_size"), (dict(max_num_seqs=0), "max_num_seqs"),
    (dict(max_num_seqs=2.5), "max_num_seqs"), (dict(max_num_batched_tokens=0), "max_num_batched_tokens"),
    (dict(gpu_memory_utilization=0), "gpu_memory_utilization"),
    (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
    (dict(kv_cache_ratio=0), "kv_cache_ratio"), (dict(kv_cache_ratio=1.1), "kv_cache_ratio"),
    (dict(seed=-1), "seed"), (dict(num_gpu_blocks_override=0), "num_gpu_blocks_override"),
    (dict(tensor_parallel_size=0), "tensor_parallel_size"), (dict(tensor_parallel_size=3), "tensor_parallel_size"),
    (dict(dtype="int3"), "dtype"), (dict(quantization="fp3"), "quantization"),
    (dict(load_format="pickle"), "load_format"), (dict(device="tpu"), "device"),
    (dict(enable_prefix_caching="yes"), "enable_prefix_caching"),
    (dict(limit_mm_per_prompt=3), "limit_mm_per_prompt"), (dict(no_such_argument=1), "no_such_argument"),
    (dict(enable_chunked_prefill=False, max_num_batched_tokens=64), "max_num_batched_tokens"),
])
def test_engine_arguments_out_of_range(tiny_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        tiny_llm(tiny_path, **kwargs)


# ---- 2. faults inside a step -----------------------------------------------------------------------
PROMPTS = [[3, 4, 5], [7] * 20, [11, 12] * 15, [9] * 40]
PARAMS = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def test_output_fault_fails_only_its_request(tiny, monkeypatch, one_thread):
    ref = tiny.generate(PROMPTS, PARAMS, use_tqdm=False)
    processor = tiny.llm_engine.output_processor
    append_token = processor.append_token

    def flaky(req, *args):
        if req.prompt_token_ids == PROMPTS[1] and req.num_output_tokens == 3:
            raise KeyError("injected")
        append_token(req, *args)

    monkeypatch.setattr(processor, "append_token", flaky)
    outs = tiny.generate(PROMPTS, PARAMS, use_tqdm=False)
    bad = outs[1]
    assert bad.error_code != 200 and "injected" in bad.error_msg and bad.finished
    for i in (0, 2, 3):
        assert outs[i].error_code == 200 and outs[i].outputs.token_ids == ref[i].outputs.token_ids
    assert_idle(tiny)


def test_make_output_fault_fails_only_its_request(tiny, monkeypatch, one_thread):
    ref = tiny.generate(PROMPTS, PARAMS, use_tqdm=False)
    processor = tiny.llm_engine.output_processor
    make_output = processor.make_output

    def flaky(req, *args):
        out = make_output(req, *args)
        if req.prompt_token_ids == PROMPTS[2]:      # fails late, as a decode or a reasoning parser would
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        return out

    monkeypatch.setattr(processor, "make_output", flaky)
    outs = tiny.generate(PROMPTS, PARAMS, use_tqdm=False)
    assert outs[2].error_code != 200 and "injected" in outs[2].error_msg
    assert outs[2].prompt_token_ids == PROMPTS[2] and outs[2].finished
    for i in (0, 1, 3):
        assert outs[i].error_code == 200 and outs[i].outputs.token_ids == ref[i].outputs.token_ids
    assert_idle(tiny)


def test_detokenizer_fault_fails_only_its_request(smol, monkeypatch):
    """Requests with stop strings are detokenized token by token; one detokenizer raising fails
    only its own request."""
    prompts = ["The sea is", "Once upon a time", "1, 2, 3,"]
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True, stop=["@@@"])
    ref = smol.generate(prompts, params, use_tqdm=False)
    processor = smol.llm_engine.output_processor
    add_request = processor.add_request
    broken = []

    class Broken:
        def add(self, token_id):
            raise RuntimeError("injected detokenizer failure")

    def add_broken(req):
        add_request(req)
        if req.prompt == prompts[1]:
            assert req.request_id in processor.detokenizers, "requests with stop strings have a detokenizer"
            processor.detokenizers[req.request_id] = Broken()
            broken.append(req.request_id)

    monkeypatch.setattr(processor, "add_request", add_broken)
    outs = smol.generate(prompts, params, use_tqdm=False)
    assert broken
    assert outs[1].error_code != 200 and "injected detokenizer failure" in outs[1].error_msg
    for i in (0, 2):
        assert outs[i].error_code == 200 and outs[i].outputs.text == ref[i].outputs.text
    assert_idle(smol)


@pytest.mark.parametrize("fault", [RuntimeError("injected CUDA error"), KeyboardInterrupt()],
                         ids=["exception", "interrupt"])
def test_model_fault_fails_the_call_and_the_llm_recovers(tiny, monkeypatch, fault, one_thread):
    ref = tiny.generate(PROMPTS, PARAMS, use_tqdm=False)
    model = tiny.llm_engine.runner.model
    forward = model.forward
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:          # mid-run: prompts prefilled, blocks held, tokens out
            raise fault
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", flaky)
    if isinstance(fault, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            tiny.generate(PROMPTS, PARAMS, use_tqdm=False)
    else:
        with pytest.raises(RuntimeError, match="model step failed.*injected CUDA error"):
            tiny.generate(PROMPTS, PARAMS, use_tqdm=False)
    assert_idle(tiny)
    outs = tiny.generate(PROMPTS, PARAMS, use_tqdm=False)       # flaky no more: calls > 3
    assert [o.outputs.token_ids for o in outs] == [o.outputs.token_ids for o in ref]
    assert all(o.error_code == 200 for o in outs)
    assert_idle(tiny)


def test_abort_survives_an_output_fault(tiny_path, monkeypatch):
    llm = tiny_llm(tiny_path, max_num_seqs=4)      # its own engine: the shared one must stay clean
    model, processor = llm.llm_engine.runner.model, llm.llm_engine.output_processor
    make_output = processor.make_output

    def failing_forward(*args, **kwargs):
        raise RuntimeError("injected CUDA error")

    def flaky_make_output(req, *args):
        out = make_output(req, *args)
        if req.prompt_token_ids == PROMPTS[0]:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")
        return out

    monkeypatch.setattr(model, "forward", failing_forward)
    monkeypatch.setattr(processor, "make_output", flaky_make_output)
    with pytest.raises(Exception):
        llm.generate(PROMPTS, PARAMS, use_tqdm=False)
    assert_idle(llm)


# ---- 3. property-based: random input at the door ----------------------------------------------------
class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Turns a hang into a failure (SIGALRM; the tests run in the main thread)."""
    def on_alarm(signum, frame):
        raise Hang(f"no result within {seconds} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


ANY = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-3, 40),
                st.floats(allow_nan=True, allow_infinity=True), st.floats(-3, 3), st.text(max_size=3),
                st.binary(max_size=3), st.lists(st.integers(-2, 600), max_size=3),
                st.lists(st.text(max_size=2), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(),
                                                                           max_size=2))
IDS = st.lists(st.integers(0, TINY_VOCAB - 1), max_size=3)
VALID = {"n": st.integers(1, 3), "max_tokens": st.integers(1, 4),
         "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
         "repetition_penalty": st.floats(0.01, 2), "temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
         "top_k": st.integers(-1, TINY_VOCAB + 10), "min_p": st.floats(0, 1), "seed": st.integers(0, MAX_SEED),
         "stop_token_ids": IDS, "bad_words_token_ids": IDS, "min_tokens": st.integers(0, 3),
         "reasoning_max_tokens": st.none(), "logprobs": st.none() | st.integers(-1, 20),
         "ignore_eos": st.booleans(), "include_stop_str_in_output": st.booleans(),
         "stop": st.none(), "bad_words": st.none()}
# n and max_tokens multiply the work: wrong types, but no large ints
CHEAP_ANY = ANY.filter(lambda v: not isinstance(v, int) or isinstance(v, bool))


def valid_or_not(name):
    """A valid value most of the time, so that many cases get past the door and run."""
    bad = CHEAP_ANY if name in ("n", "max_tokens") else ANY
    return st.integers(0, 9).flatmap(lambda k: bad if k == 0 else VALID[name])


SP_KWARGS = st.fixed_dictionaries({}, optional={name: valid_or_not(name) for name in VALID})
TOKEN = st.one_of(st.integers(0, TINY_VOCAB - 1), st.integers(-3, TINY_VOCAB + 3), st.booleans(), st.floats(),
                  st.text(max_size=3), st.none(), st.binary(max_size=2))
VALID_PROMPTS = st.one_of(
    st.lists(st.integers(0, TINY_VOCAB - 1), min_size=1, max_size=40),
    st.lists(st.lists(st.integers(0, TINY_VOCAB - 1), min_size=1, max_size=40), min_size=1, max_size=4),
    st.lists(st.fixed_dictionaries({"prompt_token_ids": st.lists(st.integers(0, TINY_VOCAB - 1), min_size=1,
                                                                 max_size=40)}), min_size=1, max_size=4))
PROMPT = VALID_PROMPTS | st.recursive(
    TOKEN, lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.lists(st.integers(0, TINY_VOCAB - 1), min_size=1, max_size=150),
        st.tuples(inner, inner),
        st.dictionaries(st.sampled_from(["prompt", "prompt_token_ids", "multimodal_data", "other"]), inner,
                        max_size=3)),
    max_leaves=12)
# no per-example deadline (it flakes on a loaded machine): time_limit catches hangs
FAST = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def check_at_the_door(llm, prompts, make_params):
    with time_limit(20):
        try:
            outs = llm.generate(prompts, make_params(), use_tqdm=False)
        except (ValueError, TypeError) as e:
            event(f"refused: {type(e).__name__}")
            assert_idle(llm)
            return None
    event("served")
    assert outs and all(o.finished and o.error_code == 200 for o in outs)
    assert_idle(llm)
    return outs


@FAST
@given(kwargs=SP_KWARGS)
def test_random_sampling_params(tiny_small, one_thread, kwargs):
    check_at_the_door(tiny_small, [[1, 2, 3], [4] * 20], lambda: SamplingParams(**kwargs))


@FAST
@given(prompts=PROMPT)
def test_random_prompt_shapes(tiny_small, one_thread, prompts):
    outs = check_at_the_door(tiny_small, prompts, lambda: SamplingParams(temperature=0, max_tokens=2))
    if outs is not None:
        assert all(1 <= len(o.outputs.token_ids) <= 2 for o in outs)


# ---- 4. load ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ten_thousand_requests_under_preemption(tiny_path, one_thread):
    rng = random.Random(0)
    n = 10_000
    prompts = [[rng.randrange(TINY_VOCAB) for _ in range(rng.randint(1, 40))] for _ in range(n)]
    params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=rng.randint(1, 16)) for _ in range(n)]
    # 24 blocks of 16 tokens for up to 64 sequences of up to 56 tokens, all admitted while blocks
    # last (kv_cache_ratio 1): running requests run out of room and are preempted
    llm = tiny_llm(tiny_path, max_num_seqs=64, max_num_batched_tokens=512, num_gpu_blocks_override=24,
                   kv_cache_ratio=1.0)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    assert len(outs) == n
    for out, prompt, p in zip(outs, prompts, params):
        assert out.prompt_token_ids == prompt and out.finished and out.error_code == 200
        assert len(out.outputs.token_ids) == p.max_tokens and out.outputs.finish_reason == "length"
    assert_idle(llm)
    # a sample run one at a time gives the same greedy tokens
    sample = sorted(rng.sample(range(n), 200))
    serial = tiny_llm(tiny_path, max_num_seqs=1, enable_prefix_caching=False)
    alone = serial.generate([prompts[i] for i in sample], [params[i] for i in sample], use_tqdm=False)
    assert [o.outputs.token_ids for o in alone] == [outs[i].outputs.token_ids for i in sample]


# ---- 5. repeatability -------------------------------------------------------------------------------
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True)


def test_seed_repeats_whatever_shares_the_batch(tiny_path, one_thread):
    prompt = [5, 6, 7, 8]
    # a small cache: the larger batches also preempt and recompute
    llm = tiny_llm(tiny_path, max_num_seqs=8, num_gpu_blocks_override=5, kv_cache_ratio=1.0)
    alone = llm.generate([prompt], SEEDED, use_tqdm=False)[0].outputs.token_ids
    assert llm.generate([prompt], SEEDED, use_tqdm=False)[0].outputs.token_ids == alone
    rng = random.Random(0)
    for size in (2, 5, 8):
        others = [[rng.randrange(TINY_VOCAB) for _ in range(rng.randint(1, 30))] for _ in range(size - 1)]
        other_params = [SamplingParams(temperature=rng.choice([0.0, 0.7, 1.0]), top_k=rng.choice([0, 20]),
                                       max_tokens=rng.randint(1, 20), ignore_eos=True) for _ in others]
        pos = rng.randrange(size)
        outs = llm.generate(others[:pos] + [prompt] + others[pos:],
                            other_params[:pos] + [SEEDED] + other_params[pos:], use_tqdm=False)
        assert outs[pos].outputs.token_ids == alone
    assert llm.llm_engine.scheduler.num_preemptions > 0
    assert_idle(llm)


def test_seed_repeats_the_text(smol):
    prompt = "Write a story about a dragon."
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=6)
    alone = smol.generate(prompt, params, use_tqdm=False)[0].outputs.text
    batch = smol.generate(["Hello, my name is", prompt], [SamplingParams(temperature=0, max_tokens=6), params],
                          use_tqdm=False)
    assert batch[1].outputs.text == alone
    assert smol.generate(prompt, params, use_tqdm=False)[0].outputs.text == alone


def test_unseeded_params_draw_their_seed_at_construction(tiny_path, one_thread):
    """What happens without a seed (as in FastDeploy): each SamplingParams draws a random seed when it
    is built (from Python's `random`, not from `LLM(seed=...)`, which only seeds the weights of
    load_format="dummy"). So reusing one SamplingParams object repeats its samples, a batch that shares
    it samples identical prompts identically, and n > 1 gives distinct samples (seed, seed+1, ...)."""
    a, b = SamplingParams(), SamplingParams()
    assert a.seed != b.seed and 0 <= a.seed <= MAX_SEED
    llm1 = tiny_llm(tiny_path, seed=1)
    llm2 = tiny_llm(tiny_path, seed=2)
    unseeded = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    prompt = [5, 6, 7]
    first = llm1.generate([prompt], unseeded, use_tqdm=False)[0].outputs.token_ids
    assert llm1.generate([prompt], unseeded, use_tqdm=False)[0].outputs.token_ids == first
    # the engine seed does not enter sampling: another LLM(seed=...) gives the same tokens
    assert llm2.generate([prompt], unseeded, use_tqdm=False)[0].outputs.token_ids == first
    shared = llm1.generate([prompt, prompt], unseeded, use_tqdm=False)
    assert shared[0].outputs.token_ids == shared[1].outputs.token_ids == first
    fresh = [llm1.generate([prompt], SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True),
                           use_tqdm=False)[0].outputs.token_ids for _ in range(3)]
    assert len({tuple(t) for t in fresh + [first]}) > 1
    samples = llm1.generate([prompt], SamplingParams(n=3, temperature=1.0, max_tokens=12, ignore_eos=True),
                            use_tqdm=False)
    assert len({tuple(o.outputs.token_ids) for o in samples}) == 3
