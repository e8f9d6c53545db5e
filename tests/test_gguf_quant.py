"""GGUF quantized weights kept quantized (layers/gguf_quant.py): the repacked formats against gguf's own
dequantization, the grouped Triton kernels against the reference (under Triton's interpreter without a
GPU), and tiny and real GGUF models loaded quantized against the same files dequantized at load."""
import os

import torch

# Without a GPU, run the kernels in Triton's interpreter; this must precede the first triton import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402

from fastdeploy.model_executor.layers import gguf_quant as gq  # noqa: E402
from fastdeploy.model_executor.layers.linear import Linear  # noqa: E402
from fastdeploy.model_executor.layers.quantization import WeightOnlyQuantMethod  # noqa: E402
from fastdeploy.model_executor.loader import get_model, load_config  # noqa: E402
from fastdeploy.model_executor.ops import quant_matmul as qm  # noqa: E402
from fastdeploy.utils.model_resolver import resolve_model  # noqa: E402
from tiny_models import prefill_logits, random_blocks  # noqa: E402

QTYPES = list(gq.TYPES)
def dequantize(packed: dict, qtype, k: int) -> torch.Tensor:
    m = gq.TYPES[qtype].method
    return qm.dequantize(packed["qweight"], packed["weight_scale"], m.bits, k, torch.float32, m.group,
                         packed.get("weight_min"))


