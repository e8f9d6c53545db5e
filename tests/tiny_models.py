"""Tiny random checkpoints for tests: HF safetensors, ERNIE's Paddle layout, and llama.cpp GGUF.

    path = make_tiny_model("qwen3", tmp_path / "qwen3")          # HF directory
    convert_to_paddle(hf_dir, out_dir)                            # ERNIE 4.5 HF -> Paddle layout
    convert_to_gguf(hf_dir, out_dir / "model.gguf")               # Llama HF -> GGUF (F32)

Everything is seeded, so the same call always writes the same weights. No tokenizer is written.
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, Ernie4_5Config, LlamaConfig, Qwen2Config, Qwen3Config

ARCHS = ("llama", "qwen2", "qwen3", "ernie4_5")

_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)


def tiny_config(arch: str, **overrides):
    """A tiny config per family; each one exercises that family's quirks."""
    if arch == "llama":
        # Llama 3.1 rope scaling; original context small enough that all three frequency bands occur
        cfg = LlamaConfig(**_TINY, tie_word_embeddings=False, rope_scaling=dict(
            rope_type="llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=64, rope_theta=10000.0))
    elif arch == "qwen2":
        cfg = Qwen2Config(**_TINY, tie_word_embeddings=True)
    elif arch == "qwen3":
        cfg = Qwen3Config(**_TINY, head_dim=32, tie_word_embeddings=True)   # head_dim != hidden / heads
    elif arch == "ernie4_5":
        cfg = Ernie4_5Config(**_TINY, head_dim=16, use_bias=True, tie_word_embeddings=True)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; one of {ARCHS}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@torch.no_grad()
def _randomize(model) -> None:
    """Every parameter random, norms and biases too, so a misplaced one shows in the logits."""
    for name, p in model.named_parameters():
        p.normal_(1.0, 0.1) if "norm" in name else p.normal_(0.0, 0.1)


def make_tiny_model(arch: str, path, seed: int = 0, **config_overrides) -> Path:
    """Write a tiny random HF checkpoint (config.json + model.safetensors) of `arch` to `path`."""
    path = Path(path)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **config_overrides))
    _randomize(model)
    model.save_pretrained(path)
    return path


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path / "model.safetensors", framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def convert_to_paddle(hf_dir, out_dir) -> Path:
    """Rewrite a tiny HF ERNIE 4.5 checkpoint the way ERNIE's "-Paddle" releases store it: `ernie.`
    prefix, fused `qkv_proj` and `up_gate_proj` ([gate; up]), linear weights as [in, out], and a
    Paddle config.json (architecture `Ernie4_5_ForCausalLM`, some Paddle-only keys)."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = AutoConfig.from_pretrained(hf_dir)
    sd = _read_safetensors(hf_dir)
    out = {}
    for layer in range(cfg.num_hidden_layers):
        pre = f"model.layers.{layer}."
        for kind in ("weight", "bias"):
            q, k, v = (sd.pop(f"{pre}self_attn.{p}_proj.{kind}", None) for p in "qkv")
            if q is None:
                continue
            if cfg.num_key_value_heads == cfg.num_attention_heads:
                # without GQA, Paddle stores q/k/v interleaved per head: [h][q|k|v][head_dim]
                qkv = torch.stack([t.unflatten(0, (cfg.num_attention_heads, -1)) for t in (q, k, v)], 1).flatten(0, 2)
            else:
                qkv = torch.cat([q, k, v])
            sd[f"{pre}self_attn.qkv_proj.{kind}"] = qkv
            gate, up = sd.pop(f"{pre}mlp.gate_proj.{kind}"), sd.pop(f"{pre}mlp.up_proj.{kind}")
            sd[f"{pre}mlp.up_gate_proj.{kind}"] = torch.cat([gate, up])
    for name, t in sd.items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if name.endswith("proj.weight") or name == "lm_head.weight":
            t = t.T      # Paddle Linear weights are [in, out]
        out[name.replace("model.", "ernie.", 1)] = t.contiguous()
    save_file(out, out_dir / "model.safetensors", metadata={"format": "np"})
    config = dict(architectures=["Ernie4_5_ForCausalLM"], model_type="ernie4_5", hidden_act="silu",
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, use_cache=False,
                  rope_theta=cfg.rope_parameters["rope_theta"], compression_ratio=1.0,
                  fuse_linear=False, use_flash_attention=True, weight_share_add_bias=True)
    for key in ("hidden_size", "intermediate_size", "max_position_embeddings", "num_attention_heads",
                "num_key_value_heads", "head_dim", "num_hidden_layers", "rms_norm_eps", "vocab_size",
                "use_bias", "tie_word_embeddings"):
        config[key] = getattr(cfg, key)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def _llama_cpp_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's convert script reorders q/k rows of each head from NeoX halves to interleaved pairs."""
    return w.unflatten(0, (n_heads, 2, -1)).transpose(1, 2).reshape(w.shape)


