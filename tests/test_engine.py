"""The whole engine against `transformers` on tiny random models: greedy tokens and their logprobs,
batched prompts of different lengths, with chunked prefill and with a KV cache small enough to preempt."""
import gc
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from fastdeploy import LLM, SamplingParams
from tiny_models import ARCHS, make_tiny_model

NUM_TOKENS = 32
PROMPT_LENS = (5, 23, 40)


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory):
    arch = request.param
    path = make_tiny_model(arch, tmp_path_factory.mktemp(arch))
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in PROMPT_LENS]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    expected = []
    for p in prompts:
        with torch.no_grad():
            out = hf.generate(torch.tensor([p]), max_new_tokens=NUM_TOKENS, min_new_tokens=NUM_TOKENS,
                              do_sample=False, output_logits=True, return_dict_in_generate=True,
                              pad_token_id=0)
        tokens = out.sequences[0, len(p):].tolist()
        logprobs = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.logits, tokens)]
        expected.append((tokens, logprobs))
    return path, prompts, expected


def run(path, prompts, **engine_args):
    llm = LLM(model=str(path), skip_tokenizer_init=True, device="cpu", block_size=16, max_model_len=128,
              **engine_args)
    params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=1)
    return llm, llm.generate(prompts, params, use_tqdm=False)


def check(outs, expected):
    for out, (tokens, logprobs) in zip(outs, expected):
        assert out.outputs.token_ids == tokens
        got = [lp[t] for lp, t in zip(out.outputs.logprobs, tokens)]
        assert max(abs(a - b) for a, b in zip(got, logprobs)) < 1e-4
        assert out.finished and out.outputs.finish_reason == "length" and out.error_code == 200


@pytest.mark.parametrize("engine_args", [
    dict(max_num_seqs=8),                                        # all prompts in one batch
    dict(max_num_seqs=8, max_num_batched_tokens=8),              # prompts prefilled in chunks of <= 8
    dict(max_num_seqs=1),                                        # one at a time
], ids=["batched", "chunked", "serial"])
def test_greedy_matches_transformers(tiny, engine_args):
    path, prompts, expected = tiny
    _, outs = run(path, prompts, **engine_args)
    check(outs, expected)


def test_preemption_keeps_results_exact(tiny):
    path, prompts, expected = tiny
    # 6 blocks of 16 tokens: the two longer requests (3 and 5 blocks at the end) cannot both fit
    llm, outs = run(path, prompts, max_num_seqs=8, num_gpu_blocks_override=6, enable_prefix_caching=False)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    check(outs, expected)


def test_start_up_warm_up_leaves_results_exact(tiny):
    """On a GPU the runner runs warm-up steps at start (`_compile_kernels`: prefill and mixed steps of fresh
    sequences, then random sampling), whose K/V land in blocks no request holds yet. Run here on the CPU
    before the requests: their results stay exact, with prefix caching on."""
    path, prompts, expected = tiny
    llm = LLM(model=str(path), skip_tokenizer_init=True, device="cpu", block_size=16, max_model_len=128,
              max_num_seqs=8, enable_prefix_caching=True)
    llm.llm_engine.runner._compile_kernels()
    params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=1)
    check(llm.generate(prompts, params, use_tqdm=False), expected)


