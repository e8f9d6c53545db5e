"""Reliability: bad input is refused at the door (before any work starts), faults inside a step fail
only what they must and leave the LLM usable, random input never escapes as anything but
ValueError/TypeError nor hangs, 10,000 requests under preemption come back complete and exact, and
seeded sampling repeats whatever else shares the batch."""
import contextlib
import random
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdeploy import LLM, SamplingParams
from fastdeploy.engine.sampling_params import MAX_SEED
from tiny_models import make_tiny_model

GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
TINY_VOCAB = 512      # tiny_models' vocab_size


@pytest.fixture(scope="module")
def smol():
    # a KV cache of 8 x 16 = 128 tokens, smaller than max_model_len: both limits can be hit
    return LLM(max_model_len=256, block_size=16, num_gpu_blocks_override=8, max_num_seqs=4)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_model("llama", tmp_path_factory.mktemp("llama"))


def tiny_llm(path, **engine_args):
    args = dict(skip_tokenizer_init=True, device="cpu", block_size=16, max_model_len=128) | engine_args
    return LLM(model=str(path), **args)


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return tiny_llm(tiny_path, max_num_seqs=4)


def assert_idle(llm):
    """No request is left behind: nothing queued or running, every KV block free, no output state."""
    engine = llm.llm_engine
    assert not engine.scheduler.waiting and not engine.scheduler.running
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert not engine.output_processor.detokenizers and not engine.output_processor.texts


def assert_serves(llm, prompt):
    out = llm.generate(prompt, GREEDY, use_tqdm=False)
    assert len(out) == 1 and out[0].error_code == 200 and len(out[0].outputs.token_ids) == 4
    assert_idle(llm)


# ---- 1. bad input --------------------------------------------------------------------------------
def gen(prompts, params=GREEDY, **kwargs):
    return lambda llm: llm.generate(prompts, params, use_tqdm=False, **kwargs)


def sp(**kwargs):
    """generate("hi") with SamplingParams(**kwargs), built inside the case so pytest.raises sees it."""
    return lambda llm: llm.generate("hi", SamplingParams(**kwargs), use_tqdm=False)


def chat(messages, **kwargs):
    return lambda llm: llm.chat(messages, GREEDY, use_tqdm=False, **kwargs)


def user(content):
    return [{"role": "user", "content": content}]


VOCAB = 49152          # SmolLM2's
BAD_INPUTS = [
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
    (sp(stop_token_ids=[-1]), ValueError, "stop_token_ids"),
    (sp(stop_token_ids="1"), TypeError, "stop_token_ids"),
    (sp(stop_token_ids=[VOCAB]), ValueError, "stop_token_ids"),          # would crash the sampler mid-step
    (sp(bad_words=[1]), TypeError, "bad_words"),
    (sp(bad_words_token_ids=[10 ** 9]), ValueError, "bad_words_token_ids"),
    (sp(ignore_eos="yes"), TypeError, "ignore_eos"),
    (sp(include_stop_str_in_output=1), TypeError, "include_stop_str_in_output"),
    # prompt types outside the API
    (gen(None), TypeError, "prompts"),
    (gen(5), TypeError, "prompts"),
    (gen(1.5), TypeError, "prompts"),
    (gen(b"bytes"), TypeError, "prompts"),
    (gen(x for x in ["a generator"]), TypeError, "prompts"),
    (gen([b"bytes"]), TypeError, "prompt"),
    (gen(["a", 1]), TypeError, "prompt"),
    (gen([[1, 2], ["a"]]), TypeError, "prompt"),
    (gen([[1.0, 2.0]]), TypeError, "prompt"),
    (gen([[1, True]]), TypeError, "prompt"),
    (gen({"prompt": {"nested": "dict"}}), TypeError, "prompt"),
    (gen({"prompt_token_ids": {"a": 1}}), TypeError, "prompt_token_ids"),
    (gen({"prompt_token_ids": [[1, 2]]}), TypeError, "prompt_token_ids"),
    (gen([{"prompt": "ok"}, {"prompt": None}]), ValueError, "prompt"),
    (gen({"text": "unknown key"}), ValueError, "prompt"),
    (gen({"prompt": "x", "multimodal_data": {"image": ["img.png"]}}), ValueError, "enable_mm"),
    # empty prompts
    (gen(""), ValueError, "prompt"),
    (gen([]), ValueError, "prompts"),
    (gen([[]]), ValueError, "prompt"),
    (gen({"prompt": ""}), ValueError, "prompt"),
    (gen({"prompt_token_ids": []}), ValueError, "prompt"),
    # token ids outside the vocabulary
    (gen([[1, -5]]), ValueError, "prompt_token_ids"),
    (gen([[1, VOCAB]]), ValueError, "prompt_token_ids"),
    (gen({"prompt_token_ids": [10 ** 12]}), ValueError, "prompt_token_ids"),
    # too long: for max_model_len (256), for the whole KV cache (128 tokens), or with min_tokens
    (gen([[5] * 300]), ValueError, "max_model_len"),
    (gen([[5] * 200]), ValueError, "KV cache"),
    (gen([[5] * 100], SamplingParams(min_tokens=40, max_tokens=50)), ValueError, "KV cache"),
    (gen([[5] * 250], SamplingParams(min_tokens=10)), ValueError, "max_model_len"),
    (gen(["fine", [5] * 300]), ValueError, "max_model_len"),       # the bad one second: nothing runs
    # sampling_params of the wrong length or type
    (gen(["a", "b"], [GREEDY]), ValueError, "sampling_params"),
    (gen(["a"], []), ValueError, "sampling_params"),
    (gen(["a", "b"], [GREEDY, {"temperature": 0}]), TypeError, "sampling_params"),
    (gen("a", {"temperature": 0}), TypeError, "sampling_params"),
    # malformed chat messages
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
    (chat(user("hi"), chat_template_kwargs="enable_thinking"), TypeError, "chat_template_kwargs"),
    (chat(user("hi"), chat_template_kwargs={"enable_thinking": "no"}), ValueError, "enable_thinking"),
]


