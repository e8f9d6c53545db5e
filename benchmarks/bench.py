"""Speed of this engine beside `transformers.generate` and the hardware floor, per ../shared/bench.md.

    python benchmarks/bench.py --workloads cpu-real
    python benchmarks/bench.py --workloads gpu --quick      # every GPU workload, sized for one device call

Prints one JSON line per workload and a table last; appends the results to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import ast
import gc
import glob
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fastdeploy import LLM, SamplingParams  # noqa: E402

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                         max_position_embeddings=8192),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
                      max_position_embeddings=8192),
}


ENGINE_ARGS = {}       # extra engine arguments for every engine the workloads build (--engine-arg)


def make_llm(**kwargs) -> LLM:
    return LLM(**kwargs, **ENGINE_ARGS)


def dummy_llm(model_dir: str, **kwargs) -> LLM:
    """An engine on random bf16 weights for the config in `model_dir` (see `shape_dir`), no tokenizer."""
    return make_llm(model=model_dir, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", **kwargs)


def shape_dir(name: str) -> str:
    """A directory with only config.json: enough for load_format='dummy'."""
    d = os.path.join(tempfile.gettempdir(), f"fd-bench-{name}")
    os.makedirs(d, exist_ok=True)
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", rms_norm_eps=1e-5, torch_dtype="bfloat16",
               bos_token_id=1, eos_token_id=2, hidden_act="silu", **SHAPES[name])
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    return d


def param_bytes(name: str, dtype_bytes: int = 2) -> tuple[int, int]:
    """(all parameters, parameters read per decode step: all but the embedding table when untied)."""
    s = SHAPES[name]
    h, i, L, v = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    hd = h // s["num_attention_heads"]
    attn = h * hd * (s["num_attention_heads"] * 2 + s["num_key_value_heads"] * 2)
    layer = attn + 3 * h * i + 2 * h
    body = L * layer + h
    embed = v * h
    total = body + embed * (1 if s["tie_word_embeddings"] else 2)
    return total * dtype_bytes, (body + embed) * dtype_bytes


def measure_bandwidth() -> float:
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    _, secs = timed(lambda: [y.copy_(x) for _ in range(10)])
    return 2 * x.numel() * 10 / secs


def measure_matmul_rate() -> float:
    """bf16 FLOP/s of an 8192^3 matrix product (bench.md's prefill rate, about 790 TFLOP/s on the H100)."""
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    _, secs = timed(lambda: [a @ b for _ in range(10)])
    return 2 * 8192 ** 3 * 10 / secs


def throughput_floor_s(name: str, prompt_lens: list[int], out_len: int, max_num_seqs: int, ctx: dict,
                       gpus: int = 1) -> float:
    """The least time `gpus` GPUs allow for these requests (bench.md's floor): the prefill's FLOPs at the
    measured matrix rate, then decode steps in full batches of max_num_seqs, each reading the weights
    once and every running sequence's KV cache at the measured bandwidth (or their FLOPs, if that is
    longer). The two phases are not assumed to overlap."""
    s = SHAPES[name]
    h, layers, vocab = s["hidden_size"], s["num_hidden_layers"], s["vocab_size"]
    head_dim = h // s["num_attention_heads"]
    _, step_bytes = param_bytes(name)
    body = step_bytes // 2 - vocab * h                  # parameters a token passes through below the LM head
    # q.k and p.v over the causal half of each prompt: 2 * 2 * l^2 / 2 * h per layer
    prefill_flop = (2 * body * sum(prompt_lens) + 2 * vocab * h * len(prompt_lens)
                    + 2 * h * layers * sum(p * p for p in prompt_lens))
    kv_bytes_per_token = 2 * layers * s["num_key_value_heads"] * head_dim * 2
    context_tokens = sum(out_len * p + out_len * (out_len - 1) // 2 for p in prompt_lens)
    steps = -(-len(prompt_lens) // max_num_seqs) * out_len
    decode_bytes = steps * step_bytes + context_tokens * kv_bytes_per_token
    decode_flop = 2 * (body + vocab * h) * len(prompt_lens) * out_len + 4 * h * layers * context_tokens
    decode_s = max(decode_bytes / ctx["bandwidth"], decode_flop / ctx["matmul"])
    return (prefill_flop / ctx["matmul"] + decode_s) / gpus


def release():
    """Frees a deleted engine's memory before the next model loads (graphs and caches sit in cycles)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def step_us(graph, replays: int = 100, rounds: int = 5) -> float:
    """Least mean time of `replays` back-to-back replays over `rounds`."""
    best = float("inf")
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / replays * 1000)
    return best


def random_prompts(n, lens, vocab, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab - 10) for _ in range(rng.choice(lens) if isinstance(lens, list) else lens)]
            for _ in range(n)]


def run_engine(llm, prompts, max_tokens):
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    outs, secs = timed(lambda: llm.generate(prompts, params, use_tqdm=False))
    n_out = sum(len(o.outputs.token_ids) for o in outs)
    n_in = sum(len(p) for p in prompts)
    return dict(seconds=secs, output_tokens=n_out, output_tok_s=n_out / secs, total_tok_s=(n_in + n_out) / secs,
                req_s=len(prompts) / secs, outs=outs)


def hf_generate(model, batch, in_len, out_len, device):
    ids = torch.randint(10, model.config.vocab_size - 10, (batch, in_len), device=device)
    kw = dict(max_new_tokens=out_len, min_new_tokens=out_len, do_sample=False, pad_token_id=0)
    model.generate(ids[:, :8], max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
    _, secs = timed(lambda: model.generate(ids, **kw))
    return dict(batch=batch, output_tok_s=batch * out_len / secs, ms_per_token=secs / out_len * 1000)


def hf_model_from_shape(name):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(shape_dir(name))
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()


# ---- workloads ------------------------------------------------------------------------------------
def gpu_smol_throughput(q, ctx):
    n = 256 if q else 1024
    llm = dummy_llm(shape_dir("smollm2-135m"), max_num_seqs=256, max_model_len=512, max_num_batched_tokens=8192)
    run_engine(llm, random_prompts(8, 128, 49152), 8)                         # warm-up
    prompts = random_prompts(n, 128, 49152, seed=1)
    r = run_engine(llm, prompts, 128)
    floor_s = throughput_floor_s("smollm2-135m", [len(p) for p in prompts], 128, 256, ctx)
    del llm
    release()
    hf = hf_generate(hf_model_from_shape("smollm2-135m"), 256 if not q else 64, 128, 128 if not q else 32, "cuda")
    return dict(requests=n, output_tok_s=r["output_tok_s"], total_tok_s=r["total_tok_s"],
                floor_output_tok_s=r["output_tokens"] / floor_s, fraction_of_floor=floor_s / r["seconds"],
                transformers_output_tok_s=hf["output_tok_s"], transformers_batch=hf["batch"])


def batch1_decode(model_dir: str, quantization: str | None = None, replay: bool = False, **engine_args) -> dict:
    """Batch-1 decode of 256 tokens after a 128-token prompt: ms per output token (TTFT excluded).
    weights_gb: rank 0's (under tensor parallelism, its shard). replay: also the captured step's replay time
    (step_us) and the first greedy tokens, for A/Bs (tree_ab.py)."""
    llm = dummy_llm(model_dir, max_num_seqs=1, max_model_len=1024, quantization=quantization, **engine_args)
    run_engine(llm, random_prompts(1, 128, 1000), 256)           # warm-up of the same shape
    r = run_engine(llm, random_prompts(1, 128, 1000, seed=2), 256)
    m = r["outs"][0].metrics
    weights_gb = sum(t.numel() * t.element_size() for t in
                     [*llm.llm_engine.runner.model.parameters(), *llm.llm_engine.runner.model.buffers()]) / 1e9
    res = dict(ms_per_token=(r["seconds"] - m.first_token_time) / 255 * 1000, ttft_ms=m.first_token_time * 1000,
               weights_gb=weights_gb)
    if replay:
        res.update(step_replay_us=step_us(llm.llm_engine.runner.graphs.graphs[1][0]),
                   tokens=r["outs"][0].outputs.token_ids[:8])
    del llm
    release()
    return res


def gpu_latency(q, ctx):
    res = {}
    for name in ("smollm2-135m", "llama3-8b"):
        r = batch1_decode(shape_dir(name))
        _, per_step = param_bytes(name)
        floor_ms = per_step / ctx["bandwidth"] * 1000
        hf = hf_generate(hf_model_from_shape(name), 1, 128, 32 if q else 128, "cuda")
        release()
        res[name] = dict(ms_per_token=r["ms_per_token"], ttft_ms=r["ttft_ms"], floor_ms=floor_ms,
                         fraction_of_floor=floor_ms / r["ms_per_token"], transformers_ms_per_token=hf["ms_per_token"])
    return res


def gpu_quant(q, ctx):
    """Llama-3-8B shape at batch 1 with weight-only int8/int4 beside bf16. The floor counts the bytes a
    step reads: the linear weights at their stored width plus the bf16 embedding row and LM head."""
    s = SHAPES["llama3-8b"]
    _, bf16_step = param_bytes("llama3-8b")
    head = s["vocab_size"] * s["hidden_size"] * 2
    linear = bf16_step - head - s["hidden_size"] * 2 * (2 * s["num_hidden_layers"] + 1)
    res = {}
    for method, bits in ((None, 16), ("wint8", 8), ("wint4", 4)):
        r = batch1_decode(shape_dir("llama3-8b"), method)
        floor_ms = (linear * bits / 16 + head) / ctx["bandwidth"] * 1000
        res[method or "bf16"] = dict(**r, floor_ms=floor_ms, fraction_of_floor=floor_ms / r["ms_per_token"])
    res["wint4_speedup_over_bf16"] = res["bf16"]["ms_per_token"] / res["wint4"]["ms_per_token"]
    res["wint8_speedup_over_bf16"] = res["bf16"]["ms_per_token"] / res["wint8"]["ms_per_token"]
    return res


def throughput_8b(q, ctx, tensor_parallel_size: int = 1) -> dict:
    n = 200 if q else 1000
    llm = dummy_llm(shape_dir("llama3-8b"), max_num_seqs=256, max_model_len=1536, max_num_batched_tokens=8192,
                    tensor_parallel_size=tensor_parallel_size)
    run_engine(llm, random_prompts(4, 128, 128256), 4)
    prompts = random_prompts(n, list(range(256, 1025)), 128256, seed=0)
    r = run_engine(llm, prompts, 256)
    del llm
    release()
    floor_s = throughput_floor_s("llama3-8b", [len(p) for p in prompts], 256, 256, ctx, tensor_parallel_size)
    return dict(requests=n, output_tok_s=r["output_tok_s"], req_s=r["req_s"],
                floor_output_tok_s=r["output_tokens"] / floor_s, fraction_of_floor=floor_s / r["seconds"])


def gpu_8b_throughput(q, ctx):
    r = throughput_8b(q, ctx)
    hf = hf_generate(hf_model_from_shape("llama3-8b"), 64, 128, 32 if q else 128, "cuda")
    return dict(**r, transformers_output_tok_s=hf["output_tok_s"], transformers_batch=64)


def prefix_workload(model: str, n: int, prefix_len: int, unique_len: int, out_len: int, **engine_args) -> dict:
    """n prompts sharing a prefix of prefix_len tokens (+ unique_len unique), with caching on vs off."""
    rng = random.Random(3)
    prefix = [rng.randrange(10, 49000) for _ in range(prefix_len)]
    prompts = [prefix + [rng.randrange(10, 49000) for _ in range(unique_len)] for _ in range(n)]
    res = {}
    for caching in (True, False):
        llm = make_llm(model=model, enable_prefix_caching=caching, **engine_args)
        run_engine(llm, prompts[:4], 4)
        r = run_engine(llm, prompts, out_len)
        res["caching_on" if caching else "caching_off"] = dict(total_tok_s=r["total_tok_s"],
                                                               output_tok_s=r["output_tok_s"])
        del llm
        release()
    res["speedup"] = res["caching_on"]["total_tok_s"] / res["caching_off"]["total_tok_s"]
    return res


def gpu_prefix(q, ctx):
    return prefix_workload(shape_dir("smollm2-135m"), 256 if q else 1024, 1024, 64, 64, load_format="dummy",
                           skip_tokenizer_init=True, dtype="bfloat16", max_num_seqs=256, max_model_len=2048,
                           max_num_batched_tokens=8192)


def cpu_prefix(q, ctx):
    """gpu-prefix scaled to 2 cores: the real SmolLM2, 32 prompts sharing a 512-token prefix."""
    from fastdeploy.utils.model_resolver import resolve_model
    return prefix_workload(resolve_model(None), 32, 512, 32, 16, max_num_seqs=32, max_model_len=1024)


def cpu_real(q, ctx):
    from transformers import AutoModelForCausalLM
    from fastdeploy.utils.model_resolver import resolve_model
    gguf = resolve_model(None)
    topics = ["the sea", "a mountain", "coffee", "rain", "a city at night", "autumn", "a library", "the moon"]
    convs = [[{"role": "user", "content": f"Write a short poem about {topics[i % 8]} (variation {i})."}]
             for i in range(32)]
    out_len = 32 if q else 128
    params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
    res = {}
    # float32: exact against transformers (the GGUF dequantized at load); bfloat16, the default for quantized
    # weights where the CPU has bf16 instructions: the weights stay 4-bit, a quarter of the bytes each step
    # reads from RAM, which bounds decoding here
    for dtype in ("float32", "bfloat16"):
        llm = make_llm(model=gguf, max_num_seqs=32, max_model_len=1024, enable_prefix_caching=False, dtype=dtype)
        llm.chat(convs[:1], SamplingParams(max_tokens=4), use_tqdm=False)
        outs, secs = timed(lambda: llm.chat(convs, params, use_tqdm=False))
        outs1, secs1 = timed(lambda: llm.chat(convs[:1], params, use_tqdm=False))
        ms_tok = (secs1 - outs1[0].metrics.first_token_time) / (out_len - 1) * 1000
        res[f"engine_{dtype}"] = dict(batch32_tok_s=sum(len(o.outputs.token_ids) for o in outs) / secs,
                                      batch1_ms_per_token=ms_tok, batch1_tok_s=1000 / ms_tok)
        prompt_ids = outs1[0].prompt_token_ids
        del llm
        release()
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                              dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    kw = dict(max_new_tokens=out_len, min_new_tokens=out_len, do_sample=False, pad_token_id=0)
    _, hsecs1 = timed(lambda: hf.generate(ids, **kw))
    batch16 = ids.repeat(16, 1)
    _, hsecs16 = timed(lambda: hf.generate(batch16, **kw))
    return dict(**res, transformers_float32=dict(batch1_tok_s=out_len / hsecs1,
                                                 batch16_tok_s=16 * out_len / hsecs16), output_tokens=out_len)


def moe_shape():
    """The ERNIE 4.5 21B-A3B shape's directory, its bytes, and the bytes one decode step reads: every weight
    but the experts no token picked (top-6 of 64; the embedding table is read whole by the tied LM head)."""
    from transformers import Ernie4_5_MoeConfig
    from fastdeploy.model_executor.layers.moe import FusedMoE
    from fastdeploy.model_executor.loader import get_model
    d = os.path.join(tempfile.gettempdir(), "fd-bench-ernie45-21b-a3b")
    config = Ernie4_5_MoeConfig(architectures=["Ernie4_5_MoeForCausalLM"], dtype="bfloat16")  # defaults: 21B-A3B
    config.save_pretrained(d)
    meta = get_model("", config, torch.bfloat16, torch.device("meta"), load_format="dummy")
    total_bytes = sum(p.numel() * p.element_size() for p in meta.parameters())
    moe_layers = sum(isinstance(layer.mlp, FusedMoE) for layer in meta.model.layers)
    expert_bytes = 3 * config.hidden_size * config.moe_intermediate_size * 2
    return d, total_bytes, total_bytes - moe_layers * (config.moe_num_experts - config.moe_k) * expert_bytes


def moe_engine(q, model_dir: str, **engine_args) -> dict:
    """Throughput at 512 requests of 512 in / 256 out, and batch-1 ms per token."""
    n, out_len = (256, 128) if q else (512, 256)
    llm = dummy_llm(model_dir, max_num_seqs=256, max_model_len=1024, max_num_batched_tokens=8192, **engine_args)
    run_engine(llm, random_prompts(4, 128, 103424), 4)
    r = run_engine(llm, random_prompts(n, 512, 103424, seed=1), out_len)
    del llm
    release()
    llm = dummy_llm(model_dir, max_num_seqs=1, max_model_len=1024, **engine_args)
    run_engine(llm, random_prompts(1, 128, 1000), 8)
    steps = 64 if q else 256
    r1 = run_engine(llm, random_prompts(1, 128, 1000, seed=2), steps)
    del llm
    release()
    return dict(requests=n, output_len=out_len, output_tok_s=r["output_tok_s"], total_tok_s=r["total_tok_s"],
                batch1_ms_per_token=(r1["seconds"] - r1["outs"][0].metrics.first_token_time) / (steps - 1) * 1000)


def gpu_moe(q, ctx):
    """ERNIE 4.5 21B-A3B shape (dummy weights), batch-1 decode beside the floor of reading the ~3B
    parameters one token touches."""
    d, total_bytes, active_bytes = moe_shape()
    r = moe_engine(q, d)
    floor_ms = active_bytes / ctx["bandwidth"] * 1000
    return dict(**r, weights_gb=total_bytes / 1e9, active_gb=active_bytes / 1e9, batch1_floor_ms=floor_ms,
                fraction_of_floor=floor_ms / r["batch1_ms_per_token"])


def gpu_tp(q, ctx):
    """The Llama-3-8B and ERNIE-4.5-21B-A3B shapes at tensor_parallel_size 1 and 2 (issue 9): batch-1
    decode, beside the floor of each GPU reading its share of the weights, and throughput."""
    if torch.cuda.device_count() < 2:
        raise RuntimeError("gpu-tp needs two GPUs")
    _, llama_step = param_bytes("llama3-8b")
    moe_dir, _, moe_active = moe_shape()
    res = {}
    for tp in (1, 2):
        r = batch1_decode(shape_dir("llama3-8b"), tensor_parallel_size=tp)
        floor_ms = llama_step / tp / ctx["bandwidth"] * 1000
        moe = moe_engine(q, moe_dir, tensor_parallel_size=tp)
        moe_floor_ms = moe_active / tp / ctx["bandwidth"] * 1000
        res[f"tp{tp}"] = {"llama3-8b": dict(batch1_ms_per_token=r["ms_per_token"], ttft_ms=r["ttft_ms"],
                                            floor_ms=floor_ms, fraction_of_floor=floor_ms / r["ms_per_token"],
                                            weights_gb_per_rank=r["weights_gb"], **throughput_8b(q, ctx, tp)),
                          "ernie45-21b-a3b": dict(**moe, batch1_floor_ms=moe_floor_ms,
                                                  fraction_of_floor=moe_floor_ms / moe["batch1_ms_per_token"])}
        print(json.dumps(res[f"tp{tp}"]), flush=True)
    return res


WORKLOADS = {"gpu-smol-throughput": gpu_smol_throughput, "gpu-latency": gpu_latency,
             "gpu-8b-throughput": gpu_8b_throughput, "gpu-prefix": gpu_prefix, "cpu-real": cpu_real,
             "gpu-moe": gpu_moe, "gpu-quant": gpu_quant,
             "gpu-tp": gpu_tp, "cpu-prefix": cpu_prefix}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    """HEAD, plus '+modified' where the engine's files differ from it (a copied tree, e.g. the device's, can
    carry older git metadata than its files: source_sha names the code either way)."""
    def git(*cmd):
        return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=REPO).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("+modified" if git("status", "--porcelain", "fastdeploy") else "")


def source_sha() -> str:
    """SHA-1 over the engine's Python files (paths and contents), to match a result to the code that ran."""
    digest = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(REPO, "fastdeploy", "**", "*.py"), recursive=True)):
        digest.update(os.path.relpath(path, REPO).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:12]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="cpu-real", help="comma list, or 'gpu' for all GPU workloads")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="extra engine argument for every engine (a Python literal), e.g. async_scheduling=False")
    args = ap.parse_args()
    for kv in args.engine_arg:
        key, value = kv.split("=", 1)
        ENGINE_ARGS[key] = ast.literal_eval(value)
    # 'gpu': every workload of one GPU (gpu-tp needs two)
    names = [w for w in WORKLOADS if w.startswith("gpu") and w != "gpu-tp"] if args.workloads == "gpu" \
        else args.workloads.split(",")
    ctx = {}
    env = dict(torch=torch.__version__, host=platform.node(), quick=args.quick, engine_args=ENGINE_ARGS,
               commit=git_commit(), source_sha=source_sha())
    if torch.cuda.is_available():
        ctx["bandwidth"], ctx["matmul"] = measure_bandwidth(), measure_matmul_rate()
        env.update(gpu=torch.cuda.get_device_name(), bandwidth_tb_s=ctx["bandwidth"] / 1e12,
                   matmul_tflop_s=ctx["matmul"] / 1e12)
    results = []
    for name in names:
        res = dict(workload=name, **env, **WORKLOADS[name](args.quick, ctx))
        print(json.dumps(res), flush=True)
        results.append(res)
    os.makedirs(args.out, exist_ok=True)
    tag = "gpu" if torch.cuda.is_available() else "cpu"
    with open(os.path.join(args.out, f"{tag}-{time.strftime('%Y%m%d-%H%M%S')}.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("\n| workload | result |\n| --- | --- |")
    for r in results:
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                 if k not in env and k != "workload"}
        print(f"| {r['workload']} | {json.dumps(shown)} |")


if __name__ == "__main__":
    main()
