"""Built-in sample data: an animated figure, its pose video and its ControlNeXt meta_info.

`vidctrl data sample`, the demo and the tests need pose-control data without a download. Each clip
here is a function of one integer, its clip seed: the figure's clothes and hair, the background, the
motion (walking, dancing or waving, from smooth sine-based joint angles) and every keypoint. The pose
video is drawn by `render_pose` from the very keypoints that pose the figure, frame for frame, at the
same size, length and frame rate, so a test (or the DWPose pipeline) can compare a skeleton with the
keypoints it came from: `figure_keypoints` returns them, and the dataset stores them beside the
videos (`keypoints/NAME.npz`).

Layout written by `make_sample_dataset` (the dataset-list files of each training layout are written by
`vidctrl.data.layouts`, from the returned records):

    videos/video_000.mp4       the figure
    poses/video_000.mp4        its DWPose-style skeleton (same size, frames and fps)
    meta_info/video_000.json   ControlNeXt per-frame boxes, hand boxes and hand scores
    keypoints/video_000.npz    body (T, 18, 3), hands (T, 2, 21, 3), face (T, 68, 3); normalised x, y, score
    images/image_000.png       a still of another figure
    image_poses/image_000.png  its skeleton
    keypoints/image_000.npz    its keypoints (T = 1)

Keypoints follow `vidctrl.data.pose`: normalised coordinates, COCO-18 body order, hands left then
right (DWPose's order), iBUG-68 face.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vidctrl.data.pose import (
    NUM_BODY_KEYPOINTS,
    NUM_FACE_KEYPOINTS,
    NUM_HAND_KEYPOINTS,
    hand_box,
    person_box,
    render_pose,
)
from vidctrl.data.records import Record
from vidctrl.data.video import probe, write_image, write_video

# (height, width): square, portrait, landscape; multiples of 16 so that every bucket size fits.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (96, 64), (64, 96))
# Some 4k+1 (what video models train on), some not, all short enough for a CPU demo.
DEFAULT_FRAMES: tuple[int, ...] = (24, 49, 33, 60, 41)
DEFAULT_FPS: tuple[float, ...] = (8, 12, 16, 24)
DEFAULT_CRF = 12  # low, so that decoded skeleton colours stay close to the table colours

# Frames over which a clip's motion is measured to fit the figure into the frame. Fixed (not the clip
# length) so that the first N frames of a clip do not depend on how many frames are asked for.
_FIT_FRAMES = 240

SHIRTS = {
    "red": (196, 38, 44),
    "blue": (38, 78, 196),
    "green": (40, 146, 70),
    "yellow": (232, 196, 44),
    "purple": (124, 52, 168),
    "orange": (236, 124, 32),
    "white": (236, 236, 232),
    "black": (34, 34, 38),
}
TROUSERS = {
    "black": (30, 30, 34),
    "dark blue": (34, 44, 92),
    "grey": (118, 118, 124),
    "brown": (104, 68, 40),
    "beige": (198, 178, 138),
    "white": (230, 230, 226),
}
HAIR = {"black": (24, 20, 20), "brown": (92, 56, 30), "blonde": (214, 178, 96), "red": (164, 62, 30)}
SKIN = ((246, 208, 178), (226, 178, 140), (190, 134, 96), (140, 92, 62), (96, 62, 42))
BACKGROUNDS = {
    "blue": (70, 120, 204),
    "teal": (48, 150, 150),
    "green": (96, 170, 96),
    "orange": (236, 150, 72),
    "pink": (232, 150, 182),
    "grey": (150, 150, 156),
    "purple": (140, 110, 196),
    "beige": (222, 204, 168),
}
TEXTURES = ("gradient", "stripes", "checkered floor", "dots")
ACTIONS = ("walks", "dances", "waves")  # chosen by `clip seed % 3`


@dataclass(frozen=True)
class Look:
    """What a clip looks like: clothes, hair, background, and what the figure does."""

    shirt: str
    trousers: str
    hair: str
    hair_style: str  # "short" or "long"
    skin: tuple[int, int, int]
    background: str
    background_low: tuple[int, int, int]  # colour at the bottom of the gradient
    texture: str
    texture_period: int  # stripe / check / dot spacing, pixels at 2x
    action: str
    wave_side: str  # "left" or "right": the waving hand (waves only)

    @property
    def caption(self) -> str:
        doing = {
            "walks": "walks from side to side",
            "dances": "dances with swinging arms",
            "waves": f"waves with the {self.wave_side} hand",
        }[self.action]
        background = {
            "gradient": f"a smooth {self.background} gradient, darker towards the floor",
            "stripes": f"{self.background} with soft vertical stripes",
            "checkered floor": f"plain {self.background} above a checkered floor",
            "dots": f"{self.background} with a pattern of light dots",
        }[self.texture]
        return (
            f"A person in {_a(self.shirt)} shirt and {self.trousers} trousers {doing} on "
            f"{_a(self.background)} background. The person has {self.hair_style} {self.hair} hair. "
            f"The background is {background}."
        )


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


@dataclass(frozen=True)
class FigureKeypoints:
    """Keypoints of one clip, normalised `[x, y, score]` (see `vidctrl.data.pose`)."""

    body: np.ndarray  # (T, 18, 3)
    hands: np.ndarray  # (T, 2, 21, 3): left hand, right hand
    face: np.ndarray  # (T, 68, 3)
    height: int
    width: int

    def __len__(self) -> int:
        return len(self.body)

    def save(self, path: str | os.PathLike[str]) -> None:
        np.savez_compressed(
            path,
            body=self.body,
            hands=self.hands,
            face=self.face,
            size=np.array([self.height, self.width]),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FigureKeypoints:
        with np.load(path) as data:
            height, width = (int(v) for v in data["size"])
            return cls(data["body"], data["hands"], data["face"], height, width)


@dataclass(frozen=True)
class Clip:
    """One rendered clip: the figure video, its pose video, the keypoints, the look."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    poses: np.ndarray  # (T, H, W, 3) uint8
    keypoints: FigureKeypoints
    look: Look

    @property
    def caption(self) -> str:
        return self.look.caption