def convert_to_gguf(hf_dir, gguf_file) -> Path:
    """Write a tiny HF Llama checkpoint as an F32 GGUF file with llama.cpp's names and metadata.
    Rope scaling is not carried over, so build the HF model with default rope for comparisons."""
    hf_dir, gguf_file = Path(hf_dir), Path(gguf_file)
    cfg = AutoConfig.from_pretrained(hf_dir)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    writer = gguf.GGUFWriter(str(gguf_file), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    layer_names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                   "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                   "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                   "mlp.down_proj": "ffn_down"}
    for name, t in _read_safetensors(hf_dir).items():
        module, kind = name.rsplit(".", 1)
        if module.startswith("model.layers."):
            _, _, layer, rest = module.split(".", 3)
            gguf_name = f"blk.{layer}.{layer_names[rest]}"
            if rest == "self_attn.q_proj":
                t = _llama_cpp_permute(t, cfg.num_attention_heads)
            elif rest == "self_attn.k_proj":
                t = _llama_cpp_permute(t, cfg.num_key_value_heads)
        else:
            gguf_name = names[module]
        writer.add_tensor(f"{gguf_name}.{kind}", t.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf_file


# ------------------------------------------------------------------------------------------- ERNIE 4.5 MoE

def tiny_moe_config(**overrides):
    """A tiny ERNIE 4.5 MoE: layer 0 dense, layers 1-3 MoE (8 experts, top-2, 2 shared experts)."""
    from transformers import Ernie4_5_MoeConfig
    cfg = dict(_TINY, num_hidden_layers=4, head_dim=16, moe_intermediate_size=32, moe_num_experts=8, moe_k=2,
               moe_num_shared_experts=2, moe_layer_start_index=1, tie_word_embeddings=True,
               architectures=["Ernie4_5_MoeForCausalLM"])
    return Ernie4_5_MoeConfig(**{**cfg, **overrides})


def make_tiny_moe_model(path, seed: int = 0, **config_overrides) -> Path:
    """`make_tiny_model` for ERNIE 4.5 MoE (random router, correction bias and experts, so a wrong
    routing shows in the logits)."""
    path = Path(path)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_moe_config(**config_overrides))
    _randomize(model)
    model.save_pretrained(path)
    return path


