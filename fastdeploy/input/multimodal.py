"""Multimodal prompts for ERNIE 4.5 VL: load images and videos, run the image processor, expand the
placeholders, and compute what the engine needs per request (3D rotary positions, vision-expert mask,
content hashes) and per step (`MultimodalEmbeds`).

A prompt marks each image with `<|image@placeholder|>` (FastDeploy's chat template) or the tokenizer's
image token (`<|IMAGE_PLACEHOLDER|>`), each video with `<|video@placeholder|>` or the video token; the
chat template puts them between `<|IMAGE_START|>`/`<|IMAGE_END|>` (`<|VIDEO_...|>`). Each marker becomes
one placeholder token per LLM token of its item, in order.

Images and video frames go through transformers' PIL image processor (torchvision is not needed):
frames are patched like images, frame after frame, which is the video processor's layout. Videos are
decoded with PyAV (`pip install av`), sampled as transformers' video processor samples them, stamped
with their time when the processor config asks for it, and padded to an even frame count.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import logging
import os
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xxhash

logger = logging.getLogger(__name__)

IMAGE_MARKER = "<|image@placeholder|>"
VIDEO_MARKER = "<|video@placeholder|>"
TEXT, IMAGE, VIDEO = 0, 1, 2

# transformers' Ernie4_5_VLMoeVideoProcessor defaults, for keys a video processor config leaves out
VIDEO_DEFAULTS = dict(size={"shortest_edge": 299 * 28 * 28, "longest_edge": 1196 * 28 * 28}, min_frames=16,
                      max_frames=180, fps=None, draw_on_frames=True, font="Roboto-Regular.ttf")


# ------------------------------------------------------------------------------------------- loading

def _read_source(src: str | bytes) -> bytes | str:
    """bytes for data URLs and http(s) URLs, a path otherwise."""
    if isinstance(src, bytes):
        return src
    if src.startswith("data:"):
        return base64.b64decode(src.split(",", 1)[1])
    if src.startswith(("http://", "https://")):
        with urllib.request.urlopen(src, timeout=30) as r:
            return r.read()
    return src[len("file://"):] if src.startswith("file://") else src


def load_image(src: Any):
    """A PIL RGB image from a PIL image, a path, a `file://`, `http(s)://` or base64 `data:` URL, raw
    bytes, or a dict with "url" / "image" (a chat `image_url` part)."""
    from PIL import Image
    if isinstance(src, dict):
        src = src.get("url") or src.get("image")
    if isinstance(src, Image.Image):
        return src.convert("RGB")
    data = _read_source(src)
    image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    return image.convert("RGB")


@dataclass
class Video:
    frames: list                 # PIL images, the sampled frames
    timestamps: list[float]      # seconds, of each sampled frame


def sample_indices(total: int, video_fps: float | None, min_frames: int, max_frames: int,
                   fps: float | None = None) -> list[int]:
    """transformers' Ernie 4.5 VL sampling: every frame (or `fps` frames a second), clamped to
    [min_frames, max_frames] and to the frames there are, evenly spaced."""
    n = total / video_fps * fps if fps is not None and video_fps else total
    n = min(max(n, min_frames), max_frames, total)
    return torch.arange(0, total, total / n).int().tolist()


def load_video(src: Any, min_frames: int, max_frames: int, fps: float | None = None) -> Video:
    """Decode and sample a video: bytes, a path or URL, or already decoded frames (PIL images or an
    array [T, H, W, 3], taken as 24 fps like transformers does)."""
    from PIL import Image
    if isinstance(src, (list, tuple, np.ndarray)):
        frames = [f if isinstance(f, Image.Image) else Image.fromarray(np.asarray(f)) for f in src]
        idx = sample_indices(len(frames), 24.0, min_frames, max_frames, fps)
        return Video([frames[i].convert("RGB") for i in idx], [i / 24.0 for i in idx])
    try:
        import av
    except ImportError as e:
        raise ImportError("decoding videos needs PyAV: pip install av (or pass the frames as images)") from e
    data = _read_source(src)
    with av.open(io.BytesIO(data) if isinstance(data, bytes) else data) as container:
        stream = container.streams.video[0]
        video_fps = float(stream.average_rate) if stream.average_rate else 24.0
        if stream.frames > 0:            # known length: convert only the sampled frames
            wanted = sample_indices(stream.frames, video_fps, min_frames, max_frames, fps)
            picked, keep = {}, set(wanted)
            for i, frame in enumerate(container.decode(stream)):
                if i in keep:
                    picked[i] = frame.to_image()
                if i >= wanted[-1]:
                    break
            wanted = [i for i in wanted if i in picked]
            frames = [picked[i] for i in wanted]
        else:
            frames = [f.to_image() for f in container.decode(stream)]
            wanted = sample_indices(len(frames), video_fps, min_frames, max_frames, fps)
            frames = [frames[i] for i in wanted]
    if not frames:
        raise ValueError("the video has no frames")
    return Video([f.convert("RGB") for f in frames], [i / video_fps for i in wanted])


def draw_timestamps(video: Video, font_path: str | None) -> None:
    """Write each frame's time in its top-left corner, black on a white outline, as the processor does."""
    from PIL import ImageDraw, ImageFont
    for i, (frame, t) in enumerate(zip(video.frames, video.timestamps)):
        size = int(min(frame.size) * 0.1)
        font = ImageFont.truetype(font_path, size) if font_path else ImageFont.load_default(size)
        hours, rest = divmod(t, 3600)
        text = f"time: {int(hours):02d}:{int(rest // 60):02d}:{rest % 60:05.02f}"
        frame = frame.copy()
        ImageDraw.Draw(frame).text((0, 0), text, font=font, fill=(0, 0, 0), stroke_width=int(size * 0.1),
                                   stroke_fill=(255, 255, 255))
        video.frames[i] = frame


