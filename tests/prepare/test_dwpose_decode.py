"""DWPose's decoding maths on hand-made cases: SimCC argmax, box affine maps, YOLOX boxes, thresholds."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from vidctrl.prepare import PrepareError, require_onnxruntime
from vidctrl.prepare.dwpose import (
    DETECTOR_FILE,
    DETECTOR_SIZE,
    MODEL_SOURCE,
    POSE_FILE,
    POSE_SIZE,
    FramePose,
    anchor_grid,
    box_center_scale,
    crop_matrix,
    crop_to_image,
    decode_simcc,
    decode_yolox,
    fix_aspect,
    image_to_crop,
    letterbox,
    model_files,
    nms,
    person_boxes,
    resize_linear,
    warp_crop,
    wholebody_to_openpose,
)

# --- SimCC -----------------------------------------------------------------------------------------


def test_simcc_keypoint_is_argmax_bin_over_split_ratio_and_score_the_smaller_maximum() -> None:
    simcc_x = np.zeros((1, 2, 12), dtype=np.float32)
    simcc_y = np.zeros((1, 2, 16), dtype=np.float32)
    simcc_x[0, 0, 7], simcc_y[0, 0, 3] = 0.9, 0.6  # keypoint 0 at bins (7, 3)
    simcc_x[0, 1, 0], simcc_y[0, 1, 15] = 0.4, 0.8  # keypoint 1 at bins (0, 15)
    locs, scores = decode_simcc(simcc_x, simcc_y, split_ratio=2.0)
    np.testing.assert_allclose(locs[0], [[3.5, 1.5], [0.0, 7.5]])
    np.testing.assert_allclose(scores[0], [0.6, 0.4], rtol=1e-6)


def test_simcc_keypoint_with_nonpositive_score_is_marked_missing() -> None:
    simcc_x = np.full((1, 3, 8), -1.0, dtype=np.float32)
    simcc_y = np.full((1, 3, 8), -1.0, dtype=np.float32)
    simcc_x[0, 0, 5], simcc_y[0, 0, 2] = 0.5, 0.0  # score 0: missing, like DWPose's `vals <= 0`
    simcc_x[0, 1, 5], simcc_y[0, 1, 2] = 0.5, 0.01
    locs, scores = decode_simcc(simcc_x, simcc_y, split_ratio=2.0)
    np.testing.assert_allclose(locs[0, 0], [-0.5, -0.5])
    np.testing.assert_allclose(locs[0, 1], [2.5, 1.0])
    np.testing.assert_allclose(locs[0, 2], [-0.5, -0.5])  # all -1: score -1
    assert scores[0, 0] == 0 and scores[0, 2] == -1


# --- boxes and affine crops ------------------------------------------------------------------------


def test_box_centre_and_scale_grow_by_padding_and_widen_to_the_model_aspect() -> None:
    center, scale = box_center_scale([10, 20, 50, 140], padding=1.25)
    np.testing.assert_allclose(center, [30, 80])
    np.testing.assert_allclose(scale, [50, 150])
    aspect = POSE_SIZE[1] / POSE_SIZE[0]  # 288 / 384 = 0.75
    np.testing.assert_allclose(fix_aspect(scale, aspect), [112.5, 150])  # too narrow: widened
    np.testing.assert_allclose(
        fix_aspect(np.array([300.0, 100.0]), aspect), [300, 400]
    )  # too flat: heightened


def _three_point_affine(center: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """mmpose's get_warp_matrix at rotation 0: the centre, the point half the width above it, and the
    third point that turns their difference by 90 degrees about the second, mapped onto the crop's."""

    def third(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = a - b
        return b + np.array([-d[1], d[0]])

    w, h = size[1], size[0]
    src0, src1 = np.asarray(center, float), center + np.array([0.0, -scale[0] / 2])
    dst0, dst1 = np.array([w / 2, h / 2]), np.array([w / 2, h / 2 - w / 2])
    src = np.stack([src0, src1, third(src0, src1)])
    dst = np.stack([dst0, dst1, third(dst0, dst1)])
    return np.linalg.solve(np.concatenate([src, np.ones((3, 1))], axis=1), dst).T


def test_crop_matrix_equals_the_three_point_construction() -> None:
    center, scale = np.array([123.4, 56.7]), fix_aspect(np.array([80.0, 200.0]), 0.75)
    np.testing.assert_allclose(
        crop_matrix(center, scale, POSE_SIZE), _three_point_affine(center, scale, POSE_SIZE), atol=1e-9
    )


def test_crop_transform_round_trips_and_matches_dwpose_rescale_formula() -> None:
    rng = np.random.default_rng(0)
    center, scale = np.array([300.0, 200.0]), np.array([150.0, 200.0])
    points = rng.uniform(0, 500, (50, 2))
    crop = image_to_crop(points, center, scale, POSE_SIZE)
    np.testing.assert_allclose(crop_to_image(crop, center, scale, POSE_SIZE), points, atol=1e-9)
    # DWPose: keypoints / model_input_size * scale + center - scale / 2, with size as (w, h)
    dwpose = crop / np.array([POSE_SIZE[1], POSE_SIZE[0]]) * scale + center - scale / 2
    np.testing.assert_allclose(crop_to_image(crop, center, scale, POSE_SIZE), dwpose)
    # the box centre lands on the crop centre, its corners on the crop corners
    np.testing.assert_allclose(image_to_crop(center, center, scale, POSE_SIZE), [144, 192])
    np.testing.assert_allclose(image_to_crop(center - scale / 2, center, scale, POSE_SIZE), [0, 0])


def test_warp_crop_samples_the_frame_at_the_mapped_point_and_is_black_outside() -> None:
    height, width = 40, 60
    ys, xs = np.mgrid[0:height, 0:width]
    frame = np.stack([xs * 2, ys * 3, np.full_like(xs, 100)], axis=-1).astype(np.uint8)
    center, scale = np.array([30.0, 20.0]), np.array([30.0, 40.0])  # 3:4, crop 12 x 16
    crop = warp_crop(frame, center, scale, (16, 12))
    k = 12 / 30
    for v, u in [(0, 0), (5, 7), (15, 11)]:
        x, y = (u - 6) / k + 30, (v - 8) / k + 20  # the frame point of crop pixel (u, v)
        np.testing.assert_allclose(crop[v, u, :2], [2 * x, 3 * y], atol=1e-3)
    # a crop reaching past the frame is black there (cv2's constant border)
    outside = warp_crop(frame, np.array([0.0, 0.0]), scale, (16, 12))
    assert (outside[:4, :4] == 0).all() and outside[12, 10, 2] == pytest.approx(100)


def test_resize_linear_follows_opencv_pixel_centres_without_antialiasing() -> None:
    row = np.array([[[0, 0, 0], [100, 100, 100]]], dtype=np.uint8)
    np.testing.assert_array_equal(resize_linear(row, 1, 4)[0, :, 0], [0, 25, 75, 100])
    ramp = np.arange(8, dtype=np.uint8).repeat(3).reshape(1, 8, 3) * 10
    np.testing.assert_array_equal(resize_linear(ramp, 1, 2)[0, :, 0], [15, 55])  # centres 1.5 and 5.5


def test_letterbox_scales_to_fit_at_the_top_left_on_grey() -> None:
    frame = np.full((100, 200, 3), 7, dtype=np.uint8)
    image, ratio = letterbox(frame)
    assert image.shape == (3, *DETECTOR_SIZE) and image.dtype == np.float32 and ratio == 3.2
    assert (image[:, :320, :] == 7).all() and (image[:, 320:, :] == 114).all()


# --- person detection ------------------------------------------------------------------------------


def _raw_with_boxes(boxes: list[tuple[float, float, float, float, float, int]]) -> np.ndarray:
    """YOLOX raw output (8400, 85) holding the given (x0, y0, x1, y1, score, class) boxes in input
    pixels, each at the stride-32 anchor of its centre, objectness 1."""
    cells, steps = anchor_grid()
    raw = np.zeros((len(cells), 85))
    raw[:, 2:4] = 0.0
    for x0, y0, x1, y1, score, cls in boxes:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        anchor = int(np.flatnonzero((steps == 32) & (cells[:, 0] == cx // 32) & (cells[:, 1] == cy // 32))[0])
        raw[anchor, :4] = [
            cx / 32 - cx // 32,
            cy / 32 - cy // 32,
            np.log((x1 - x0) / 32),
            np.log((y1 - y0) / 32),
        ]
        raw[anchor, 4] = 1.0
        raw[anchor, 5 + cls] = score
    return raw


def test_yolox_anchors_and_box_decoding() -> None:
    cells, steps = anchor_grid()
    assert len(cells) == 8400 and (steps[:6400] == 8).all() and (steps[-400:] == 32).all()
    np.testing.assert_array_equal(cells[[0, 1, 80]], [[0, 0], [1, 0], [0, 1]])  # row by row, (x, y)
    raw = _raw_with_boxes([(100, 60, 300, 460, 0.9, 0)])
    boxes, scores = decode_yolox(raw)
    best = int(np.argmax(scores[:, 0]))
    np.testing.assert_allclose(boxes[best], [100, 60, 300, 460])
    assert scores[best, 0] == pytest.approx(0.9)


def test_people_are_kept_above_0_3_after_nms_and_mapped_back_to_the_frame() -> None:
    raw = _raw_with_boxes(
        [
            (100, 100, 200, 400, 0.9, 0),  # kept
            (110, 105, 205, 410, 0.8, 0),  # overlaps the first (IoU > 0.45): suppressed
            (400, 100, 500, 400, 0.3, 0),  # exactly 0.3: dropped (DWPose keeps > 0.3)
            (400, 420, 500, 600, 0.31, 0),  # kept
            (250, 300, 350, 500, 0.95, 2),  # not a person
        ]
    )
    people = person_boxes(raw, ratio=2.0)
    np.testing.assert_allclose(people[:, :4], [[50, 50, 100, 200], [200, 210, 250, 300]], atol=1e-9)
    np.testing.assert_allclose(people[:, 4], [0.9, 0.31])


def test_candidates_at_or_below_0_1_never_enter_nms() -> None:
    # A 0.1 box overlapping a 0.35 box: DWPose drops it before NMS, so the 0.35 box survives either way;
    # and nothing at 0.1 is ever returned.
    raw = _raw_with_boxes([(100, 100, 200, 400, 0.1, 0), (105, 100, 205, 400, 0.35, 0)])
    people = person_boxes(raw, ratio=1.0)
    assert len(people) == 1 and people[0, 4] == pytest.approx(0.35)


def test_nms_counts_end_pixels_in_box_areas() -> None:
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], dtype=float)
    # with the +1 convention: intersection 5 x 10 = 50, union 150, IoU 1/3 (without it: 0.29)
    assert nms(boxes, np.array([0.9, 0.8]), iou=0.3).tolist() == [0]
    assert nms(boxes, np.array([0.9, 0.8]), iou=0.34).tolist() == [0, 1]


# --- COCO-WholeBody to OpenPose ---------------------------------------------------------------------


def test_wholebody_points_become_openpose_body_hands_face_normalised() -> None:
    keypoints = np.arange(133 * 2, dtype=float).reshape(1, 133, 2)
    scores = np.full((1, 133), 0.9)
    scores[0, 6] = 0.3  # right shoulder exactly at the threshold: the neck is not confident
    scores[0, 100] = 0.0  # a left-hand point the model did not locate
    pose = wholebody_to_openpose(
        keypoints, scores, height=1000, width=500, boxes=np.array([[50, 100, 250, 900, 0.8]])
    )
    size = np.array([500, 1000])
    coco_of_openpose = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    for openpose, coco in enumerate(coco_of_openpose):
        if coco is not None:
            np.testing.assert_allclose(pose.body[0, openpose, :2], keypoints[0, coco] / size)
    np.testing.assert_allclose(pose.body[0, 1, :2], (keypoints[0, 5] + keypoints[0, 6]) / 2 / size)
    assert pose.body[0, 1, 2] == 0.0  # both shoulders must score above 0.3
    np.testing.assert_allclose(pose.face[0, :, :2], keypoints[0, 23:91] / size)
    np.testing.assert_allclose(pose.hands[0, 1, :, :2], keypoints[0, 112:133] / size)  # right hand
    assert np.isnan(pose.hands[0, 0, 100 - 91, :2]).all()
    np.testing.assert_allclose(pose.boxes, [[0.1, 0.1, 0.5, 0.9]])
    scores[0, 6] = 0.31
    assert wholebody_to_openpose(keypoints, scores, 1000, 500).body[0, 1, 2] == 1.0


def test_meta_info_pairs_each_hand_box_with_its_scores_left_hands_first() -> None:
    hands = np.zeros((2, 2, 21, 3))  # two people
    for person in range(2):
        for side in range(2):
            hands[person, side, :, 0] = np.linspace(0.1, 0.2, 21) + 0.5 * side
            hands[person, side, :, 1] = np.linspace(0.3, 0.4, 21) + 0.2 * person
            hands[person, side, :, 2] = 0.1 * (1 + 2 * side + person)
    hands[1, 1, :, :2] = np.nan  # nothing located: an empty box keeps the pairing
    empty = np.zeros((2, 18, 3))
    pose = FramePose(
        body=empty,
        foot=np.zeros((2, 6, 3)),
        face=np.zeros((2, 68, 3)),
        hands=hands,
        boxes=np.array([[0.0, 0.1, 0.5, 0.9]]),
    )
    meta = pose.meta_info()
    assert [s[0] for s in meta["hands_score"]] == pytest.approx([0.1, 0.2, 0.3, 0.4])  # L0, L1, R0, R1
    np.testing.assert_allclose(meta["hands_boxes"][0], [[0.1, 0.3], [0.2, 0.4]])
    np.testing.assert_allclose(meta["hands_boxes"][1], [[0.1, 0.5], [0.2, 0.6]])
    assert meta["hands_boxes"][3] == [[0.0, 0.0], [0.0, 0.0]]
    assert meta["boxes"] == [[[0.0, 0.1], [0.5, 0.9]]]


# --- model files and the extra ---------------------------------------------------------------------


def test_missing_model_files_are_named_with_where_to_get_them(tmp_path) -> None:
    (tmp_path / DETECTOR_FILE).write_bytes(b"x")
    with pytest.raises(PrepareError) as error:
        model_files(tmp_path)
    text = str(error.value)
    assert POSE_FILE in text and DETECTOR_FILE in text and MODEL_SOURCE in text
    with pytest.raises(PrepareError, match="--pose_model_dir"):
        model_files(None)


def test_missing_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_onnxruntime(name: str, *args: object, **kwargs: object) -> object:
        if name == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(PrepareError, match=r"vidctrl\[prepare\]"):
        require_onnxruntime()
