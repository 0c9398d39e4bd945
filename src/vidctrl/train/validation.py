"""Validation: generate videos with the model being trained, from a reference image and a control
(pose) video, write them as mp4 with a contact sheet (reference | control | generated), free the
memory afterwards. The family generates; this module decides when, where and how it is shown."""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from vidctrl.families.base import ValidationSample

if TYPE_CHECKING:
    from vidctrl.config.train import TrainConfig
    from vidctrl.families.base import ModelFamily

log = logging.getLogger(__name__)


def load_reference(path: str | Path, height: int, width: int) -> torch.Tensor:
    """A reference image as (3, H, W) uint8, resized to cover and centre-cropped."""
    from vidctrl.data.buckets import resize_crop_params
    from vidctrl.data.video import read_image

    image = Image.fromarray(read_image(path))  # every image mode mapped to 8-bit RGB by its real range
    resize_h, resize_w, top, left = resize_crop_params(image.height, image.width, height, width)
    image = image.resize((resize_w, resize_h), Image.Resampling.BILINEAR)
    array = np.asarray(image)[top : top + height, left : left + width]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def load_control(path: str | Path, height: int, width: int, frames: int) -> tuple[torch.Tensor, float]:
    """The first `frames` frames of a control video (or a folder of PNGs) as (F, 3, H, W) uint8."""
    from vidctrl.data.buckets import resize_crop_params
    from vidctrl.data.video import probe, read_frames, read_image

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.png"), key=lambda p: (len(p.stem), p.stem))[:frames]
        if not files:
            raise FileNotFoundError(f"validation control folder {path} holds no .png frames")
        array = np.stack([read_image(f) for f in files])
        fps = 8.0
    else:
        info = probe(path)
        count = min(frames, info.frames)
        array = read_frames(path, np.arange(count))
        fps = info.fps or 8.0
    if len(array) < frames:
        raise ValueError(f"validation control {path} has {len(array)} frames, validation needs {frames}")
    resize_h, resize_w, top, left = resize_crop_params(array.shape[1], array.shape[2], height, width)
    video = torch.from_numpy(array).permute(0, 3, 1, 2).float()
    video = torch.nn.functional.interpolate(video, size=(resize_h, resize_w), mode="bilinear", antialias=True)
    video = video[:, :, top : top + height, left : left + width].round().clamp(0, 255).to(torch.uint8)
    return video, fps


class ValidationRunner:
    """Runs a family's `generate` on fixed samples every `validation_steps` / `validation_epochs`."""

    def __init__(self, family: ModelFamily, config: TrainConfig, samples: Sequence[ValidationSample], *,
                 output_dir: Path, height: int, width: int, frames: int, tracker: object | None = None) -> None:
        self.family = family
        self.config = config.validation
        self.samples = list(samples)
        self.output_dir = output_dir
        self.height, self.width, self.frames = height, width, frames
        self.tracker = tracker

    def due(self, *, global_step: int, epoch_end: bool, epoch: int = 0) -> bool:
        if epoch_end:
            every = self.config.validation_epochs
            return bool(every) and (epoch + 1) % every == 0
        every = self.config.validation_steps
        return bool(every) and global_step % every == 0

    @torch.no_grad()
    def run(self, model: torch.nn.Module, step: int, *, generator: torch.Generator, write: bool = True) -> list[Path]:
        """Generate every validation video; `write` False generates without writing (the other
        ranks of a sharded model, whose forward passes the main rank's generation needs)."""
        from vidctrl.train.media import save_contact_sheet, save_video_mp4

        folder = self.output_dir / "validation" / f"step-{step}"
        if write:
            folder.mkdir(parents=True, exist_ok=True)
        was_training = model.training
        model.eval()
        written: list[Path] = []
        try:
            for sample in self.samples:
                for k in range(self.config.num_validation_videos):
                    video = self.family.generate(
                        model, sample, height=self.height, width=self.width, frames=self.frames,
                        steps=self.config.validation_num_inference_steps,
                        guidance_scale=self.config.validation_guidance_scale, generator=generator,
                    )
                    if not write:
                        continue
                    name = sample.name if self.config.num_validation_videos == 1 else f"{sample.name}-{k}"
                    mp4 = save_video_mp4(folder / f"{name}.mp4", video, sample.fps)
                    sheet = folder / f"{name}.png"
                    save_contact_sheet(sheet, sample.reference, sample.control, video)
                    written += [mp4, sheet]
                    log.info("validation step %d: %s", step, mp4)
        finally:
            model.train(was_training)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return written
