"""Sampler tests against distributions computed by hand with plain Python math."""
import dataclasses
import math

import pytest
import torch

from fastdeploy.engine.request import Request
from fastdeploy.engine.sampling_params import SamplingParams
from fastdeploy.worker.sampler import Sampler, SamplingMetadata, hash_uniform

LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5, -0.5]
# Logits whose softmax is exactly these probabilities, for readable top-p/min-p cases.
PROBS = [0.4, 0.25, 0.15, 0.1, 0.06, 0.04]
LOG_PROBS = [math.log(p) for p in PROBS]
NUM_SAMPLES = 4000


def softmax(logits):
    top = max(logits)
    exps = [math.exp(x - top) if x != -math.inf else 0.0 for x in logits]
    return [e / sum(exps) for e in exps]


def renormalised(probs, kept):
    total = sum(probs[i] for i in kept)
    return [probs[i] / total if i in kept else 0.0 for i in range(len(probs))]


def build(params, logits_rows, prompt=(), output=(), ban=(), bad_words=()):
    """Metadata for rows that share prompt/output/ban/bad-words (params may be one or a list)."""
    rows = len(logits_rows)
    params = params if isinstance(params, list) else [params] * rows
    return SamplingMetadata.build(
        [p.resolved() for p in params], [list(prompt)] * rows, [list(output)] * rows,
        [list(ban)] * rows, [[list(w) for w in bad_words]] * rows, len(logits_rows[0]), "cpu")


@dataclasses.dataclass
class Case:
    name: str
    logits: list
    params: dict
    expected: list  # the hand-computed distribution
    prompt: tuple = ()
    output: tuple = ()
    ban: tuple = ()
    bad_words: tuple = ()


def _penalised(fn):
    return softmax([fn(i, x) for i, x in enumerate(LOGITS)])


CASES = [
    Case("neutral", LOGITS, {}, softmax(LOGITS)),
    Case("temperature", LOGITS, {"temperature": 0.5}, softmax([x / 0.5 for x in LOGITS])),
    Case("high_temperature", LOGITS, {"temperature": 3.0}, softmax([x / 3.0 for x in LOGITS])),
    # Three largest logits are ids 0 (2.0), 6 (1.5), 1 (1.0).
    Case("top_k", LOGITS, {"top_k": 3}, renormalised(softmax(LOGITS), {0, 6, 1})),
    Case("top_k_temperature", LOGITS, {"top_k": 2, "temperature": 2.0},
         renormalised(softmax([x / 2.0 for x in LOGITS]), {0, 6})),
    # Mass above each token: 0, .4, .65, .8 -> 0.7 keeps ids 0..2 (the third one crosses 0.7).
    Case("top_p", LOG_PROBS, {"top_p": 0.7}, renormalised(PROBS, {0, 1, 2})),
    Case("top_p_small", LOG_PROBS, {"top_p": 0.5}, renormalised(PROBS, {0, 1})),
    # top-p sees the top-k renormalised probs PROBS[:4] / 0.9: the mass above id 2 becomes .722,
    # so 0.7 keeps ids 0, 1 only (without top-k it keeps 0..2, as in "top_p").
    Case("top_k_then_top_p", LOG_PROBS, {"top_k": 4, "top_p": 0.7}, renormalised(PROBS, {0, 1})),
    # Threshold 0.3 * 0.4 = 0.12 keeps 0.4, 0.25, 0.15.
    Case("min_p", LOG_PROBS, {"min_p": 0.3}, renormalised(PROBS, {0, 1, 2})),
    # Temperature 2 makes the probabilities proportional to sqrt(PROBS): 0.45 keeps p >= 0.081.
    Case("min_p_with_temperature", LOG_PROBS, {"min_p": 0.45, "temperature": 2.0},
         renormalised(softmax([x / 2.0 for x in LOG_PROBS]), {0, 1, 2, 3})),
    # Ids 0 (prompt) and 4 (output) seen: 2.0 / 2 and -1.0 * 2.
    Case("repetition_penalty", LOGITS, {"repetition_penalty": 2.0},
         _penalised(lambda i, x: {0: 1.0, 4: -2.0}.get(i, x)), prompt=(0,), output=(4,)),
    Case("repetition_penalty_below_one", LOGITS, {"repetition_penalty": 0.5},
         _penalised(lambda i, x: {0: 4.0, 4: -0.5}.get(i, x)), prompt=(0,), output=(4,)),
    # Output [2, 2, 3]: id 2 seen twice, id 3 once; the prompt does not count.
    Case("frequency_penalty", LOGITS, {"frequency_penalty": 0.5},
         _penalised(lambda i, x: x - 0.5 * {2: 2, 3: 1}.get(i, 0)), prompt=(0,), output=(2, 2, 3)),
    Case("presence_penalty", LOGITS, {"presence_penalty": 0.7},
         _penalised(lambda i, x: x - (0.7 if i in (2, 3) else 0.0)), prompt=(0,), output=(2, 2, 3)),
    Case("negative_presence_penalty", LOGITS, {"presence_penalty": -1.5},
         _penalised(lambda i, x: x + (1.5 if i in (2, 3) else 0.0)), output=(2, 2, 3)),
    Case("all_penalties", LOGITS,
         {"repetition_penalty": 1.5, "frequency_penalty": 0.25, "presence_penalty": 0.5},
         _penalised(lambda i, x: {0: 2.0 / 1.5, 2: 0.5 / 1.5 - 0.5 - 0.5}.get(i, x)),
         prompt=(0,), output=(2, 2)),
    Case("min_tokens_bans_eos", LOGITS, {"min_tokens": 3},
         _penalised(lambda i, x: -math.inf if i in (0, 6) else x), output=(1,), ban=(0, 6)),
    Case("min_tokens_reached", LOGITS, {"min_tokens": 1}, softmax(LOGITS), output=(1,), ban=(0, 6)),
    Case("bad_word_single_token", LOGITS, {},
         _penalised(lambda i, x: -math.inf if i == 0 else x), bad_words=((0,),)),
    Case("bad_word_sequence_completes", LOGITS, {},
         _penalised(lambda i, x: -math.inf if i == 6 else x), output=(3, 1, 2), bad_words=((1, 2, 6),)),
    Case("bad_word_sequence_not_started", LOGITS, {}, softmax(LOGITS),
         output=(3, 2), bad_words=((1, 2, 6),)),
    Case("greedy_temperature_zero", LOGITS, {"temperature": 0.0}, [1.0] + [0.0] * 7),
    Case("greedy_top_k_one", LOGITS, {"top_k": 1}, [1.0] + [0.0] * 7),
    Case("greedy_top_p_zero", LOGITS, {"top_p": 0.0}, [1.0] + [0.0] * 7),
    Case("greedy_after_bad_word", LOGITS, {"temperature": 0.0}, [0.0] * 6 + [1.0, 0.0],
         bad_words=((0,),)),
]


