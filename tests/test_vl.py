"""ERNIE 4.5 VL against transformers on a tiny random model (CPU, fp32): a prompt with two images and a
video through our processor, then the model over the paged KV cache, prefill in one step or in chunks
that cut placeholder runs (next to a text-only sequence), and a decode step; plus input loading,
frame sampling and the per-prompt limits."""
from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoTokenizer

from fastdeploy.input.multimodal import IMAGE, VIDEO, MultimodalEmbeds, MultimodalProcessor, load_image, load_video
from fastdeploy.model_executor.loader import get_model, load_config
from test_models import _bind_kv_cache, _metadata
from tiny_models import make_tiny_vl_model

PROMPT = ("User: Picture 1:<|IMAGE_START|><|image@placeholder|><|IMAGE_END|> and Picture 2:<|IMAGE_START|>"
          "<|IMAGE_PLACEHOLDER|><|IMAGE_END|> what is in the image ? Video 1:<|VIDEO_START|><|video@placeholder|>"
          "<|VIDEO_END|>\nAssistant:")
TEXT_ONLY = [12, 16, 19, 20, 21, 22, 23, 27, 13, 16]


def _image(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _video_bytes(num_frames, fmt="avi", codec="png", pix_fmt="rgb24"):
    """A lossless clip of random 56x56 frames at 4 fps; returns (bytes, frames)."""
    frames = [np.asarray(_image(56, 56, 100 + i)) for i in range(num_frames)]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=4)
        stream.width, stream.height, stream.pix_fmt = 56, 56, pix_fmt
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue(), frames


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    path = make_tiny_vl_model(tmp_path_factory.mktemp("vl") / "model")
    config = load_config(str(path))
    processor = MultimodalProcessor(str(path), AutoTokenizer.from_pretrained(path), config)
    return path, config, processor


@pytest.fixture(scope="module")
def request_inputs(vl):
    _, _, processor = vl
    video, _ = _video_bytes(10)
    return processor.process(PROMPT, multimodal_data={"image": [_image(60, 90, 0), _image(100, 70, 1)],
                                                      "video": [video]})


def test_processing(request_inputs, vl):
    mm, (path, config, _) = request_inputs, vl
    assert [(it.modality, it.grid_thw.tolist(), it.num_tokens) for it in mm.items] == [
        (IMAGE, [[1, 4, 6]], 6), (IMAGE, [[1, 4, 4]], 4), (VIDEO, [[6, 4, 4]], 12)]   # 10 frames -> max_frames 6
    assert [it.offset for it in mm.items] == [6, 18, 33]
    ids = torch.tensor(mm.prompt_token_ids)
    assert int((ids == config.image_token_id).sum()) == 10 and int((ids == config.video_token_id).sum()) == 12
    assert torch.equal(mm.embed_mask, (ids == config.image_token_id) | (ids == config.video_token_id))
    assert int(mm.vision_mask.sum()) == 22 + 6          # placeholders plus three start/end pairs
    # 3D positions exactly as transformers' get_rope_index
    hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    want, delta = hf.model.get_rope_index(ids[None], _token_types(mm)[None], *_grids(mm))
    assert torch.equal(mm.positions, want[:, 0]) and mm.rope_delta == int(delta)
    assert torch.equal(mm.get_positions(len(ids) - 1, len(ids) + 2)[:, 1:],
                       (torch.arange(len(ids), len(ids) + 2) + mm.rope_delta).expand(3, -1))
    assert len(set(mm.hashes)) == 3 and mm.hashes_before(mm.items[1].offset) == mm.hashes[:1]


def _token_types(mm):
    types = torch.zeros(len(mm.prompt_token_ids), dtype=torch.long)
    for it in mm.items:
        types[it.offset:it.offset + it.num_tokens] = it.modality
    return types


def _grids(mm):
    return [torch.cat([it.grid_thw for it in mm.items if it.modality == m]) for m in (IMAGE, VIDEO)]