def test_positions_past_max_position_embeddings(tmp_path):
    """max_model_len over the config's max_position_embeddings (256) is allowed, with a warning: decoding
    past position 256 gives transformers' tokens (which computes the rotary angles of any position)."""
    path = make_tiny_model("llama", tmp_path / "llama")
    prompt = [random.Random(1).randrange(3, 500) for _ in range(250)]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                           pad_token_id=0)[0, len(prompt):].tolist()
    llm = LLM(model=str(path), skip_tokenizer_init=True, device="cpu", block_size=16, max_model_len=320)
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    assert out[0].outputs.token_ids == want


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="programmatic dependent launch needs an sm_90+ GPU")
def test_dependent_launch_changes_no_result(tiny, monkeypatch):
    """Kernels launched with PDL overlap the one before them until its results are ready: a missing wait would
    read stale inputs, so a batch's greedy tokens and logprobs must be bit-identical with PDL off and on."""
    from fastdeploy.model_executor.ops import triton_pdl
    path, prompts, _ = tiny
    params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=1)
    results = []
    for enabled in (False, True):
        monkeypatch.setattr(triton_pdl, "ENABLED", enabled)
        # a fixed cache: the first engine's memory would otherwise count against the second's profile
        llm = LLM(model=str(path), skip_tokenizer_init=True, device="cuda", dtype="bfloat16", block_size=16,
                  max_model_len=128, max_num_seqs=8, max_num_batched_tokens=32, num_gpu_blocks_override=64)
        outs = llm.generate(prompts, params, use_tqdm=False)
        results.append([(o.outputs.token_ids, o.outputs.logprobs) for o in outs])
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    assert results[0] == results[1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_matches_cpu_oracle(tiny, dtype):
    """Triton kernels and CUDA graphs against the same transformers oracle: fp32 exactly, bf16 on logprobs."""
    path, prompts, expected = tiny
    llm = LLM(model=str(path), skip_tokenizer_init=True, device="cuda", dtype=dtype, block_size=16,
              max_model_len=128, max_num_seqs=8, max_num_batched_tokens=16)
    params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=1)
    outs = llm.generate(prompts, params, use_tqdm=False)
    if dtype == "float32":
        check(outs, expected)
        return
    for out, (tokens, logprobs) in zip(outs, expected):
        # bf16 may flip a near-tie later on; up to the first difference the logprobs must agree closely
        got = out.outputs.token_ids
        same = next((i for i, (a, b) in enumerate(zip(got, tokens)) if a != b), len(tokens))
        assert same >= 4
        lp = [out.outputs.logprobs[i][tokens[i]] for i in range(same)]
        assert max(abs(a - b) for a, b in zip(lp, logprobs[:same])) < 0.1


def test_sampling_takes_a_decode_graphs_argmax_only_for_plain_greedy_batches(tmp_path):
    """A decode graph hands its argmax to the runner's sampling step: a batch that takes the argmax as it is uses
    those ids and runs no sampler; one that asks for more (here logprobs) samples from the logits."""
    from fastdeploy.engine.request import Request
    from fastdeploy.worker.model_runner import LaunchedStep
    llm = LLM(model=str(make_tiny_model("llama", tmp_path / "llama")), skip_tokenizer_init=True, device="cpu",
              block_size=16, max_model_len=128)
    runner = llm.llm_engine.runner
    logits = torch.randn(2, runner.vocab_size, generator=torch.Generator().manual_seed(0))
    graph_ids = logits.argmin(-1)           # not the argmax: shows which ids a step took
    for params, want in ((SamplingParams(temperature=0), graph_ids), (SamplingParams(temperature=0, logprobs=1),
                                                                      logits.argmax(-1))):
        step = LaunchedStep([Request(str(i), None, [1, 2], params.resolved(), max_tokens=8) for i in range(2)])
        runner._sample(step, logits, graph_ids)
        assert runner.collect(step).token_ids == want.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_graphs_match_eager(tiny):
    """Decode graphs (inputs packed into their buffer, in-flight tokens gathered inside the graph, padding rows,
    the argmax inside the graph) against the same engine run eagerly: fp32, greedy and seeded random rows in one
    batch, then a greedy batch; requests of different lengths, so the batch shrinks through padded graph sizes."""
    path, prompts, _ = tiny
    prompts = prompts + [p[:7] for p in prompts]
    params = [SamplingParams(temperature=0, max_tokens=NUM_TOKENS - 5 * i, ignore_eos=True, logprobs=1)
              if i % 2 else SamplingParams(temperature=0.9, top_p=0.8, seed=i, max_tokens=NUM_TOKENS - 3 * i,
                                           ignore_eos=True) for i in range(len(prompts))]
    # and a batch that takes the graph's own argmax (greedy, nothing else asked)
    greedy = [SamplingParams(temperature=0, max_tokens=NUM_TOKENS - 3 * i, ignore_eos=True)
              for i in range(len(prompts))]
    results = []
    for eager in (True, False):
        llm = LLM(model=str(path), skip_tokenizer_init=True, device="cuda", dtype="float32", block_size=16,
                  max_model_len=128, max_num_seqs=8, enforce_eager=eager, num_gpu_blocks_override=64)
        assert (llm.llm_engine.runner.graphs is None) == eager
        results.append(llm.generate(prompts, params, use_tqdm=False) + llm.generate(prompts, greedy, use_tqdm=False))
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    for want, got in zip(*results):
        assert got.outputs.token_ids == want.outputs.token_ids
        if want.outputs.logprobs is not None:
            a = [lp[t] for lp, t in zip(want.outputs.logprobs, want.outputs.token_ids)]
            b = [lp[t] for lp, t in zip(got.outputs.logprobs, got.outputs.token_ids)]
            assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4