# ---------------------------------------------------------------------------------------- per request

@dataclass
class MultimodalItem:
    modality: int                # IMAGE or VIDEO
    pixel_values: torch.Tensor   # [patches, C * patch * patch]
    grid_thw: torch.Tensor       # [1, 3]
    hash: str                    # of the processed pixels: equal content, equal key
    offset: int                  # index of its first placeholder token in the prompt
    num_tokens: int              # its placeholder tokens


@dataclass
class MultimodalInputs:
    """A processed multimodal prompt; made once at admission, kept with the request."""
    prompt_token_ids: list[int]
    items: list[MultimodalItem]  # in prompt order
    positions: torch.Tensor      # [3, L] rotary positions (t, h, w) of the prompt tokens
    rope_delta: int              # a token i >= L sits at i + rope_delta on all three axes
    embed_mask: torch.Tensor     # [L] bool: placeholder tokens (their embeddings come from the encoder)
    vision_mask: torch.Tensor    # [L] bool: tokens for the vision experts (placeholders, start/end tokens)
    _rows_before: torch.Tensor = field(init=False, repr=False)   # [L + 1] placeholder tokens before i

    def __post_init__(self):
        self._rows_before = torch.nn.functional.pad(self.embed_mask.long().cumsum(0), (1, 0))

    @property
    def hashes(self) -> list[str]:
        return [item.hash for item in self.items]

    def hashes_before(self, end: int) -> list[str]:
        """Hashes of the items whose placeholders start before token `end`: the extra prefix-cache key
        of a block ending at `end`."""
        return [item.hash for item in self.items if item.offset < end]

    def get_positions(self, start: int, end: int) -> torch.Tensor:
        """[3, end - start] positions of tokens start..end-1, generated tokens included."""
        L = len(self.prompt_token_ids)
        prompt = self.positions[:, start:min(end, L)]
        extra = torch.arange(max(start, L), max(end, L)) + self.rope_delta
        return torch.cat([prompt, extra.expand(3, -1)], dim=1)

    def encode(self, model) -> torch.Tensor | None:
        """[placeholder tokens, hidden]: the encoder outputs of all items, in prompt order (None: no items)."""
        device, out = next(model.parameters()).device, []
        for modality, encode in ((IMAGE, model.encode_images), (VIDEO, model.encode_videos)):
            items = [it for it in self.items if it.modality == modality]
            if items:
                pixels = torch.cat([it.pixel_values for it in items]).to(device)
                grids = torch.cat([it.grid_thw for it in items])
                out += zip(items, encode(pixels, grids).split([it.num_tokens for it in items]))
        out.sort(key=lambda pair: pair[0].offset)
        return torch.cat([rows for _, rows in out]) if out else None


