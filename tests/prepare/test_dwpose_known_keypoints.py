"""If the two models answered with the synthetic figure's true keypoints, `DWPose` would draw exactly
`render_pose` of them: stand-in sessions encode the truth in the models' own output formats (a YOLOX
box, SimCC peaks) and the real pre- and post-processing runs in between."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from vidctrl.data.pose import hand_box, render_pose
from vidctrl.data.synthetic import render_clip, sample_clip_seed
from vidctrl.prepare.dwpose import (
    DETECTOR_SIZE,
    OPENPOSE_FROM_COCO,
    POSE_SIZE,
    DWPose,
    anchor_grid,
    box_center_scale,
    crop_to_image,
    fix_aspect,
    image_to_crop,
    letterbox,
    person_boxes,
)

SPLIT = 2


@dataclass
class _Port:
    name: str
    shape: list


class _Queue:
    """A session that answers each call with the next prepared outputs, checking the input shape."""

    def __init__(
        self, input_port: _Port, output_ports: list[_Port], answers: list[list[np.ndarray]], batch: int = 1
    ) -> None:
        self.input_port, self.output_ports, self.answers = input_port, output_ports, list(answers)
        self.batch = batch  # the batch each call must carry
        self.calls = 0

    def get_inputs(self) -> list[_Port]:
        return [self.input_port]

    def get_outputs(self) -> list[_Port]:
        return self.output_ports

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        (value,) = feed.values()
        assert list(value.shape) == [self.batch, *self.input_port.shape[1:]]
        self.calls += 1
        outputs = self.answers.pop(0)
        if names is None:
            return outputs
        by_name = {port.name: out for port, out in zip(self.output_ports, outputs, strict=True)}
        return [by_name[n] for n in names]


def _coco_wholebody(body: np.ndarray, hands: np.ndarray, face: np.ndarray) -> np.ndarray:
    """(133, 3) COCO-WholeBody points from OpenPose body, hands and face (feet unknown, score 0)."""
    coco = np.zeros((133, 3))
    for openpose, index in enumerate(OPENPOSE_FROM_COCO):
        if index >= 0:
            coco[index] = body[openpose]
    coco[23:91], coco[91:112], coco[112:133] = face, hands[0], hands[1]
    return coco


def _yolox_raw(box: np.ndarray, ratio: float) -> np.ndarray:
    cells, steps = anchor_grid()
    raw = np.zeros((1, len(cells), 85), dtype=np.float32)
    x0, y0, x1, y1 = box * ratio
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    anchor = int(np.flatnonzero((steps == 32) & (cells[:, 0] == cx // 32) & (cells[:, 1] == cy // 32))[0])
    raw[0, anchor, :4] = [
        cx / 32 - cx // 32,
        cy / 32 - cy // 32,
        np.log((x1 - x0) / 32),
        np.log((y1 - y0) / 32),
    ]
    raw[0, anchor, 4:6] = 0.95
    return raw


def _simcc(
    points_px: np.ndarray, scores: np.ndarray, center: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SimCC vectors peaking at the bins of the given frame points, and the bins' crop coordinates."""
    crop = image_to_crop(points_px, center, scale, POSE_SIZE)
    bins = np.clip(np.rint(crop * SPLIT).astype(int), 0, [POSE_SIZE[1] * SPLIT - 1, POSE_SIZE[0] * SPLIT - 1])
    simcc_x = np.full((1, 133, POSE_SIZE[1] * SPLIT), -0.5, dtype=np.float32)
    simcc_y = np.full((1, 133, POSE_SIZE[0] * SPLIT), -0.5, dtype=np.float32)
    rows = np.arange(133)
    simcc_x[0, rows, bins[:, 0]] = scores
    simcc_y[0, rows, bins[:, 1]] = scores
    return simcc_x, simcc_y, bins / SPLIT


