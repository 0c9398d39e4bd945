"""Whole-body pose with DWPose's two ONNX models on ONNX Runtime, decoded to OpenPose keypoints.

The released pose-control models (Wan2.1-Fun Control, ControlNeXt-SVD-v2, DynamiCtrl) were trained on
skeletons that DWPose drew from these two models, so this module reproduces DWPose's inference
(IDEA-Research/DWPose `ControlNet-v1-1-nightly/annotator/dwpose/onnxdet.py`, `onnxpose.py`,
`wholebody.py`; the same code ships in ControlNeXt-SVD-v2 `dwpose/`) step by step:

1. Person detection, YOLOX-L (`yolox_l.onnx`, input `images` 1x3x640x640, output `output`
   1x8400x85): the frame is scaled by r = min(640 / H, 640 / W) (bilinear), placed at the top-left
   of a 640x640 canvas of grey 114, fed as float 0..255 without normalisation. Each of the 8400
   anchors (strides 8, 16, 32) gives centre offsets and log sizes, objectness and 80 class scores
   (both already through a sigmoid); score = objectness x class score. Boxes scoring above 0.1 go
   through class-wise NMS (IoU 0.45, areas with OpenCV's +1 pixel convention); people (class 0)
   scoring above 0.3 are kept. A frame without any person is estimated as if one person filled it
   (DWPose feeds the whole frame as the box), so the skeleton then depends on the keypoint scores.
2. Whole-body keypoints, DWPose-L (`dw-ll_ucoco_384.onnx`, input `input` 1x3x384x288, outputs
   `simcc_x` 1x133x576 and `simcc_y` 1x133x768): each person box is grown by 1.25, widened to the
   model's 3:4 aspect, and cut out with an affine warp (bilinear, black outside the frame) to
   288x384; pixels are normalised with ImageNet's mean (123.675, 116.28, 103.53) and std (58.395,
   57.12, 57.375) in the frame's channel order. SimCC decoding: the argmax bin of each axis divided
   by the split ratio (2.0: 576 bins for 288 pixels) is the keypoint in crop pixels; its score is the
   smaller of the two maxima, and a score <= 0 marks the keypoint as missing.
3. COCO-WholeBody's 133 points become OpenPose's 18 body points (the neck is the shoulders' mean,
   with score 1 when both shoulders score above 0.3 and 0 otherwise), 6 foot points, 68 face points
   and two hands of 21 (the person's left hand first). Coordinates are normalised by the frame size.

Frames are fed in RGB, as ControlNeXt does (decord frames); DWPose's own example passes OpenCV's BGR
to the detector, which was trained on BGR, while the pose model's mean and std are in RGB order.
The image operations are numpy versions of OpenCV's `resize` and `warpAffine` with INTER_LINEAR;
OpenCV computes them in fixed point, so pixels may differ from it by one level.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vidctrl.data.pose import hand_box, render_pose
from vidctrl.data.records import Problem
from vidctrl.prepare import PrepareError, require_onnxruntime

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
MODEL_SOURCE = "https://huggingface.co/yzd-v/DWPose"

DETECTOR_SIZE = (640, 640)  # (height, width)
DETECTOR_STRIDES = (8, 16, 32)
PAD_VALUE = 114
CANDIDATE_SCORE = 0.1  # boxes entering NMS
NMS_IOU = 0.45
PERSON_SCORE = 0.3  # people kept after NMS
PERSON_CLASS = 0

POSE_SIZE = (384, 288)  # (height, width) of dw-ll_ucoco_384
BOX_PADDING = 1.25
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
SIMCC_SPLIT_RATIO = 2.0
NECK_SHOULDER_SCORE = 0.3

NUM_WHOLEBODY = 133
# COCO-WholeBody index of each OpenPose body keypoint (vidctrl.data.pose.BODY_KEYPOINTS order);
# -1 is the neck, which COCO does not have.
OPENPOSE_FROM_COCO: tuple[int, ...] = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
COCO_LEFT_SHOULDER, COCO_RIGHT_SHOULDER = 5, 6
FOOT = slice(17, 23)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)


# --------------------------------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------------------------------


def model_files(
    pose_model_dir: str | os.PathLike[str] | None = None,
    *,
    detector: str | os.PathLike[str] | None = None,
    pose: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """The detector and pose model paths: explicit paths win, else the two files in `pose_model_dir`.

    Raises `PrepareError` naming every expected file that is missing and where to get it.
    """
    if pose_model_dir is None and (detector is None or pose is None):
        raise PrepareError(
            Problem(
                message="no pose models given",
                code="missing_model",
                fix=f"pass --pose_model_dir DIR holding {DETECTOR_FILE} and {POSE_FILE} (from "
                f"{MODEL_SOURCE}), or both --det_model PATH and --pose_model PATH",
            )
        )
    folder = Path(pose_model_dir) if pose_model_dir is not None else Path()
    det_path = Path(detector) if detector is not None else folder / DETECTOR_FILE
    pose_path = Path(pose) if pose is not None else folder / POSE_FILE
    missing = [str(p) for p in (det_path, pose_path) if not p.is_file()]
    if missing:
        raise PrepareError(
            Problem(
                message=f"pose model file{'s' if len(missing) > 1 else ''} not found: {', '.join(missing)}",
                code="missing_model",
                fix=f"DWPose needs {DETECTOR_FILE} (YOLOX-L person detector) and {POSE_FILE} (DWPose-L "
                f"whole-body, 384x288); download both from {MODEL_SOURCE} (also in ControlNeXt-SVD-v2's "
                "pretrained/DWPose/) into one folder and pass it as --pose_model_dir. vidctrl never "
                "downloads them itself",
            )
        )
    return det_path, pose_path


# --------------------------------------------------------------------------------------------------
# Image operations (OpenCV's INTER_LINEAR conventions)
# --------------------------------------------------------------------------------------------------


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of OpenCV's INTER_LINEAR resize along one axis: pixel centres
    aligned, no antialiasing, edge pixels repeated."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    lo = np.floor(pos)
    frac = pos - lo
    lo = lo.astype(np.int64)
    frac[lo < 0] = 0.0
    lo = np.maximum(lo, 0)
    frac[lo >= src - 1] = 0.0
    lo = np.minimum(lo, src - 1)
    return lo, np.minimum(lo + 1, src - 1), frac.astype(np.float32)


def resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)` for uint8 HxWxC."""
    y0, y1, fy = _linear_taps(image.shape[0], height)
    x0, x1, fx = _linear_taps(image.shape[1], width)
    img = image.astype(np.float32)
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def letterbox(frame: np.ndarray, size: tuple[int, int] = DETECTOR_SIZE) -> tuple[np.ndarray, float]:
    """YOLOX's input: the frame scaled by r (aspect kept) at the top-left of a grey canvas, as a
    float32 (3, H, W) array of 0..255 values; returns it and r."""
    height, width = frame.shape[:2]
    ratio = min(size[0] / height, size[1] / width)
    new_h, new_w = int(height * ratio), int(width * ratio)
    canvas = np.full((size[0], size[1], 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = resize_linear(frame, new_h, new_w)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), ratio


# --------------------------------------------------------------------------------------------------
# Person detection (YOLOX)
# --------------------------------------------------------------------------------------------------


def anchor_grid(
    size: tuple[int, int] = DETECTOR_SIZE, strides: Sequence[int] = DETECTOR_STRIDES
) -> tuple[np.ndarray, np.ndarray]:
    """Grid cells (x, y) of every anchor, row by row per stride, and each anchor's stride."""
    cells, steps = [], []
    for stride in strides:
        ys, xs = np.meshgrid(np.arange(size[0] // stride), np.arange(size[1] // stride), indexing="ij")
        cells.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        steps.append(np.full(len(cells[-1]), stride))
    return np.concatenate(cells).astype(np.float64), np.concatenate(steps).astype(np.float64)


def decode_yolox(
    raw: np.ndarray, size: tuple[int, int] = DETECTOR_SIZE, strides: Sequence[int] = DETECTOR_STRIDES
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) as x0, y0, x1, y1 in input pixels and class scores (N, C) = objectness x class,
    from YOLOX's raw (N, 5 + C) output of one image."""
    cells, steps = anchor_grid(size, strides)
    if len(raw) != len(cells):
        raise ValueError(
            f"the detector gave {len(raw)} anchors; a {size[1]}x{size[0]} input with strides "
            f"{tuple(strides)} has {len(cells)}"
        )
    raw = raw.astype(np.float64)
    centre = (raw[:, :2] + cells) * steps[:, None]
    half = np.exp(raw[:, 2:4]) * steps[:, None] / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    return boxes, raw[:, 4:5] * raw[:, 5:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Greedy non-maximum suppression, highest score first; box areas count the end pixels
    (w = x1 - x0 + 1) as DWPose does. Returns the kept indices in order."""
    order = np.argsort(scores, kind="stable")[::-1]
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(
            0.0, np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]) + 1
        )
        h = np.maximum(
            0.0, np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]) + 1
        )
        inter = w * h
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return np.array(keep, dtype=np.int64)


def person_boxes(
    raw: np.ndarray,
    ratio: float,
    *,
    size: tuple[int, int] = DETECTOR_SIZE,
    candidate_score: float = CANDIDATE_SCORE,
    person_score: float = PERSON_SCORE,
    iou: float = NMS_IOU,
) -> np.ndarray:
    """People in one frame, (M, 5): x0, y0, x1, y1 in frame pixels and the score, best first.

    NMS is class-wise, so only the person class matters: other classes never suppress a person.
    """
    boxes, scores = decode_yolox(raw, size)
    boxes = boxes / ratio
    person = scores[:, PERSON_CLASS]
    candidates = np.flatnonzero(person > candidate_score)
    if candidates.size == 0:
        return np.zeros((0, 5))
    kept = candidates[nms(boxes[candidates], person[candidates], iou)]
    kept = kept[person[kept] > person_score]
    return np.concatenate([boxes[kept], person[kept, None]], axis=1)


# --------------------------------------------------------------------------------------------------
# Person crops (top-down affine) and SimCC decoding
# --------------------------------------------------------------------------------------------------


def box_center_scale(box: Sequence[float], padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) and size (w, h) of an x0, y0, x1, y1 box, the size grown by `padding`."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2]), np.array([x1 - x0, y1 - y0]) * padding


def fix_aspect(scale: np.ndarray, aspect: float) -> np.ndarray:
    """Grow the short side of a (w, h) size until w / h == aspect."""
    w, h = float(scale[0]), float(scale[1])
    return np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])


def crop_matrix(center: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The 2x3 frame-to-crop affine map: the box centre goes to the crop centre, its width to the
    crop width (`size` is (height, width); `scale` must already have the crop's aspect)."""
    k = size[1] / float(scale[0])
    return np.array(
        [[k, 0.0, size[1] / 2 - k * float(center[0])], [0.0, k, size[0] / 2 - k * float(center[1])]]
    )


def image_to_crop(
    points: np.ndarray, center: np.ndarray, scale: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """Frame pixel coordinates (..., 2) to crop pixel coordinates."""
    m = crop_matrix(center, scale, size)
    return np.asarray(points, dtype=np.float64) @ m[:, :2].T + m[:, 2]


def crop_to_image(
    points: np.ndarray, center: np.ndarray, scale: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """Crop pixel coordinates (..., 2) back to the frame: DWPose's `kp / size * scale + center - scale / 2`."""
    wh = np.array([size[1], size[0]], dtype=np.float64)
    return np.asarray(points, dtype=np.float64) / wh * scale + center - scale / 2


def warp_crop(frame: np.ndarray, center: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`cv2.warpAffine(frame, crop_matrix(...), (w, h), flags=INTER_LINEAR)` with a black border,
    as float32 (h, w, 3). The map has no rotation, so rows and columns are sampled separately."""
    m = crop_matrix(center, scale, size)
    k = m[0, 0]
    xs = (np.arange(size[1], dtype=np.float64) - m[0, 2]) / k  # crop pixel u -> frame x
    ys = (np.arange(size[0], dtype=np.float64) - m[1, 2]) / k
    img = frame.astype(np.float32)

    def taps(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        lo = np.floor(pos).astype(np.int64)
        frac = (pos - lo).astype(np.float32)
        w_lo = np.where((lo >= 0) & (lo < n), 1 - frac, 0).astype(np.float32)
        w_hi = np.where((lo + 1 >= 0) & (lo + 1 < n), frac, 0).astype(np.float32)
        return np.clip(lo, 0, n - 1), np.clip(lo + 1, 0, n - 1), w_lo, w_hi

    y0, y1, wy0, wy1 = taps(ys, frame.shape[0])
    x0, x1, wx0, wx1 = taps(xs, frame.shape[1])
    rows = img[y0] * wy0[:, None, None] + img[y1] * wy1[:, None, None]
    return rows[:, x0] * wx0[None, :, None] + rows[:, x1] * wx1[None, :, None]


def normalise_crop(crop: np.ndarray) -> np.ndarray:
    """(h, w, 3) crop to the pose model's (3, h, w) input."""
    return np.ascontiguousarray(((crop - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1), dtype=np.float32)


def decode_simcc(
    simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = SIMCC_SPLIT_RATIO
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (N, K, 2) in crop pixels and scores (N, K) from SimCC vectors (N, K, bins).

    Each axis's argmax bin over `split_ratio` is the coordinate; the score is the smaller of the two
    maxima. Where the score is <= 0 the keypoint is -1 / split_ratio on both axes (DWPose marks it
    with bin -1), which callers treat as missing.
    """
    n, k, _ = simcc_x.shape
    flat_x, flat_y = simcc_x.reshape(n * k, -1), simcc_y.reshape(n * k, -1)
    locs = np.stack([flat_x.argmax(axis=1), flat_y.argmax(axis=1)], axis=-1).astype(np.float32)
    scores = np.minimum(flat_x.max(axis=1), flat_y.max(axis=1))
    locs[scores <= 0] = -1
    return (locs / split_ratio).reshape(n, k, 2), scores.reshape(n, k)


# --------------------------------------------------------------------------------------------------
# COCO-WholeBody -> OpenPose
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FramePose:
    """The people in one frame: normalised `[x, y, score]` keypoints (see `vidctrl.data.pose`).

    Missing keypoints (score <= 0 from the model) have NaN coordinates. `boxes` are the detected
    person boxes, normalised x0, y0, x1, y1; a frame where nobody was detected has none, while its
    keypoints come from the whole frame (DWPose's fallback).
    """

    body: np.ndarray  # (P, 18, 3) OpenPose order
    foot: np.ndarray  # (P, 6, 3) left big toe, small toe, heel, right ...
    face: np.ndarray  # (P, 68, 3)
    hands: np.ndarray  # (P, 2, 21, 3) the person's left hand, then right
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (D, 4)

    @property
    def people(self) -> int:
        return len(self.body)

    def dwpose_hands(self) -> np.ndarray:
        """(2P, 21, 3): every person's left hand, then every person's right hand (DWPose's order,
        also the order of ControlNeXt's `hands_score`)."""
        return np.concatenate([self.hands[:, 0], self.hands[:, 1]], axis=0)

    def render(self, height: int, width: int, *, face: bool = True) -> np.ndarray:
        """The skeleton image, drawn as DWPose's `draw_pose` draws it."""
        return render_pose(
            self.body, self.dwpose_hands(), self.face if face else None, height=height, width=width
        )

    def meta_info(self) -> dict[str, list]:
        """ControlNeXt's per-frame entry: person `boxes`, `hands_boxes` and `hands_score`, each hand's
        box paired by position with its 21 scores (a hand with no located point gets an empty box at
        the origin, so the pairing holds; its scores keep it out of the hand loss)."""
        hands = self.dwpose_hands()
        hand_boxes = []
        for hand in hands:
            box = hand_box(hand)
            hand_boxes.append([[0.0, 0.0], [0.0, 0.0]] if box is None else [list(box[0]), list(box[1])])
        return {
            "boxes": [[[float(b[0]), float(b[1])], [float(b[2]), float(b[3])]] for b in self.boxes],
            "hands_boxes": hand_boxes,
            "hands_score": [[float(s) for s in hand[:, 2]] for hand in hands],
        }


def wholebody_to_openpose(
    keypoints: np.ndarray, scores: np.ndarray, height: int, width: int, boxes: np.ndarray | None = None
) -> FramePose:
    """One frame's COCO-WholeBody keypoints (P, 133, 2) in frame pixels and scores (P, 133) as a
    `FramePose` (normalised by the frame size; `boxes` (D, 4+) in frame pixels)."""
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, NUM_WHOLEBODY, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, NUM_WHOLEBODY)
    xy = keypoints / np.array([width, height], dtype=np.float64)
    xy = np.where((scores > 0)[..., None], xy, np.nan)
    points = np.concatenate([xy, scores[..., None]], axis=-1)
    body = np.empty((len(points), len(OPENPOSE_FROM_COCO), 3))
    for openpose, coco in enumerate(OPENPOSE_FROM_COCO):
        if coco >= 0:
            body[:, openpose] = points[:, coco]
    # DWPose's neck: the mean of the shoulders (located or not), scored 1 when both are confident.
    shoulders = keypoints[:, [COCO_LEFT_SHOULDER, COCO_RIGHT_SHOULDER]] / np.array([width, height])
    both = (scores[:, COCO_LEFT_SHOULDER] > NECK_SHOULDER_SCORE) & (
        scores[:, COCO_RIGHT_SHOULDER] > NECK_SHOULDER_SCORE
    )
    body[:, 1, :2] = shoulders.mean(axis=1)
    body[:, 1, 2] = both.astype(np.float64)
    pixel_boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64)[:, :4]
    return FramePose(
        body=body,
        foot=points[:, FOOT],
        face=points[:, FACE],
        hands=np.stack([points[:, LEFT_HAND], points[:, RIGHT_HAND]], axis=1),
        boxes=pixel_boxes / np.array([width, height, width, height], dtype=np.float64),
    )


# --------------------------------------------------------------------------------------------------
# ONNX Runtime sessions
# --------------------------------------------------------------------------------------------------


class Session(Protocol):
    """What DWPose uses of an `onnxruntime.InferenceSession` (tests pass stand-ins)."""

    def get_inputs(self) -> list[Any]: ...

    def get_outputs(self) -> list[Any]: ...

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def _fixed_batch(session: Session) -> int | None:
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def _input_size(session: Session, default: tuple[int, int]) -> tuple[int, int]:
    shape = session.get_inputs()[0].shape
    h, w = shape[2], shape[3]
    return (h, w) if isinstance(h, int) and isinstance(w, int) else default


def _run_batched(
    session: Session, inputs: np.ndarray, batch_size: int, outputs: list[str] | None = None
) -> list[np.ndarray]:
    """Run `inputs` (N, ...) in chunks the model accepts: its fixed batch, or `batch_size` when the
    batch axis is dynamic. Returns each output concatenated over N."""
    fixed = _fixed_batch(session)
    step = fixed or max(1, batch_size)
    name = session.get_inputs()[0].name
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(inputs), step):
        chunk = inputs[start : start + step]
        if fixed is not None and len(chunk) < fixed:  # a fixed-batch model takes full batches only
            chunk = np.concatenate([chunk, np.zeros((fixed - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        results = session.run(outputs, {name: chunk})
        parts.append([np.asarray(r)[: len(inputs[start : start + step])] for r in results])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def make_session(path: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = None) -> Any:
    """An ONNX Runtime session on `device` ("cpu", "cuda" or "auto": CUDA when ONNX Runtime has it)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise PrepareError(
            Problem(
                message="--pose_device cuda: this ONNX Runtime has no CUDA provider",
                code="no_cuda",
                fix="pip install onnxruntime-gpu (in place of onnxruntime), or use --pose_device cpu",
            )
        )
    use_cuda = device == "cuda" or (device == "auto" and "CUDAExecutionProvider" in available)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise PrepareError(
            Problem(
                message=f"ONNX Runtime cannot load the model ({exc})",
                file=os.fspath(path),
                code="bad_model",
                fix=f"download it again from {MODEL_SOURCE}",
            )
        ) from None


class DWPose:
    """Frames in, `FramePose`s out: the detector on every frame, the pose model on every person.

    Both models run in batches: `batch_size` frames (or person crops) per call where the model's
    batch axis is dynamic, one at a time where it is fixed (the released files are fixed at 1).
    """

    def __init__(self, detector: Session, pose: Session, *, batch_size: int = 8) -> None:
        self.detector = detector
        self.pose = pose
        self.batch_size = batch_size
        self.detector_size = _input_size(detector, DETECTOR_SIZE)
        self.pose_size = _input_size(pose, POSE_SIZE)
        names = [o.name for o in pose.get_outputs()]
        self.pose_outputs = ["simcc_x", "simcc_y"] if {"simcc_x", "simcc_y"} <= set(names) else names[:2]

    @classmethod
    def from_files(
        cls,
        detector: str | os.PathLike[str],
        pose: str | os.PathLike[str],
        *,
        device: str = "cpu",
        threads: int | None = None,
        batch_size: int = 8,
    ) -> DWPose:
        return cls(
            make_session(detector, device=device, threads=threads),
            make_session(pose, device=device, threads=threads),
            batch_size=batch_size,
        )

    def detect(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Person boxes (M, 5) of each frame, in frame pixels, best first."""
        if not frames:
            return []
        inputs, ratios = zip(*(letterbox(f, self.detector_size) for f in frames), strict=True)
        (raw,) = _run_batched(self.detector, np.stack(inputs), self.batch_size)[:1]
        return [person_boxes(raw[i], ratios[i], size=self.detector_size) for i in range(len(frames))]

    def estimate(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[FramePose]:
        """Whole-body keypoints of the people in `boxes` (from `detect`); a frame without any box is
        estimated on the whole frame, as DWPose does."""
        aspect = self.pose_size[1] / self.pose_size[0]
        crops, owners, transforms = [], [], []
        for index, (frame, frame_boxes) in enumerate(zip(frames, boxes, strict=True)):
            height, width = frame.shape[:2]
            people = frame_boxes if len(frame_boxes) else np.array([[0.0, 0.0, width, height]])
            for box in people:
                center, scale = box_center_scale(box)
                scale = fix_aspect(scale, aspect)
                crops.append(normalise_crop(warp_crop(frame, center, scale, self.pose_size)))
                owners.append(index)
                transforms.append((center, scale))
        simcc_x, simcc_y = _run_batched(self.pose, np.stack(crops), self.batch_size, self.pose_outputs)
        ratio_x = simcc_x.shape[-1] / self.pose_size[1]
        ratio_y = simcc_y.shape[-1] / self.pose_size[0]
        if not math.isclose(ratio_x, ratio_y):
            raise PrepareError(
                f"the pose model's SimCC outputs have {simcc_x.shape[-1]} x-bins and {simcc_y.shape[-1]} "
                f"y-bins for a {self.pose_size[1]}x{self.pose_size[0]} input; expected one split ratio"
            )
        locs, scores = decode_simcc(simcc_x, simcc_y, ratio_x)
        if locs.shape[1] != NUM_WHOLEBODY:
            raise PrepareError(
                f"the pose model gives {locs.shape[1]} keypoints; DWPose's whole-body model gives "
                f"{NUM_WHOLEBODY} (COCO-WholeBody)"
            )
        owners_arr = np.array(owners)
        out = []
        for index, frame in enumerate(frames):
            mine = np.flatnonzero(owners_arr == index)
            points = np.stack([crop_to_image(locs[i], *transforms[i], self.pose_size) for i in mine])
            height, width = frame.shape[:2]
            out.append(wholebody_to_openpose(points, scores[mine], height, width, boxes[index]))
        return out

    def __call__(self, frames: Sequence[np.ndarray]) -> list[FramePose]:
        frames = list(frames)
        if not frames:
            return []
        return self.estimate(frames, self.detect(frames))


__all__ = [
    "DETECTOR_FILE",
    "MODEL_SOURCE",
    "POSE_FILE",
    "DWPose",
    "FramePose",
    "box_center_scale",
    "crop_matrix",
    "crop_to_image",
    "decode_simcc",
    "decode_yolox",
    "fix_aspect",
    "image_to_crop",
    "letterbox",
    "make_session",
    "model_files",
    "nms",
    "person_boxes",
    "resize_linear",
    "warp_crop",
    "wholebody_to_openpose",
]
