"""Wan2.1-Fun Control-Camera: a camera trajectory as a per-pixel Plücker embedding for the adapter.

Control-Camera does not encode its control with the VAE. Every pixel of every frame gets the ray
through it, written as six Plücker numbers, and four frames are packed into the channels of one
latent frame; the transformer's ``control_adapter`` (``PixelUnshuffle(8)``, a patch-sized conv, one
residual block) adds the result to the patch embeddings. The facts below are VideoX-Fun's
(``videox_fun/data/utils.py``: ``process_pose_params``, ``get_relative_pose``, ``ray_condition``,
the last three taken from CameraCtrl; ``scripts/wan2.1_fun/train_control.py``: the packing, the
resampling and the crop):

1. Poses are relative to the first frame of the clip: camera-to-world ``c2w'_0 = I`` (set, not
   computed) and ``c2w'_i = w2c_0 @ c2w_i``. Moving the whole scene therefore changes nothing.
2. Intrinsics are stored normalised (fx, cx by the width, fy, cy by the height of the frames the
   trajectory was recorded with) and become pixels at the size the embedding is computed at:
   ``fx * W, fy * H, cx * W, cy * H``. When the recorded frames (VideoX-Fun assumes 1280x720 and
   cannot know better: the file does not say) are wider than ``W / H``, they were resized to the
   height and cropped in width, so ``fx`` is scaled by the resized width ``H * w0 / h0`` instead of
   ``W``; when narrower, ``fy`` by ``W * h0 / w0``. ``cx`` and ``cy`` keep ``W`` and ``H``, which is
   exact for a centred principal point (RealEstate10K's 0.5, 0.5) and what the models learnt.
3. Rays go through pixel centres ``(col + 0.5, row + 0.5)``; the camera-space direction
   ``((u - cx) / fx, (v - cy) / fy, 1)`` is normalised to unit length, then rotated to world
   space by ``c2w'``; the origin is the camera centre ``c2w'[:3, 3]``.
4. The six channels are ``[o x d, d]``: the moment (``torch.cross(o, d)``) first, then the unit
   direction.
5. Packing for the adapter: frame 0 is repeated four times, then the frames are grouped by four
   along time, one group per latent frame (the VAE compresses time by 4 with frame 0 alone), and a
   group's 4 x 6 values go to channel ``4 * c + k`` (Plücker channel ``c``, frame ``k`` of the
   group). 81 frames give 21 latent frames of 24 channels.
6. In training (bucketed data, the seeds' default) the camera rows of the file are first stretched
   linearly over the video's frame count (``F.interpolate(..., align_corners=True)`` on the raw
   numbers, rotation matrices included), then taken at the clip's frame indices; the embedding is
   computed at the resized size (the video's aspect, covering the bucket) and centre-cropped with
   the frames.

How a clip's camera input is built from these functions::

    intrinsics, w2c = resample_trajectory(traj.intrinsics, traj.w2c, video_frames)
    embedding = plucker_embedding(
        intrinsics[indices], w2c[indices], resize_h, resize_w,
        original_hw=VIDEOX_POSE_HW, crop=(top, left, height, width),
    )                                                  # (F, 6, height, width)
    camera = pack_camera_frames(embedding)             # (24, (F - 1) // 4 + 1, height, width)

and a batch of them, ``(B, 24, F_latent, H, W)`` at pixel resolution, is the ``camera_embedding``
argument of ``WanFunControlTransformer3DModel``. ``clip_camera_condition`` does the last two steps
from the file's rows and the loader's resize and crop; validation, like VideoX-Fun's inference,
computes the rays at the validation size with nothing cropped (the first F poses, not resampled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

PLUCKER_CHANNELS = 6
# VAE temporal compression of Wan: one latent frame per 4 video frames, frame 0 alone.
FRAMES_PER_LATENT = 4
# (height, width) of the frames VideoX-Fun assumes every camera file was normalised by
# (`process_pose_params(original_pose_width=1280, original_pose_height=720)`).
VIDEOX_POSE_HW = (720, 1280)

ArrayLike = Tensor | npt.ArrayLike


def _as_float64(values: ArrayLike, name: str) -> Tensor:
    # Pose algebra runs in float64 on the CPU, like the numpy of the original: it is a few 4x4
    # matrices per clip, and float64 does not exist on every accelerator.
    if not isinstance(values, Tensor):
        try:
            values = np.asarray(values, dtype=np.float64)  # lists would become float32 tensors
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be an array of numbers") from None
    tensor = torch.as_tensor(values)
    if tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64):
        return tensor.detach().to(device="cpu", dtype=torch.float64)
    raise TypeError(f"{name} must hold numbers, got dtype {tensor.dtype}")


def _check_trajectory(intrinsics: ArrayLike, w2c: ArrayLike) -> tuple[Tensor, Tensor]:
    intrinsics_t = _as_float64(intrinsics, "intrinsics")
    w2c_t = _as_float64(w2c, "w2c")
    if intrinsics_t.ndim != 2 or intrinsics_t.shape[1] != 4:
        raise ValueError(
            f"intrinsics must have shape (frames, 4) holding normalised fx, fy, cx, cy; got {tuple(intrinsics_t.shape)}"
        )
    if w2c_t.ndim != 3 or w2c_t.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(
            f"w2c must have shape (frames, 3, 4) or (frames, 4, 4) (world-to-camera [R | t]); got {tuple(w2c_t.shape)}"
        )
    if len(intrinsics_t) != len(w2c_t):
        raise ValueError(
            f"intrinsics has {len(intrinsics_t)} frames but w2c has {len(w2c_t)}; they must match"
        )
    if len(intrinsics_t) == 0:
        raise ValueError("the camera trajectory has no frames")
    if not (torch.isfinite(intrinsics_t).all() and torch.isfinite(w2c_t).all()):
        raise ValueError("the camera trajectory holds NaN or infinite values")
    return intrinsics_t, w2c_t


def _homogeneous(w2c: Tensor) -> Tensor:
    if w2c.shape[1] == 4:
        return w2c
    out = torch.eye(4, dtype=w2c.dtype).repeat(len(w2c), 1, 1)
    out[:, :3, :] = w2c
    return out


def relative_camera_to_world(w2c: ArrayLike) -> Tensor:
    """Camera-to-world matrices ``(F, 4, 4)`` float64 in the coordinates of camera 0.

    ``w2c`` is ``(F, 3, 4)`` or ``(F, 4, 4)`` world-to-camera. Frame 0 is the identity exactly and
    frame ``i`` is ``w2c_0 @ inv(w2c_i)`` (CameraCtrl's ``get_relative_pose`` with its
    ``cam_to_origin = 0``).
    """
    w2c_t = _as_float64(w2c, "w2c")
    if w2c_t.ndim != 3 or w2c_t.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(f"w2c must have shape (frames, 3, 4) or (frames, 4, 4); got {tuple(w2c_t.shape)}")
    world_to_camera = _homogeneous(w2c_t)
    singular = torch.linalg.det(world_to_camera[:, :3, :3]).abs() < 1e-12
    if singular.any():
        frame = int(torch.nonzero(singular)[0, 0])
        raise ValueError(
            f"the world-to-camera matrix of frame {frame} is singular (its rotation part has determinant 0)"
        )
    camera_to_world = torch.linalg.inv(world_to_camera)
    relative = world_to_camera[0] @ camera_to_world
    relative[0] = torch.eye(4, dtype=relative.dtype)
    return relative


def pixel_intrinsics(
    intrinsics: ArrayLike, height: int, width: int, *, original_hw: tuple[int, int] | None = None
) -> Tensor:
    """Normalised ``(F, 4)`` fx, fy, cx, cy -> pixels at ``(height, width)``, float64 ``(F, 4)``.

    ``original_hw`` is the (height, width) of the frames the intrinsics were normalised by; when its
    aspect differs from ``width / height`` the focal length of the cropped side is corrected (see
    the module notes, fact 2). ``None`` means the same aspect: no correction.
    """
    intrinsics_t = _as_float64(intrinsics, "intrinsics")
    if intrinsics_t.ndim != 2 or intrinsics_t.shape[1] != 4:
        raise ValueError(f"intrinsics must have shape (frames, 4); got {tuple(intrinsics_t.shape)}")
    _check_size(height, width)
    fx, fy, cx, cy = intrinsics_t.unbind(1)
    if (fx <= 0).any() or (fy <= 0).any():
        raise ValueError("focal lengths fx and fy must be positive")
    sample_ratio = width / height
    if original_hw is None:
        pose_ratio = sample_ratio
    else:
        original_h, original_w = original_hw
        if original_h <= 0 or original_w <= 0:
            raise ValueError(f"original_hw must be two positive sizes, got {original_hw}")
        pose_ratio = original_w / original_h
    if pose_ratio > sample_ratio:
        fx_px, fy_px = fx * (height * pose_ratio), fy * height
    else:
        fx_px, fy_px = fx * width, fy * (width / pose_ratio)
    return torch.stack([fx_px, fy_px, cx * width, cy * height], dim=1)


def _check_size(height: int, width: int) -> None:
    if int(height) != height or int(width) != width or height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive integers, got {height} x {width}")


def plucker_embedding(
    intrinsics: ArrayLike,
    w2c: ArrayLike,
    height: int,
    width: int,
    *,
    original_hw: tuple[int, int] | None = None,
    crop: tuple[int, int, int, int] | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The Plücker ray embedding of a camera trajectory: float32 ``(F, 6, H, W)``.

    Args:
        intrinsics: ``(F, 4)`` normalised fx, fy, cx, cy per frame.
        w2c: ``(F, 3, 4)`` or ``(F, 4, 4)`` world-to-camera matrices; made relative to frame 0.
        height, width: the image size the intrinsics are scaled to (in training, the resized
            frame before the centre crop).
        original_hw: (height, width) of the frames the intrinsics were normalised by;
            ``VIDEOX_POSE_HW`` reproduces VideoX-Fun, ``None`` assumes the aspect of (height, width).
        crop: ``(top, left, crop_h, crop_w)``: compute only this window of the (height, width) image,
            as the frames are cropped; the result is ``(F, 6, crop_h, crop_w)``. ``None``: all of it.
        device: where the result is made; default the device of ``intrinsics`` if it is a tensor.

    Channels: 0-2 the moment ``o x d``, 3-5 the unit world direction ``d`` (module notes 3-4).
    """
    intrinsics_t, w2c_t = _check_trajectory(intrinsics, w2c)
    if device is None:
        device = intrinsics.device if isinstance(intrinsics, Tensor) else "cpu"
    _check_size(height, width)
    top, left, out_h, out_w = (0, 0, height, width) if crop is None else crop
    if min(top, left) < 0 or out_h <= 0 or out_w <= 0 or top + out_h > height or left + out_w > width:
        raise ValueError(f"crop {crop} (top, left, height, width) does not fit in a {height} x {width} image")

    # As in the original: pose algebra in float64, then rays in float32.
    k = pixel_intrinsics(intrinsics_t, height, width, original_hw=original_hw).to(device, torch.float32)
    c2w = relative_camera_to_world(w2c_t).to(device, torch.float32)
    frames = len(k)
    cols = torch.arange(left, left + out_w, device=device, dtype=torch.float32) + 0.5
    rows = torch.arange(top, top + out_h, device=device, dtype=torch.float32) + 0.5
    out = torch.empty((frames, PLUCKER_CHANNELS, out_h, out_w), device=device, dtype=torch.float32)
    # Frame by frame: the working set is a few (H, W) planes, which stay in cache; the camera-space
    # rays are reused while the intrinsics do not change (the usual case).
    camera_rays: tuple[Tensor, Tensor, Tensor] | None = None
    previous_k: Tensor | None = None
    for frame in range(frames):
        if camera_rays is None or not torch.equal(k[frame], previous_k):
            fx, fy, cx, cy = k[frame].tolist()
            x = ((cols - cx) / fx).view(1, out_w)
            y = ((rows - cy) / fy).view(out_h, 1)
            z = torch.rsqrt(x * x + y * y + 1.0)  # (H, W): 1 / |(x, y, 1)|
            camera_rays = (x * z, y * z, z)
            previous_k = k[frame]
        x, y, z = camera_rays
        rotation = c2w[frame, :3, :3].tolist()
        ox, oy, oz = c2w[frame, :3, 3].tolist()
        plane = out[frame]
        for axis in range(3):
            r0, r1, r2 = rotation[axis]
            torch.mul(x, r0, out=plane[3 + axis]).add_(y, alpha=r1).add_(z, alpha=r2)
        dx, dy, dz = plane[3], plane[4], plane[5]
        # Moment o x d.
        torch.mul(dz, oy, out=plane[0]).add_(dy, alpha=-oz)
        torch.mul(dx, oz, out=plane[1]).add_(dz, alpha=-ox)
        torch.mul(dy, ox, out=plane[2]).add_(dx, alpha=-oy)
    return out


