import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vidctrl.data.pose import BODY_COLORS, render_pose
from vidctrl.data.records import Record
from vidctrl.data.synthetic import (
    ACTIONS,
    SHIRTS,
    FigureKeypoints,
    figure_keypoints,
    figure_look,
    make_sample_dataset,
    meta_info_frames,
    render_clip,
    sample_clip_seed,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Record]]:
    root = tmp_path_factory.mktemp("sample")
    return root, make_sample_dataset(root)


def videos(records: list[Record]) -> list[Record]:
    return [r for r in records if r.kind == "video"]


def decode(path: str) -> tuple[list[np.ndarray], float, int, int]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, float(stream.average_rate), stream.width, stream.height


def name_of(record: Record) -> str:
    return Path(record.media).stem


def test_writes_videos_poses_meta_info_keypoints_and_images(dataset) -> None:
    root, records = dataset
    assert [r.kind for r in records] == ["video"] * 6 + ["image"] * 2
    for record in records:
        assert Path(record.media).is_absolute() and Path(record.media).is_file()
        assert Path(record.control).is_file()
        assert (root / "keypoints" / f"{name_of(record)}.npz").is_file()
    for record in videos(records):
        assert Path(record.media).parent == root / "videos"
        assert Path(record.control) == root / "poses" / Path(record.media).name
        assert Path(record.meta_info) == root / "meta_info" / f"{name_of(record)}.json"
    for record in records[6:]:
        assert Path(record.media).parent == root / "images"
        assert Path(record.control).parent == root / "image_poses"
        assert record.meta_info is None
        assert (record.frames, record.fps, record.control_frames) == (1, 0.0, 1)
        with Image.open(record.media) as image, Image.open(record.control) as pose:
            assert image.size == pose.size == (record.width, record.height)


def test_pose_video_matches_its_video_in_frames_fps_and_size(dataset) -> None:
    _, records = dataset
    for record in videos(records):
        frames, fps, width, height = decode(record.media)
        pose_frames, pose_fps, pose_width, pose_height = decode(record.control)
        assert len(frames) == len(pose_frames) == record.frames == record.control_frames
        assert fps == pose_fps == record.fps == record.control_fps
        assert (width, height) == (pose_width, pose_height) == (record.width, record.height)
        assert (record.control_width, record.control_height) == (record.width, record.height)
        assert frames[0].shape == (height, width, 3)


def test_default_dataset_mixes_sizes_lengths_and_frame_rates(dataset) -> None:
    _, records = dataset
    clips = videos(records)
    shapes = {(r.height, r.width) for r in clips}
    assert shapes == {(64, 64), (96, 64), (64, 96)}  # square, portrait, landscape
    assert all(r.height % 16 == 0 and r.width % 16 == 0 for r in records)
    assert len({r.fps for r in clips}) >= 3
    assert len({r.frames for r in clips}) >= 4
    assert all(24 <= r.frames <= 60 for r in clips)


def test_meta_info_has_controlnext_schema_one_entry_per_frame(dataset) -> None:
    _, records = dataset
    for record in videos(records):
        frames = json.loads(Path(record.meta_info).read_text())
        assert len(frames) == record.frames
        for frame in frames:
            assert set(frame) == {"boxes", "hands_boxes", "hands_score"}
            assert len(frame["boxes"]) == 1
            assert len(frame["hands_boxes"]) == len(frame["hands_score"]) == 2
            for (x0, y0), (x1, y1) in frame["boxes"] + frame["hands_boxes"]:
                assert x0 < x1 and y0 < y1
            for scores in frame["hands_score"]:
                assert len(scores) == 21 and all(0.0 <= s <= 1.0 for s in scores)