@pytest.mark.parametrize(("height", "width"), [(96, 64), (64, 96)])
def test_true_keypoints_in_give_render_pose_of_them_out(height: int, width: int) -> None:
    clip = render_clip(sample_clip_seed(0, 1), 4, height, width)
    kp = clip.keypoints
    det_answers, pose_answers, expected_bodies, expected_hands, expected_faces = [], [], [], [], []
    for t in range(len(kp)):
        coco = _coco_wholebody(kp.body[t], kp.hands[t], kp.face[t])
        pixels = coco[:, :2] * [width, height]
        located = coco[:, 2] > 0
        lo, hi = pixels[located].min(axis=0), pixels[located].max(axis=0)
        box = np.array([*lo - 3, *hi + 3])
        _, ratio = letterbox(clip.frames[t])
        raw = _yolox_raw(box, ratio)
        det_answers.append([raw])
        (detected,) = person_boxes(raw[0], ratio)  # the box the estimator will crop
        center, scale = box_center_scale(detected)
        scale = fix_aspect(scale, POSE_SIZE[1] / POSE_SIZE[0])
        scores = np.where(located, coco[:, 2], 0.0).astype(np.float32)
        simcc_x, simcc_y, crop_points = _simcc(pixels, scores, center, scale)
        pose_answers.append([simcc_x, simcc_y])
        # What the truth looks like after SimCC's half-pixel bins in the crop:
        decoded = crop_to_image(crop_points, center, scale, POSE_SIZE) / [width, height]
        assert (
            np.abs(decoded - coco[:, :2])[located].max()
            <= 0.5 / SPLIT * scale[0] / POSE_SIZE[1] / min(height, width) + 1e-9
        )
        points = np.concatenate([decoded, scores[:, None]], axis=1)
        body = np.stack([points[i] if i >= 0 else np.zeros(3) for i in OPENPOSE_FROM_COCO])
        body[1] = [*(points[5, :2] + points[6, :2]) / 2, float(points[5, 2] > 0.3 and points[6, 2] > 0.3)]
        expected_bodies.append(body)
        expected_hands.append(np.stack([points[91:112], points[112:133]]))
        expected_faces.append(points[23:91])

    detector = _Queue(_Port("images", [1, 3, *DETECTOR_SIZE]), [_Port("output", [1, 8400, 85])], det_answers)
    pose_session = _Queue(
        _Port("input", [1, 3, *POSE_SIZE]),
        [_Port("simcc_x", [1, 133, 576]), _Port("simcc_y", [1, 133, 768])],
        pose_answers,
    )
    estimator = DWPose(detector, pose_session, batch_size=8)
    poses = estimator(list(clip.frames))
    assert detector.calls == len(kp) and pose_session.calls == len(kp)  # fixed batch 1: one call each

    for t, pose in enumerate(poses):
        assert pose.people == 1 and len(pose.boxes) == 1
        expected = render_pose(
            expected_bodies[t], expected_hands[t], expected_faces[t], height=height, width=width
        )
        np.testing.assert_array_equal(pose.render(height, width), expected)
        # ... which is the figure's own skeleton up to those sub-pixel bins:
        truth = render_pose(kp.body[t], kp.hands[t], kp.face[t], height=height, width=width)
        assert (pose.render(height, width) != truth).any(axis=-1).mean() < 0.01
        np.testing.assert_allclose(pose.body[0, :, :2], kp.body[t, :, :2], atol=0.01)
        np.testing.assert_allclose(
            pose.body[0, [0, *range(2, 18)], 2], kp.body[t, [0, *range(2, 18)], 2], rtol=1e-6
        )
        meta = pose.meta_info()
        np.testing.assert_allclose(meta["hands_score"], kp.hands[t, :, :, 2], rtol=1e-6)
        for hand, box in zip(expected_hands[t], meta["hands_boxes"], strict=True):
            np.testing.assert_allclose(box, hand_box(hand), atol=1e-9)


def test_a_dynamic_batch_model_gets_whole_batches() -> None:
    clip = render_clip(sample_clip_seed(0, 2), 3, 64, 64)
    raws, ratios = [], []
    for frame in clip.frames:
        _, ratio = letterbox(frame)
        raws.append(_yolox_raw(np.array([10.0, 5.0, 50.0, 60.0]), ratio))
        ratios.append(ratio)
    detector = _Queue(
        _Port("images", ["batch", 3, *DETECTOR_SIZE]),
        [_Port("output", ["batch", 8400, 85])],
        [[np.concatenate(raws)]],
        batch=3,
    )
    simcc = [np.zeros((3, 133, 576), np.float32) + 0.5, np.zeros((3, 133, 768), np.float32) + 0.5]
    pose_session = _Queue(
        _Port("input", ["batch", 3, *POSE_SIZE]),
        [_Port("simcc_x", ["batch", 133, 576]), _Port("simcc_y", ["batch", 133, 768])],
        [simcc],
        batch=3,
    )
    poses = DWPose(detector, pose_session, batch_size=8)(list(clip.frames))
    assert detector.calls == 1 and pose_session.calls == 1 and [p.people for p in poses] == [1, 1, 1]
