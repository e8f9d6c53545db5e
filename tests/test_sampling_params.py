import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdeploy.engine.sampling_params import MAX_SEED, SamplingParams


def test_defaults_match_fastdeploy():
    params = SamplingParams()
    expected = dict(n=1, presence_penalty=None, frequency_penalty=None, repetition_penalty=None,
                    temperature=None, top_p=None, top_k=0, min_p=0.0, stop=None, stop_token_ids=None,
                    max_tokens=None, reasoning_max_tokens=None, min_tokens=1, logprobs=None,
                    bad_words=None, bad_words_token_ids=None, ignore_eos=False,
                    include_stop_str_in_output=False)
    assert {name: getattr(params, name) for name in expected} == expected
    assert 0 <= params.seed <= MAX_SEED


def test_unset_seeds_are_drawn_at_random():
    assert len({SamplingParams().seed for _ in range(20)}) > 1


@pytest.mark.parametrize("kwargs", [
    dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.0), dict(top_k=-1), dict(top_k=1),
    dict(min_p=1.0), dict(presence_penalty=-2.0), dict(frequency_penalty=2), dict(repetition_penalty=1e-3),
    dict(logprobs=-1), dict(logprobs=0), dict(logprobs=20), dict(seed=0), dict(seed=MAX_SEED),
    dict(min_tokens=0), dict(min_tokens=5, max_tokens=5), dict(reasoning_max_tokens=5, max_tokens=5),
    dict(reasoning_max_tokens=5), dict(stop=[]), dict(stop_token_ids=(2, 3)), dict(n=np.int64(2)),
    dict(temperature=np.float32(0.5)), dict(bad_words=["x"], bad_words_token_ids=[0]),
])
def test_boundary_values_are_accepted(kwargs):
    SamplingParams(**kwargs)


def test_values_are_normalised():
    params = SamplingParams(temperature=1, stop="###", stop_token_ids=(2, 3), n=np.int64(2))
    assert type(params.temperature) is float and params.temperature == 1.0
    assert params.stop == ["###"]
    assert params.stop_token_ids == [2, 3]
    assert type(params.n) is int


INVALID = [
    # (kwargs, exception, field named in the message)
    (dict(n=0), ValueError, "n"),
    (dict(n=1.0), TypeError, "n"),
    (dict(n=True), TypeError, "n"),
    (dict(n="2"), TypeError, "n"),
    (dict(presence_penalty=2.5), ValueError, "presence_penalty"),
    (dict(presence_penalty=-2.01), ValueError, "presence_penalty"),
    (dict(frequency_penalty=3), ValueError, "frequency_penalty"),
    (dict(frequency_penalty="0.1"), TypeError, "frequency_penalty"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(repetition_penalty=-1.0), ValueError, "repetition_penalty"),
    (dict(repetition_penalty=math.inf), ValueError, "repetition_penalty"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(temperature="0.7"), TypeError, "temperature"),
    (dict(temperature=math.nan), ValueError, "temperature"),
    (dict(temperature=math.inf), ValueError, "temperature"),
    (dict(temperature=False), TypeError, "temperature"),
    (dict(top_p=1.01), ValueError, "top_p"),
    (dict(top_p=-0.1), ValueError, "top_p"),
    (dict(top_p=math.nan), ValueError, "top_p"),
    (dict(top_k=-2), ValueError, "top_k"),
    (dict(top_k=2.0), TypeError, "top_k"),
    (dict(top_k=None), TypeError, "top_k"),
    (dict(min_p=1.5), ValueError, "min_p"),
    (dict(min_p=-0.5), ValueError, "min_p"),
    (dict(min_p=None), TypeError, "min_p"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=MAX_SEED + 1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(max_tokens=0), ValueError, "max_tokens"),
    (dict(max_tokens=10.0), TypeError, "max_tokens"),
    (dict(min_tokens=-1), ValueError, "min_tokens"),
    (dict(min_tokens=6, max_tokens=5), ValueError, "min_tokens"),
    (dict(reasoning_max_tokens=6, max_tokens=5), ValueError, "reasoning_max_tokens"),
    (dict(reasoning_max_tokens=0), ValueError, "reasoning_max_tokens"),
    (dict(logprobs=21), ValueError, "logprobs"),
    (dict(logprobs=-2), ValueError, "logprobs"),
    (dict(logprobs=1.0), TypeError, "logprobs"),
    (dict(stop=""), ValueError, "stop"),
    (dict(stop=["a", ""]), ValueError, "stop"),
    (dict(stop=["a", 1]), TypeError, "stop"),
    (dict(stop=5), TypeError, "stop"),
    (dict(stop_token_ids=[1, -1]), ValueError, "stop_token_ids"),
    (dict(stop_token_ids=[1, "2"]), TypeError, "stop_token_ids"),
    (dict(stop_token_ids=3), TypeError, "stop_token_ids"),
    (dict(bad_words="bad"), TypeError, "bad_words"),
    (dict(bad_words=[""]), ValueError, "bad_words"),
    (dict(bad_words_token_ids=[1.0]), TypeError, "bad_words_token_ids"),
    (dict(ignore_eos=1), TypeError, "ignore_eos"),
    (dict(include_stop_str_in_output="yes"), TypeError, "include_stop_str_in_output"),
]


