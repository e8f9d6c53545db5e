"""ERNIE 4.5 VL through the whole engine: images and a video in `generate` and `chat`, batched with
text-only requests, against transformers' greedy generation on the same processed inputs."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText

from fastdeploy import LLM, SamplingParams
from test_vl import PROMPT, TEXT_ONLY, _grids, _image, _token_types, _video_bytes, vl  # noqa: F401

NUM_TOKENS = 32
# an ERNIE-VL-like template: it renders string content (the engine turns image parts into markers)
TEMPLATE = ("{%- for m in messages -%}{{- 'User: ' if m.role == 'user' else 'Assistant: ' -}}{{- m.content -}}"
            "{{- '\\n' -}}{%- endfor -%}{%- if add_generation_prompt -%}{{- 'Assistant: ' -}}"
            "{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
            "{%- endif -%}{%- endif -%}")


@pytest.fixture(scope="module")
def llm(vl):  # noqa: F811
    path = vl[0]
    with open(path / "tokenizer_config.json") as f:
        config = json.load(f)
    with open(path / "tokenizer_config.json", "w") as f:
        json.dump({**config, "chat_template": TEMPLATE}, f)
    return LLM(model=str(path), device="cpu", enable_mm=True, limit_mm_per_prompt={"image": 100},
               reasoning_parser="ernie-45-vl", block_size=16, max_model_len=256, max_num_batched_tokens=24)


def hf_greedy(path, mm, n=NUM_TOKENS) -> list[int]:
    hf = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([mm.prompt_token_ids])
    pixels = [torch.cat([it.pixel_values for it in mm.items if it.modality == m]) for m in (1, 2)]
    with torch.no_grad():
        out = hf.generate(input_ids=ids, pixel_values=pixels[0], pixel_values_videos=pixels[1],
                          image_grid_thw=_grids(mm)[0], video_grid_thw=_grids(mm)[1],
                          mm_token_type_ids=_token_types(mm)[None],
                          moe_mm_token_type_ids=mm.vision_mask.long()[None],
                          max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_generate_with_images_and_video_matches_transformers(llm, vl):  # noqa: F811
    path, _, processor = vl
    video, _ = _video_bytes(10)
    data = {"image": [_image(60, 90, 0), _image(100, 70, 1)], "video": [{"video": video, "max_frames": 6}]}
    params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True)
    # chunks of 24 tokens cut the placeholder runs; a text-only prompt shares the batch
    outs = llm.generate([{"prompt": PROMPT, "multimodal_data": data}, TEXT_ONLY], params, use_tqdm=False)
    mm = processor.process(PROMPT, multimodal_data=data)
    assert outs[0].prompt_token_ids == mm.prompt_token_ids
    assert outs[0].outputs.token_ids == hf_greedy(path, mm)
    alone = llm.generate([TEXT_ONLY], params, use_tqdm=False)[0]
    assert outs[1].outputs.token_ids == alone.outputs.token_ids


def test_chat_with_image_and_video_urls(llm, vl, tmp_path):  # noqa: F811
    image = tmp_path / "example.png"
    _image(60, 90, 0).save(image)
    video = tmp_path / "clip.avi"
    video.write_bytes(_video_bytes(10)[0])
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": str(image)}},
        {"type": "video_url", "video_url": {"url": str(video)}},
        {"type": "text", "text": "what is in the image ?"}]}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False,
                   chat_template_kwargs={"enable_thinking": False})[0]
    assert "Picture 1:<|IMAGE_START|>" in out.prompt and "Video 1:<|VIDEO_START|>" in out.prompt
    assert out.error_code == 200 and len(out.outputs.token_ids) >= 1
    assert out.outputs.reasoning_content is None          # thinking off: no parser
    # the same image again: its blocks come from the prefix cache (image hash in the block keys)
    again = llm.chat(messages, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False,
                     chat_template_kwargs={"enable_thinking": False})[0]
    assert again.outputs.token_ids == out.outputs.token_ids and again.num_cached_tokens > 0


def test_limits_and_text_only_engines_refuse_media(llm, vl):  # noqa: F811
    few = LLM(model=str(vl[0]), device="cpu", enable_mm=True, limit_mm_per_prompt={"image": 1}, block_size=16,
              max_model_len=256)
    data = {"image": [_image(60, 90, 0), _image(60, 90, 1)]}
    with pytest.raises(ValueError, match="limit_mm_per_prompt"):
        few.generate({"prompt": PROMPT, "multimodal_data": data}, use_tqdm=False)
    text_only = LLM(model=str(vl[0]), device="cpu", block_size=16, max_model_len=256)
    with pytest.raises(ValueError, match="enable_mm"):
        text_only.generate({"prompt": PROMPT, "multimodal_data": data}, use_tqdm=False)
    with pytest.raises(ValueError, match="enable_mm"):
        text_only.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}],
                       use_tqdm=False)