BY_NAME = {case.name: case for case in CASES}


def case_meta(case, rows):
    params = [SamplingParams(seed=seed, **case.params) for seed in range(rows)]
    return build(params, [case.logits] * rows, case.prompt, case.output, case.ban, case.bad_words)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_processed_distribution_matches_hand_computation(case):
    meta = case_meta(case, rows=2)
    probs = Sampler().compute_probs(torch.tensor([case.logits] * 2), meta)
    for row in probs.tolist():
        assert row == pytest.approx(case.expected, abs=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_sample_frequencies_match_hand_computation(case):
    meta = case_meta(case, rows=NUM_SAMPLES)
    tokens = Sampler()(torch.tensor([case.logits] * NUM_SAMPLES), meta).token_ids
    counts = torch.bincount(tokens, minlength=len(case.logits)).tolist()
    for token, (count, p) in enumerate(zip(counts, case.expected)):
        if p == 0.0:
            assert count == 0, f"excluded token {token} sampled {count} times"
        else:
            stderr = math.sqrt(p * (1 - p) / NUM_SAMPLES)
            assert abs(count / NUM_SAMPLES - p) <= 4.5 * stderr + 1e-9, (token, count, p)


def test_rows_with_different_params_in_one_batch():
    """Each row follows its own params: compute_probs per row equals the single-case result."""
    cases = [BY_NAME[name] for name in ("temperature", "top_k", "repetition_penalty",
                                        "bad_word_sequence_completes", "greedy_temperature_zero")]
    logits = LOGITS
    params = [SamplingParams(seed=i, **c.params).resolved() for i, c in enumerate(cases)]
    meta = SamplingMetadata.build(
        params, [list(c.prompt) for c in cases], [list(c.output) for c in cases],
        [list(c.ban) for c in cases], [[list(w) for w in c.bad_words] for c in cases], len(logits), "cpu")
    probs = Sampler().compute_probs(torch.tensor([logits] * len(cases)), meta)
    for row, case in zip(probs.tolist(), cases):
        assert row == pytest.approx(case.expected, abs=1e-5)


def test_greedy_is_argmax_of_processed_logits():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    meta = build(SamplingParams(temperature=0.0), logits.tolist(), output=(3,),
                 bad_words=((7,),))
    tokens = Sampler()(logits, meta).token_ids
    assert torch.equal(tokens, logits.masked_fill(torch.arange(50) == 7, -math.inf).argmax(-1))


def test_argmax_only_metadata_takes_the_argmax():
    logits = torch.tensor([LOGITS, LOGITS[::-1]])
    meta = SamplingMetadata.argmax_only()
    assert meta.takes_argmax
    assert not build(SamplingParams(temperature=0.0, logprobs=1), logits.tolist()).takes_argmax
    assert Sampler()(logits, meta).token_ids.tolist() == logits.argmax(dim=-1).tolist()
    assert torch.equal(Sampler().compute_probs(logits, meta),
                       torch.nn.functional.one_hot(logits.argmax(dim=-1), len(LOGITS)).float())


@pytest.mark.parametrize("params, extra, expected", [
    (dict(temperature=0), {}, True),
    (dict(temperature=0.7, top_k=1), {}, True),
    (dict(temperature=0.7), {}, False),
    (dict(temperature=0, logprobs=0), {}, False),
    (dict(temperature=0, repetition_penalty=1.5), {}, False),
    (dict(temperature=0), dict(bad_words_token_ids=[[5]]), False),
    (dict(temperature=0, reasoning_max_tokens=4), dict(reasoning_end_ids=[7]), False),
])
def test_which_requests_take_the_argmax(params, extra, expected):
    """The model runner skips building sampling tensors for batches of these requests (once their min_tokens
    are out); anything that reads more than the raw argmax must keep them."""
    req = Request("0", None, [1, 2], SamplingParams(**params).resolved(), max_tokens=8, **extra)
    assert req.argmax_only is expected


def test_same_seed_repeats_exactly():
    logits = torch.zeros(256, 10)  # uniform: every draw is pure noise
    meta = build([SamplingParams(seed=s) for s in range(256)], logits.tolist())
    first, second = Sampler()(logits, meta).token_ids, Sampler()(logits, meta).token_ids
    assert torch.equal(first, second)
    assert len(set(first.tolist())) == 10  # and different seeds do differ


def test_same_seed_same_token_in_any_row_or_batch():
    seeds = list(range(1000, 1050))
    logits = [0.0] * 10

    def tokens(row_seeds, extra_params):
        params = [SamplingParams(seed=s, temperature=1.0) for s in row_seeds] + extra_params
        meta = build(params, [logits] * len(params))
        return dict(zip(row_seeds, Sampler()(torch.tensor([logits] * len(params)), meta).token_ids.tolist()))

    alone = tokens(seeds, [])
    others = [SamplingParams(seed=7, top_k=3), SamplingParams(temperature=0.0)]
    reversed_with_others = tokens(seeds[::-1], others)
    one_by_one = {s: tokens([s], [])[s] for s in seeds[:5]}
    assert alone == reversed_with_others
    assert one_by_one == {s: alone[s] for s in seeds[:5]}


def test_large_seeds_use_all_bits():
    """Seeds differing only above bit 32 must draw independently."""
    logits = torch.zeros(2000, 10)
    meta = build([SamplingParams(seed=(s << 32) + 5) for s in range(2000)], logits.tolist())
    counts = torch.bincount(Sampler()(logits, meta).token_ids, minlength=10)
    assert counts.min() > 150  # ~200 each if independent; all-equal tokens would give 2000 / 0


def test_steps_give_independent_draws_for_one_seed():
    logits = torch.tensor([LOG_PROBS] * NUM_SAMPLES)
    meta = build(SamplingParams(seed=42), logits.tolist())
    meta = dataclasses.replace(meta, steps=torch.arange(NUM_SAMPLES))
    counts = torch.bincount(Sampler()(logits, meta).token_ids, minlength=len(PROBS)).tolist()
    for count, p in zip(counts, PROBS):
        assert abs(count / NUM_SAMPLES - p) <= 4.5 * math.sqrt(p * (1 - p) / NUM_SAMPLES)


def test_hash_uniform_is_uniform_and_decorrelated():
    u = hash_uniform(torch.arange(500), torch.zeros(500, dtype=torch.int64), 64)
    assert 0.0 < u.min() and u.max() < 1.0
    histogram = torch.histc(u, bins=16, min=0.0, max=1.0)
    expected = u.numel() / 16
    chi_square = ((histogram - expected) ** 2 / expected).sum().item()
    assert chi_square < 50  # 15 degrees of freedom: p < 1e-5 beyond this
    adjacent_ids = torch.corrcoef(torch.stack([u[:, :-1].flatten(), u[:, 1:].flatten()]))[0, 1]
    adjacent_seeds = torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1]
    assert abs(adjacent_ids) < 0.02 and abs(adjacent_seeds) < 0.02


