"""Render poses as the released pose-control models saw them: OpenPose colours, drawn the DWPose way.

Wan2.1-Fun Control, ControlNeXt-SVD-v2 and DynamiCtrl were trained on skeleton videos drawn by
DWPose's `draw_pose` (the ControlNet-v1.1 annotator code): body limbs as filled ellipses whose colour
ends up at 0.6 of the table colour, joints as filled circles at full colour, hands as thin lines
coloured around the hue circle with blue keypoints, the face as white dots, on black. A control video
drawn any other way is a different input distribution, so the tables and the drawing order here are
DWPose's, and the rasteriser reproduces OpenCV's integer algorithms (ellipse2Poly, fillConvexPoly,
circle, thick line) so that the pixels match without depending on OpenCV.

Keypoint convention (as in DWPose): coordinates are normalised, x by the canvas width and y by its
height, so (0, 0) is the top-left corner and (1, 1) the bottom-right; a pixel index is `int(x * W)`.
Each keypoint is `[x, y, score]`; a point is drawn when its score is above `threshold` (DWPose: 0.3)
and its coordinates are finite. Arrays without a score column count as fully confident.

Shapes: body `(18, 3)` or `(people, 18, 3)` in COCO-18 / OpenPose order (`BODY_KEYPOINTS`);
hands `(21, 3)` or `(hands, 21, 3)`, DWPose order left hand first; face `(68, 3)` or `(people, 68, 3)`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

Color = tuple[int, int, int]
Box = tuple[tuple[float, float], tuple[float, float]]  # ((x0, y0), (x1, y1)), normalised

BODY_KEYPOINTS: tuple[str, ...] = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)

# OpenPose limbSeq (1-based in the original) as 0-based pairs. OpenPose lists 19 pairs; the two
# ear-to-shoulder pairs (3-17, 6-18) are in the table but DWPose and ControlNet draw only these 17.
BODY_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2),  # neck - right shoulder
    (1, 5),  # neck - left shoulder
    (2, 3),  # right shoulder - right elbow
    (3, 4),  # right elbow - right wrist
    (5, 6),  # left shoulder - left elbow
    (6, 7),  # left elbow - left wrist
    (1, 8),  # neck - right hip
    (8, 9),  # right hip - right knee
    (9, 10),  # right knee - right ankle
    (1, 11),  # neck - left hip
    (11, 12),  # left hip - left knee
    (12, 13),  # left knee - left ankle
    (1, 0),  # neck - nose
    (0, 14),  # nose - right eye
    (14, 16),  # right eye - right ear
    (0, 15),  # nose - left eye
    (15, 17),  # left eye - left ear
)

# RGB. Joint i is drawn in BODY_COLORS[i]; limb i in BODY_COLORS[i] scaled by LIMB_ALPHA.
BODY_COLORS: tuple[Color, ...] = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)

# DWPose fills every limb at full colour and then multiplies the whole canvas by 0.6 (on the black
# canvas this is the "0.6 alpha"; where limbs overlap the later one wins). Joints come after, unscaled.
LIMB_ALPHA = 0.6
BODY_LIMB_COLORS: tuple[Color, ...] = tuple(
    tuple(int(c) for c in (np.array(color, dtype=np.uint8) * LIMB_ALPHA).astype(np.uint8))
    for color in BODY_COLORS[: len(BODY_LIMBS)]
)  # type: ignore[misc]

STICK_WIDTH = 4  # minor semi-axis of a limb ellipse, pixels
JOINT_RADIUS = 4
HAND_LINE_WIDTH = 2
HAND_POINT_RADIUS = 4
FACE_POINT_RADIUS = 3
SCORE_THRESHOLD = 0.3

NUM_BODY_KEYPOINTS = 18
NUM_HAND_KEYPOINTS = 21
NUM_FACE_KEYPOINTS = 68

# Hand keypoints: 0 wrist, then thumb 1-4, index 5-8, middle 9-12, ring 13-16, little 17-20.
HAND_EDGES: tuple[tuple[int, int], ...] = tuple(
    (0 if k == 0 else 4 * finger + k, 4 * finger + k + 1) for finger in range(5) for k in range(4)
)


def _hsv_hue_to_rgb255(hue: float) -> Color:
    """matplotlib's hsv_to_rgb at full saturation and value, times 255, rounded as OpenCV rounds a
    colour Scalar (half to even). Same float operations as matplotlib, so the ties land the same way."""
    h6 = hue * 6.0
    i = int(h6)
    f = h6 - i
    q = 1.0 - f
    t = 1.0 - (1.0 - f)
    rgb = [(1.0, t, 0.0), (q, 1.0, 0.0), (0.0, 1.0, t), (0.0, q, 1.0), (t, 0.0, 1.0), (1.0, 0.0, q)][i % 6]
    return tuple(int(np.rint(c * 255)) for c in rgb)  # type: ignore[return-value]


# Hand edge i is drawn in the colour of hue i / 20.
HAND_COLORS: tuple[Color, ...] = tuple(
    _hsv_hue_to_rgb255(i / float(len(HAND_EDGES))) for i in range(len(HAND_EDGES))
)
HAND_POINT_COLOR: Color = (0, 0, 255)
FACE_POINT_COLOR: Color = (255, 255, 255)


# --------------------------------------------------------------------------------------------------
# Rasteriser: OpenCV's integer drawing algorithms (LINE_8), in numpy.
# --------------------------------------------------------------------------------------------------

# OpenCV's SinTable: sin of whole degrees 0..450 as 7-decimal float literals.
_SIN_TABLE = np.round(np.sin(np.deg2rad(np.arange(451))), 7).astype(np.float32).astype(np.float64)
_XY_SHIFT = 16
_XY_ONE = 1 << _XY_SHIFT


def _ellipse_polygon(cx: int, cy: int, a: int, b: int, angle: int) -> list[tuple[int, int]]:
    """cv2.ellipse2Poly(center, (a, b), angle, 0, 360, delta=1): the integer vertices."""
    while angle < 0:
        angle += 360
    while angle > 360:
        angle -= 360
    cos_a, sin_a = _SIN_TABLE[450 - angle], _SIN_TABLE[angle]
    deg = np.arange(361)
    x = a * _SIN_TABLE[450 - deg]
    y = b * _SIN_TABLE[deg]
    px = np.rint(cx + x * cos_a - y * sin_a).astype(np.int64)
    py = np.rint(cy + x * sin_a + y * cos_a).astype(np.int64)
    keep = np.ones(len(px), dtype=bool)
    keep[1:] = (px[1:] != px[:-1]) | (py[1:] != py[:-1])
    pts = list(zip(px[keep].tolist(), py[keep].tolist(), strict=True))
    if len(pts) == 1:
        pts = pts * 2
    return pts


def _tdiv(n: int, m: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(n) // abs(m)
    return -q if (n < 0) != (m < 0) else q


def _clip_line(
    width: int, height: int, x1: int, y1: int, x2: int, y2: int
) -> tuple[int, int, int, int] | None:
    """OpenCV's clipLine: the segment cut to [0, width) x [0, height), with its double arithmetic, or
    None when nothing of it is inside."""
    right, bottom = width - 1, height - 1
    c1 = (x1 < 0) + (x1 > right) * 2 + (y1 < 0) * 4 + (y1 > bottom) * 8
    c2 = (x2 < 0) + (x2 > right) * 2 + (y2 < 0) * 4 + (y2 > bottom) * 8
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += int(float(a - y1) * float(x2 - x1) / float(y2 - y1))
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += int(float(a - y2) * float(x2 - x1) / float(y2 - y1))
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += int(float(a - x1) * float(y2 - y1) / float(x2 - x1))
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += int(float(a - x2) * float(y2 - y1) / float(x2 - x1))
                x2 = a
                c2 = 0
    return (x1, y1, x2, y2) if (c1 | c2) == 0 else None


def _line(xs: list[int], ys: list[int], x1: int, y1: int, x2: int, y2: int, width: int, height: int) -> None:
    """Append the pixels of OpenCV's 8-connected Line (LineIterator): clipped to the image, walked left
    to right, the minor step taken whenever the Bresenham error is negative."""
    if not (0 <= x1 < width and 0 <= x2 < width and 0 <= y1 < height and 0 <= y2 < height):
        clipped = _clip_line(width, height, x1, y1, x2, y2)
        if clipped is None:
            return
        x1, y1, x2, y2 = clipped
    if x2 < x1:
        x1, y1, x2, y2 = x2, y2, x1, y1
    dx, dy = x2 - x1, y2 - y1
    sy = -1 if dy < 0 else 1
    dy = abs(dy)
    if dx >= dy:
        m, n = dx, dy
    else:
        m, n = dy, dx
    # After t major steps the minor offset is ceil(n * t / m - 1/2); in integers:
    minor = [-((m - 2 * n * t) // (2 * m)) for t in range(m + 1)] if m else [0]
    if dx >= dy:
        xs.extend(range(x1, x1 + m + 1))
        ys.extend(y1 + sy * o for o in minor)
    else:
        xs.extend(x1 + o for o in minor)
        ys.extend(range(y1, y1 + sy * (m + 1), sy))


def _line2(xs: list[int], ys: list[int], x1: int, y1: int, x2: int, y2: int, width: int, height: int) -> None:
    """Append the pixels of OpenCV's Line2: a segment with fixed-point endpoints (16 fractional bits),
    the outline of a polygon filled with a sub-pixel shift (thick lines)."""
    clipped = _clip_line(width << _XY_SHIFT, height << _XY_SHIFT, x1, y1, x2, y2)
    if clipped is None:
        return
    x1, y1, x2, y2 = clipped
    dx, dy = x2 - x1, y2 - y1
    if abs(dx) > abs(dy):
        if dx < 0:
            x1, y1, x2, y2, dx, dy = x2, y2, x1, y1, -dx, -dy
        x_step, y_step = _XY_ONE, _tdiv(dy << _XY_SHIFT, abs(dx) | 1)
        count = (x2 - x1) >> _XY_SHIFT
    else:
        if dy < 0:
            x1, y1, x2, y2, dx, dy = x2, y2, x1, y1, -dx, -dy
        x_step, y_step = _tdiv(dx << _XY_SHIFT, abs(dy) | 1), _XY_ONE
        count = (y2 - y1) >> _XY_SHIFT
    x1 += _XY_ONE >> 1
    y1 += _XY_ONE >> 1
    xs.extend((x1 + k * x_step) >> _XY_SHIFT for k in range(count + 1))
    ys.extend((y1 + k * y_step) >> _XY_SHIFT for k in range(count + 1))


def _adjacent_inside(pts: list[tuple[int, int]], width: int, height: int) -> bool:
    x0, y0 = pts[-1]
    for x1, y1 in pts:
        if abs(x1 - x0) > 1 or abs(y1 - y0) > 1 or not (0 <= x1 < width and 0 <= y1 < height):
            return False
        x0, y0 = x1, y1
    return True


def _fill_convex_poly(
    canvas: np.ndarray, pts: list[tuple[int, int]], color: np.ndarray, shift: int = 0
) -> None:
    """cv2.fillConvexPoly(canvas, pts, color, LINE_8, shift), step for step: the outline with lines,
    then the spans between two edge chains walked down from the topmost vertex (each edge's x starts
    at its upper vertex and advances by a rounded fixed-point slope per row; the last row is left
    to the outline)."""
    h, w = canvas.shape[:2]
    n = len(pts)
    out_x: list[int] = []
    out_y: list[int] = []
    if shift == 0 and _adjacent_inside(pts, w, h):
        # Every edge joins 8-neighbours (small ellipses): the outline is the vertices themselves.
        out_x.extend(p[0] for p in pts)
        out_y.extend(p[1] for p in pts)
    else:
        up = _XY_SHIFT - shift
        x0, y0 = pts[-1]
        for x1, y1 in pts:
            if shift == 0:
                _line(out_x, out_y, x0, y0, x1, y1, w, h)
            else:
                _line2(out_x, out_y, x0 << up, y0 << up, x1 << up, y1 << up, w, h)
            x0, y0 = x1, y1
    if out_x:
        xa, ya = np.array(out_x), np.array(out_y)
        inside = (xa >= 0) & (xa < w) & (ya >= 0) & (ya < h)
        canvas[ya[inside], xa[inside]] = color

    delta = (1 << shift) >> 1
    ys_raw = [p[1] for p in pts]
    top = ys_raw.index(min(ys_raw))
    x_lo = (min(p[0] for p in pts) + delta) >> shift
    x_hi = (max(p[0] for p in pts) + delta) >> shift
    y = (min(ys_raw) + delta) >> shift
    y_hi = min((max(ys_raw) + delta) >> shift, h - 1)
    if n < 3 or x_hi < 0 or y >= h or x_lo >= w:
        return
    up = _XY_SHIFT - shift
    half = _XY_ONE >> 1
    edges = n
    idx, step, end_row, x, dx = [top, top], [1, n - 1], [y, y], [-_XY_ONE, -_XY_ONE], [0, 0]
    while True:
        for i in (0, 1):
            if y < end_row[i]:
                continue
            idx0 = idx[i]
            nxt = (idx0 + step[i]) % n
            while True:
                more = edges > 0
                edges -= 1
                if not more:
                    break
                ty = (pts[nxt][1] + delta) >> shift
                if ty > y:
                    xs, xe = pts[idx0][0] << up, pts[nxt][0] << up
                    end_row[i] = ty
                    dx[i] = _tdiv((xe - xs) * 2 + (ty - y), 2 * (ty - y))
                    x[i] = xs
                    idx[i] = nxt
                    break
                idx0 = nxt
                nxt = (nxt + step[i]) % n
        if edges < 0:
            break
        if y >= 0:
            xx1 = (min(x) + half) >> _XY_SHIFT
            xx2 = (max(x) + half) >> _XY_SHIFT
            if xx2 >= 0 and xx1 < w:
                canvas[y, max(xx1, 0) : min(xx2, w - 1) + 1] = color
        x[0] += dx[0]
        x[1] += dx[1]
        y += 1
        if y > y_hi:
            break


@lru_cache(maxsize=16)
def _circle_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(dy, half-width) spans of OpenCV's filled midpoint circle of this radius."""
    half: dict[int, int] = {}
    err, dx, dy, plus, minus = 0, radius, 0, 1, 2 * radius - 1
    while dx >= dy:
        for row, span in ((dy, dx), (-dy, dx), (dx, dy), (-dx, dy)):
            half[row] = max(half.get(row, -1), span)
        dy += 1
        err += plus
        plus += 2
        if err > 0:
            err -= minus
            dx -= 1
            minus -= 2
    rows = np.array(sorted(half), dtype=np.int64)
    return rows, np.array([half[r] for r in rows], dtype=np.int64)


