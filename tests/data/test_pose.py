import colorsys
import math

import numpy as np
import pytest

from vidctrl.data.pose import (
    BODY_COLORS,
    BODY_KEYPOINTS,
    BODY_LIMB_COLORS,
    BODY_LIMBS,
    FACE_POINT_COLOR,
    HAND_COLORS,
    HAND_EDGES,
    HAND_POINT_COLOR,
    LIMB_ALPHA,
    hand_box,
    person_box,
    render_pose,
)

H, W = 96, 128


def only(points: dict[int, tuple[float, float]], count: int = 18) -> np.ndarray:
    """Keypoints with just the given ones visible (score 1), the rest at score 0."""
    kp = np.zeros((count, 3))
    for index, (x, y) in points.items():
        kp[index] = (x, y, 1.0)
    return kp


def standing_body() -> np.ndarray:
    """A spread-out pose in which no two joint discs touch at 256 x 256."""
    xy = {
        0: (0.50, 0.12), 1: (0.50, 0.25), 2: (0.35, 0.25), 3: (0.25, 0.38), 4: (0.15, 0.50),
        5: (0.65, 0.25), 6: (0.75, 0.38), 7: (0.85, 0.50), 8: (0.42, 0.55), 9: (0.40, 0.72),
        10: (0.38, 0.90), 11: (0.58, 0.55), 12: (0.60, 0.72), 13: (0.62, 0.90), 14: (0.45, 0.08),
        15: (0.55, 0.08), 16: (0.40, 0.12), 17: (0.60, 0.12),
    }  # fmt: skip
    return only(xy)


def pixel(canvas: np.ndarray, x: float, y: float) -> tuple[int, ...]:
    h, w = canvas.shape[:2]
    return tuple(int(c) for c in canvas[int(y * h), int(x * w)])


# --- tables ---------------------------------------------------------------------------------------


def test_body_tables_have_the_openpose_sizes_and_order() -> None:
    assert len(BODY_KEYPOINTS) == 18 and len(BODY_COLORS) == 18
    assert len(BODY_LIMBS) == 17 and len(BODY_LIMB_COLORS) == 17
    assert BODY_KEYPOINTS[:2] == ("nose", "neck")
    assert BODY_KEYPOINTS[14:] == ("right_eye", "left_eye", "right_ear", "left_ear")
    # limbSeq starts [2, 3], [2, 6] (1-based): neck to right shoulder, neck to left shoulder.
    assert [tuple(BODY_KEYPOINTS[j] for j in limb) for limb in BODY_LIMBS[:2]] == [
        ("neck", "right_shoulder"),
        ("neck", "left_shoulder"),
    ]
    assert BODY_LIMBS[12] == (1, 0)  # neck to nose
    assert all(0 <= j < 18 for limb in BODY_LIMBS for j in limb)


def test_body_colours_are_the_openpose_colours() -> None:
    assert BODY_COLORS[0] == (255, 0, 0)  # the first limb (neck - right shoulder) is red
    assert BODY_COLORS[1] == (255, 85, 0)
    assert BODY_COLORS[6] == (0, 255, 0)
    assert BODY_COLORS[12] == (0, 0, 255)
    assert BODY_COLORS[17] == (255, 0, 85)
    assert len(set(BODY_COLORS)) == 18
    assert LIMB_ALPHA == 0.6
    assert BODY_LIMB_COLORS[0] == (153, 0, 0)
    assert BODY_LIMB_COLORS[2] == (153, 102, 0)


def test_hand_tables_walk_each_finger_from_the_wrist() -> None:
    assert len(HAND_EDGES) == 20 and len(HAND_COLORS) == 20
    assert HAND_EDGES[:5] == ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5))
    assert {a for a, _ in HAND_EDGES} | {b for _, b in HAND_EDGES} == set(range(21))
    assert sorted(b for _, b in HAND_EDGES) == list(range(1, 21))  # a tree rooted at the wrist