def pack_camera_frames(embedding: Tensor, frames_per_latent: int = FRAMES_PER_LATENT) -> Tensor:
    """Pack a per-frame embedding into latent frames for the camera adapter.

    ``(F, C, H, W)`` -> ``(C * 4, (F - 1) // 4 + 1, H, W)``, or batched ``(B, F, C, H, W)`` ->
    ``(B, C * 4, F_latent, H, W)``. ``F`` must be ``4k + 1``. Frame 0 is repeated 4 times, so latent
    frame 0 holds frame 0 four times and latent frame ``j >= 1`` holds frames ``4j - 3 .. 4j``;
    output channel ``4 * c + k`` is input channel ``c`` of frame ``k`` of the group (VideoX-Fun's
    repeat / view / transpose in its training script and pipeline).
    """
    if embedding.ndim not in (4, 5):
        raise ValueError(
            f"embedding must be (frames, channels, H, W) or (batch, frames, channels, H, W); got {tuple(embedding.shape)}"
        )
    batched = embedding.ndim == 5
    per_sample = embedding if batched else embedding.unsqueeze(0)
    batch, frames, channels, height, width = per_sample.shape
    group = frames_per_latent
    if frames < 1 or (frames - 1) % group:
        raise ValueError(
            f"the camera embedding has {frames} frames; packing {group} frames per latent frame needs "
            f"{group}k + 1 frames (cut the clip to {(max(frames, 1) - 1) // group * group + 1})"
        )
    latent_frames = (frames - 1) // group + 1
    # Frame index in each slot of the (latent frame, frame in group) grid: frame 0 fills group 0.
    index = torch.cat([torch.zeros(group - 1, dtype=torch.long), torch.arange(frames)]).view(
        latent_frames, group
    )
    out = per_sample.new_empty((batch, channels, group, latent_frames, height, width))
    # One plain copy per (latent frame, slot): source and destination planes are both contiguous.
    for latent in range(latent_frames):
        for slot in range(group):
            out[:, :, slot, latent] = per_sample[:, int(index[latent, slot])]
    out = out.view(batch, channels * group, latent_frames, height, width)
    return out if batched else out[0]