def test_hand_boxes_contain_the_hand_keypoints_and_scores_come_from_them(dataset) -> None:
    root, records = dataset
    for record in videos(records):
        keypoints = FigureKeypoints.load(root / "keypoints" / f"{name_of(record)}.npz")
        frames = json.loads(Path(record.meta_info).read_text())
        for t, frame in enumerate(frames):
            for hand, ((x0, y0), (x1, y1)), scores in zip(
                keypoints.hands[t], frame["hands_boxes"], frame["hands_score"], strict=True
            ):
                assert (hand[:, 0] >= x0).all() and (hand[:, 0] <= x1).all()
                assert (hand[:, 1] >= y0).all() and (hand[:, 1] <= y1).all()
                assert scores == hand[:, 2].tolist()
            # The person box holds the body too (with room for head and feet).
            (px0, py0), (px1, py1) = frame["boxes"][0]
            body = keypoints.body[t]
            assert px0 < body[:, 0].min() and body[:, 0].max() < px1
            assert py0 < body[:, 1].min() and body[:, 1].max() < py1


def test_hand_scores_cross_controlnexts_half_threshold(dataset) -> None:
    _, records = dataset
    means = [
        np.mean(scores)
        for record in videos(records)
        for frame in json.loads(Path(record.meta_info).read_text())
        for scores in frame["hands_score"]
    ]
    assert min(means) < 0.5 < max(means)  # both weighted and unweighted hands occur


def test_stored_keypoints_are_figure_keypoints_of_the_clip_seed(dataset) -> None:
    root, records = dataset
    for i, record in enumerate(videos(records)):
        stored = FigureKeypoints.load(root / "keypoints" / f"{name_of(record)}.npz")
        again = figure_keypoints(sample_clip_seed(0, i), record.frames, record.height, record.width)
        assert stored.body.tobytes() == again.body.tobytes()
        assert stored.hands.tobytes() == again.hands.tobytes()
        assert stored.face.tobytes() == again.face.tobytes()


def test_pose_video_has_joint_colours_at_the_keypoints(dataset) -> None:
    root, records = dataset
    checked = 0
    for record in videos(records):
        keypoints = FigureKeypoints.load(root / "keypoints" / f"{name_of(record)}.npz")
        frames, *_ = decode(record.control)
        h, w = record.height, record.width
        for t, frame in enumerate(frames):
            exact = render_pose(keypoints.body[t], keypoints.hands[t], keypoints.face[t], height=h, width=w)
            for joint in range(18):
                x, y, score = keypoints.body[t, joint]
                px, py = int(x * w), int(y * h)
                if score <= 0.3 or not (1 <= px < w - 1 and 1 <= py < h - 1):
                    continue
                # Joints under later joints, hands or face dots are hidden in any DWPose render;
                # the ones whose whole 3x3 centre shows their colour must survive the coding.
                if not (exact[py - 1 : py + 2, px - 1 : px + 2] == BODY_COLORS[joint]).all():
                    continue
                assert np.abs(frame[py, px].astype(int) - BODY_COLORS[joint]).max() <= 40
                checked += 1
    assert checked > 500


def test_pose_image_is_the_exact_render_of_its_keypoints(dataset) -> None:
    root, records = dataset
    for record in records[6:]:
        keypoints = FigureKeypoints.load(root / "keypoints" / f"{name_of(record)}.npz")
        assert len(keypoints) == 1
        exact = render_pose(
            keypoints.body[0], keypoints.hands[0], keypoints.face[0], height=record.height, width=record.width
        )
        assert (np.asarray(Image.open(record.control).convert("RGB")) == exact).all()


def test_figure_is_drawn_where_its_skeleton_is(dataset) -> None:
    root, records = dataset
    for i, record in enumerate(videos(records)):
        keypoints = FigureKeypoints.load(root / "keypoints" / f"{name_of(record)}.npz")
        frames, *_ = decode(record.media)
        shirt = np.array(SHIRTS[figure_look(sample_clip_seed(0, i)).shirt])
        # The chest: a third of the way from the neck to the middle of the hips.
        chest = (
            keypoints.body[:, 1, :2]
            + (keypoints.body[:, [8, 11], :2].mean(axis=1) - keypoints.body[:, 1, :2]) / 3
        )
        seen = np.array(
            [
                frame[int(y * record.height), int(x * record.width)]
                for frame, (x, y) in zip(frames, chest, strict=True)
            ]
        )
        assert np.abs(np.median(seen, axis=0) - shirt).max() <= 40