def test_logprobs_of_raw_logits():
    logits = [LOGITS, LOGITS[::-1], LOGITS]
    params = [SamplingParams(logprobs=3, temperature=0.5, seed=1, repetition_penalty=3.0),
              SamplingParams(seed=2), SamplingParams(logprobs=0, temperature=0.0)]
    meta = build(params, logits, prompt=(0, 1), bad_words=((6,),))
    out = Sampler()(torch.tensor(logits), meta)
    assert out.logprobs.top_token_ids.shape == (3, 3)  # the max requested; callers slice per row
    for row, raw in enumerate(logits):
        top = max(raw)
        expected = [x - top - math.log(sum(math.exp(y - top) for y in raw)) for x in raw]
        order = sorted(range(len(raw)), key=lambda i: -expected[i])[:3]
        token = out.token_ids[row].item()
        assert out.logprobs.top_token_ids[row].tolist() == order
        best = [expected[i] for i in order]
        assert out.logprobs.top_logprobs[row].tolist() == pytest.approx(best, abs=1e-5)
        assert out.logprobs.sampled_logprobs[row].item() == pytest.approx(expected[token], abs=1e-5)
        rank = sorted(expected, reverse=True).index(expected[token]) + 1
        assert out.logprobs.sampled_ranks[row].item() == rank
    assert out.token_ids[2].item() == 0  # greedy; bad word 6 banned, no penalty on this row


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_the_same_tokens_as_cpu():
    logits = torch.randn(512, 1000, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(seed=s * 7919, temperature=1.0, top_p=0.95, top_k=50 * (s % 3),
                             repetition_penalty=1.2, logprobs=5).resolved() for s in range(512)]

    def run(device):
        meta = SamplingMetadata.build(params, [[1, 2, 3]] * 512, [[4, 5]] * 512, [[0]] * 512,
                                      [[[9], [5, 6]]] * 512, 1000, device)
        return Sampler()(logits.to(device), meta), hash_uniform(meta.seeds, meta.steps, 1000)

    (cpu, cpu_noise), (gpu, gpu_noise) = run("cpu"), run("cuda")
    assert torch.equal(cpu_noise, gpu_noise.cpu())
    assert torch.equal(cpu.token_ids, gpu.token_ids.cpu())
    assert torch.equal(cpu.logprobs.top_token_ids, gpu.logprobs.top_token_ids.cpu())