def clip_camera_condition(
    rows: ArrayLike,
    geometry: tuple[int, int, int, int, int, int],
    *,
    original_hw: tuple[int, int] | None = VIDEOX_POSE_HW,
    device: torch.device | str | None = None,
) -> Tensor:
    """The adapter input of one clip, as VideoX-Fun's training builds it: float32 ``(24, F_latent, h, w)``.

    Args:
        rows: ``(F, 19)`` camera file rows at the clip's frames (frame, fx, fy, cx, cy, 0, 0, 3x4
            world-to-camera), already stretched over the video (fact 6).
        geometry: ``(resize_h, resize_w, top, left, height, width)``: how the clip's frames were
            resized and cropped. The embedding is computed at the resized size, with the focal
            correction for ``original_hw`` (fact 2), and the crop window is kept, so rays stay
            aligned with the cropped pixels (``process_pose_params`` at ``resize_size``, then
            ``CenterCrop`` in ``train_control.py``).
        original_hw: the size the intrinsics were normalised by; VideoX-Fun assumes 1280x720.
    """
    rows_t = _as_float64(rows, "camera rows")
    if rows_t.ndim != 2 or rows_t.shape[1] != 19:
        raise ValueError(f"camera rows must have shape (frames, 19); got {tuple(rows_t.shape)}")
    resize_h, resize_w, top, left, height, width = (int(v) for v in geometry)
    embedding = plucker_embedding(
        rows_t[:, 1:5], rows_t[:, 7:].reshape(-1, 3, 4), resize_h, resize_w,
        original_hw=original_hw, crop=(top, left, height, width), device=device,
    )
    return pack_camera_frames(embedding)