def convert_moe_to_paddle(hf_dir, out_dir) -> Path:
    """Rewrite a tiny HF ERNIE 4.5 MoE checkpoint in the "-Paddle" layout: `ernie.` prefix, fused
    `qkv_proj` and `up_gate_proj` (dense MLP, shared and routed experts), linear and router weights as
    [in, out], MTP tensors alongside (the loader must skip them), and a Paddle-style config.json."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = AutoConfig.from_pretrained(hf_dir)
    assert cfg.num_key_value_heads != cfg.num_attention_heads, "per-head qkv interleave not written here"
    sd = _read_safetensors(hf_dir)
    for name in [n for n in sd if n.endswith(".q_proj.weight")]:
        sd[name.replace(".q_proj.", ".qkv_proj.")] = torch.cat(
            [sd.pop(name.replace(".q_proj.", f".{p}_proj.")) for p in "qkv"])
    for name in [n for n in sd if n.endswith(".gate_proj.weight")]:
        sd[name.replace(".gate_proj.", ".up_gate_proj.")] = torch.cat(
            [sd.pop(name), sd.pop(name.replace(".gate_proj.", ".up_proj."))])
    sd["model.mtp_block.0.input_layernorm.weight"] = torch.ones(cfg.hidden_size)
    sd["model.mtp_linear_proj.0.weight"] = torch.zeros(2 * cfg.hidden_size, cfg.hidden_size)
    out = {}
    for name, t in sd.items():
        if name.endswith(("proj.weight", ".mlp.gate.weight")):
            t = t.T
        out[name.replace("model.", "ernie.", 1)] = t.contiguous()
    save_file(out, out_dir / "model.safetensors", metadata={"format": "np"})
    config = dict(architectures=["Ernie4_5_MoeForCausalLM"], model_type="ernie4_5_moe", hidden_act="silu",
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, use_cache=False,
                  rope_theta=cfg.rope_parameters["rope_theta"], moe_capacity=[8, 8, 8], moe_gate="topk",
                  moe_use_aux_free=True, num_nextn_predict_layers=1, use_flash_attention=True)
    for key in ("hidden_size", "intermediate_size", "max_position_embeddings", "num_attention_heads",
                "num_key_value_heads", "head_dim", "num_hidden_layers", "rms_norm_eps", "vocab_size", "use_bias",
                "tie_word_embeddings", "moe_intermediate_size", "moe_num_experts", "moe_k", "moe_num_shared_experts",
                "moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval"):
        config[key] = getattr(cfg, key)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


# -------------------------------------------------------------------------------------------- ERNIE 4.5 VL

VL_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|begin_of_sentence|>", "<|end_of_sentence|>",
                     "<|IMAGE_START|>", "<|IMAGE_END|>", "<|IMAGE_PLACEHOLDER|>", "<|VIDEO_START|>", "<|VIDEO_END|>",
                     "<|VIDEO_PLACEHOLDER|>"]
VL_WORDS = ["User", "Assistant", "Picture", "Video", ":", "1", "2", "what", "is", "in", "the", "image", "video",
            "and", "describe", "?", "."]


def tiny_vl_config(**overrides):
    """A tiny ERNIE 4.5 VL: 3 decoder layers (layer 0 dense), 4 text + 4 vision experts (top-2, different
    widths), one shared expert, a 2-block vision tower; token ids from `make_tiny_vl_tokenizer`."""
    from transformers import Ernie4_5_VLMoeConfig
    ids = {tok: i for i, tok in enumerate(VL_SPECIAL_TOKENS)}
    text = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, moe_intermediate_size=[32, 16], moe_k=2, moe_num_experts=4,
                moe_num_shared_experts=1, max_position_embeddings=512, rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [3, 3, 2]})
    vision = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=14)
    cfg = dict(text_config=text, vision_config=vision, architectures=["Ernie4_5_VLMoeForConditionalGeneration"],
               image_token_id=ids["<|IMAGE_PLACEHOLDER|>"], image_start_token_id=ids["<|IMAGE_START|>"],
               image_end_token_id=ids["<|IMAGE_END|>"], video_token_id=ids["<|VIDEO_PLACEHOLDER|>"],
               video_start_token_id=ids["<|VIDEO_START|>"], video_end_token_id=ids["<|VIDEO_END|>"])
    return Ernie4_5_VLMoeConfig(**{**cfg, **overrides})


def make_tiny_vl_tokenizer():
    """A word-level fast tokenizer with ERNIE VL's special tokens (ids 0..11) and a few words."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {tok: i for i, tok in enumerate(VL_SPECIAL_TOKENS + VL_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in VL_SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def make_tiny_vl_model(path, seed: int = 0, **config_overrides) -> Path:
    """A tiny random ERNIE 4.5 VL directory: checkpoint (transformers writes the -PT layout), tokenizer,
    and small image/video processor configs (tiny images, no timestamps drawn: no font file here)."""
    from transformers import AutoModelForImageTextToText
    path = Path(path)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(tiny_vl_config(**config_overrides))
    _randomize(model)
    model.save_pretrained(path)
    make_tiny_vl_tokenizer().save_pretrained(path)
    image = dict(size={"shortest_edge": 28 * 28, "longest_edge": 28 * 28 * 6}, patch_size=14, merge_size=2,
                 temporal_patch_size=1)
    video = dict(size={"shortest_edge": 28 * 28, "longest_edge": 28 * 28 * 4}, patch_size=14, merge_size=2,
                 temporal_patch_size=2, min_frames=2, max_frames=6, draw_on_frames=False)
    (path / "preprocessor_config.json").write_text(json.dumps(image))
    (path / "video_preprocessor_config.json").write_text(json.dumps(video))
    return path