@pytest.mark.parametrize("kwargs", [
    dict(bad_words_token_ids=[[[8]]]),  # id == vocab_size
    dict(ban_token_ids=[[-1]], output_token_ids=[[]]),  # banned: output below min_tokens
    dict(bad_words_token_ids=[[[]]]),
    dict(params=[SamplingParams()]),  # not resolved
    dict(prompt_token_ids=[[1], [2]]),  # two rows for one request
])
def test_build_rejects_bad_input(kwargs):
    args = dict(params=[SamplingParams().resolved()], prompt_token_ids=[[1]], output_token_ids=[[2]],
                ban_token_ids=[[0]], bad_words_token_ids=[[]], vocab_size=8, device="cpu")
    with pytest.raises(ValueError):
        SamplingMetadata.build(**{**args, **kwargs})


def test_forced_token_is_the_only_choice():
    """A forced row (the reasoning limit) takes its token, greedy or sampled, even at the lowest logit;
    the raw-logit logprobs are untouched and other rows sample freely."""
    logits = torch.tensor([[3.0, 1.0, -2.0, 0.5], [3.0, 1.0, -2.0, 0.5], [3.0, 1.0, -2.0, 0.5]])
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, seed=5, logprobs=1),
              SamplingParams(temperature=0)]
    meta = SamplingMetadata.build([p.resolved() for p in params], [[]] * 3, [[]] * 3, [[]] * 3, [[]] * 3, 4,
                                  "cpu", forced_token_ids=[2, 2, None])
    out = Sampler()(logits, meta)
    assert out.token_ids.tolist() == [2, 2, 0]
    assert out.logprobs.sampled_logprobs[1].item() == pytest.approx(torch.log_softmax(logits[1], -1)[2].item())