def test_hand_colours_go_round_the_hue_circle() -> None:
    assert HAND_COLORS[0] == (255, 0, 0)
    assert HAND_COLORS[10] == (0, 255, 255)  # hue 0.5
    assert HAND_COLORS[5] == (128, 255, 0)  # 127.5 rounds half to even, as OpenCV converts colours
    for i, color in enumerate(HAND_COLORS):
        expected = [255 * c for c in colorsys.hsv_to_rgb(i / 20, 1.0, 1.0)]
        assert max(abs(a - b) for a, b in zip(color, expected, strict=True)) <= 0.5 + 1e-9
    assert HAND_POINT_COLOR == (0, 0, 255)
    assert FACE_POINT_COLOR == (255, 255, 255)


# --- drawing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("limb", range(17))
def test_limb_midpoint_has_the_blended_limb_colour(limb: int) -> None:
    a, b = BODY_LIMBS[limb]
    body = only({a: (0.2, 0.3), b: (0.8, 0.7)})
    canvas = render_pose(body, height=H, width=W)
    assert pixel(canvas, 0.5, 0.5) == BODY_LIMB_COLORS[limb]
    expected = tuple(int(c * 0.6) for c in BODY_COLORS[limb])
    assert BODY_LIMB_COLORS[limb] == expected
    # The ends carry the joint colours at full strength, drawn over the limb.
    assert pixel(canvas, 0.2, 0.3) == BODY_COLORS[a]
    assert pixel(canvas, 0.8, 0.7) == BODY_COLORS[b]