@dataclass
class MultimodalEmbeds:
    """The multimodal part of one model step over T flat tokens."""
    embeds: torch.Tensor | None  # [embed_mask.sum(), hidden]: encoder rows, in token order (None: no rows)
    embed_mask: torch.Tensor     # [T] bool: tokens whose embedding is replaced by the next row
    vision_mask: torch.Tensor    # [T] bool: tokens routed to the vision experts

    @classmethod
    def for_step(cls, parts: list[tuple[MultimodalInputs | None, torch.Tensor | None, int, int]],
                 device=None) -> MultimodalEmbeds | None:
        """parts: per scheduled sequence, in batch order, (its inputs or None for text-only, its encoder
        output from `MultimodalInputs.encode`, first token, end token) of this step's tokens. None when
        no token of the step is a vision token (decode steps, text prompts)."""
        embeds, embed_mask, vision_mask = [], [], []
        for mm, encoded, start, end in parts:
            L = len(mm.prompt_token_ids) if mm is not None else 0
            n_prompt = max(0, min(end, L) - start)
            pad = torch.zeros(end - start - n_prompt, dtype=torch.bool)
            if mm is None or n_prompt == 0:
                embed_mask.append(pad)
                vision_mask.append(pad)
                continue
            embed_mask.append(torch.cat([mm.embed_mask[start:start + n_prompt], pad]))
            vision_mask.append(torch.cat([mm.vision_mask[start:start + n_prompt], pad]))
            first, last = int(mm._rows_before[start]), int(mm._rows_before[start + n_prompt])
            if last > first:
                embeds.append(encoded[first:last])
        vision = torch.cat(vision_mask)
        if not vision.any():
            return None
        return cls(torch.cat(embeds) if embeds else None, torch.cat(embed_mask).to(device), vision.to(device))


# ------------------------------------------------------------------------------------------ processor

def _read_processor_configs(model_path: str) -> tuple[dict, dict]:
    """(image, video) processor settings: processor_config.json's nested dicts (transformers >= 5), else
    preprocessor_config.json and video_preprocessor_config.json."""
    def read(name):
        path = os.path.join(model_path, name)
        return json.loads(open(path).read()) if os.path.isfile(path) else {}
    nested = read("processor_config.json")
    image = nested.get("image_processor") or read("preprocessor_config.json")
    video = nested.get("video_processor") or read("video_preprocessor_config.json")
    return image, video