def _reference(path, mm):
    """transformers' logits over the prompt, then of one greedy decode step through its cache."""
    hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([mm.prompt_token_ids])
    pixels = [torch.cat([it.pixel_values for it in mm.items if it.modality == m]) for m in (IMAGE, VIDEO)]
    with torch.no_grad():
        out = hf(input_ids=ids, pixel_values=pixels[0], pixel_values_videos=pixels[1],
                 image_grid_thw=_grids(mm)[0], video_grid_thw=_grids(mm)[1], mm_token_type_ids=_token_types(mm)[None],
                 moe_mm_token_type_ids=mm.vision_mask.long()[None], use_cache=True)
        next_token = int(out.logits[0, -1].argmax())
        step = hf(input_ids=torch.tensor([[next_token]]), cache=out.cache, use_cache=True)
        text = hf(input_ids=torch.tensor([TEXT_ONLY])).logits[0]
    return torch.cat([out.logits[0], step.logits[0]]), next_token, text


def _run(model, mm, encoded, next_token, chunks):
    """Prefill `mm`'s prompt in `chunks`, then decode `next_token`; alongside, a text-only sequence
    prefills 6 tokens in the first step and takes one token per later step. Returns both logit rows."""
    vl_ids = mm.prompt_token_ids + [next_token]
    tables = [list(range(0, 16)), list(range(31, 15, -1))]
    done, text_done, logits, text_logits = 0, 0, [], []
    for n in chunks + [1]:
        m = 6 if text_done == 0 else min(1, len(TEXT_ONLY) - text_done)
        ids = vl_ids[done:done + n] + TEXT_ONLY[text_done:text_done + m]
        positions = torch.cat([mm.get_positions(done, done + n),
                               torch.arange(text_done, text_done + m).expand(3, -1)], dim=1)
        mm_embeds = MultimodalEmbeds.for_step([(mm, encoded, done, done + n), (None, None, text_done, text_done + m)])
        assert (mm_embeds is None) == (not mm.vision_mask[done:done + n].any())   # decode steps carry nothing
        lens, seq_lens = [n, m], [done + n, text_done + m]
        meta = _metadata(lens[:1 + bool(m)], seq_lens[:1 + bool(m)], tables[:1 + bool(m)])
        out = model.compute_logits(model(torch.tensor(ids), positions, meta, mm_embeds))
        logits.append(out[:n])
        text_logits.append(out[n:])
        done, text_done = done + n, text_done + m
    return torch.cat(logits), torch.cat(text_logits)


@pytest.mark.parametrize("chunks", [[None], [9, 3, 1, 25]], ids=["one-step", "chunked"])
def test_logits_match_transformers(vl, request_inputs, chunks):
    path, config, _ = vl
    mm = request_inputs
    model = get_model(str(path), config, torch.float32, torch.device("cpu"))
    _bind_kv_cache(model)
    want, next_token, want_text = _reference(path, mm)
    L = len(mm.prompt_token_ids)
    chunks = [L] if chunks == [None] else chunks + [L - sum(chunks)]
    # chunks cut the first image's run (tokens 6..11), hold its end token alone (12), cut the video's (33..44)
    with torch.no_grad():
        encoded = mm.encode(model)
        got, got_text = _run(model, mm, encoded, next_token, chunks)
    assert encoded.shape == (22, config.text_config.hidden_size)
    assert (got - want).abs().max().item() < 1e-4
    assert (got_text - want_text[:len(got_text)]).abs().max().item() < 1e-4 and len(got_text) >= 7


def test_loads_transformers_in_memory_names(vl):
    """The -PT layout on disk (tested above) and transformers' own module names load the same weights."""
    path, config, _ = vl
    model = get_model(str(path), config, torch.float32, torch.device("cpu"))
    hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    other = get_model("/nonexistent", config, torch.float32, torch.device("cpu"), load_format="dummy")
    other.load_weights(hf.state_dict().items())
    for (name, p), q in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(p, q), name


