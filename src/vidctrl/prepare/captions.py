"""Captions for prepared clips: Qwen2-VL / Qwen2.5-VL from a local folder, a text file, or one text.

DynamiCtrl's authors "select one frame from the video and use Qwen2-VL to understand the image
content, including the human's appearance and background details"; the VideoX-Fun captions describe
the action, the subject and the scene. `QwenVLCaptioner` shows the model one or several frames of a
clip (as consecutive images, which needs no video processor) with a prompt asking for the action,
the person's appearance and the background, and decodes greedily, several clips per batch.

The prompt is assembled in the Qwen chat format that both models' own chat templates produce (a
default system message, the images, the question, then the assistant turn), and the image tokens
are expanded here from the image processor's patch grid, so only the tokenizer and the image
processor are needed (transformers' Qwen2-VL processor class also wants torchvision for videos).
A caption is one line: whitespace, line breaks included, is collapsed to single spaces, so that it
fits DynamiCtrl's `NAME#####caption` lines.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vidctrl.data.records import Problem
from vidctrl.prepare import PrepareError

DEFAULT_PROMPT = (
    "Describe this video in one paragraph of plain sentences, for training a video generation model. "
    "First say what the person does and how they move, then describe the person's appearance (gender, "
    "approximate age, hair, clothes and their colours), then the background and the setting. "
    "Do not use lists, and do not mention images or frames."
)
SYSTEM_MESSAGE = "You are a helpful assistant."  # what Qwen2-VL's chat template inserts by default
MODEL_TYPES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}
MODEL_SOURCE = (
    "Qwen/Qwen2-VL-7B-Instruct or Qwen/Qwen2.5-VL-7B-Instruct (or their 2B/3B versions) from Hugging Face, "
    "e.g. `huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct --local-dir DIR`"
)
SEPARATORS = ("#####", "\t")


def one_line(text: str) -> str:
    """A caption as one line: runs of whitespace (line breaks included) become one space."""
    return " ".join(str(text).split())


def caption_frame_indices(frames: int, count: int) -> list[int]:
    """`count` frames spread evenly over a clip, each the middle of its share (one frame: the middle)."""
    count = max(1, min(count, frames))
    return [min(frames - 1, int((i + 0.5) * frames / count)) for i in range(count)]


@dataclass(frozen=True)
class CaptionItem:
    """A clip to caption: its name in the dataset, the raw video it came from, its prepared file."""

    name: str
    source: str  # path of the raw video relative to the videos folder
    video: str  # the prepared target video
    frames: int


class CaptionSource(Protocol):
    """Where captions come from. `identity` names the source and its settings: captions cached under
    another identity are made again."""

    identity: str
    needs_frames: bool

    def missing(self, items: Sequence[CaptionItem]) -> list[str]:
        """Names of the items this source has no caption for (checked before any work)."""
        ...

    def caption(self, items: Sequence[CaptionItem]) -> list[str]: ...


class FixedCaption:
    """The same caption for every clip."""

    needs_frames = False

    def __init__(self, text: str) -> None:
        self.text = one_line(text)
        self.identity = "fixed:" + hashlib.sha1(self.text.encode()).hexdigest()[:12]

    def missing(self, items: Sequence[CaptionItem]) -> list[str]:
        return []

    def caption(self, items: Sequence[CaptionItem]) -> list[str]:
        return [self.text for _ in items]


class FileCaptions:
    """Captions from a text file of `NAME#####caption` (DynamiCtrl's prompts.txt) or `NAME<TAB>caption`
    lines. NAME may be the clip's name, the raw video's path relative to the videos folder, its file
    name or its stem; a cut clip without a line of its own takes its video's caption."""

    needs_frames = False

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise PrepareError(
                Problem(
                    message="caption file not found",
                    file=str(self.path),
                    code="missing_file",
                    fix="pass the path of a text file with NAME#####caption lines to --caption_from",
                )
            ) from None
        self.by_name: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            for separator in SEPARATORS:
                if separator in line:
                    name, caption = line.split(separator, 1)
                    break
            else:
                raise PrepareError(
                    Problem(
                        message="no '#####' or tab between the video name and its caption",
                        file=str(self.path),
                        where=f"line {number}",
                        code="malformed_caption_line",
                        fix="write each line as NAME#####caption",
                    )
                )
            name = name.strip()
            if name in self.by_name:
                raise PrepareError(
                    Problem(
                        message=f"a second caption for {name}",
                        file=str(self.path),
                        where=f"line {number}",
                        code="duplicate_name",
                        fix="keep one caption per video",
                    )
                )
            self.by_name[name] = one_line(caption)
        digest = hashlib.sha1(json.dumps(self.by_name, sort_keys=True).encode()).hexdigest()[:12]
        self.identity = f"file:{digest}"

    def _lookup(self, item: CaptionItem) -> str | None:
        source = Path(item.source)
        for key in (item.name, Path(item.video).name, item.source, source.name, source.stem):
            if key in self.by_name:
                return self.by_name[key]
        return None

    def missing(self, items: Sequence[CaptionItem]) -> list[str]:
        return [item.source for item in items if self._lookup(item) is None]

    def caption(self, items: Sequence[CaptionItem]) -> list[str]:
        return [self._lookup(item) or "" for item in items]


def check_model_dir(path: str | os.PathLike[str]) -> str:
    """The model type of a local Qwen2-VL / Qwen2.5-VL folder; `PrepareError` naming what is missing."""
    folder = Path(path)
    needed = {
        "config.json": (folder / "config.json").is_file(),
        "preprocessor_config.json": (folder / "preprocessor_config.json").is_file(),
        "tokenizer.json or vocab.json + merges.txt": (folder / "tokenizer.json").is_file()
        or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()),
        "model weights (*.safetensors)": any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")),
    }
    missing = [name for name, present in needed.items() if not present]
    if not folder.is_dir() or missing:
        what = "is not a folder" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise PrepareError(
            Problem(
                message=f"the caption model folder {what}",
                file=str(folder),
                code="missing_model",
                fix=f"pass --caption_model a local copy of {MODEL_SOURCE}; vidctrl never downloads it itself",
            )
        )
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type not in MODEL_TYPES:
        raise PrepareError(
            Problem(
                message=f"the caption model is a {model_type!r} model; vidctrl captions with Qwen2-VL or "
                "Qwen2.5-VL (model_type qwen2_vl or qwen2_5_vl)",
                file=str(folder / "config.json"),
                code="unsupported_model",
                fix=f"pass a local copy of {MODEL_SOURCE}",
            )
        )
    return str(model_type)