def sample_clip_seed(seed: int, index: int, kind: str = "video") -> int:
    """The clip seed of sample `index` of a dataset made with `seed` (videos and images apart, so
    adding videos does not change the images)."""
    stream = {"video": 0, "image": 1}[kind]
    mixed = int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0]) >> 2
    # The action is `clip seed % 3`: consecutive samples walk, dance and wave in turn.
    return mixed * len(ACTIONS) + index % len(ACTIONS)


# --------------------------------------------------------------------------------------------------
# Look and motion
# --------------------------------------------------------------------------------------------------


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    look, motion, place = np.random.default_rng(seed).spawn(3)
    return look, motion, place


def _pick(rng: np.random.Generator, names: Sequence[str]) -> str:
    return names[int(rng.integers(len(names)))]


def figure_look(clip_seed: int) -> Look:
    """The clothes, hair, background and action (`ACTIONS[clip_seed % 3]`) of clip `clip_seed`."""
    rng = _rngs(clip_seed)[0]
    shirt = _pick(rng, list(SHIRTS))
    trousers = _pick(rng, [t for t in TROUSERS if t != shirt])
    background = _pick(rng, [b for b in BACKGROUNDS if b != shirt])
    base = np.array(BACKGROUNDS[background], dtype=float)
    low = base * rng.uniform(0.45, 0.7) + rng.uniform(0, 60, 3)
    return Look(
        shirt=shirt,
        trousers=trousers,
        hair=_pick(rng, list(HAIR)),
        hair_style=_pick(rng, ["short", "long"]),
        skin=SKIN[int(rng.integers(len(SKIN)))],
        background=background,
        background_low=tuple(int(c) for c in np.clip(low, 0, 255)),  # type: ignore[arg-type]
        texture=_pick(rng, TEXTURES),
        texture_period=int(rng.integers(6, 14)),
        action=ACTIONS[clip_seed % len(ACTIONS)],
        wave_side=_pick(rng, ["left", "right"]),
    )


@dataclass(frozen=True)
class _Motion:
    """Smooth joint-angle curves of one clip; angles in radians, lengths in body heights."""

    period: float  # frames per movement cycle
    phase: float
    arm_base: float
    arm_amp: float
    elbow_base: float
    elbow_amp: float
    alternate: float  # 0: both arms together, pi: in turn
    leg_amp: float
    knee_amp: float
    lean_amp: float
    tilt_amp: float
    bob_amp: float
    drift_amp: float
    flex_amp: float
    curl_base: float
    curl_amp: float
    # scores
    dim_ear: int  # body index of an ear whose score dips below the drawing threshold, or -1
    hand_level: tuple[float, float]
    hand_amp: float
    hand_period: float
    hand_offsets: tuple[float, ...]  # per-keypoint score offsets, 21 values