def test_image_sources(tmp_path):
    image = _image(20, 30, 5)
    image.save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    sources = [image, str(tmp_path / "a.png"), f"file://{tmp_path / 'a.png'}", data,
               "data:image/png;base64," + base64.b64encode(data).decode(), {"url": str(tmp_path / "a.png")}]
    for src in sources:
        assert np.array_equal(np.asarray(load_image(src)), np.asarray(image))
    assert load_image(image.convert("L")).mode == "RGB"


def test_video_sampling(tmp_path):
    data, frames = _video_bytes(10)
    video = load_video(data, min_frames=2, max_frames=4)
    # 10 frames, at most 4: every 2.5th frame, stamped with its time at 4 fps
    assert video.timestamps == [0.0, 0.5, 1.25, 1.75]
    assert all(np.array_equal(np.asarray(f), frames[i]) for f, i in zip(video.frames, [0, 2, 5, 7]))
    (tmp_path / "v.avi").write_bytes(data)
    assert load_video(str(tmp_path / "v.avi"), 2, 4).timestamps == video.timestamps
    # a container that does not tell its frame count (decoded whole, then sampled)
    mkv, _ = _video_bytes(10, fmt="matroska", codec="ffv1", pix_fmt="yuv444p")
    assert load_video(mkv, 2, 4).timestamps == video.timestamps
    # frames given as images: all kept up to max_frames
    assert len(load_video(frames[:5], 2, 8).frames) == 5


def test_processor_video_forms_and_limits(vl):
    path, config, processor = vl
    data, frames = _video_bytes(10)
    prompt = "Video 1:<|VIDEO_START|><|video@placeholder|><|VIDEO_END|>"
    mm = processor.process(prompt, multimodal_data={"video": [{"video": data, "max_frames": 4}]})
    assert mm.items[0].grid_thw.tolist() == [[4, 4, 4]] and mm.items[0].num_tokens == 8
    # an odd frame count repeats the last frame, so frames pair up
    mm = processor.process(prompt, multimodal_data={"video": [[Image.fromarray(f) for f in frames[:5]]]})
    assert mm.items[0].grid_thw.tolist() == [[6, 4, 4]]
    # token ids in, with the image token as the marker
    ids = processor.process(None, [12, 16, config.image_token_id], {"image": [_image(28, 28, 0)]}).prompt_token_ids
    assert ids == [12, 16] + [config.image_token_id]
    # a text prompt: plain positions, nothing to encode, no multimodal step input
    text = processor.process("what is in the image ?")
    assert torch.equal(text.positions, torch.arange(6).expand(3, -1)) and text.rope_delta == 0
    assert MultimodalEmbeds.for_step([(text, None, 0, 6)]) is None
    limited = MultimodalProcessor(str(path), processor.tokenizer, config, limit_mm_per_prompt={"image": 1})
    two = {"image": [_image(28, 28, 0), _image(28, 28, 1)]}
    with pytest.raises(ValueError, match=r"2 images, more than limit_mm_per_prompt\['image'\] = 1"):
        limited.process("<|image@placeholder|><|image@placeholder|>", multimodal_data=two)
    with pytest.raises(ValueError, match="1 image placeholders .* but 2 images"):
        processor.process("<|image@placeholder|>", multimodal_data=two)


def test_timestamps_drawn():
    from fastdeploy.input.multimodal import Video, draw_timestamps
    frame = Image.new("RGB", (112, 112), (128, 128, 128))
    video = Video([frame], [61.5])
    draw_timestamps(video, None)         # no font file: PIL's default font
    drawn = np.asarray(video.frames[0])
    assert (drawn[:12, :60] != 128).any() and (drawn[60:] == 128).all()
    assert np.asarray(frame).max() == 128     # the caller's frame is left as it was