class MultimodalProcessor:
    """Prompt (text or token ids) + {"image": [...], "video": [...]} -> `MultimodalInputs`.

    A video is bytes, a path or URL, a list of frames, or a dict {"video": ..., "max_frames": n,
    "min_frames": n, "fps": f} (FastDeploy's form) overriding the processor config's sampling.
    """

    def __init__(self, model_path: str, tokenizer, config, limit_mm_per_prompt: dict[str, int] | None = None):
        from transformers.models.ernie4_5_vl_moe.image_processing_pil_ernie4_5_vl_moe import (
            Ernie4_5_VLMoeImageProcessorPil)
        image_cfg, video_cfg = _read_processor_configs(model_path)
        self.image_processor = Ernie4_5_VLMoeImageProcessorPil(**image_cfg)
        self.video_cfg = {**VIDEO_DEFAULTS, **video_cfg}
        self.font = None
        if self.video_cfg["draw_on_frames"]:
            font = os.path.join(model_path, self.video_cfg["font"] or "")
            if os.path.isfile(font):
                self.font = font
            else:
                logger.warning("no font %r beside the model: video timestamps use PIL's default font", font)
        self.tokenizer = tokenizer
        self.config = config
        self.limits = limit_mm_per_prompt or {}
        self.merge = self.image_processor.merge_size
        self.vision_ids = {config.image_token_id, config.video_token_id, config.image_start_token_id,
                           config.image_end_token_id, config.video_start_token_id, config.video_end_token_id}

    def process(self, prompt: str | None = None, prompt_token_ids: list[int] | None = None,
                multimodal_data: dict | None = None) -> MultimodalInputs:
        data = multimodal_data or {}
        images, videos = list(data.get("image") or []), list(data.get("video") or [])
        for kind, given in (("image", images), ("video", videos)):
            limit = self.limits.get(kind)
            if limit is not None and len(given) > limit:
                raise ValueError(f"the prompt has {len(given)} {kind}s, more than limit_mm_per_prompt"
                                 f"[{kind!r}] = {limit}")
        ids = prompt_token_ids if prompt is None else self._tokenize(prompt)
        items = [self._image(x) for x in images], [self._video(x) for x in videos]
        return self._expand(list(ids), *items)

    def _tokenize(self, prompt: str) -> list[int]:
        to_token = self.tokenizer.convert_ids_to_tokens
        prompt = prompt.replace(IMAGE_MARKER, to_token(self.config.image_token_id))
        prompt = prompt.replace(VIDEO_MARKER, to_token(self.config.video_token_id))
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def _image(self, src) -> tuple[np.ndarray, list[int]]:
        out = self.image_processor(images=[load_image(src)], return_tensors="np")
        return out["pixel_values"], out["image_grid_thw"][0].tolist()

    def _video(self, src) -> tuple[np.ndarray, list[int]]:
        cfg = self.video_cfg
        opts = src if isinstance(src, dict) else {"video": src}
        video = load_video(opts["video"], opts.get("min_frames", cfg["min_frames"]),
                           opts.get("max_frames", cfg["max_frames"]), opts.get("fps", cfg["fps"]))
        if cfg["draw_on_frames"]:
            draw_timestamps(video, self.font)
        frames = video.frames + video.frames[-1:] * (len(video.frames) % 2)    # pairs of frames
        overrides = {k: cfg[k] for k in ("size", "image_mean", "image_std", "rescale_factor", "resample")
                     if k in cfg}
        out = self.image_processor(images=frames, return_tensors="np", **overrides)
        _, h, w = out["image_grid_thw"][0].tolist()
        return out["pixel_values"], [len(frames), h, w]

    def _expand(self, ids: list[int], images: list, videos: list) -> MultimodalInputs:
        """Each image/video token of `ids` becomes its item's placeholder run; positions as transformers'
        `get_rope_index`: text runs count up, an item spans a (t, h, w) grid from the current position,
        after which the position moves on by max(h, w) (not by its time extent)."""
        cfg = self.config
        token_of = {IMAGE: cfg.image_token_id, VIDEO: cfg.video_token_id}
        queues = {IMAGE: list(images), VIDEO: list(videos)}
        for kind, marker in ((IMAGE, IMAGE_MARKER), (VIDEO, VIDEO_MARKER)):
            marks, given = ids.count(token_of[kind]), len(queues[kind])
            if marks != given:
                name = "image" if kind == IMAGE else "video"
                raise ValueError(f"the prompt has {marks} {name} placeholders ({marker}) but {given} {name}s "
                                 "were given")
        kind_of = {token_of[IMAGE]: IMAGE, token_of[VIDEO]: VIDEO}
        out_ids, types, positions, items, pos = [], [], [], [], 0
        for kind, run in itertools.groupby(ids, key=lambda tok: kind_of.get(tok, TEXT)):
            run = list(run)
            if kind == TEXT:
                positions.append(torch.arange(pos, pos + len(run)).expand(3, -1))
                out_ids += run
                types += [TEXT] * len(run)
                pos += len(run)
                continue
            for tok in run:         # adjacent items: one run of marker tokens
                pixels, (t, h, w) = queues[kind].pop(0)
                grid = (t // (1 if kind == IMAGE else 2), h // self.merge, w // self.merge)
                axes = torch.meshgrid(*(torch.arange(n) + pos for n in grid), indexing="ij")
                positions.append(torch.stack(axes).reshape(3, -1))
                n = grid[0] * grid[1] * grid[2]
                digest = xxhash.xxh3_128(pixels.tobytes() + repr((kind, t, h, w)).encode()).hexdigest()
                items.append(MultimodalItem(kind, torch.from_numpy(pixels), torch.tensor([[t, h, w]]), digest,
                                            len(out_ids), n))
                out_ids += [tok] * n
                types += [kind] * n
                pos += max(grid[1], grid[2])
        positions = torch.cat(positions, dim=1) if positions else torch.zeros(3, 0, dtype=torch.long)
        types = torch.tensor(types, dtype=torch.long)
        vision = torch.tensor([tok in self.vision_ids for tok in out_ids], dtype=torch.bool)
        delta = int(positions.max()) + 1 - len(out_ids) if len(out_ids) else 0
        return MultimodalInputs(out_ids, items, positions, delta, types != TEXT, vision)