@pytest.mark.parametrize("call, error, field", BAD_INPUTS, ids=[f"{i}-{f}" for i, (_, _, f) in
                                                                enumerate(BAD_INPUTS)])
def test_bad_input_is_refused_before_any_work(smol, call, error, field):
    with pytest.raises(error, match=field):
        call(smol)
    assert_idle(smol)
    assert_serves(smol, "The sea is")


def test_long_max_tokens_is_clamped_to_the_kv_cache(smol):
    """max_tokens beyond what the cache holds (or unset) is clamped, as it is to max_model_len,
    instead of the request preempting itself forever once it outgrows the cache."""
    prompt = [5] * 100                       # 128-token cache: room for 29 output tokens
    out = smol.generate(prompt, SamplingParams(temperature=0, ignore_eos=True, max_tokens=100), use_tqdm=False)[0]
    assert out.error_code == 200 and out.outputs.finish_reason == "length"
    assert len(out.outputs.token_ids) == 29
    assert_idle(smol)


def test_numpy_token_ids_are_accepted(tiny):
    np = pytest.importorskip("numpy")
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


def test_output_fault_fails_only_its_request(tiny, monkeypatch):
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


def test_make_output_fault_fails_only_its_request(tiny, monkeypatch):
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
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, stop=["@@@"])
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
def test_model_fault_fails_the_call_and_the_llm_recovers(tiny, monkeypatch, fault):
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
FIELDS = ["presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k",
          "min_p", "seed", "stop", "stop_token_ids", "reasoning_max_tokens", "min_tokens", "logprobs",
          "bad_words", "bad_words_token_ids", "ignore_eos", "include_stop_str_in_output"]
# n and max_tokens multiply the work: any type, but valid values stay small
SP_KWARGS = st.fixed_dictionaries(
    {}, optional={"n": st.one_of(st.integers(-2, 3), ANY.filter(lambda v: not isinstance(v, int))),
                  "max_tokens": st.one_of(st.integers(-2, 4), ANY.filter(lambda v: not isinstance(v, int))),
                  **{f: ANY for f in FIELDS}})
TOKEN = st.one_of(st.integers(0, TINY_VOCAB - 1), st.integers(-3, TINY_VOCAB + 3), st.booleans(), st.floats(),
                  st.text(max_size=3), st.none(), st.binary(max_size=2))
PROMPT = st.recursive(
    TOKEN, lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.lists(st.integers(0, TINY_VOCAB - 1), min_size=1, max_size=150),
        st.tuples(inner, inner),
        st.dictionaries(st.sampled_from(["prompt", "prompt_token_ids", "multimodal_data", "other"]), inner,
                        max_size=3)),
    max_leaves=12)
FAST = settings(max_examples=150, deadline=5000, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tiny_small(tiny_path):
    # max_model_len 64 and a 48-token cache: long prompts are refused one way or the other
    return tiny_llm(tiny_path, max_model_len=64, num_gpu_blocks_override=3, max_num_seqs=4)


def check_at_the_door(llm, prompts, make_params):
    with time_limit(10):
        try:
            outs = llm.generate(prompts, make_params(), use_tqdm=False)
        except (ValueError, TypeError):
            assert_idle(llm)
            return None
    assert outs and all(o.finished and o.error_code == 200 for o in outs)
    assert_idle(llm)
    return outs


@FAST
@given(kwargs=SP_KWARGS)
def test_random_sampling_params(tiny_small, kwargs):
    check_at_the_door(tiny_small, [[1, 2, 3], [4] * 20], lambda: SamplingParams(**kwargs))


@FAST
@given(prompts=PROMPT)
def test_random_prompt_shapes(tiny_small, prompts):
    outs = check_at_the_door(tiny_small, prompts, lambda: SamplingParams(temperature=0, max_tokens=2))
    if outs is not None:
        assert all(1 <= len(o.outputs.token_ids) <= 2 for o in outs)


# ---- 4. load ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ten_thousand_requests_under_preemption(tiny_path):
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
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16)


def test_seed_repeats_whatever_shares_the_batch(smol):
    prompt = "Write a story about a dragon."
    alone = smol.generate(prompt, SEEDED, use_tqdm=False)[0].outputs
    again = smol.generate(prompt, SEEDED, use_tqdm=False)[0].outputs
    assert again.token_ids == alone.token_ids and again.text == alone.text
    others = ["Hello, my name is", "The best way to cook rice is", "List three animals:"]
    other_params = [SamplingParams(temperature=0, max_tokens=20),
                    SamplingParams(temperature=1.0, seed=7, max_tokens=30, ignore_eos=True),
                    SamplingParams(temperature=0.7, top_k=20, max_tokens=10)]
    for pos in (0, 2, 3):
        prompts = others[:pos] + [prompt] + others[pos:]
        params = other_params[:pos] + [SEEDED] + other_params[pos:]
        outs = smol.generate(prompts, params, use_tqdm=False)
        assert outs[pos].outputs.text == alone.text
    assert_idle(smol)


def test_unseeded_params_draw_their_seed_at_construction(tiny_path):
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
