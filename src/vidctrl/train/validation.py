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
    from vidctrl.train.tracking import Tracker

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


def load_camera(path: str | Path, height: int, width: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A camera trajectory .txt for validation: its first `frames` rows, as VideoX-Fun's inference
    takes them (`process_pose_file(txt, width, height)[:video_length]`), and a picture of the rays:
    `((frames, 19) float64, (F, 3, H, W) uint8)`. The rows, not the embedding, are kept (at 81 x
    832 x 480 the adapter input is 0.8 GB); the picture shows each pixel's ray direction as a colour
    (x, y, z -> R, G, B), so the contact sheet's control row shows how the camera turns.
    """
    from vidctrl.adapters.camera import VIDEOX_POSE_HW, plucker_embedding
    from vidctrl.data.camera import is_camera_file, read_camera_txt

    if not is_camera_file(path):
        raise ValueError(f"validation control {path}: the camera preset takes camera trajectory .txt files "
                         "(--validation_control_videos), one per prompt")
    rows = torch.from_numpy(read_camera_txt(path).to_array())
    if len(rows) < frames:
        raise ValueError(f"validation camera {path} has {len(rows)} poses, validation needs {frames}: pass "
                         f"--validation_frames {(len(rows) - 1) // 4 * 4 + 1} or a longer trajectory")
    rows = rows[:frames]
    shown = torch.empty((frames, 3, height, width), dtype=torch.uint8)
    for frame in range(frames):  # frame by frame (with frame 0, the pose origin): a few MB at a time
        pair = rows[[0, frame]]
        rays = plucker_embedding(pair[:, 1:5], pair[:, 7:].reshape(-1, 3, 4), height, width,
                                 original_hw=VIDEOX_POSE_HW)[1, 3:]
        shown[frame] = ((rays + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return rows, shown


def validation_size(config: TrainConfig) -> tuple[int, int, int]:
    """(height, width, frames) of the validation videos: the flags, else the training size."""
    from vidctrl.data.sampling import cut_to_4k_plus_1
    from vidctrl.data.shapes import fixed_size

    v = config.validation
    size = fixed_size(config.data) or (config.data.video_sample_size, config.data.video_sample_size)
    frames = v.validation_frames or int(cut_to_4k_plus_1(config.data.video_sample_n_frames))
    return v.validation_height or size[0], v.validation_width or size[1], frames


def control_samples(config: TrainConfig, height: int, width: int, frames: int, *,
                    start_images: Sequence[str] | None = None, camera: bool = False) -> list[ValidationSample]:
    """One sample per prompt, each with its control (a video, or with `camera` a trajectory .txt), and
    its reference image and first-frame (start) image where given."""
    v = config.validation
    prompts = v.validation_prompts or []
    if v.validation_prompt_separator and len(prompts) == 1:
        prompts = prompts[0].split(v.validation_prompt_separator)
    controls, images, starts = v.validation_control_videos or [], v.validation_images or [], start_images or []
    if not prompts or len(controls) != len(prompts) or any(len(x) not in (0, len(prompts)) for x in (images, starts)):
        kind = "camera trajectory .txt" if camera else "control video"
        raise ValueError(
            f"validation needs one --validation_control_videos ({kind}) per --validation_prompts (and optionally "
            f"one --validation_images / --validation_start_images each); got {len(prompts)} prompts, "
            f"{len(controls)} controls, {len(images)} images, {len(starts)} start images"
        )
    samples = []
    for i, prompt in enumerate(prompts):
        reference = load_reference(images[i], height, width) if images else None
        start = load_reference(starts[i], height, width) if starts else None
        if camera:
            # The camera rows, and their ray directions as a picture for the contact sheet.
            rows, shown = load_camera(controls[i], height, width, frames)
            samples.append(ValidationSample(prompt=prompt, reference=reference, control=shown, name=f"sample-{i}",
                                            start=start, camera=rows))
        else:
            control, fps = load_control(controls[i], height, width, frames)
            samples.append(ValidationSample(prompt=prompt, reference=reference, control=control, name=f"sample-{i}",
                                            fps=fps, start=start))
    return samples


class ValidationRunner:
    """Runs a family's `generate` on fixed samples every `validation_steps` / `validation_epochs`."""

    def __init__(self, family: ModelFamily, config: TrainConfig, samples: Sequence[ValidationSample], *,
                 output_dir: Path, height: int, width: int, frames: int, tracker: Tracker | None = None) -> None:
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
                    shown = sample.reference if sample.reference is not None else sample.start
                    save_contact_sheet(sheet, shown, sample.control, video)
                    written += [mp4, sheet]
                    if self.tracker is not None:
                        self.tracker.log_validation(step, name, video=video, fps=sample.fps, mp4=mp4, sheet=sheet)
                    log.info("validation step %d: %s", step, mp4)
        finally:
            model.train(was_training)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return written