def test_some_low_score_points_are_left_out_of_the_pose_video(dataset) -> None:
    root, records = dataset
    body_hidden = hand_hidden = 0
    for record in videos(records):
        keypoints = FigureKeypoints.load(root / "keypoints" / f"{name_of(record)}.npz")
        body_hidden += int((keypoints.body[..., 2] <= 0.3).sum())
        hand_hidden += int((keypoints.hands[..., 2] <= 0.3).sum())
    assert body_hidden > 0 and hand_hidden > 0


def test_figures_backgrounds_and_motions_differ_between_clips(dataset) -> None:
    _, records = dataset
    clips = videos(records)
    captions = [r.caption for r in records]
    assert len(set(captions)) == len(captions)
    assert all(c.startswith("A person in ") and "background" in c for c in captions)
    corners = []
    for record in clips:
        frames, *_ = decode(record.media)
        corners.append(frames[0][:4, :4].reshape(-1, 3).mean(axis=0))
    distinct = {tuple(np.round(c / 8).astype(int)) for c in corners}
    assert len(distinct) >= 4  # background colours
    actions = {figure_look(sample_clip_seed(0, i)).action for i in range(len(clips))}
    assert actions == set(ACTIONS)
    a, b = (figure_keypoints(sample_clip_seed(0, i), 24, 64, 64) for i in (0, 3))  # both walk
    assert np.abs(a.body[..., :2] - b.body[..., :2]).max() > 0.05


def test_generation_is_deterministic(tmp_path: Path) -> None:
    kwargs = dict(num_videos=2, num_images=1, seed=5, sizes=((32, 48),), frames=(9,), fps=(10,))
    first = make_sample_dataset(tmp_path / "a", **kwargs)
    second = make_sample_dataset(tmp_path / "b", **kwargs)
    assert [r.caption for r in first] == [r.caption for r in second]
    for sub in ("meta_info/video_000.json", "meta_info/video_001.json"):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes()
    for name in ("video_000", "video_001", "image_000"):
        one = FigureKeypoints.load(tmp_path / "a" / "keypoints" / f"{name}.npz")
        two = FigureKeypoints.load(tmp_path / "b" / "keypoints" / f"{name}.npz")
        assert one.body.tobytes() == two.body.tobytes() and one.hands.tobytes() == two.hands.tobytes()
    other = make_sample_dataset(tmp_path / "c", **{**kwargs, "seed": 6})
    assert [r.caption for r in other] != [r.caption for r in first]


def test_a_clip_starts_the_same_whatever_its_length() -> None:
    seed = sample_clip_seed(0, 1)
    short, long = figure_keypoints(seed, 10, 64, 96), figure_keypoints(seed, 40, 64, 96)
    assert short.body.tobytes() == long.body[:10].tobytes()
    assert short.hands.tobytes() == long.hands[:10].tobytes()


def test_render_clip_draws_pose_from_the_returned_keypoints() -> None:
    clip = render_clip(sample_clip_seed(1, 2), 5, 48, 32)
    assert clip.frames.shape == clip.poses.shape == (5, 48, 32, 3)
    kp = clip.keypoints
    for t in range(5):
        assert (clip.poses[t] == render_pose(kp.body[t], kp.hands[t], kp.face[t], height=48, width=32)).all()
    assert meta_info_frames(kp)[0]["hands_score"][1] == kp.hands[0, 1, :, 2].tolist()
    without_face = render_clip(sample_clip_seed(1, 2), 5, 48, 32, face=False)
    assert (without_face.poses[0] == render_pose(kp.body[0], kp.hands[0], height=48, width=32)).all()


def test_odd_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        make_sample_dataset(tmp_path, num_videos=1, num_images=0, sizes=((63, 64),))