class QwenVLCaptioner:
    """Qwen2-VL / Qwen2.5-VL through transformers, from a local folder (loaded on first use)."""

    needs_frames = True

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        prompt: str = DEFAULT_PROMPT,
        frames: int = 1,
        batch_size: int = 4,
        max_new_tokens: int = 160,
        max_pixels: int = 448 * 448,
        device: str = "auto",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.model_type = check_model_dir(self.model_dir)
        if frames < 1 or batch_size < 1 or max_new_tokens < 1:
            raise ValueError("caption frames, batch size and max_new_tokens must be at least 1")
        self.prompt = prompt
        self.frames = frames
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_pixels = max_pixels
        self.device = device
        settings = json.dumps([os.path.abspath(self.model_dir), prompt, frames, max_new_tokens, max_pixels])
        self.identity = "qwen-vl:" + hashlib.sha1(settings.encode()).hexdigest()[:12]
        self._loaded: tuple[Any, Any, Any] | None = None

    def missing(self, items: Sequence[CaptionItem]) -> list[str]:
        return []

    def _load(self) -> tuple[Any, Any, Any]:
        if self._loaded is None:
            import torch
            import transformers
            from transformers import AutoImageProcessor, AutoTokenizer

            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
            model_class = getattr(transformers, MODEL_TYPES[self.model_type])
            major = int(transformers.__version__.split(".")[0])
            dtype_kwarg = {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
            model = model_class.from_pretrained(self.model_dir, local_files_only=True, **dtype_kwarg)
            model.to(device).eval()
            tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            tokenizer.padding_side = "left"  # generation continues the last token of every row
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            images = AutoImageProcessor.from_pretrained(self.model_dir, local_files_only=True)
            self._loaded = (model, tokenizer, images)
        return self._loaded

    def _shrink(self, frame: np.ndarray) -> np.ndarray:
        """Scale a frame down to at most `max_pixels` (the processor then rounds to its patch grid);
        the vision encoder's cost grows with the pixel count, the caption hardly does."""
        from PIL import Image

        height, width = frame.shape[:2]
        if height * width <= self.max_pixels:
            return frame
        k = (self.max_pixels / (height * width)) ** 0.5
        size = (max(28, int(width * k)), max(28, int(height * k)))
        return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))

    def text(self, image_tokens: Sequence[int]) -> str:
        """The chat prompt for one clip whose images take `image_tokens` placeholder tokens each."""
        question = self.prompt
        if len(image_tokens) > 1:
            question = f"The images are {len(image_tokens)} frames of one video, in order. " + question
        vision = "".join(f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>" for n in image_tokens)
        return (
            f"<|im_start|>system\n{SYSTEM_MESSAGE}<|im_end|>\n"
            f"<|im_start|>user\n{vision}{question}<|im_end|>\n<|im_start|>assistant\n"
        )

    def caption_frames(self, clips: Sequence[Sequence[np.ndarray]]) -> list[str]:
        """One caption per clip, from its frames (uint8 RGB (H, W, 3) each)."""
        import torch

        model, tokenizer, processor = self._load()
        merge = int(getattr(processor, "merge_size", 2)) ** 2
        out: list[str] = []
        for start in range(0, len(clips), self.batch_size):
            batch = clips[start : start + self.batch_size]
            flat = [self._shrink(np.asarray(frame)) for frames in batch for frame in frames]
            vision = processor(images=flat, return_tensors="pt")
            grids = vision["image_grid_thw"]
            tokens = [int(g.prod()) // merge for g in grids]
            texts, position = [], 0
            for frames in batch:
                texts.append(self.text(tokens[position : position + len(frames)]))
                position += len(frames)
            encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            device = model.device
            inputs = {k: v.to(device) for k, v in encoded.items()}
            with torch.no_grad():
                generated = model.generate(
                    **inputs,
                    pixel_values=vision["pixel_values"].to(device, model.dtype),
                    image_grid_thw=grids.to(device),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                )
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            out.extend(one_line(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return out

    def caption(self, items: Sequence[CaptionItem]) -> list[str]:
        from vidctrl.data.video import read_frames

        clips = [read_frames(item.video, caption_frame_indices(item.frames, self.frames)) for item in items]
        return self.caption_frames(clips)


__all__ = [
    "DEFAULT_PROMPT",
    "CaptionItem",
    "CaptionSource",
    "FileCaptions",
    "FixedCaption",
    "QwenVLCaptioner",
    "caption_frame_indices",
    "check_model_dir",
    "one_line",
]