def _motion(seed: int, look: Look) -> _Motion:
    rng = _rngs(seed)[1]
    u = rng.uniform
    return _Motion(
        period=u(14, 32),
        phase=u(0, 2 * math.pi),
        arm_base=u(0.9, 1.5),
        arm_amp=u(0.45, 0.85),
        elbow_base=u(0.2, 0.6),
        elbow_amp=u(0.2, 0.5),
        alternate=float(rng.choice([0.0, math.pi])),
        leg_amp=u(0.2, 0.4),
        knee_amp=u(0.1, 0.25),
        lean_amp=u(0.03, 0.12),
        tilt_amp=u(0.04, 0.15),
        bob_amp=u(0.01, 0.03),
        drift_amp=u(0.08, 0.25) if look.action == "walks" else u(0.0, 0.05),
        flex_amp=u(0.1, 0.35),
        curl_base=u(0.1, 0.4),
        curl_amp=u(0.1, 0.3),
        dim_ear=int(rng.choice([-1, 16, 17])),
        hand_level=(float(u(0.55, 0.8)), float(u(0.55, 0.8))),
        hand_amp=u(0.1, 0.25),
        hand_period=u(30, 70),
        hand_offsets=tuple(float(v) for v in u(-0.06, 0.06, NUM_HAND_KEYPOINTS)),
    )


# --------------------------------------------------------------------------------------------------
# Skeleton in body units (1 = standing height), image axes: x right, y down
# --------------------------------------------------------------------------------------------------

_NECK_TO_PELVIS = 0.30
_SHOULDER_HALF = 0.11
_HIP_HALF = 0.06
_UPPER_ARM, _FOREARM = 0.16, 0.14
_THIGH, _SHIN = 0.24, 0.23
_NECK_TO_HEAD = 0.11  # neck to the centre of the head
_HEAD_RX, _HEAD_RY = 0.068, 0.088
_FACE_W, _FACE_H = 0.11, 0.13
_HAND = 0.085  # wrist to middle fingertip

# Fingers thumb .. little: spread from the hand axis (degrees, toward the thumb) and segment lengths
# (fractions of the hand) from the base keypoint; the base sits `base` along the hand, half-spread.
_FINGER_SPREAD = (48.0, 16.0, 2.0, -11.0, -23.0)
_FINGER_BASE = (0.16, 0.44, 0.45, 0.43, 0.40)
_FINGER_SEGMENTS = (
    (0.2, 0.16, 0.13),
    (0.23, 0.14, 0.11),
    (0.25, 0.16, 0.12),
    (0.23, 0.15, 0.11),
    (0.18, 0.12, 0.1),
)