def stacked_camera_condition(samples: Sequence[Mapping[str, Tensor]], *, device: torch.device | str | None = None
                             ) -> Tensor:
    """`clip_camera_condition` of each sample's ``camera`` rows (F, 19) and ``camera_geometry`` (the
    resize and crop of its frames), stacked into a batch: what the adapter takes."""
    if any("camera_geometry" not in s for s in samples):
        raise ValueError("cached camera samples lack the frames' resize and crop (written by an older vidctrl); "
                         "rebuild the cache with `vidctrl cache`")
    return torch.stack([clip_camera_condition(s["camera"], s["camera_geometry"].tolist(), device=device)
                        for s in samples])


def resample_trajectory(intrinsics: ArrayLike, w2c: ArrayLike, num_frames: int) -> tuple[Tensor, Tensor]:
    """Stretch a trajectory of N poses over ``num_frames`` frames by linear interpolation (float64).

    VideoX-Fun's training data does this to every camera file before taking the clip's frame
    indices: output frame ``i`` sits at ``i * (N - 1) / (num_frames - 1)`` of the input (the ends
    meet, ``align_corners=True``) and every number, including the rotation entries, is interpolated
    linearly, so an interpolated rotation is only approximately orthonormal, as in the original.
    Returns ``(intrinsics (num_frames, 4), w2c (num_frames, 3 or 4, 4))``.
    """
    intrinsics_t, w2c_t = _check_trajectory(intrinsics, w2c)
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames}")
    count = len(intrinsics_t)
    position = torch.linspace(0, count - 1, int(num_frames), dtype=torch.float64)
    lower = position.floor().long().clamp(max=count - 1)
    upper = (lower + 1).clamp(max=count - 1)
    weight = position - lower

    def lerp(values: Tensor) -> Tensor:
        w = weight.view(-1, *([1] * (values.ndim - 1)))
        return values[lower] + (values[upper] - values[lower]) * w

    return lerp(intrinsics_t), lerp(w2c_t)


__all__ = [
    "FRAMES_PER_LATENT",
    "PLUCKER_CHANNELS",
    "VIDEOX_POSE_HW",
    "clip_camera_condition",
    "pack_camera_frames",
    "pixel_intrinsics",
    "plucker_embedding",
    "relative_camera_to_world",
    "resample_trajectory",
]