def test_limb_is_an_ellipse_of_stick_width_four() -> None:
    body = only({1: (0.1, 0.5), 2: (0.9, 0.5)})
    canvas = render_pose(body, height=H, width=W)
    column = canvas[:, W // 2]
    painted = np.flatnonzero(column.any(axis=1))
    assert len(painted) == 9  # semi-minor axis 4: the centre row and 4 on each side
    assert painted.min() == H // 2 - 4


@pytest.mark.parametrize("joint", range(18))
def test_joint_is_a_disc_of_radius_four_in_its_colour(joint: int) -> None:
    canvas = render_pose(only({joint: (0.5, 0.5)}), height=H, width=W)
    assert pixel(canvas, 0.5, 0.5) == BODY_COLORS[joint]
    painted = canvas.any(axis=2)
    assert painted.sum() == 49  # OpenCV's filled midpoint circle of radius 4
    ys, xs = np.nonzero(painted)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (W // 2 - 4, W // 2 + 4, H // 2 - 4, H // 2 + 4)
    assert (canvas[painted] == BODY_COLORS[joint]).all()


def test_every_joint_of_a_full_pose_shows_its_colour() -> None:
    body = standing_body()
    canvas = render_pose(body, height=256, width=256)
    for joint in range(18):
        x, y = body[joint, :2]
        assert pixel(canvas, x, y) == BODY_COLORS[joint], BODY_KEYPOINTS[joint]


def test_normalised_coordinates_map_to_pixels_by_truncation() -> None:
    canvas = render_pose(only({0: (0.5, 0.25)}), height=64, width=64)
    ys, xs = np.nonzero(canvas.any(axis=2))
    assert (round(xs.mean()), round(ys.mean())) == (32, 16)
    canvas = render_pose(only({0: (10.99 / 64, 20.99 / 64)}), height=64, width=64)
    ys, xs = np.nonzero(canvas.any(axis=2))
    assert (round(xs.mean()), round(ys.mean())) == (10, 20)


def test_points_at_or_below_the_score_threshold_are_not_drawn() -> None:
    body = standing_body()
    body[:, 2] = 0.3
    assert not render_pose(body, height=H, width=W).any()
    body[:, 2] = 0.31
    assert render_pose(body, height=H, width=W).any()
    assert not render_pose(body, height=H, width=W, threshold=0.5).any()


def test_a_limb_needs_both_ends() -> None:
    body = only({1: (0.2, 0.5), 2: (0.8, 0.5)})
    body[2, 2] = 0.1
    canvas = render_pose(body, height=H, width=W)
    assert pixel(canvas, 0.5, 0.5) == (0, 0, 0)
    assert pixel(canvas, 0.2, 0.5) == BODY_COLORS[1]
    assert canvas.any(axis=2).sum() == 49


def test_missing_coordinates_are_not_drawn() -> None:
    body = standing_body()
    body[:, 0] = np.nan
    assert not render_pose(body, height=H, width=W).any()


def test_hand_edges_and_points() -> None:
    hand = np.zeros((21, 3))
    hand[0] = (0.1, 0.5, 0.9)
    hand[1] = (0.9, 0.5, 0.9)
    canvas = render_pose(None, hands=hand, height=H, width=W)
    assert pixel(canvas, 0.5, 0.5) == HAND_COLORS[0]
    assert pixel(canvas, 0.1, 0.5) == HAND_POINT_COLOR
    column = canvas[:, W // 2].any(axis=1)
    assert column.sum() == 3  # a line of thickness 2 covers 3 rows on an integer row
    # A low-score keypoint takes its point and its edges with it.
    hand[1, 2] = 0.2
    canvas = render_pose(None, hands=hand, height=H, width=W)
    assert pixel(canvas, 0.5, 0.5) == (0, 0, 0)
    assert canvas.any(axis=2).sum() == 49


def test_hand_and_face_points_on_the_first_pixel_row_or_column_are_dropped_like_dwpose() -> None:
    hand = np.zeros((21, 3))
    hand[0] = (0.0, 0.5, 1.0)
    assert not render_pose(None, hands=hand, height=H, width=W).any()
    hand[0] = (1.0 / W, 0.5, 1.0)
    assert render_pose(None, hands=hand, height=H, width=W).any()


def test_face_points_are_white_dots_of_radius_three() -> None:
    face = np.zeros((68, 3))
    face[30] = (0.5, 0.5, 1.0)
    canvas = render_pose(None, face=face, height=H, width=W)
    assert canvas.any(axis=2).sum() == 29
    assert pixel(canvas, 0.5, 0.5) == FACE_POINT_COLOR
    face[30, 2] = 0.1
    assert not render_pose(None, face=face, height=H, width=W).any()


def test_drawing_order_is_body_then_hands_then_face() -> None:
    body = only({4: (0.5, 0.5)})
    hand = np.zeros((21, 3))
    hand[0] = (0.5, 0.5, 1.0)
    face = np.zeros((68, 3))
    assert pixel(render_pose(body, hand, height=H, width=W), 0.5, 0.5) == HAND_POINT_COLOR
    face[0] = (0.5, 0.5, 1.0)
    assert pixel(render_pose(body, hand, face, height=H, width=W), 0.5, 0.5) == FACE_POINT_COLOR


def test_several_people_and_keypoints_without_scores() -> None:
    one = standing_body()
    two = one.copy()
    two[:, 0] = one[:, 0] * 0.5
    both = render_pose(np.stack([one, two]), height=H, width=W)
    assert pixel(both, *two[7, :2]) == BODY_COLORS[7]
    no_scores = render_pose(one[:, :2], height=H, width=W)  # (18, 2): all visible
    assert (no_scores == render_pose(only(dict(enumerate(map(tuple, one[:, :2])))), height=H, width=W)).all()


def test_rendering_is_deterministic_and_accepts_lists() -> None:
    rng = np.random.default_rng(3)
    body = np.concatenate([rng.uniform(0, 1, (18, 2)), rng.uniform(0, 1, (18, 1))], axis=1)
    hands = np.concatenate([rng.uniform(0, 1, (2, 21, 2)), rng.uniform(0, 1, (2, 21, 1))], axis=2)
    face = np.concatenate([rng.uniform(0, 1, (68, 2)), rng.uniform(0, 1, (68, 1))], axis=1)
    first = render_pose(body, hands, face, height=H, width=W)
    second = render_pose(body.tolist(), hands.tolist(), face.tolist(), height=H, width=W)
    assert first.dtype == np.uint8 and first.shape == (H, W, 3)
    assert first.tobytes() == second.tobytes()


def test_bad_shapes_say_what_is_expected() -> None:
    with pytest.raises(ValueError, match=r"body keypoints must have shape \(18, 2\|3\)"):
        render_pose(np.zeros((17, 3)), height=H, width=W)
    with pytest.raises(ValueError, match="hand keypoints"):
        render_pose(None, hands=np.zeros((2, 20, 3)), height=H, width=W)


# --- boxes ----------------------------------------------------------------------------------------


def test_hand_box_bounds_the_keypoints_whatever_their_scores() -> None:
    rng = np.random.default_rng(0)
    hand = np.concatenate([rng.uniform(0.2, 0.4, (21, 2)), rng.uniform(0, 1, (21, 1))], axis=1)
    (x0, y0), (x1, y1) = hand_box(hand)
    assert (x0, y0, x1, y1) == (hand[:, 0].min(), hand[:, 1].min(), hand[:, 0].max(), hand[:, 1].max())
    (px0, _), (_, py1) = hand_box(hand, pad=0.1)
    assert math.isclose(px0, x0 - 0.1 * (x1 - x0)) and math.isclose(py1, y1 + 0.1 * (y1 - y0))
    confident = hand_box(hand, threshold=0.5)
    assert confident[0][0] >= x0 and confident[1][0] <= x1
    assert hand_box(np.zeros((21, 3)), threshold=0.3) is None


def test_person_box_covers_visible_body_hand_and_face_points() -> None:
    body = standing_body()
    hand = np.zeros((21, 3))
    hand[:, :2] = (0.95, 0.6)
    hand[:, 2] = 1.0
    (x0, y0), (x1, y1) = person_box(body, hands=[hand], pad=0.0)
    assert (x0, y0, x1, y1) == (0.15, 0.08, 0.95, 0.90)
    (_, _), (x1, _) = person_box(body, pad=0.0)
    assert x1 == 0.85
    # Not clipped to the frame, as ControlNeXt's example boxes are not.
    assert person_box(body, pad=0.2)[1][1] > 1.0


def _dwpose_reference(body, hands, face, height, width):  # pragma: no cover - needs OpenCV
    """DWPose's draw_pose, written against OpenCV, for a parity check where OpenCV is installed."""
    import cv2

    canvas = np.zeros((height, width, 3), np.uint8)
    for i, (a, b) in enumerate(BODY_LIMBS):
        if body[a, 2] > 0.3 and body[b, 2] > 0.3:
            xs, ys = body[[a, b], 0] * float(width), body[[a, b], 1] * float(height)
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            poly = cv2.ellipse2Poly(
                (int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), 4), int(angle), 0, 360, 1
            )
            cv2.fillConvexPoly(canvas, poly, BODY_COLORS[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for j in range(18):
        if body[j, 2] > 0.3:
            cv2.circle(
                canvas, (int(body[j, 0] * width), int(body[j, 1] * height)), 4, BODY_COLORS[j], thickness=-1
            )
    for hand in hands:
        pts = [(int(x * width), int(y * height)) if s > 0.3 else (-1, -1) for x, y, s in hand]
        for e, (a, b) in enumerate(HAND_EDGES):
            if min(*pts[a], *pts[b]) > 0.01:
                cv2.line(canvas, pts[a], pts[b], HAND_COLORS[e], thickness=2)
        for x, y in pts:
            if x > 0.01 and y > 0.01:
                cv2.circle(canvas, (x, y), 4, HAND_POINT_COLOR, thickness=-1)
    for x, y, s in face:
        x, y = (int(x * width), int(y * height)) if s > 0.3 else (-1, -1)
        if x > 0.01 and y > 0.01:
            cv2.circle(canvas, (x, y), 3, FACE_POINT_COLOR, thickness=-1)
    return canvas


def test_matches_an_opencv_rendering_pixel_for_pixel() -> None:
    rng = np.random.default_rng(7)
    for height, width in ((64, 64), (96, 64), (512, 384), (33, 47)):
        for _ in range(10):
            body = np.concatenate([rng.uniform(-0.05, 1.05, (18, 2)), rng.uniform(0, 1, (18, 1))], axis=1)
            hands = np.concatenate([rng.uniform(0, 1, (2, 21, 2)), rng.uniform(0, 1, (2, 21, 1))], axis=2)
            face = np.concatenate([rng.uniform(0, 1, (68, 2)), rng.uniform(0, 1, (68, 1))], axis=1)
            ours = render_pose(body, hands, face, height=height, width=width)
            theirs = _dwpose_reference(body, hands, face, height, width)
            assert (ours == theirs).all()