def _rot(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate vectors (..., 2) by `angle` (broadcast over the leading axes), image axes."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([v[..., 0] * c - v[..., 1] * s, v[..., 0] * s + v[..., 1] * c], axis=-1)


def _limb_dir(outward: np.ndarray, side: float, lean: np.ndarray) -> np.ndarray:
    """Unit vector of a limb `outward` radians from hanging straight down, on the body's `side`
    (-1: the person's right, shown on the left of the image; +1: their left), turned with the torso."""
    down = np.stack([side * np.sin(outward), np.cos(outward)], axis=-1)
    return _rot(down, lean)


def _face_template() -> np.ndarray:
    """iBUG-68 landmarks in face units (x right, y down, origin at the head centre)."""
    pts: list[tuple[float, float]] = []
    for k in range(17):  # jaw, from the person's right ear round the chin
        a = math.pi * k / 16
        pts.append((-0.5 * math.cos(a), -0.05 + 0.55 * math.sin(a)))
    for start in (-0.4, 0.08):  # brows, left to right in the image (the person's right brow first)
        pts.extend((start + 0.08 * k, -0.32 - 0.04 * math.sin(math.pi * k / 4)) for k in range(5))
    pts.extend((0.0, -0.22 + 0.08 * k) for k in range(4))  # nose bridge
    pts.extend((-0.1 + 0.05 * k, 0.06 + 0.02 * (1 - abs(k - 2) / 2)) for k in range(5))  # nostrils
    for cx in (-0.2, 0.2):  # eyes: from the image-left corner, over the upper lid, back under
        for k in range(6):
            a = math.pi * k / 3
            pts.append((cx - 0.09 * math.cos(a), -0.17 - 0.035 * math.sin(a)))
    for k in range(12):  # outer lip
        a = 2 * math.pi * k / 12
        pts.append((-0.2 * math.cos(a), 0.24 - 0.06 * math.sin(a)))
    for k in range(8):  # inner lip
        a = 2 * math.pi * k / 8
        pts.append((-0.12 * math.cos(a), 0.24 - 0.025 * math.sin(a)))
    return np.array(pts)


_FACE = _face_template()


@dataclass(frozen=True)
class _Skeleton:
    """Positions in pixels (continuous: pixel i spans [i, i + 1)) and what drawing needs besides."""

    body: np.ndarray  # (T, 18, 2)
    hands: np.ndarray  # (T, 2, 21, 2)
    face: np.ndarray  # (T, 68, 2)
    head: np.ndarray  # (T, 2) head centre
    head_angle: np.ndarray  # (T,)
    scale: float  # pixels per body height


def _unit_skeleton(motion: _Motion, look: Look, t: np.ndarray) -> dict[str, np.ndarray]:
    m = motion
    theta = 2 * math.pi * t / m.period + m.phase
    n = len(t)
    zero = np.zeros(n)
    lean = m.lean_amp * np.sin(theta)
    tilt = m.tilt_amp * np.sin(0.5 * theta + 1.0)
    sides = (-1.0, 1.0)  # person's right (image left), person's left

    arm_up: list[np.ndarray] = []
    elbow: list[np.ndarray] = []
    thigh: list[np.ndarray] = []
    knee: list[np.ndarray] = []
    lift: list[np.ndarray] = []
    pelvis_x = m.drift_amp * np.sin(theta / 4)
    hop = zero  # lift off the floor
    if look.action == "walks":
        for k, side in enumerate(sides):
            swing = np.sin(theta + k * math.pi)
            arm_up.append(0.12 + 0.35 * m.arm_amp * swing * side)
            elbow.append(0.2 + 0.5 * m.elbow_amp * (1 + swing))
            thigh.append(0.05 + 0.05 * swing)
            knee.append(m.knee_amp * np.maximum(swing, 0))
            lift.append(m.leg_amp * np.maximum(swing, 0))
        hop = m.bob_amp * np.abs(np.sin(theta))
    elif look.action == "dances":
        for k in range(2):
            arm_up.append(m.arm_base + m.arm_amp * np.sin(theta + k * m.alternate))
            elbow.append(m.elbow_base + m.elbow_amp * np.sin(2 * theta + k))
            squat = 0.5 * (1 + np.sin(2 * theta))
            thigh.append(0.08 + m.knee_amp * squat)
            knee.append(2 * m.knee_amp * squat)
            lift.append(zero)
        hop = 2 * m.bob_amp * np.maximum(np.sin(2 * theta + 1), 0)
    else:  # waves
        waving = 0 if look.wave_side == "right" else 1
        for k in range(2):
            if k == waving:
                arm_up.append(1.9 + 0.1 * np.sin(theta))
                elbow.append(0.9 + 0.35 * np.sin(2 * theta))
            else:
                arm_up.append(0.12 + 0.05 * np.sin(theta))
                elbow.append(0.15 + 0.05 * np.sin(theta + 1))
            thigh.append(0.05 + zero)
            knee.append(zero)
            lift.append(zero)
        lean = 0.4 * lean

    pelvis = np.stack([pelvis_x, zero], axis=-1)
    up = _rot(np.array([0.0, -1.0]), lean)
    neck = pelvis + _NECK_TO_PELVIS * up
    right_vec = _rot(np.array([1.0, 0.0]), lean)
    hip_vec = _rot(np.array([1.0, 0.0]), 0.3 * lean)

    body = np.zeros((n, NUM_BODY_KEYPOINTS, 2))
    body[:, 1] = neck
    shoulder_idx, elbow_idx, wrist_idx = (2, 5), (3, 6), (4, 7)
    hip_idx, knee_idx, ankle_idx = (8, 11), (9, 12), (10, 13)
    forearm_dirs = []
    for k, side in enumerate(sides):
        shoulder = neck + side * _SHOULDER_HALF * right_vec
        e = shoulder + _UPPER_ARM * _limb_dir(arm_up[k], side, lean)
        forearm = _limb_dir(arm_up[k] + elbow[k], side, lean)
        body[:, shoulder_idx[k]] = shoulder
        body[:, elbow_idx[k]] = e
        body[:, wrist_idx[k]] = e + _FOREARM * forearm
        forearm_dirs.append(forearm)
        hip = pelvis + side * _HIP_HALF * hip_vec
        # A lifted knee comes toward the camera: the thigh looks shorter.
        kn = hip + _THIGH * (1 - 0.45 * lift[k])[:, None] * _limb_dir(thigh[k], side, zero)
        body[:, hip_idx[k]] = hip
        body[:, knee_idx[k]] = kn
        body[:, ankle_idx[k]] = kn + _SHIN * _limb_dir(thigh[k] - knee[k], side, zero)

    head_angle = lean + tilt
    head = neck + _NECK_TO_HEAD * _rot(np.array([0.0, -1.0]), head_angle)
    face_right = _rot(np.array([1.0, 0.0]), head_angle)
    face_down = _rot(np.array([0.0, 1.0]), head_angle)
    face = (
        head[:, None]
        + _FACE_W * _FACE[None, :, :1] * face_right[:, None]
        + _FACE_H * _FACE[None, :, 1:] * face_down[:, None]
    )
    body[:, 0] = face[:, 30]  # nose tip
    body[:, 14] = face[:, 36:42].mean(axis=1)  # right eye
    body[:, 15] = face[:, 42:48].mean(axis=1)  # left eye
    for idx, side in ((16, -1.0), (17, 1.0)):
        body[:, idx] = head + side * 0.55 * _FACE_W * face_right - 0.06 * _FACE_H * face_down

    hands = np.zeros((n, 2, NUM_HAND_KEYPOINTS, 2))
    for h, (wrist, forearm, side) in enumerate(((7, forearm_dirs[1], 1.0), (4, forearm_dirs[0], -1.0))):
        flex = m.flex_amp * np.sin(1.3 * theta + h)
        axis = _rot(forearm, side * flex)
        curl = np.clip(m.curl_base + m.curl_amp * np.sin(theta + 2 * h), 0, None)
        root = body[:, wrist]
        hands[:, h, 0] = root
        for f in range(5):
            spread = side * math.radians(_FINGER_SPREAD[f])
            base = root + _HAND * _FINGER_BASE[f] * _rot(axis, 0.5 * spread)
            hands[:, h, 1 + 4 * f] = base
            point, heading = base, _rot(axis, spread)
            for s, length in enumerate(_FINGER_SEGMENTS[f]):
                heading = _rot(heading, -side * 0.5 * curl)
                point = point + _HAND * length * np.cos(curl)[:, None] * heading
                hands[:, h, 2 + 4 * f + s] = point
    # Stand on the floor (y = standing leg length) with the lower foot, unless hopping.
    shift = np.stack([zero, _THIGH + _SHIN - body[:, [10, 13], 1].max(axis=1) - hop], axis=-1)
    return {
        "body": body + shift[:, None],
        "hands": hands + shift[:, None, None],
        "face": face + shift[:, None],
        "head": head + shift,
        "head_angle": head_angle,
    }


def _skeleton(seed: int, num_frames: int, height: int, width: int) -> tuple[_Skeleton, Look, _Motion]:
    look = figure_look(seed)
    motion = _motion(seed, look)
    fit = _unit_skeleton(motion, look, np.arange(max(num_frames, _FIT_FRAMES), dtype=float))
    pts = np.concatenate(
        [fit["body"].reshape(-1, 2), fit["hands"].reshape(-1, 2), fit["face"].reshape(-1, 2)]
    )
    margin = 0.05  # limb thickness, the top of the head, shoes
    lo = pts.min(axis=0) - margin
    hi = pts.max(axis=0) + margin
    rng = _rngs(seed)[2]
    scale = min(0.94 * height / (hi[1] - lo[1]), 0.94 * width / (hi[0] - lo[0])) * rng.uniform(0.8, 1.0)
    free = np.array([width, height]) - scale * (hi - lo)
    offset = -scale * lo + free * np.array([rng.uniform(0.15, 0.85), rng.uniform(0.55, 0.95)])
    unit = _unit_skeleton(motion, look, np.arange(num_frames, dtype=float))

    def place(p: np.ndarray) -> np.ndarray:
        return offset + scale * p

    skeleton = _Skeleton(
        body=place(unit["body"]),
        hands=place(unit["hands"]),
        face=place(unit["face"]),
        head=place(unit["head"]),
        head_angle=unit["head_angle"],
        scale=float(scale),
    )
    return skeleton, look, motion


def _scores(motion: _Motion, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector-like confidences: high and steady for the body, lower and wandering for hands (so that
    some frames fall under ControlNeXt's 0.5 hand threshold and some fingertips under the 0.3 drawing
    threshold), and one ear that comes and goes in some clips."""
    t = np.arange(num_frames, dtype=float)[:, None]
    m = motion
    body = 0.88 + 0.07 * np.sin(2 * math.pi * t / 37 + np.arange(NUM_BODY_KEYPOINTS))
    if m.dim_ear >= 0:
        body[:, m.dim_ear] = 0.32 + 0.2 * np.sin(2 * math.pi * t[:, 0] / (0.7 * m.period) + m.phase)
    tips = np.zeros(NUM_HAND_KEYPOINTS)
    tips[[4, 8, 12, 16, 20]] = -0.1
    tips[0] = 0.08
    hands = np.stack(
        [
            level + m.hand_amp * np.sin(2 * math.pi * t / m.hand_period + 2.1 * h) + tips + m.hand_offsets
            for h, level in enumerate(m.hand_level)
        ],
        axis=1,
    )
    face = 0.82 + 0.06 * np.sin(2 * math.pi * t / 29 + 0.1 * np.arange(NUM_FACE_KEYPOINTS))
    return np.clip(body, 0.02, 0.99), np.clip(hands, 0.02, 0.99), np.clip(face, 0.02, 0.99)


def _normalised(points: np.ndarray, scores: np.ndarray, height: int, width: int) -> np.ndarray:
    xy = points / np.array([width, height], dtype=float)
    return np.concatenate([xy, scores[..., None]], axis=-1)


def figure_keypoints(clip_seed: int, num_frames: int, height: int, width: int) -> FigureKeypoints:
    """The keypoints of clip `clip_seed` at this size: what its figure is posed by and its skeleton is
    drawn from. The first N frames are the same whatever `num_frames` is (up to 240)."""
    skeleton, _, motion = _skeleton(clip_seed, num_frames, height, width)
    return _keypoints(skeleton, motion, height, width)


def _keypoints(skeleton: _Skeleton, motion: _Motion, height: int, width: int) -> FigureKeypoints:
    body_s, hand_s, face_s = _scores(motion, len(skeleton.body))
    return FigureKeypoints(
        body=_normalised(skeleton.body, body_s, height, width),
        hands=_normalised(skeleton.hands, hand_s, height, width),
        face=_normalised(skeleton.face, face_s, height, width),
        height=height,
        width=width,
    )


# --------------------------------------------------------------------------------------------------
# Drawing the figure
# --------------------------------------------------------------------------------------------------

_SS = 2  # supersampling factor: the figure is drawn at 2x and averaged down


def _background(look: Look, height: int, width: int, floor_y: float) -> np.ndarray:
    """(2H, 2W, 3) uint8 background at the supersampled size."""
    h, w = height * _SS, width * _SS
    top = np.array(BACKGROUNDS[look.background], dtype=float)
    low = np.array(look.background_low, dtype=float)
    y = (np.arange(h, dtype=float) / max(h - 1, 1))[:, None, None]
    image = np.broadcast_to(top * (1 - y) + low * y, (h, w, 3)).copy()
    rows, cols = np.mgrid[0:h, 0:w]
    period = look.texture_period
    floor = rows >= floor_y * _SS
    if look.texture == "stripes":
        image *= np.where((cols // period) % 2 == 0, 1.0, 0.88)[..., None]
    elif look.texture == "dots":
        dy, dx = rows % (2 * period) - period, cols % (2 * period) - period
        image = np.where((dy * dy + dx * dx <= (period / 3) ** 2)[..., None], image * 0.7 + 255 * 0.3, image)
    if look.texture == "checkered floor":
        check = ((rows // period + cols // period) % 2 == 0)[..., None]
        image = np.where(floor[..., None], np.where(check, low * 0.9, low * 0.6 + 60), image)
    else:
        image = np.where(floor[..., None], image * 0.82, image)
    return np.clip(image, 0, 255).astype(np.uint8)


def _ellipse_points(
    center: np.ndarray, rx: float, ry: float, angle: float, n: int = 28
) -> list[tuple[float, float]]:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    pts = np.stack([rx * np.cos(a), ry * np.sin(a)], axis=-1)
    pts = _rot(pts, np.asarray(angle)) + center
    return [tuple(p) for p in pts]


def _draw_figure(background: np.ndarray, skeleton: _Skeleton, look: Look, i: int) -> np.ndarray:
    """One frame of the figure over its background, drawn at 2x and averaged down."""
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    s = skeleton.scale * _SS

    def q(p: np.ndarray) -> tuple[float, float]:
        # Continuous pixel coordinates to Pillow's (pixel centres at integers) at the 2x size.
        return (float(p[0]) * _SS - 0.5, float(p[1]) * _SS - 0.5)

    def limb(points: Sequence[np.ndarray], width_units: float, color: tuple[int, int, int]) -> None:
        width = max(1, round(width_units * s))
        xy = [q(p) for p in points]
        draw.line(xy, fill=color, width=width, joint="curve")
        r = width / 2
        for x, y in (xy[0], xy[-1]):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)

    body, hands = skeleton.body[i], skeleton.hands[i]
    shirt, trousers, skin = SHIRTS[look.shirt], TROUSERS[look.trousers], look.skin
    hair = HAIR[look.hair]
    head = skeleton.head[i]
    angle = float(skeleton.head_angle[i])
    down = _rot(np.array([0.0, 1.0]), np.asarray(angle))
    unit = skeleton.scale

    if look.hair_style == "long":
        draw.polygon(
            _ellipse_points(
                np.array(q(head + down * 0.05 * unit)), 1.15 * _HEAD_RX * s, 1.35 * _HEAD_RY * s, angle
            ),
            fill=hair,
        )
    for hip, knee, ankle in ((8, 9, 10), (11, 12, 13)):
        limb([body[hip], body[knee], body[ankle]], 0.075, trousers)
        shoe = body[ankle] + np.array([0.0, 0.02 * unit])
        x, y = q(shoe)
        draw.ellipse((x - 0.035 * s, y - 0.02 * s, x + 0.035 * s, y + 0.02 * s), fill=(40, 34, 30))
    out = 0.03 * unit
    torso = [
        body[2] + np.array([-out, 0.0]),
        body[5] + np.array([out, 0.0]),
        body[11] + np.array([out, 0.0]),
        body[8] + np.array([-out, 0.0]),
    ]
    draw.polygon([q(p) for p in torso], fill=shirt)
    limb([body[1], head], 0.05, skin)
    for shoulder, elbow, wrist, hand in ((2, 3, 4, 1), (5, 6, 7, 0)):
        limb([body[shoulder], body[elbow]], 0.062, shirt)
        limb([body[elbow], body[wrist]], 0.045, skin)
        kp = hands[hand]
        draw.polygon([q(kp[0]), q(kp[5]), q(kp[17])], fill=skin)
        for f in range(5):
            chain = ([0] if f == 0 else []) + [1 + 4 * f + k for k in range(4)]  # the thumb from the wrist
            draw.line([q(kp[c]) for c in chain], fill=skin, width=max(1, round(0.016 * s)))
    draw.polygon(_ellipse_points(np.array(q(head)), _HEAD_RX * s, _HEAD_RY * s, angle), fill=skin)
    cap = _ellipse_points(
        np.array(q(head - down * 0.02 * unit)), 1.05 * _HEAD_RX * s, 0.95 * _HEAD_RY * s, angle
    )
    draw.polygon(cap[len(cap) // 2 :] + cap[:1], fill=hair)  # the upper half: from 180 to 360 degrees
    eye_r = max(0.5, 0.012 * s)
    for eye in (skeleton.face[i, 36:42].mean(axis=0), skeleton.face[i, 42:48].mean(axis=0)):
        x, y = q(eye)
        draw.ellipse((x - eye_r, y - eye_r, x + eye_r, y + eye_r), fill=(30, 24, 24))
    return np.asarray(image.reduce(_SS))


def render_clip(clip_seed: int, num_frames: int, height: int, width: int, *, face: bool = True) -> Clip:
    """Clip `clip_seed`: the figure frames and its pose frames, drawn from the same keypoints
    (`face=False` leaves the face dots out of the pose frames)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    skeleton, look, motion = _skeleton(clip_seed, num_frames, height, width)
    keypoints = _keypoints(skeleton, motion, height, width)
    floor_y = float(skeleton.body[:, [10, 13], 1].max() + 0.02 * skeleton.scale)
    background = _background(look, height, width, floor_y)
    frames = np.stack([_draw_figure(background, skeleton, look, i) for i in range(num_frames)])
    poses = np.stack(
        [
            render_pose(
                keypoints.body[i],
                keypoints.hands[i],
                keypoints.face[i] if face else None,
                height=height,
                width=width,
            )
            for i in range(num_frames)
        ]
    )
    return Clip(frames=frames, poses=poses, keypoints=keypoints, look=look)


# --------------------------------------------------------------------------------------------------
# ControlNeXt meta_info
# --------------------------------------------------------------------------------------------------


def meta_info_frames(keypoints: FigureKeypoints) -> list[dict[str, list]]:
    """ControlNeXt-SVD-v2 per-frame meta_info: `boxes` (one person box), `hands_boxes` (one normalised
    `[[x0, y0], [x1, y1]]` per hand, left then right) and `hands_score` (the 21 confidences of each
    hand, in the same order as the boxes, which is how ControlNeXt pairs them)."""
    frames = []
    for body, hands, face in zip(keypoints.body, keypoints.hands, keypoints.face, strict=True):
        person = person_box(body, hands, face)
        hand_boxes = [hand_box(hand) for hand in hands]
        frames.append(
            {
                "boxes": [] if person is None else [_box_json(person)],
                "hands_boxes": [_box_json(box) for box in hand_boxes if box is not None],
                "hands_score": [[float(s) for s in hand[:, 2]] for hand in hands],
            }
        )
    return frames


def _box_json(box: tuple[tuple[float, float], tuple[float, float]]) -> list[list[float]]:
    return [[box[0][0], box[0][1]], [box[1][0], box[1][1]]]


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


def make_sample_dataset(
    out_dir: str | os.PathLike[str],
    *,
    num_videos: int = 6,
    num_images: int = 2,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    frames: Sequence[int] = DEFAULT_FRAMES,
    fps: Sequence[float] = DEFAULT_FPS,
    crf: int = DEFAULT_CRF,
    face: bool = True,
) -> list[Record]:
    """Write the built-in pose dataset under `out_dir` and return its records (videos, then images).

    Video `i` is `sizes[i % len(sizes)]` (height, width), `frames[i % len(frames)]` long at
    `fps[i % len(fps)]`; image `j` takes `sizes[(j + 1) % len(sizes)]`. The content is a function of
    `seed` (the same keypoints and captions on every machine; the encoded bytes depend on the encoder).
    Record paths are absolute and every probed field is filled from the written files.
    """
    if num_videos < 0 or num_images < 0:
        raise ValueError("num_videos and num_images must not be negative")
    for height, width in sizes:
        if height <= 0 or width <= 0 or height % 2 or width % 2:
            raise ValueError(
                f"sizes are (height, width) pairs of positive even numbers; got {(height, width)}"
            )
    if num_videos and (not frames or not fps):
        raise ValueError("frames and fps need at least one value each")
    out = Path(out_dir).resolve()
    records: list[Record] = []
    for i in range(num_videos):
        name = f"video_{i:03d}"
        height, width = sizes[i % len(sizes)]
        clip = render_clip(sample_clip_seed(seed, i), frames[i % len(frames)], height, width, face=face)
        rate = fps[i % len(fps)]
        media, control = out / "videos" / f"{name}.mp4", out / "poses" / f"{name}.mp4"
        write_video(media, clip.frames, rate, crf=crf)
        write_video(control, clip.poses, rate, crf=crf)
        meta = out / "meta_info" / f"{name}.json"
        _write_json(meta, meta_info_frames(clip.keypoints))
        (out / "keypoints").mkdir(parents=True, exist_ok=True)
        clip.keypoints.save(out / "keypoints" / f"{name}.npz")
        records.append(_record(media, control, clip.caption, "video", meta))
    for j in range(num_images):
        name = f"image_{j:03d}"
        height, width = sizes[(j + 1) % len(sizes)]
        clip = render_clip(sample_clip_seed(seed, j, "image"), 1, height, width, face=face)
        media, control = out / "images" / f"{name}.png", out / "image_poses" / f"{name}.png"
        write_image(media, clip.frames[0])
        write_image(control, clip.poses[0])
        (out / "keypoints").mkdir(parents=True, exist_ok=True)
        clip.keypoints.save(out / "keypoints" / f"{name}.npz")
        records.append(_record(media, control, clip.caption, "image", None))
    return records


def _record(media: Path, control: Path, caption: str, kind: str, meta: Path | None) -> Record:
    target, guide = probe(media), probe(control)
    return Record(
        media=str(media),
        kind=kind,  # type: ignore[arg-type]
        control=str(control),
        caption=caption,
        meta_info=None if meta is None else str(meta),
        frames=target.frames,
        fps=target.fps,
        width=target.width,
        height=target.height,
        control_frames=guide.frames,
        control_fps=guide.fps,
        control_width=guide.width,
        control_height=guide.height,
    )


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    os.replace(tmp, path)
