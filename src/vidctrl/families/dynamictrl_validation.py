"""DynamiCtrl's frame rules and validation inputs: which frame counts CogVideoX 1.5 can train and
generate, the validation flags (several prompts or paths in one value, split on a separator, as the
original passes them), the validation size and the samples. `DynamiCtrl` checks them when parsing
and builds its `ValidationRunner` from them.
"""

from __future__ import annotations

from typing import Any

from vidctrl.data.shapes import DYNAMICTRL_SIZE_BUCKETS
from vidctrl.families.samples import ValidationSample

DEFAULT_SEPARATOR = ":::"
SIZE_BUCKETS = list(DYNAMICTRL_SIZE_BUCKETS)  # the original's --height_buckets / --width_buckets defaults


def latent_frames(frames: int, temporal_compression: int = 4) -> int:
    """Latent frames of a ``4k + 1``-frame clip."""
    return (frames - 1) // temporal_compression + 1


def frame_count_problem(frames: int, patch_size_t: int = 2) -> str | None:
    """Why CogVideoX 1.5 cannot train ``frames`` frames, or None: vidctrl trains ``4k + 1`` frames
    and the latent frame count ``k + 1`` must be a multiple of ``patch_size_t``."""
    if frames < 1 or (frames - 1) % 4:
        return f"{frames} is not 4k + 1 (the VAE compresses 4 frames into one latent after the first)"
    latents = latent_frames(frames)
    if latents % patch_size_t:
        lower, upper = frames - 4 * (latents % patch_size_t), frames + 4 * (patch_size_t - latents % patch_size_t)
        options = " or ".join(str(f) for f in (lower, upper) if f >= 1)
        return (f"{frames} frames give {latents} latent frames, which CogVideoX 1.5 (patch_size_t {patch_size_t}) "
                f"cannot patch; use {options}")
    return None


def split_values(values: list[str] | None, separator: str) -> list[str]:
    """Values of a repeatable validation flag, each also split on the separator (DynamiCtrl passes one
    string holding several prompts / paths)."""
    return [part for value in values or [] for part in value.split(separator)]


def validation_inputs(config: Any) -> tuple[list[str], list[str], list[str]]:
    """Prompts, reference images and driving (pose) videos of the validation flags, each split on
    ``--validation_prompt_separator``."""
    v = config.validation
    separator = v.validation_prompt_separator or DEFAULT_SEPARATOR
    return (split_values(v.validation_prompts, separator), split_values(v.validation_images, separator),
            split_values(v.validation_control_videos, separator))


def check_validation_flags(config: Any) -> None:
    """Refuse a ``--validation_frames`` CogVideoX 1.5 cannot generate and, with validation on, anything but
    one reference image and one driving video per prompt."""
    from vidctrl.config.fields import ConfigError

    v = config.validation
    if v.validation_frames is not None and frame_count_problem(v.validation_frames, patch_size_t=1):
        raise ConfigError(f"--validation_frames: {frame_count_problem(v.validation_frames, patch_size_t=1)}")
    if v.validation_steps or v.validation_epochs:
        prompts, images, videos = validation_inputs(config)
        if not prompts or len(images) != len(prompts) or len(videos) != len(prompts):
            raise ConfigError(
                "DynamiCtrl validation needs one --validation_images reference and one --validation_driving_videos "
                f"pose video per --validation_prompt (split by {v.validation_prompt_separator or DEFAULT_SEPARATOR!r}); "
                f"got {len(prompts)} prompts, {len(images)} images, {len(videos)} driving videos"
            )


def validation_size(config: Any) -> tuple[int, int, int]:
    """(height, width, frames) of validation videos: the validation flags, else --height/--width
    (the original's), else the first size bucket; frames: the frame bucket a long video trains on
    (the original generates 33 frames whatever it trains on)."""
    from vidctrl.data.sampling import dynamictrl_frame_count

    v, data = config.validation, config.data
    height = v.validation_height or data.height or (data.height_buckets or SIZE_BUCKETS)[0]
    width = v.validation_width or data.width or (data.width_buckets or SIZE_BUCKETS)[0]
    n = data.video_sample_n_frames
    frames = v.validation_frames or dynamictrl_frame_count(n, n, data.frame_buckets or [n])
    return height, width, frames


def validation_samples(config: Any) -> tuple[list[ValidationSample], int, int, int]:
    """One sample per prompt (its reference image and driving video), and the (height, width, frames)
    they are generated at (`validation_size`)."""
    from vidctrl.train.validation import load_control, load_reference

    prompts, images, videos = validation_inputs(config)
    height, width, frames = validation_size(config)
    samples = []
    for i, prompt in enumerate(prompts):
        control, fps = load_control(videos[i], height, width, frames)
        samples.append(ValidationSample(prompt=prompt, reference=load_reference(images[i], height, width),
                                        control=control, name=f"sample-{i}", fps=fps))
    return samples, height, width, frames
