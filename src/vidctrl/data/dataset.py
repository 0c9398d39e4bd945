"""The torch Dataset: a `ClipRequest` in, exactly the frames it asks for out.

The batch sampler has already decided the record, the output size and the frame count; the
dataset draws the clip's frame indices from the request's own seed (so the result does not depend
on which worker runs it), decodes those frames of the target and the same instants of the
control, scales them while converting to RGB and crops them to the bucket, and hands back uint8
tensors in the decoder's channels-last layout: `pixels` and `control` are (F, H, W, 3), a
`reference` frame (H, W, 3). Normalising and permuting happen on the accelerator, where they are
free; uint8 crosses the worker pipe at a quarter of the bytes of float32.

A sample that cannot be loaded is never replaced by another one: in lenient mode it comes back as
a `SkippedSample` (the collate function drops it and the trainer counts it), in strict mode it
raises a `DataError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vidctrl.data.buckets import controlnext_crop, resize_crop_params
from vidctrl.data.clips import ClipRules
from vidctrl.data.manifest import Manifest
from vidctrl.data.records import DataError, Problem, Record
from vidctrl.data.sampler import ClipRequest
from vidctrl.data.sampling import control_indices
from vidctrl.data.video import (
    MediaError,
    MediaInfo,
    frame_times,
    frames_correspond,
    is_variable_rate,
    read_frames,
)

ASPECT_TOLERANCE = 0.02
MAX_HANDS = 2  # ControlNeXt boxes at most two hands per frame


@dataclass(frozen=True)
class Geometry:
    """Resize a frame to (resize_h, resize_w), then crop (height, width) at (top, left)."""

    resize_h: int
    resize_w: int
    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class SkippedSample:
    """A sample that could not be loaded (lenient mode); never silently swapped for another."""

    index: int
    media: str
    reason: str


class ClipDataset(Dataset):
    """Target clip, control clip, caption (and camera / hand boxes / reference frame) per request."""

    def __init__(
        self,
        manifest: Manifest,
        rules: ClipRules,
        *,
        control_frame_policy: str = "error",
        strict: bool = False,
        hand_boxes: bool = False,
    ) -> None:
        self.manifest = manifest
        self.rules = rules
        self.control_frame_policy = control_frame_policy
        self.strict = strict
        self.hand_boxes = hand_boxes  # read meta_info (a preset that weighs hands); otherwise ignore it

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, request: ClipRequest) -> dict[str, Any] | SkippedSample:
        record = self.manifest[request.index]
        try:
            return self.load(record, request)
        except (MediaError, DataError, ValueError, OSError) as exc:
            reason = exc.problem.message if isinstance(exc, DataError) else str(exc)
            if self.strict:
                raise DataError(
                    Problem(
                        message=f"cannot be loaded: {reason}",
                        file=record.media,
                        sample=request.index,
                        fix="run `vidctrl data check` with the same flags to see every bad sample, "
                        "or train with --bad_sample_policy lenient to skip and count them",
                        code="load_failed",
                    )
                ) from exc
            return SkippedSample(request.index, record.media, reason)

    def load(self, record: Record, request: ClipRequest) -> dict[str, Any]:
        rng = np.random.default_rng(request.seed)
        if record.kind == "image":
            indices, reference_index = np.zeros(1, dtype=np.int64), None
        else:
            if record.frames is None:
                raise DataError(f"sample {request.index} ({record.media}) has no probed frame count")
            indices, reference_index = self.rules.sample(record.frames, request.frames, rng)
        if not (record.height and record.width):
            raise DataError(f"sample {request.index} ({record.media}) has no probed size")
        geometry = self.geometry(record.height, record.width, request.height, request.width, rng)

        wanted = indices if reference_index is None else np.append(indices, reference_index)
        frames = self._read(record.media, wanted, geometry, _info(record.kind, record.frames, record.fps,
                                                                   record.width, record.height))
        sample: dict[str, Any] = {
            "index": request.index,
            "seed": request.seed,  # for the family's draws made before encoding (a cache fixes them)
            "media": record.media,
            "caption": record.caption or "",
            "frame_indices": torch.from_numpy(indices.copy()),
            "pixels": frames[: len(indices)],
        }
        if reference_index is not None:
            sample["reference"] = frames[-1]
        if record.control:
            sample["control"] = self._read_control(record, indices, geometry)
        if record.camera:
            from vidctrl.data.camera import read_camera_txt

            cameras = read_camera_txt(record.camera)
            if record.frames and len(cameras) != record.frames:
                # As VideoX-Fun: the trajectory is stretched over the video, whatever its length.
                cameras = cameras.resampled(record.frames)
            # float64 as read (the original's numpy); the Plücker rays need the resize and the crop.
            sample["camera"] = torch.from_numpy(np.asarray(cameras.to_array()[indices], dtype=np.float64))
            g = geometry
            sample["camera_geometry"] = torch.tensor([g.resize_h, g.resize_w, g.top, g.left, g.height, g.width])
        if record.meta_info and self.hand_boxes:
            sample.update(self._hand_boxes(record, indices, geometry))
        return sample

    def geometry(self, src_h: int, src_w: int, height: int, width: int, rng: np.random.Generator) -> Geometry:
        """How this sample's frames become (height, width): resize to (resize_h, resize_w), crop at (top, left).

        One geometry per sample, computed from the target's size and applied to the control (of
        the same aspect, any size) and to the hand boxes, so that all three stay aligned.
        """
        if self.rules.crop == "stretch":
            return Geometry(height, width, 0, 0, height, width)
        if self.rules.crop == "random":
            top, left, crop_h, crop_w = controlnext_crop(src_h, src_w, height, width, rng)
            scale_y, scale_x = height / crop_h, width / crop_w
            resize_h, resize_w = max(height, round(src_h * scale_y)), max(width, round(src_w * scale_x))
            top = min(round(top * scale_y), resize_h - height)
            left = min(round(left * scale_x), resize_w - width)
            return Geometry(resize_h, resize_w, top, left, height, width)
        resize_h, resize_w, top, left = resize_crop_params(src_h, src_w, height, width)
        return Geometry(resize_h, resize_w, top, left, height, width)

    def _read(self, path: str, indices: np.ndarray, geometry: Geometry, info: MediaInfo | None = None) -> torch.Tensor:
        """(N, height, width, 3) uint8: decode, scaled during the RGB conversion, then cropped."""
        frames = read_frames(path, indices, info=info, size=(geometry.resize_h, geometry.resize_w))
        top, left = geometry.top, geometry.left
        if (top, left, geometry.height, geometry.width) != (0, 0, geometry.resize_h, geometry.resize_w):
            frames = np.ascontiguousarray(frames[:, top : top + geometry.height, left : left + geometry.width])
        return torch.from_numpy(frames)

    def _read_control(self, record: Record, indices: np.ndarray, geometry: Geometry) -> torch.Tensor:
        assert record.control is not None
        if record.kind == "video":
            same = frames_correspond(record.frames, record.control_frames, record.fps, record.control_fps,
                                     variable_rate=lambda: _variable_rate(record.media) or _variable_rate(record.control))
            if not same and self.control_frame_policy != "resample":
                raise DataError(
                    f"control video {record.control} has {record.control_frames} frames at {record.control_fps} fps, "
                    f"the target has {record.frames} at {record.fps} fps; re-render the control, or pass "
                    "--control_frame_policy resample"
                )
            wanted = indices if same else control_indices(
                indices, fps=record.fps, control_fps=record.control_fps,
                control_frames=record.control_frames or 0, frames=record.frames,
                # Real timestamps: a variable-frame-rate video's i / fps drifts from where frame i is.
                times=frame_times(record.media), control_times=frame_times(record.control),
            )
        else:
            wanted = np.zeros(1, dtype=np.int64)
        if record.width and record.height and record.control_width and record.control_height:
            target_aspect = record.width / record.height
            control_aspect = record.control_width / record.control_height
            if abs(target_aspect - control_aspect) / target_aspect > ASPECT_TOLERANCE:
                raise DataError(
                    f"control {record.control} is {record.control_width}x{record.control_height}, the target is "
                    f"{record.width}x{record.height}: the aspect ratios differ"
                )
        info = _info(record.kind, record.control_frames, record.control_fps, record.control_width,
                     record.control_height)
        return self._read(record.control, wanted, geometry, info)

    def _hand_boxes(self, record: Record, indices: np.ndarray, geometry: Geometry) -> dict[str, torch.Tensor]:
        """Per-frame hand boxes (x0, y0, x1, y1) in output pixels, NaN where a frame has fewer hands,
        and each hand's mean keypoint score (ControlNeXt weights hands scoring above 0.5)."""
        from vidctrl.data.layouts.controlnext import load_frame_meta

        assert record.meta_info is not None
        entries = load_frame_meta(record.meta_info)
        if len(entries) <= int(indices.max()):
            raise DataError(f"meta_info {record.meta_info} has {len(entries)} frames, frame {int(indices.max())} is needed")
        boxes = np.full((len(indices), MAX_HANDS, 4), np.nan, dtype=np.float32)
        scores = np.zeros((len(indices), MAX_HANDS), dtype=np.float32)
        for row, frame in enumerate(indices.tolist()):
            entry = entries[frame]
            hand_scores = entry.get("hands_score") or []
            for hand, box in enumerate((entry.get("hands_boxes") or [])[:MAX_HANDS]):
                (x0, y0), (x1, y1) = box
                boxes[row, hand] = (x0, y0, x1, y1)
                if hand < len(hand_scores) and len(hand_scores[hand]):
                    scores[row, hand] = float(np.mean(hand_scores[hand]))
        g = geometry
        scale = np.array([g.resize_w, g.resize_h, g.resize_w, g.resize_h], dtype=np.float32)
        shift = np.array([g.left, g.top, g.left, g.top], dtype=np.float32)
        return {"hand_boxes": torch.from_numpy(boxes * scale - shift), "hand_scores": torch.from_numpy(scores)}


