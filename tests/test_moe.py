"""ERNIE 4.5 MoE: routing, the fused MoE (CPU path and Triton kernel) against the plain reference, and the
model against transformers (logits, greedy tokens through the engine, the Paddle layout, the 21B-A3B shape).

Without a GPU the Triton kernel runs under Triton's interpreter (fp32, tiny sizes); on a CUDA machine it
runs compiled on cuda tensors at larger sizes, in bf16 too, and once inside a CUDA graph.
"""
import os

import torch

# Without a GPU, run the kernels in Triton's interpreter; this must precede the first triton import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import pytest  # noqa: E402
from transformers import AutoModelForCausalLM, Ernie4_5_MoeConfig  # noqa: E402
from transformers.models.ernie4_5_moe import modeling_ernie4_5_moe as hf_moe  # noqa: E402

from fastdeploy import LLM, SamplingParams  # noqa: E402
from fastdeploy.model_executor.loader import get_model, load_config  # noqa: E402
from fastdeploy.model_executor.layers.moe import FusedMoE  # noqa: E402
from fastdeploy.model_executor.ops.fused_moe import (align_by_expert, fused_moe_grouped,  # noqa: E402
                                                     fused_moe_ref, select_experts)
from test_models import assert_logits_match  # noqa: E402
from tiny_models import convert_moe_to_paddle, make_tiny_moe_model, tiny_moe_config  # noqa: E402

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = "cuda" if CUDA else "cpu"
# (tokens, experts, top_k, hidden, intermediate): one token, tokens < experts, tokens > experts
MOE_CASES = [(1, 8, 2, 64, 32), (5, 4, 4, 32, 48), (37, 8, 2, 64, 32), (100, 16, 6, 64, 32)]
if CUDA:
    MOE_CASES += [(1, 64, 6, 2560, 1536), (7, 64, 6, 512, 384), (300, 64, 6, 512, 384), (2048, 64, 8, 256, 128)]


def _moe_inputs(T, E, K, H, I, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=gen)
    w13 = torch.randn(E, 2 * I, H, generator=gen) * H ** -0.5
    w2 = torch.randn(E, H, I, generator=gen) * I ** -0.5
    weights, ids = select_experts(torch.randn(T, E, generator=gen), torch.randn(1, E, generator=gen) * 0.1, K)
    return [t.to(device) for t in (x.to(dtype), w13.to(dtype), w2.to(dtype), weights, ids)]


# ---------------------------------------------------------------------------------------------------- ops

def test_routing_matches_transformers():
    cfg = tiny_moe_config()
    router = hf_moe.Ernie4_5_MoeTopKRouter(cfg)
    torch.nn.init.normal_(router.weight)
    torch.nn.init.normal_(router.moe_statics.e_score_correction_bias, std=0.1)
    x = torch.randn(50, cfg.hidden_size)
    _, want_w, want_ids = router(x)
    w, ids = select_experts(x @ router.weight.T, router.moe_statics.e_score_correction_bias, cfg.moe_k)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(w, want_w)
    # the bias changes the choice but never enters the weights
    assert not torch.equal(ids, select_experts(x @ router.weight.T, None, cfg.moe_k)[1])


