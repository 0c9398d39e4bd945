"""CogVideoX-Fun inpainting conditions: the random mask kinds and their frequencies, the latent keep
mask (frame 0 on its own), and the noise on kept pixels."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from vidctrl.models.cogvideox.inpaint import MASK_KINDS, draw_inpaint_mask, latent_mask, noise_kept_pixels


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("distribution", ["videox_fun", "cogvideox_fun"])
@pytest.mark.parametrize("frames", [9, 1])
def test_mask_kinds_are_drawn_with_the_original_probabilities(distribution: str, frames: int) -> None:
    generator = _generator()
    draws = 3000
    counts = Counter(draw_inpaint_mask(frames, 16, 16, generator, distribution)[1] for _ in range(draws))
    kinds, probs = MASK_KINDS[distribution][frames != 1]
    assert set(counts) <= set(kinds)
    for kind, p in zip(kinds, probs, strict=True):
        assert abs(counts[kind] / draws - p) < 4 * (p * (1 - p) / draws) ** 0.5 + 1e-3, (kind, counts[kind])


def _mask_of_kind(kind: int, frames: int = 9, size: int = 32) -> torch.Tensor:
    generator = _generator(kind)
    for _ in range(2000):
        mask, drawn = draw_inpaint_mask(frames, size, size, generator)
        if drawn == kind:
            return mask
    raise AssertionError(f"kind {kind} never drawn")


def test_each_mask_kind_keeps_the_frames_the_original_keeps() -> None:
    assert (_mask_of_kind(1) == 1).all()  # text-to-video: everything generated
    kept_head = _mask_of_kind(2)
    first_masked = int(kept_head.flatten(1).amax(1).argmax())
    assert 1 <= first_masked <= 4 and (kept_head[:first_masked] == 0).all() and (kept_head[first_masked:] == 1).all()
    both_ends = _mask_of_kind(3).flatten(1).amax(1)
    assert both_ends[0] == 0 and both_ends[-1] == 0 and both_ends[4] == 1
    block = _mask_of_kind(0)
    assert (block == block[:1]).all() and 0 < block.float().mean() < 1  # the same block in every frame
    for kind in (7, 8):  # an ellipse / circle in frame 0 only
        shape = _mask_of_kind(kind)
        assert shape[0].sum() > 0 and (shape[1:] == 0).all()
    per_frame = _mask_of_kind(9).flatten(1)
    assert set(per_frame.amin(1).tolist()) == set(per_frame.amax(1).tolist())  # whole frames
    assert _mask_of_kind(0).shape == (9, 1, 32, 32)


def test_masks_are_reproducible_from_the_generator() -> None:
    a = [draw_inpaint_mask(9, 16, 16, _generator(3))[0] for _ in range(2)]
    b = draw_inpaint_mask(9, 16, 16, _generator(3))[0]
    assert torch.equal(a[0], a[1]) and torch.equal(a[0], b)


def test_latent_mask_resizes_frame_zero_on_its_own() -> None:
    keep = torch.zeros(2, 1, 9, 64, 64)
    keep[:, :, 0] = 1  # image-to-video: only the first frame is kept
    latent = latent_mask(keep, (3, 8, 8))
    assert latent.shape == (2, 1, 3, 8, 8)
    assert (latent[:, :, 0] == 1).all() and (latent[:, :, 1:] == 0).all()
    assert latent_mask(torch.ones(1, 1, 1, 16, 16), (1, 2, 2)).shape == (1, 1, 1, 2, 2)


def test_noise_is_added_to_kept_pixels_only() -> None:
    video = torch.full((4, 3, 5, 16, 16), -1.0)
    video[:, :, 0] = 0.25
    noisy = noise_kept_pixels(video, _generator())
    assert torch.equal(noisy[:, :, 1:], video[:, :, 1:])
    assert not torch.equal(noisy[:, :, 0], video[:, :, 0])
    fixed = noise_kept_pixels(video, _generator(), ratio=0.0563)
    assert abs((fixed[:, :, 0] - 0.25).std().item() - 0.0563) < 0.005