@lru_cache(maxsize=16)
def _disc_mask(radius: int) -> np.ndarray:
    _, half = _circle_offsets(radius)
    cols = np.arange(-radius, radius + 1)
    return np.abs(cols)[None, :] <= half[:, None]  # rows cover -radius..radius in order


def _fill_circle(canvas: np.ndarray, x: int, y: int, radius: int, color: np.ndarray) -> None:
    """cv2.circle(canvas, (x, y), radius, color, thickness=-1) with LINE_8."""
    h, w = canvas.shape[:2]
    mask = _disc_mask(radius)
    y0, x0 = y - radius, x - radius
    r0, r1 = max(y0, 0), min(y + radius, h - 1)
    c0, c1 = max(x0, 0), min(x + radius, w - 1)
    if r0 > r1 or c0 > c1:
        return
    sub = mask[r0 - y0 : r1 - y0 + 1, c0 - x0 : c1 - x0 + 1]
    canvas[r0 : r1 + 1, c0 : c1 + 1][sub] = color


def _thick_line(
    canvas: np.ndarray, p0: Sequence[int], p1: Sequence[int], thickness: int, color: np.ndarray
) -> None:
    """cv2.line(canvas, p0, p1, color, thickness>1): a quadrilateral of half-width thickness/2 filled with
    sub-pixel vertices, plus round caps (filled circles) at both ends."""
    x0, y0 = (int(v) << _XY_SHIFT for v in p0)
    x1, y1 = (int(v) << _XY_SHIFT for v in p1)
    dx = (x0 - x1) / _XY_ONE
    dy = (y1 - y0) / _XY_ONE
    r2 = dx * dx + dy * dy
    odd = thickness & 1
    half = thickness << (_XY_SHIFT - 1)
    if abs(r2) > sys.float_info.epsilon:
        r = (half + odd * _XY_ONE * 0.5) / math.sqrt(r2)
        dpx, dpy = round(dy * r), round(dx * r)  # half to even, as cvRound
        quad = [(x0 + dpx, y0 + dpy), (x0 - dpx, y0 - dpy), (x1 - dpx, y1 - dpy), (x1 + dpx, y1 + dpy)]
        _fill_convex_poly(canvas, quad, color, shift=_XY_SHIFT)
    cap = (half + (_XY_ONE >> 1)) >> _XY_SHIFT
    for px, py in ((x0, y0), (x1, y1)):
        _fill_circle(
            canvas, (px + (_XY_ONE >> 1)) >> _XY_SHIFT, (py + (_XY_ONE >> 1)) >> _XY_SHIFT, cap, color
        )