def _variable_rate(path: str) -> bool:
    """Whether a video's frames last different times; asked only of a pair whose frame rates differ."""
    times = frame_times(path)
    return times is not None and is_variable_rate(times)


def _info(kind: str, frames: int | None, fps: float | None, width: int | None,
          height: int | None) -> MediaInfo | None:
    """The probed facts of a file from its manifest record (spares a header read per sample)."""
    if frames is None or width is None or height is None or kind != "video" or not fps:
        return None
    return MediaInfo(kind="video", frames=frames, fps=fps, width=width, height=height)


def collate_clips(samples: list[dict[str, Any] | SkippedSample]) -> dict[str, Any]:
    """Stack same-shape samples; skipped ones are listed under "skipped", never replaced."""
    loaded = [s for s in samples if not isinstance(s, SkippedSample)]
    batch: dict[str, Any] = {
        "skipped": [s for s in samples if isinstance(s, SkippedSample)],
        "size": len(loaded),
    }
    if not loaded:
        return batch
    # "encoded": a cached sample's deterministic encoding (`vidctrl.cache`), one dict per sample.
    for key in ("index", "seed", "media", "caption", "encoded"):
        if key in loaded[0]:
            batch[key] = [s[key] for s in loaded]
    for key in ("pixels", "control", "reference", "camera", "camera_geometry", "frame_indices", "hand_boxes",
                "hand_scores"):
        present = [s[key] for s in loaded if key in s]
        if not present:
            continue
        if len(present) != len(loaded):
            # A batch mixes samples with and without (say) a control file: that is a data error,
            # not something to paper over with zeros.
            missing = [s["media"] for s in loaded if key not in s]
            raise DataError(f"{len(missing)} samples of a batch have no {key} (e.g. {missing[0]}); every sample "
                            f"needs one when others in the dataset do")
        batch[key] = torch.stack(present)
    return batch