@pytest.mark.parametrize("kwargs, error, field", INVALID, ids=lambda x: str(x) if isinstance(x, dict) else "")
def test_invalid_values_raise_naming_the_field(kwargs, error, field):
    with pytest.raises(error, match=field):
        SamplingParams(**kwargs)


def test_resolved_takes_generation_config_then_neutral_defaults():
    params = SamplingParams(temperature=0.3, seed=5, top_k=20)
    resolved = params.resolved({"temperature": 0.9, "top_p": 0.8, "repetition_penalty": 1.1, "top_k": 5})
    assert (resolved.temperature, resolved.top_p, resolved.repetition_penalty) == (0.3, 0.8, 1.1)
    assert (resolved.presence_penalty, resolved.frequency_penalty) == (0.0, 0.0)
    assert (resolved.seed, resolved.top_k) == (5, 20)
    assert params.top_p is None  # the original is left alone


def test_resolved_without_config_is_neutral():
    resolved = SamplingParams().resolved()
    assert (resolved.temperature, resolved.top_p, resolved.presence_penalty,
            resolved.frequency_penalty, resolved.repetition_penalty) == (1.0, 1.0, 0.0, 0.0, 1.0)


def test_resolved_rejects_bad_generation_config():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams().resolved({"top_p": 1.5})


def _optional(strategy):
    return st.none() | strategy


@st.composite
def valid_kwargs(draw):
    max_tokens = draw(_optional(st.integers(1, 10_000)))
    bound = max_tokens or 10_000
    kwargs = dict(
        n=st.integers(1, 8),
        presence_penalty=_optional(st.floats(-2, 2)),
        frequency_penalty=_optional(st.floats(-2, 2)),
        repetition_penalty=_optional(st.floats(1e-3, 10)),
        temperature=_optional(st.floats(0, 5) | st.integers(0, 5)),
        top_p=_optional(st.floats(0, 1)),
        top_k=st.integers(-1, 1000),
        min_p=st.floats(0, 1),
        seed=_optional(st.integers(0, MAX_SEED)),
        stop=_optional(st.text(min_size=1) | st.lists(st.text(min_size=1))),
        stop_token_ids=_optional(st.lists(st.integers(0, 2**31))),
        reasoning_max_tokens=_optional(st.integers(1, bound)),
        min_tokens=st.integers(0, bound),
        logprobs=_optional(st.integers(-1, 20)),
        bad_words=_optional(st.lists(st.text(min_size=1))),
        ignore_eos=st.booleans(),
    )
    chosen = draw(st.lists(st.sampled_from(sorted(kwargs)), unique=True))
    return {"max_tokens": max_tokens, **{name: draw(kwargs[name]) for name in chosen}}


@settings(max_examples=200, deadline=None)
@given(valid_kwargs())
def test_random_valid_kwargs_construct(kwargs):
    params = SamplingParams(**kwargs)
    assert dataclasses.replace(params) == params  # re-validating the stored values is a no-op


ANY_VALUE = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
             | st.lists(st.integers() | st.text() | st.floats()) | st.dictionaries(st.text(), st.integers()))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([f.name for f in dataclasses.fields(SamplingParams)]), ANY_VALUE)
def test_random_values_construct_or_raise_value_or_type_error(field, value):
    try:
        params = SamplingParams(**{field: value})
    except (ValueError, TypeError) as error:
        assert field in str(error)
    else:
        assert dataclasses.replace(params) == params