@pytest.mark.parametrize("T,E,K,H,I", MOE_CASES[:4])
def test_align_by_expert(T, E, K, H, I):
    *_, ids = _moe_inputs(T, E, K, H, I)
    for block_m in (1, 4, 16):
        b = align_by_expert(ids, E, block_m)
        n = ids.numel()
        used = b.sorted_ids[:int(b.num_padded)]
        real = used[used < n].long()
        assert sorted(real.tolist()) == list(range(n))                      # every assignment exactly once
        assert (b.sorted_ids[int(b.num_padded):] == n).all()
        block_of_row = b.block_expert[:int(b.num_padded) // block_m].repeat_interleave(block_m)
        assert torch.equal(block_of_row[used < n].long(), ids.flatten()[real])  # rows sit in their expert's blocks


@pytest.mark.parametrize("T,E,K,H,I", MOE_CASES[:4])
def test_cpu_path_matches_reference(T, E, K, H, I):
    x, w13, w2, weights, ids = _moe_inputs(T, E, K, H, I)
    torch.testing.assert_close(fused_moe_grouped(x, w13, w2, weights, ids), fused_moe_ref(x, w13, w2, weights, ids),
                               atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if CUDA else [torch.float32])
@pytest.mark.parametrize("T,E,K,H,I", MOE_CASES)
def test_triton_matches_reference(T, E, K, H, I, dtype):
    tfm = pytest.importorskip("fastdeploy.model_executor.ops.triton_fused_moe")
    x, w13, w2, weights, ids = _moe_inputs(T, E, K, H, I, dtype, DEVICE)
    got = tfm.fused_moe(x, w13, w2, weights, ids)
    want = fused_moe_ref(x.float(), w13.float(), w2.float(), weights, ids)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_triton_replays_in_cuda_graph():
    """No host sync inside: the layer captures, and a replay with new routing gives the new result."""
    tfm = pytest.importorskip("fastdeploy.model_executor.ops.triton_fused_moe")
    x, w13, w2, weights, ids = _moe_inputs(8, 64, 6, 512, 384, torch.bfloat16, DEVICE)
    tfm.fused_moe(x, w13, w2, weights, ids)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = tfm.fused_moe(x, w13, w2, weights, ids)
    x2, _, _, weights2, ids2 = _moe_inputs(8, 64, 6, 512, 384, torch.bfloat16, DEVICE, seed=1)
    for dst, src in ((x, x2), (weights, weights2), (ids, ids2)):
        dst.copy_(src)
    graph.replay()
    torch.testing.assert_close(out.float(), fused_moe_ref(x.float(), w13.float(), w2.float(), weights, ids),
                               atol=2e-2, rtol=2e-2)


# -------------------------------------------------------------------------------------------------- model

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    hf = make_tiny_moe_model(root / "hf")
    # MoE on every other layer up to layer 3 (layers 1 and 3 of 6), no shared experts, top-3, bias everywhere
    sparse = make_tiny_moe_model(root / "sparse", num_hidden_layers=6, moe_layer_start_index=1,
                                 moe_layer_interval=2, moe_layer_end_index=3, moe_num_shared_experts=0,
                                 use_bias=True, moe_k=3)
    return {"hf": (hf, hf), "paddle": (convert_moe_to_paddle(hf, root / "paddle"), hf), "sparse": (sparse, sparse)}


@pytest.mark.parametrize("case", ["hf", "paddle", "sparse"])
def test_logits_match_transformers(case, checkpoints):
    path, hf_dir = checkpoints[case]
    config = load_config(str(path))
    model = get_model(str(path), config, torch.float32, torch.device("cpu"))
    assert sum(isinstance(layer.mlp, FusedMoE) for layer in model.model.layers) == \
        {"hf": 3, "paddle": 3, "sparse": 2}[case]
    assert_logits_match(model, config, hf_dir)


NUM_TOKENS = 32


@pytest.fixture(scope="module")
def greedy_reference(checkpoints):
    path = checkpoints["hf"][0]
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 500) for _ in range(n)] for n in (5, 23, 40)]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    expected = []
    for p in prompts:
        with torch.no_grad():
            out = hf.generate(torch.tensor([p]), max_new_tokens=NUM_TOKENS, min_new_tokens=NUM_TOKENS,
                              do_sample=False, pad_token_id=0)
        expected.append(out[0, len(p):].tolist())
    return path, prompts, expected


@pytest.mark.parametrize("engine_args", [dict(max_num_seqs=8), dict(max_num_seqs=8, max_num_batched_tokens=8)],
                         ids=["batched", "chunked"])
def test_engine_greedy_matches_transformers(greedy_reference, engine_args):
    path, prompts, expected = greedy_reference
    llm = LLM(model=str(path), skip_tokenizer_init=True, device="cpu", block_size=16, max_model_len=128,
              **engine_args)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True),
                        use_tqdm=False)
    assert [o.outputs.token_ids for o in outs] == expected


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_engine_on_gpu_matches_transformers(greedy_reference):
    """fp32 on the GPU (Triton fused MoE, CUDA graphs for decode) gives transformers' tokens exactly."""
    path, prompts, expected = greedy_reference
    llm = LLM(model=str(path), skip_tokenizer_init=True, device="cuda", dtype="float32", block_size=16,
              max_model_len=128, max_num_seqs=8, max_num_batched_tokens=16)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True),
                        use_tqdm=False)
    assert [o.outputs.token_ids for o in outs] == expected


# 21B-A3B: transformers' defaults are this shape
ERNIE_21B = dict(architectures=["Ernie4_5_MoeForCausalLM"])
ERNIE_300B = dict(architectures=["Ernie4_5_MoeForCausalLM"], hidden_size=8192, intermediate_size=28672,
                  num_hidden_layers=54, num_attention_heads=64, num_key_value_heads=8, moe_num_experts=64,
                  moe_k=8, moe_intermediate_size=3584, moe_num_shared_experts=0, moe_layer_start_index=3,
                  moe_layer_end_index=53, tie_word_embeddings=False)


@pytest.mark.parametrize("shape,params", [(ERNIE_21B, 21_825_437_888), (ERNIE_300B, 299_484_163_264)],
                         ids=["21B-A3B", "300B-A47B"])
def test_dummy_shape_on_meta(shape, params):
    """The real shapes build on the meta device with transformers' parameter count and layer pattern."""
    config = Ernie4_5_MoeConfig(**shape)
    model = get_model("", config, torch.bfloat16, torch.device("meta"), load_format="dummy")
    assert all(p.is_meta for p in model.parameters())
    with torch.device("meta"):
        ref = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == params
    assert [isinstance(m.mlp, FusedMoE) for m in model.model.layers] == \
        [isinstance(m.mlp, hf_moe.Ernie4_5_MoeSparseMoeBlock) for m in ref.model.layers]
    moe = next(m.mlp for m in model.model.layers if isinstance(m.mlp, FusedMoE))
    assert moe.gate.weight.dtype == torch.float32            # the router stays fp32 in a bf16 model
    assert moe.experts.gate_up_proj.shape == (config.moe_num_experts, 2 * config.moe_intermediate_size,
                                              config.hidden_size)
