"""CogVideoX-Fun inpainting conditions: random masks, their latent-size mask channel, and the noise
added to the kept pixels. Pure functions; every random draw comes from the ``torch.Generator`` passed in.

Facts (VideoX-Fun ``videox_fun/data/utils.py`` ``get_random_mask`` and
``scripts/cogvideox_fun/train.py``; CogVideoX-Fun ``cogvideox/data/dataset_image_video.py``):

- A mask is drawn per sample at pixel size, ``(F, 1, H, W)``, 1 = to generate, 0 = kept. The masked
  video is ``pixels * (1 - mask) - mask`` (masked pixels are -1, black in [-1, 1]).
- Mask kinds, VideoX-Fun (videos, probabilities 0.05 0.2 0.2 0.2 0.05 0.05 0.05 0.1 0.05 0.05):
  0 a block in every frame; 1 everything (text-to-video); 2 all frames after the first k, k in 1..4
  (image-to-video keeps frame 0); 3 all but the first and last k; 4 a block in a frame range;
  5 random pixels; 6 small blocks in up to half the frames; 7 an ellipse in frame 0; 8 a circle in
  frame 0; 9 each frame with probability 1/2. Images: kinds 0 1 7 8 with 0.2 0.7 0.05 0.05.
  CogVideoX-Fun (the seed repository): videos kinds 0-4 with 0.05 0.3 0.3 0.3 0.05, images 0 1 with
  0.2 0.8.
- The mask channel is ``1 - mask`` (1 = kept) resized to the latent grid by trilinear
  interpolation, frame 0 on its own (the VAE encodes it alone) and the rest together.
- A fully masked sample (text-to-video) has its whole inpaint condition zeroed with probability
  0.9 (``t2v_flag``), so the model also sees the zero condition that sampling without a reference uses.
- ``add_noise_in_inpaint_model`` (V1.1 InP): the masked video gets Gaussian noise of scale
  ``exp(N(-3, 0.5))`` per sample where it is not -1 (training) or of a fixed ratio 0.0563
  (sampling).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

MaskDistribution = Literal["videox_fun", "cogvideox_fun"]
MASK_KINDS: dict[str, dict[bool, tuple[tuple[int, ...], tuple[float, ...]]]] = {
    # distribution -> is_video -> (kinds, probabilities)
    "videox_fun": {
        True: ((0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (0.05, 0.2, 0.2, 0.2, 0.05, 0.05, 0.05, 0.1, 0.05, 0.05)),
        False: ((0, 1, 7, 8), (0.2, 0.7, 0.05, 0.05)),
    },
    "cogvideox_fun": {
        True: ((0, 1, 2, 3, 4), (0.05, 0.3, 0.3, 0.3, 0.05)),
        False: ((0, 1), (0.2, 0.8)),
    },
}
T2V_ZERO_PROBABILITY = 0.9
SAMPLING_NOISE_RATIO = 0.0563
#: pixels (B, 3, F, H, W) in [-1, 1] -> the VAE posterior's mean and std
Moments = Callable[[Tensor], tuple[Tensor, Tensor]]
#: posterior mean, std and a generator -> scaled latent samples
LatentSampler = Callable[[Tensor, Tensor, torch.Generator], Tensor]


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high) (torch.randint's convention)."""
    return int(torch.randint(low, high, (1,), generator=generator).item())


