"""Model classes and loaders against transformers, on tiny random checkpoints (CPU, fp32).

Each case loads a checkpoint with `get_model`, runs three engine-style steps over a paged KV cache
with scattered blocks (a flat prefill of three prompts, a one-token decode of each, then a mixed
step where one sequence appends a 3-token chunk while the others decode) and compares every
logit row with transformers' model on the whole sequence.
"""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig

from fastdeploy.model_executor.layers.attention import Attention, AttentionMetadata
from fastdeploy.model_executor.loader import get_model, load_config
from fastdeploy.model_executor.models.registry import get_model_class
from tiny_models import ARCHS, convert_to_gguf, convert_to_paddle, make_tiny_model

BLOCK_SIZE = 4
NUM_BLOCKS = 32
PROMPT_LENS = [5, 11, 3]
STEP_LENS = [[1, 1, 1], [3, 1, 1]]      # new tokens per sequence in the steps after the prefill


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """case -> (path given to the loader, HF directory of the reference model)."""
    root = tmp_path_factory.mktemp("ckpt")
    cases = {arch: (make_tiny_model(arch, root / arch),) * 2 for arch in ARCHS}
    ernie = cases["ernie4_5"][0]
    cases["ernie4_5-paddle"] = (convert_to_paddle(ernie, root / "paddle"), ernie)
    ernie_mha = make_tiny_model("ernie4_5", root / "ernie_mha", num_key_value_heads=4, tie_word_embeddings=False)
    cases["ernie4_5-paddle-mha"] = (convert_to_paddle(ernie_mha, root / "paddle_mha"), ernie_mha)
    # GGUF carries no llama3 rope scaling, so this reference uses the default rope
    plain = make_tiny_model("llama", root / "llama_plain", rope_parameters={"rope_type": "default", "rope_theta": 1e4})
    cases["llama-gguf"] = (convert_to_gguf(plain, root / "llama.gguf"), plain)
    return cases


def _bind_kv_cache(model):
    for m in model.modules():
        if isinstance(m, Attention):
            m.k_cache = torch.zeros(NUM_BLOCKS, BLOCK_SIZE, m.num_kv_heads, m.head_dim)
            m.v_cache = torch.zeros_like(m.k_cache)


def _metadata(query_lens, seq_lens, block_tables) -> AttentionMetadata:
    slots = []
    for q, n, table in zip(query_lens, seq_lens, block_tables):
        slots += [table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(n - q, n)]
    width = max(len(t) for t in block_tables)
    return AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        query_start_loc=torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in block_tables], dtype=torch.int32),
        max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        query_lens_cpu=list(query_lens), seq_lens_cpu=list(seq_lens))


def _run_steps(model, sequences):
    """Feed `sequences` step by step (prefill, then STEP_LENS); returns the logits of every token."""
    gen = torch.Generator().manual_seed(1)
    free = torch.randperm(NUM_BLOCKS, generator=gen).tolist()     # scattered physical blocks
    max_len = max(len(s) for s in sequences)
    tables = [[free.pop() for _ in range(-(-max_len // BLOCK_SIZE))] for _ in sequences]
    done = [0] * len(sequences)
    logits = [[] for _ in sequences]
    for step in [PROMPT_LENS, *STEP_LENS]:
        ids, positions, seq_lens = [], [], []
        for b, q in enumerate(step):
            ids += sequences[b][done[b]:done[b] + q]
            positions += range(done[b], done[b] + q)
            done[b] += q
            seq_lens.append(done[b])
        hidden = model(torch.tensor(ids), torch.tensor(positions), _metadata(step, seq_lens, tables))
        out = model.compute_logits(hidden)
        assert out.dtype == torch.float32 and out.shape == (len(ids), model.config.vocab_size)
        for b, chunk in enumerate(out.split(step)):
            logits[b].append(chunk)
    return [torch.cat(rows) for rows in logits]


@pytest.mark.parametrize("case", [*ARCHS, "ernie4_5-paddle", "ernie4_5-paddle-mha", "llama-gguf"])
def test_logits_match_transformers(case, checkpoints):
    path, hf_dir = checkpoints[case]
    config = load_config(str(path))
    model = get_model(str(path), config, torch.float32, torch.device("cpu"))
    assert not model.training
    assert_logits_match(model, config, hf_dir)


def assert_logits_match(model, config, hf_dir):
    """Random sequences run in paged steps (prefill, decode, mixed) give transformers' logits."""
    _bind_kv_cache(model)
    gen = torch.Generator().manual_seed(0)
    total = [p + sum(s[b] for s in STEP_LENS) for b, p in enumerate(PROMPT_LENS)]
    sequences = [torch.randint(config.vocab_size, (n,), generator=gen).tolist() for n in total]
    ours = _run_steps(model, sequences)
    ref_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    for seq, got in zip(sequences, ours):
        with torch.no_grad():
            want = ref_model(torch.tensor([seq])).logits[0]
        assert (got - want).abs().max().item() < 1e-4


def test_paddle_config_maps_to_ernie4_5(tmp_path):
    raw = dict(architectures=["Ernie4_5_ForCausalLM"], model_type="ernie4_5", hidden_size=64, intermediate_size=128,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
               fuse_rms_norm=True, use_flash_attention=True)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = load_config(str(tmp_path))
    assert config.model_type == "ernie4_5"
    assert config.architectures == ["Ernie4_5_ForCausalLM"]
    # keys it leaves out get Paddle's defaults, not transformers' (head_dim 128, tied, theta 5e5)
    assert config.head_dim == 16 and config.tie_word_embeddings is False
    assert config.rope_parameters["rope_theta"] == 10000.0


def test_unknown_architecture_lists_supported():
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*supported: .*LlamaForCausalLM"):
        get_model_class(PretrainedConfig(architectures=["GPT2LMHeadModel"]))


def test_dummy_weights(checkpoints):
    path, _ = checkpoints["qwen3"]
    config = load_config(str(path))
    model = get_model("/nonexistent", config, torch.bfloat16, torch.device("cpu"), load_format="dummy")
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    assert params["model.layers.0.self_attn.qkv_proj.weight"].shape == ((4 + 2 + 2) * 32, 64)
    assert params["model.layers.0.mlp.gate_up_proj.weight"].shape == (2 * 128, 64)
    assert "lm_head.weight" not in params                       # tied to the embedding
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.all(params["model.norm.weight"] == 1)
    # the rotary table stays fp32 whatever the model dtype
    assert model.model.rotary_emb.cos_sin_cache.dtype == torch.float32


def test_dummy_builds_on_target_device():
    """Dummy weights are created where they will live: an 8B Llama on the meta device allocates nothing."""
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                         architectures=["LlamaForCausalLM"])
    model = get_model("", config, torch.bfloat16, torch.device("meta"), load_format="dummy")
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248