# --------------------------------------------------------------------------------------------------
# Keypoint handling
# --------------------------------------------------------------------------------------------------


def _as_groups(points: np.ndarray | Sequence | None, count: int, what: str) -> np.ndarray:
    """(groups, count, 3) float64 with a score column (1.0 when the input had none)."""
    if points is None:
        return np.zeros((0, count, 3))
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != count or arr.shape[2] not in (2, 3):
        raise ValueError(
            f"{what} keypoints must have shape ({count}, 2|3) or (N, {count}, 2|3) "
            f"(normalised x, y[, score]); got {np.shape(points)}"
        )
    if arr.shape[2] == 2:
        arr = np.concatenate([arr, np.ones((*arr.shape[:2], 1))], axis=2)
    return arr


def visible(points: np.ndarray, threshold: float = SCORE_THRESHOLD) -> np.ndarray:
    """Mask of keypoints that are drawn: finite coordinates and score above `threshold`."""
    pts = np.asarray(points, dtype=np.float64)
    ok = np.isfinite(pts[..., 0]) & np.isfinite(pts[..., 1])
    if pts.shape[-1] > 2:
        ok &= pts[..., 2] > threshold
    return ok


def _draw_body(
    canvas: np.ndarray, bodies: np.ndarray, threshold: float, stick_width: int, joint_radius: int
) -> np.ndarray:
    h, w = canvas.shape[:2]
    vis = visible(bodies, threshold)
    for i, (ja, jb) in enumerate(BODY_LIMBS):
        color = np.array(BODY_COLORS[i], dtype=np.uint8)
        for person, ok in zip(bodies, vis, strict=True):
            if not (ok[ja] and ok[jb]):
                continue
            # Same float operations as DWPose (its X/Y names are swapped; x, y here are the real axes).
            xa, xb = person[ja, 0] * float(w), person[jb, 0] * float(w)
            ya, yb = person[ja, 1] * float(h), person[jb, 1] * float(h)
            length = ((ya - yb) ** 2 + (xa - xb) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            cx, cy = (xa + xb) / 2, (ya + yb) / 2
            pts = _ellipse_polygon(int(cx), int(cy), int(length / 2), stick_width, int(angle))
            _fill_convex_poly(canvas, pts, color)
    canvas = (canvas * LIMB_ALPHA).astype(np.uint8)
    for j in range(NUM_BODY_KEYPOINTS):
        color = np.array(BODY_COLORS[j], dtype=np.uint8)
        for person, ok in zip(bodies, vis, strict=True):
            if ok[j]:
                _fill_circle(canvas, int(person[j, 0] * w), int(person[j, 1] * h), joint_radius, color)
    return canvas


def _pixel_points(
    points: np.ndarray, h: int, w: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer pixel coordinates and the drawn mask for hand / face points. DWPose marks missing points
    with -1 and draws only points whose integer pixel coordinates are above 0.01, so a point on the first
    row or column is not drawn either; that rule is kept."""
    ok = visible(points, threshold)
    safe = np.where(ok[..., None], points[..., :2], -1.0)
    px = np.trunc(safe[..., 0] * w).astype(np.int64)
    py = np.trunc(safe[..., 1] * h).astype(np.int64)
    return px, py, ok & (px > 0) & (py > 0)


def _draw_hands(
    canvas: np.ndarray, hands: np.ndarray, threshold: float, line_width: int, point_radius: int
) -> None:
    h, w = canvas.shape[:2]
    px, py, ok = _pixel_points(hands, h, w, threshold)
    point_color = np.array(HAND_POINT_COLOR, dtype=np.uint8)
    for k in range(len(hands)):
        for e, (a, b) in enumerate(HAND_EDGES):
            if ok[k, a] and ok[k, b]:
                color = np.array(HAND_COLORS[e], dtype=np.uint8)
                _thick_line(canvas, (px[k, a], py[k, a]), (px[k, b], py[k, b]), line_width, color)
        for i in range(NUM_HAND_KEYPOINTS):
            if ok[k, i]:
                _fill_circle(canvas, int(px[k, i]), int(py[k, i]), point_radius, point_color)


def _draw_face(canvas: np.ndarray, faces: np.ndarray, threshold: float, radius: int) -> None:
    h, w = canvas.shape[:2]
    px, py, ok = _pixel_points(faces, h, w, threshold)
    color = np.array(FACE_POINT_COLOR, dtype=np.uint8)
    for x, y in zip(px[ok], py[ok], strict=True):
        _fill_circle(canvas, int(x), int(y), radius, color)


def render_pose(
    body: np.ndarray | Sequence | None,
    hands: np.ndarray | Sequence | None = None,
    face: np.ndarray | Sequence | None = None,
    *,
    height: int,
    width: int,
    threshold: float = SCORE_THRESHOLD,
    stick_width: int = STICK_WIDTH,
    joint_radius: int = JOINT_RADIUS,
    hand_line_width: int = HAND_LINE_WIDTH,
    hand_point_radius: int = HAND_POINT_RADIUS,
    face_point_radius: int = FACE_POINT_RADIUS,
) -> np.ndarray:
    """Draw one frame of pose as DWPose's `draw_pose` does: body, then hands, then face, on black.

    Keypoints are normalised `[x, y, score]` (see the module docstring); pass `face=None` to leave
    the face out. The size arguments default to DWPose's pixel sizes, which do not scale with the
    canvas (at 64 px a joint is a 9-pixel disc, as in a DWPose render of a small video).
    Returns an `(height, width, 3)` uint8 RGB image.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"canvas size must be positive, got height={height} width={width}")
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    bodies = _as_groups(body, NUM_BODY_KEYPOINTS, "body")
    canvas = _draw_body(canvas, bodies, threshold, stick_width, joint_radius)
    _draw_hands(
        canvas, _as_groups(hands, NUM_HAND_KEYPOINTS, "hand"), threshold, hand_line_width, hand_point_radius
    )
    _draw_face(canvas, _as_groups(face, NUM_FACE_KEYPOINTS, "face"), threshold, face_point_radius)
    return canvas


# --------------------------------------------------------------------------------------------------
# Boxes (ControlNeXt meta_info)
# --------------------------------------------------------------------------------------------------


def _box_of(points: np.ndarray, mask: np.ndarray, pad: float) -> Box | None:
    pts = points[mask][:, :2]
    if len(pts) == 0:
        return None
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    gx, gy = (x1 - x0) * pad, (y1 - y0) * pad
    return ((float(x0 - gx), float(y0 - gy)), (float(x1 + gx), float(y1 + gy)))


def hand_box(hand: np.ndarray | Sequence, *, threshold: float | None = None, pad: float = 0.0) -> Box | None:
    """Normalised box `((x0, y0), (x1, y1))` around one hand's 21 keypoints, grown by `pad` times its
    size on each side; None when no point qualifies.

    `threshold=None` (the default) uses every point with finite coordinates, whatever its score: a
    ControlNeXt meta_info entry pairs `hands_boxes[k]` with `hands_score[k]` by position, so every
    hand needs a box, and its low score (not a missing box) is what turns the hand loss weight off.
    """
    pts = _as_groups(hand, NUM_HAND_KEYPOINTS, "hand")[0]
    mask = visible(pts, -math.inf if threshold is None else threshold)
    return _box_of(pts, mask, pad)


def person_box(
    body: np.ndarray | Sequence,
    hands: np.ndarray | Sequence | None = None,
    face: np.ndarray | Sequence | None = None,
    *,
    threshold: float = SCORE_THRESHOLD,
    pad: float = 0.1,
) -> Box | None:
    """Normalised box around one person's visible keypoints (body, and hands and face when given),
    grown by `pad` times its size on each side (keypoints stop at the eyes and ankles; a detector box
    includes the head and feet). Not clipped to the frame: ControlNeXt's example meta_info has person
    boxes reaching past 1.0."""
    parts = [_as_groups(body, NUM_BODY_KEYPOINTS, "body")[0]]
    if hands is not None:
        parts.extend(_as_groups(hands, NUM_HAND_KEYPOINTS, "hand"))
    if face is not None:
        parts.append(_as_groups(face, NUM_FACE_KEYPOINTS, "face")[0])
    pts = np.concatenate(parts, axis=0)
    return _box_of(pts, visible(pts, threshold), pad)