def _k(qtype, k):
    return k if gq.TYPES[qtype].block == 32 else -(-k // 256) * 256


# ---------------------------------------------------------------------------------------------- formats

@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("k", [256, 544])
def test_repack_matches_gguf_dequantize(qtype, k):
    k = _k(qtype, k)
    rng = np.random.default_rng(k + qtype)
    for exact in (True, False):
        data = random_blocks(qtype, 7, k, rng, exact)
        want = torch.from_numpy(gguf.quants.dequantize(data, qtype).copy())
        packed = gq.repack(data, qtype)
        m = gq.TYPES[qtype].method
        kp = -(-k // qm.BLOCK) * qm.BLOCK
        assert packed["qweight"].shape == (7, kp * m.bits // 8)
        assert packed["weight_scale"].shape == (7, kp // m.group) and packed["weight_scale"].dtype == torch.float16
        assert ("weight_min" in packed) == m.has_min
        got = dequantize(packed, qtype, k)
        if exact or qtype in (T.Q8_0, T.Q4_0, T.Q4_1):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        else:   # the fp16 rounding of d * sc and dmin * m
            torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3 * want.abs().max().item())
        # the K padding is zero weights
        assert (dequantize(packed, qtype, kp)[:, k:] == 0).all()


def test_repack_layout_by_hand():
    """Q4_0: block byte j holds inputs j (low nibble) and 16 + j (high); ours: byte j of a 128 block holds
    inputs j and 64 + j. Q8_0 int8 values go through unchanged."""
    data = np.zeros((1, 4, 18), dtype=np.uint8)             # 128 inputs: 4 blocks of 32
    data[..., :2] = np.array([0.5], dtype=np.float16).view(np.uint8)
    data[0, 0, 2 + 3] = 0x0F | 0x01 << 4      # block 0: input 3 nibble 15, input 19 nibble 1
    data[0, 2, 2 + 5] = 0x02 | 0x03 << 4      # block 2: input 69 nibble 2, input 85 nibble 3
    packed = gq.repack(data.reshape(1, -1), T.Q4_0)
    q = packed["qweight"][0].tolist()
    assert q[3] == 15 and q[19] == 1 and q[5] == 2 << 4 and q[21] == 3 << 4
    assert sum(q) == 15 + 1 + (2 << 4) + (3 << 4)
    assert packed["weight_scale"].tolist() == [[0.5] * 4]
    q8 = np.zeros(34, dtype=np.uint8)
    q8[:2] = np.array([2.0], dtype=np.float16).view(np.uint8)
    q8[2:] = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    packed = gq.repack(q8[None], T.Q8_0)
    assert packed["qweight"][0, :32].tolist() == list(range(-16, 16))
    assert packed["weight_scale"].tolist() == [[2.0, 0.0, 0.0, 0.0]]


# ---------------------------------------------------------------------------------------------- kernels

triton = pytest.importorskip("triton")
from fastdeploy.model_executor.ops import triton_quant_matmul as tq  # noqa: E402

from test_quantization import DEVICE, KERNEL_DTYPES, KERNEL_TOL  # noqa: E402  (the wint kernels' test settings)


def _kernel_case(qtype, m, n, k, dtype, bias, seed):
    k = _k(qtype, k)
    rng = np.random.default_rng(seed)
    packed = gq.repack(random_blocks(qtype, n, k, rng), qtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    meth = gq.TYPES[qtype].method
    mins = packed.get("weight_min")
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    got = tq.quant_matmul(to(x), to(packed["qweight"]), to(packed["weight_scale"]), meth.bits, to(b),
                          group=meth.group, mins=to(mins)).cpu()
    want = qm.matmul_ref(x.float(), packed["qweight"], packed["weight_scale"], meth.bits,
                         None if b is None else b.float(), meth.group, mins)
    err = (got.float() - want).abs().max() / (1 + want.abs().max())
    assert got.dtype == dtype and got.shape == (m, n)
    assert err < KERNEL_TOL[dtype], f"{qtype.name} {m=} {n=} {k=} {dtype} err {err:.2e}"


# M=1: GEMV; more rows: the tiled kernel. K not a multiple of 128 (Q4/Q8_0 blocks of 32), nor N of the tiles
@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("m,n,k,bias", [(1, 40, 416, True), (1, 16, 1056, False), (5, 50, 256, True),
                                        (33, 24, 544, False)])
def test_grouped_kernel_matches_reference(qtype, dtype, m, n, k, bias):
    _kernel_case(qtype, m, n, k, dtype, bias, seed=m * 1000 + n + k)


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda t: t.name)
def test_grouped_gemv_gated_is_silu_and_mul_of_it(qtype):
    """A [gate; up] weight with gated=True: silu(gate) * up, for every grouped format."""
    n, k = 20, _k(qtype, 416)
    packed = gq.repack(random_blocks(qtype, 2 * n, k, np.random.default_rng(1)), qtype)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(1))
    meth, mins = gq.TYPES[qtype].method, packed.get("weight_min")
    to = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    got = tq.quant_matmul(to(x), to(packed["qweight"]), to(packed["weight_scale"]), meth.bits, group=meth.group,
                          mins=to(mins), gated=True).cpu()
    y = qm.matmul_ref(x, packed["qweight"], packed["weight_scale"], meth.bits, None, meth.group, mins)
    torch.testing.assert_close(got, torch.nn.functional.silu(y[:, :n]) * y[:, n:], atol=1e-4, rtol=1e-4)


def test_dispatcher_runs_reference_on_cpu_tensors():
    packed = gq.repack(random_blocks(T.Q4_K, 8, 256, np.random.default_rng(0)), T.Q4_K)
    x = torch.randn(3, 256)
    got = qm.quant_matmul(x, packed["qweight"], packed["weight_scale"], 4, None, 32, packed["weight_min"])
    torch.testing.assert_close(got, x @ dequantize(packed, T.Q4_K, 256).T)


# ------------------------------------------------------------------------------------------------ models

# per layer, the type of each linear weight; layer 1's q/k/v are mixed, so its qkv_proj must stay float
LAYER_TYPES = [
    dict(attn_q=T.Q8_0, attn_k=T.Q8_0, attn_v=T.Q8_0, attn_output=T.Q4_K, ffn_gate=T.Q4_1, ffn_up=T.Q4_1,
         ffn_down=T.Q6_K),
    dict(attn_q=T.Q4_K, attn_k=T.Q4_K, attn_v=T.Q6_K, attn_output=T.Q4_0, ffn_gate=T.Q4_K, ffn_up=T.Q4_K,
         ffn_down=T.Q8_0),
]
HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 256, 512, 4, 2, 512


def write_quantized_gguf(path) -> str:
    """A tiny random llama GGUF with the LAYER_TYPES linear weights (random blocks, `exact` fp16 fields),
    a Q8_0 embedding and a Q6_K LM head (both dequantized at load whatever the mode)."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(len(LAYER_TYPES))
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_vocab_size(VOCAB)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)

    def quantized(name, qtype, n, k):
        w.add_tensor(name, random_blocks(qtype, n, k, rng, exact=True), raw_dtype=qtype)

    def norm(name):
        w.add_tensor(name, rng.normal(1.0, 0.1, HIDDEN).astype(np.float32))

    quantized("token_embd.weight", T.Q8_0, VOCAB, HIDDEN)
    kv = HIDDEN // HEADS * KV_HEADS
    for i, types in enumerate(LAYER_TYPES):
        norm(f"blk.{i}.attn_norm.weight")
        norm(f"blk.{i}.ffn_norm.weight")
        for part, (n, k) in dict(attn_q=(HIDDEN, HIDDEN), attn_k=(kv, HIDDEN), attn_v=(kv, HIDDEN),
                                 attn_output=(HIDDEN, HIDDEN), ffn_gate=(FFN, HIDDEN), ffn_up=(FFN, HIDDEN),
                                 ffn_down=(HIDDEN, FFN)).items():
            quantized(f"blk.{i}.{part}.weight", types[part], n, k)
    norm("output_norm.weight")
    quantized("output.weight", T.Q6_K, VOCAB, HIDDEN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_quantized_gguf(tmp_path_factory.mktemp("gguf") / "tiny-q.gguf")


def _load(path, keep, quantization=None):
    return get_model(path, load_config(path), torch.float32, torch.device("cpu"), "auto", quantization,
                     gguf_keep_quantized=keep)


def test_tiny_gguf_kept_quantized_matches_dequantized_load(tiny_gguf):
    kept, floats = _load(tiny_gguf, True), _load(tiny_gguf, False)
    expect = {  # layer -> (bits, group, has_min), None: float
        "model.layers.0.self_attn.qkv_proj": (8, 32, False), "model.layers.0.self_attn.o_proj": (4, 32, True),
        "model.layers.0.mlp.gate_up_proj": (4, 32, True), "model.layers.0.mlp.down_proj": (8, 16, False),
        "model.layers.1.self_attn.qkv_proj": None, "model.layers.1.self_attn.o_proj": (4, 32, False),
        "model.layers.1.mlp.gate_up_proj": (4, 32, True), "model.layers.1.mlp.down_proj": (8, 32, False)}
    modules = dict(kept.named_modules())
    for name, fmt in expect.items():
        layer = modules[name]
        if fmt is None:
            assert layer.quant_method is None and layer.weight.dtype == torch.float32
            continue
        meth = layer.quant_method
        assert isinstance(meth, gq.GGUFQuantMethod) and (meth.bits, meth.group, meth.has_min) == fmt
        assert not hasattr(layer, "weight")
        assert layer.qweight.dtype == (torch.int8 if fmt[0] == 8 else torch.uint8)
        assert layer.weight_scale.dtype == torch.float16 and hasattr(layer, "weight_min") == fmt[2]
        # the q/k row un-permutation and the merged slices applied to the quantized rows: same weights
        torch.testing.assert_close(dequantize({"qweight": layer.qweight, "weight_scale": layer.weight_scale,
                                               "weight_min": getattr(layer, "weight_min", None)},
                                              _qtype_of(fmt), layer.in_features),
                                   dict(floats.named_modules())[name].weight, rtol=0, atol=0)
    assert all(m.quant_method is None for m in floats.modules() if isinstance(m, Linear))
    assert kept.model.embed_tokens.weight.dtype == kept.lm_head.weight.dtype == torch.float32
    ids = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    torch.testing.assert_close(prefill_logits(kept, ids), prefill_logits(floats, ids), atol=1e-4, rtol=1e-4)


def _qtype_of(fmt):
    return next(t for t, v in gq.TYPES.items() if (v.method.bits, v.method.group, v.method.has_min) == fmt)


def test_gguf_with_wint_quantization_requantizes_from_float(tiny_gguf):
    model = _load(tiny_gguf, True, "wint8")
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert linears and all(isinstance(m.quant_method, WeightOnlyQuantMethod) for m in linears)


def test_cpu_default_dequantizes_in_float32_only(tiny_gguf):
    """float32 on the CPU: dequantized (exact against float engines); bfloat16: kept, for PyTorch's CPU
    weight-only kernels."""
    model = get_model(tiny_gguf, load_config(tiny_gguf), torch.float32, torch.device("cpu"))
    assert all(m.quant_method is None for m in model.modules() if isinstance(m, Linear))
    model = get_model(tiny_gguf, load_config(tiny_gguf), torch.bfloat16, torch.device("cpu"))
    assert any(isinstance(m.quant_method, gq.GGUFQuantMethod) for m in model.modules() if isinstance(m, Linear))


@pytest.mark.slow
def test_smollm2_q4_1_kept_quantized_matches_dequantized_load():
    path = resolve_model(None)
    assert path.endswith(".Q4_1.gguf")
    kept = _load(path, True)
    linears = [m for m in kept.modules() if isinstance(m, Linear)]
    assert linears and all(isinstance(m.quant_method, gq.GGUFQuantMethod) and m.quant_method.has_min
                           for m in linears)
    ids = [1, 9690, 314, 253, 4775, 30, 2, 198, 1, 15423, 198, 10576, 359, 346, 47, 2]
    got, want = prefill_logits(kept, ids), prefill_logits(_load(path, False), ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (got.argmax(-1) == want.argmax(-1)).all()