def _block(height: int, width: int, generator: torch.Generator) -> tuple[slice, slice]:
    """A block of 1/4 to 3/4 of each side around a random centre, clipped to the frame."""
    cx, cy = _randint(0, width, generator), _randint(0, height, generator)
    bw = _randint(width // 4, width // 4 * 3, generator)
    bh = _randint(height // 4, height // 4 * 3, generator)
    return (slice(max(cy - bh // 2, 0), min(cy + bh // 2, height)),
            slice(max(cx - bw // 2, 0), min(cx + bw // 2, width)))


def draw_inpaint_mask(frames: int, height: int, width: int, generator: torch.Generator,
                      distribution: MaskDistribution = "videox_fun") -> tuple[Tensor, int]:
    """One random mask ``(frames, 1, height, width)`` uint8 (1 = generate) and the kind drawn."""
    kinds, probs = MASK_KINDS[distribution][frames != 1]
    kind = kinds[int(torch.multinomial(torch.tensor(probs), 1, generator=generator).item())]
    mask = torch.zeros((frames, 1, height, width), dtype=torch.uint8)
    if kind == 0:
        ys, xs = _block(height, width, generator)
        mask[:, :, ys, xs] = 1
    elif kind == 1:
        mask[:] = 1
    elif kind == 2:
        mask[_randint(1, 5, generator):] = 1
    elif kind == 3:
        k = _randint(1, 5, generator)
        mask[k:-k] = 1
    elif kind == 4:
        ys, xs = _block(height, width, generator)
        before, after = _randint(0, frames // 2, generator), _randint(frames // 2, frames, generator)
        mask[before:after, :, ys, xs] = 1
    elif kind == 5:
        mask = torch.randint(0, 2, (frames, 1, height, width), generator=generator, dtype=torch.uint8)
    elif kind == 6:
        count = _randint(1, max(frames // 2, 1) + 1, generator)
        for index in torch.randperm(frames, generator=generator)[:count].tolist():
            bh, bw = _randint(1, height // 4 + 1, generator), _randint(1, width // 4 + 1, generator)
            top, left = _randint(0, height - bh + 1, generator), _randint(0, width - bw + 1, generator)
            mask[index, 0, top : top + bh, left : left + bw] = 1
    elif kind in (7, 8):
        cx, cy = _randint(0, width, generator), _randint(0, height, generator)
        short = min(height, width)
        a = _randint(short // 8, short // 4, generator)
        b = a if kind == 8 else _randint(short // 8, short // 4, generator)
        y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                              indexing="ij")
        mask[0, 0] = (((y - cy) ** 2) / b**2 + ((x - cx) ** 2) / a**2 < 1).to(torch.uint8)
    elif kind == 9:
        mask[torch.rand(frames, generator=generator) > 0.5] = 1
    return mask, kind


def latent_mask(keep: Tensor, latent_size: tuple[int, int, int]) -> Tensor:
    """``(B, 1, F, H, W)`` keep mask (1 = kept) -> ``(B, 1, T, h, w)``: frame 0 alone, the rest together."""
    frames, height, width = latent_size
    first = F.interpolate(keep[:, :, :1], size=(1, height, width), mode="trilinear", align_corners=False)
    if frames == 1:
        return first
    rest = F.interpolate(keep[:, :, 1:], size=(frames - 1, height, width), mode="trilinear", align_corners=False)
    return torch.cat([first, rest], dim=2)


def noise_kept_pixels(video: Tensor, generator: torch.Generator, ratio: float | None = None) -> Tensor:
    """Add per-sample Gaussian noise to the pixels that are not -1 (masked): scale ``exp(N(-3, 0.5))``
    when ``ratio`` is None (training), else ``ratio`` (sampling)."""
    batch = video.shape[0]
    if ratio is None:
        sigma = torch.exp(torch.normal(-3.0, 0.5, (batch,), generator=generator, device=generator.device))
    else:
        sigma = torch.full((batch,), ratio, device=generator.device)
    noise = torch.randn(video.shape, generator=generator, device=generator.device)
    noise = noise * sigma.view(-1, *([1] * (video.ndim - 1)))
    noise = noise.to(video.device, video.dtype)
    return video + torch.where(video == -1, torch.zeros_like(noise), noise)


@torch.no_grad()
def masked_video_inputs(pixels: Tensor, latent_size: tuple[int, int, int], generators: Sequence[torch.Generator], *,
                        distribution: MaskDistribution, add_noise: bool, moments: Moments) -> dict[str, Tensor]:
    """What the inpaint condition needs from the encoder, per sample of ``(B, 3, F, H, W)`` pixels (batched):
    a random mask drawn from the sample's generator, the latent keep mask ``(B, 1, T, h, w)`` unscaled,
    the masked video's posterior mean and std (`moments`), and whether the whole clip is masked
    (text-to-video). `add_noise`: `noise_kept_pixels` on the masked video first (InP V1.1)."""
    _, _, frames, height, width = pixels.shape
    masks, masked = [], []
    for video, generator in zip(pixels, generators, strict=True):
        mask = draw_inpaint_mask(frames, height, width, generator, distribution)[0]
        mask = mask.permute(1, 0, 2, 3)[None].to(pixels.device, torch.float32)  # (1, 1, F, H, W), 1 = generate
        masked_video = video[None] * (1 - mask.to(video.dtype)) - mask.to(video.dtype)
        if add_noise:
            masked_video = noise_kept_pixels(masked_video, generator)
        masks.append(mask)
        masked.append(masked_video)
    mask = torch.cat(masks)
    mean, std = moments(torch.cat(masked))
    return {
        "inpaint_keep": latent_mask(1 - mask, latent_size),
        "masked_mean": mean,
        "masked_std": std,
        "fully_masked": mask.flatten(1).min(dim=1).values == 1,
    }


def inpaint_condition_from(inputs: dict[str, Tensor], generator: torch.Generator, *, sample_latents: LatentSampler,
                           scaling_factor: float, device: torch.device | str) -> Tensor:
    """``(B, 17, T, h, w)`` from `masked_video_inputs`: the keep mask and a posterior sample of the masked
    video's latents (`sample_latents`), scaled, zeroed for 90% of fully masked samples
    (`T2V_ZERO_PROBABILITY`; that draw comes first)."""
    fully_masked = inputs["fully_masked"].to(device)
    zeroed = fully_masked & (torch.rand(len(fully_masked), generator=generator) < T2V_ZERO_PROBABILITY).to(device)
    masked_latents = sample_latents(inputs["masked_mean"], inputs["masked_std"], generator)
    keep = inputs["inpaint_keep"].float() * scaling_factor
    condition = torch.cat([keep, masked_latents], dim=1)
    return condition * (~zeroed).to(condition).view(-1, 1, 1, 1, 1)


@torch.no_grad()
def sampling_condition(reference: Tensor | None, latent_size: tuple[int, int, int], frames: int,
                       generator: torch.Generator, *, latent_channels: int, scaling_factor: float, add_noise: bool,
                       encode: Callable[[Tensor], Tensor], device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """``(1, T, 17, h, w)`` for sampling: frame 0 kept from the ``(3, H, W)`` uint8 reference, the rest
    generated (`encode`: pixels to scaled latent means); zeros without a reference."""
    t, h, w = latent_size
    if reference is None:
        return torch.zeros((1, t, latent_channels + 1, h, w), device=device)
    image = reference.to(device).to(dtype) / 127.5 - 1.0  # (3, H, W)
    video = torch.full((1, 3, frames, *image.shape[1:]), -1.0, device=device, dtype=dtype)
    video[:, :, 0] = image
    keep = torch.zeros((1, 1, frames, *image.shape[1:]), device=device)
    keep[:, :, 0] = 1
    if add_noise:
        video = noise_kept_pixels(video, generator, ratio=SAMPLING_NOISE_RATIO)
    mask = latent_mask(keep, latent_size) * scaling_factor
    return torch.cat([mask, encode(video)], dim=1).permute(0, 2, 1, 3, 4)


def first_frame_video(reference: Tensor | None, frames: int, height: int, width: int) -> Tensor:
    """``(F, 3, H, W)`` uint8: the reference as frame 0 and black (masked) frames after it."""
    video = torch.zeros((frames, 3, height, width), dtype=torch.uint8)
    if reference is not None:
        video[0] = reference
    return video