def prefill_logits(model, ids: list[int], block_size: int = 16) -> torch.Tensor:
    """The logits of one prompt `ids` prefilled in a single step through `model` (a fastdeploy model on
    the CPU), over a fresh KV cache bound to its attention layers."""
    from fastdeploy.model_executor.layers.attention import Attention, AttentionMetadata

    n = len(ids)
    blocks = -(-n // block_size)
    for m in model.modules():
        if isinstance(m, Attention):
            m.k_cache = torch.zeros(blocks, block_size, m.num_kv_heads, m.head_dim)
            m.v_cache = torch.zeros_like(m.k_cache)
    md = AttentionMetadata(
        slot_mapping=torch.arange(n), query_start_loc=torch.tensor([0, n], dtype=torch.int32),
        seq_lens=torch.tensor([n], dtype=torch.int32), block_tables=torch.arange(blocks, dtype=torch.int32)[None],
        max_query_len=n, max_seq_len=n, query_lens_cpu=[n], seq_lens_cpu=[n])
    with torch.no_grad():
        return model.compute_logits(model(torch.tensor(ids), torch.arange(n), md))


# -------------------------------------------------------------------- llama.cpp quantized blocks (GGUF)

# byte offsets of each block's fp16 fields (d; Q4_1's m, the K-quants' dmin) and their typical size, so that
# weights come out ~0.1 whatever the random integers in the rest of the block
T = gguf.GGMLQuantizationType
F16_FIELDS = {T.Q8_0: {0: 1e-3}, T.Q4_0: {0: 1e-2}, T.Q4_1: {0: 1e-2, 2: 5e-2}, T.Q4_K: {0: 1e-4, 2: 1e-4},
              T.Q6_K: {208: 2e-5}}


def random_blocks(qtype, n: int, k: int, rng: np.random.Generator, exact: bool = False) -> np.ndarray:
    """uint8 [n, row bytes]: random bytes, with the fp16 fields random finite values of sensible size.
    `exact`: fields with at most 4 significant bits, so that the K-quants' products d * sc and dmin * m
    (sc, m below 2^7) are exact in fp16 and the repacked format matches gguf bit for bit."""
    from fastdeploy.model_executor.layers import gguf_quant as gq

    t = gq.TYPES[qtype]
    b = rng.integers(0, 256, size=(n, k // t.block, t.block_bytes), dtype=np.uint8)
    for offset, size in F16_FIELDS[qtype].items():
        v = rng.uniform(-size, size, size=(n, k // t.block, 1))
        if exact:
            e = np.floor(np.log2(np.abs(v))) - 3
            v = np.round(v / 2 ** e) * 2 ** e
        b[..., offset:offset + 2] = v.astype(np.float16).view(np.uint8)
    return b.reshape(n, -1)
