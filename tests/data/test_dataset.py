"""The torch Dataset and loader over the built-in sample data: shapes, workers, resume, bad samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vidctrl.cli import main
from vidctrl.data.config import DataConfig
from vidctrl.data.layouts import write_layout
from vidctrl.data.loader import build_loader, load_manifest
from vidctrl.data.records import DataError
from vidctrl.data.synthetic import make_sample_dataset
from vidctrl.data.video import read_frames


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    records = make_sample_dataset(root, num_videos=8, num_images=4, seed=11)
    write_layout(records, root, "videox")
    return root


def config(root: Path, **overrides: object) -> DataConfig:
    values = dict(train_data_meta=root / "metadata.json", train_data_dir=root, video_sample_n_frames=9,
                  video_sample_stride=2, video_sample_size=64, image_sample_size=64, token_sample_size=64,
                  enable_bucket=True, train_batch_size=2, seed=5)
    values.update(overrides)
    return DataConfig(**values)  # type: ignore[arg-type]


def batches(loader) -> list[dict]:
    return list(loader)


def test_batches_share_one_shape_and_hold_uint8_clips_with_controls(dataset: Path) -> None:
    for batch in build_loader(config(dataset)):
        pixels, control = batch["pixels"], batch["control"]
        assert pixels.dtype == torch.uint8 and pixels.ndim == 5 and pixels.shape[-1] == 3
        assert control.shape == pixels.shape
        frames = pixels.shape[1]
        assert frames == 1 or (frames - 1) % 4 == 0
        assert batch["frame_indices"].shape == (batch["size"], frames)


def test_control_frames_are_read_at_the_target_indices(dataset: Path) -> None:
    """Target and control come from the same frame indices: decoding both files directly at the
    batch's `frame_indices` (same scaling and crop) gives exactly the batch's pixels and control."""
    from vidctrl.data.buckets import resize_crop_params

    loader = build_loader(config(dataset, enable_bucket=False, train_batch_size=1))
    manifest = loader.dataset.manifest
    checked = 0
    for batch in loader:
        record = manifest[batch["index"][0]]
        if record.kind != "video":
            continue
        indices = batch["frame_indices"][0].numpy()
        height, width = batch["pixels"].shape[2:4]
        resize_h, resize_w, top, left = resize_crop_params(record.height, record.width, height, width)
        for key, path in (("pixels", record.media), ("control", record.control)):
            direct = read_frames(path, indices, size=(resize_h, resize_w))[:, top : top + height, left : left + width]
            assert np.array_equal(batch[key][0].numpy(), direct), key
        checked += 1
    assert checked >= 3


def test_workers_do_not_change_the_batches(dataset: Path) -> None:
    plain = batches(build_loader(config(dataset)))
    workers = batches(build_loader(config(dataset, dataloader_num_workers=2)))
    assert [b["index"] for b in plain] == [b["index"] for b in workers]
    assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(plain, workers, strict=True))


def test_resume_mid_epoch_yields_the_remaining_batches_in_order(dataset: Path) -> None:
    loaded = load_manifest(config(dataset))
    full = batches(build_loader(config(dataset), loaded=loaded))
    first = build_loader(config(dataset), loaded=loaded)
    for taken, _ in enumerate(first, start=1):
        if taken == 2:
            break
    resumed = build_loader(config(dataset), loaded=loaded)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as stored in a checkpoint
    rest = batches(resumed)
    assert [b["index"] for b in rest] == [b["index"] for b in full[2:]]
    assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(rest, full[2:], strict=True))


def test_images_are_one_frame_clips_in_their_own_batches(dataset: Path) -> None:
    kinds = set()
    for batch in build_loader(config(dataset)):
        kinds.add(batch["pixels"].shape[1] == 1)
    assert kinds == {True, False}


def test_hand_boxes_come_with_meta_info_for_a_preset_that_weighs_hands(dataset: Path) -> None:
    assert all("hand_boxes" not in b for b in build_loader(config(dataset)))  # meta_info not read
    videos = [b for b in build_loader(config(dataset), hand_boxes=True) if b["pixels"].shape[1] > 1]
    assert videos, "the sample dataset has video batches"
    for batch in videos:
        frames = batch["pixels"].shape[1]
        assert batch["hand_boxes"].shape == (batch["size"], frames, 2, 4)
        assert batch["hand_scores"].shape == (batch["size"], frames, 2)
        drawn = batch["hand_boxes"][~torch.isnan(batch["hand_boxes"])]
        assert drawn.numel() > 0


@pytest.fixture
def broken(dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(dataset, root, symlinks=True)
    entries = json.loads((root / "metadata.json").read_text())
    video = next(e for e in entries if e["type"] == "video")
    (root / video["file_path"]).write_bytes(b"")
    return root


def test_lenient_mode_leaves_out_the_bad_sample_and_counts_it(broken: Path) -> None:
    loaded = load_manifest(config(broken))
    assert len(loaded.excluded) == 1 and len(loaded.manifest) == 11
    seen = {i for b in build_loader(config(broken), loaded=loaded) for i in b["index"]}
    assert all(loaded.manifest[i].media for i in seen)


def test_strict_mode_stops_at_the_bad_sample_naming_it(broken: Path) -> None:
    with pytest.raises(DataError, match=r"\.mp4"):
        load_manifest(config(broken, bad_sample_policy="strict"))


def test_a_sample_broken_after_planning_is_skipped_not_replaced(dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "later"
    shutil.copytree(dataset, root, symlinks=True)
    loaded = load_manifest(config(root))
    loader = build_loader(config(root), loaded=loaded)
    scheduled = [int(i) for _, members in loader.sampler.schedule(0) for i in members]
    victim = next(i for i in scheduled if loaded.manifest[i].kind == "video")
    Path(loaded.manifest[victim].media).write_bytes(b"garbage" * 10)
    skipped, seen = [], []
    for batch in loader:
        skipped += batch["skipped"]
        seen += batch.get("index", [])
    assert [s.index for s in skipped] == [victim]
    assert victim not in seen and len(seen) == len(scheduled) - 1


def test_plan_json_matches_the_token_table_of_the_design(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "plan", "--training_with_video_token_length", "--token_sample_size", "512",
                 "--video_sample_n_frames", "49", "--video_sample_size", "256", "--image_sample_size", "1024",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert [(r["size"], r["frames"]) for r in plan] == [
        (256, 49), (384, 49), (512, 49), (640, 29), (768, 21), (896, 17), (1024, 13)]
    assert next(r["tokens"] for r in plan if r["size"] == 512) == 13_312


def test_convert_round_trips_through_every_layout(dataset: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from vidctrl.data.layouts import load_dataset

    only_videos = tmp_path / "videos"
    only_videos.mkdir()
    entries = [e for e in json.loads((dataset / "metadata.json").read_text()) if e["type"] == "video"]
    for e in entries:
        for key in ("file_path", "control_file_path"):
            e[key] = str(dataset / e[key])
        if "meta_info" in e:
            e["meta_info"] = str(dataset / e["meta_info"])
    (only_videos / "metadata.json").write_text(json.dumps(entries))
    source = ["--train_data_meta", str(only_videos / "metadata.json")]
    assert main(["data", "convert", *source, "--to", "manifest", "--out", str(tmp_path / "m" / "data.jsonl")]) == 0
    assert main(["data", "convert", "--manifest", str(tmp_path / "m" / "data.jsonl"), "--to", "dynamictrl",
                 "--out", str(tmp_path / "d")]) == 0
    assert main(["data", "convert", "--data_root", str(tmp_path / "d"), "--to", "controlnext",
                 "--out", str(tmp_path / "c")]) == 0
    assert main(["data", "convert", "--meta_info_path", str(tmp_path / "c" / "meta_info.json"), "--to", "videox",
                 "--out", str(tmp_path / "v")]) == 0
    capsys.readouterr()
    manifest = load_dataset(DataConfig(manifest=tmp_path / "m" / "data.jsonl")).records
    back = load_dataset(DataConfig(train_data_meta=tmp_path / "v" / "metadata.json")).records
    assert len(back) == len(manifest) == len(entries)
    for a, b in zip(manifest, back, strict=True):
        assert Path(a.media).resolve() == Path(b.media).resolve()
        assert Path(a.control).resolve() == Path(b.control).resolve()
        assert a.caption == b.caption
        assert a.frames is not None and a.width is not None  # the manifest stores probed metadata


@pytest.mark.parametrize("caption", [42, ["a", "list"]])
def test_a_caption_that_is_not_text_is_the_same_per_sample_error_as_in_data_check(
    dataset: Path, tmp_path: Path, caption: object
) -> None:
    root = tmp_path / "captions"
    shutil.copytree(dataset, root, symlinks=True)
    entries = json.loads((root / "metadata.json").read_text())
    entries[2]["text"] = caption
    (root / "metadata.json").write_text(json.dumps(entries))
    loaded = load_manifest(config(root))
    assert [(p.sample, p.code) for p in loaded.excluded] == [(2, "caption_not_text")]
    assert len(loaded.manifest) == len(entries) - 1
    with pytest.raises(DataError, match=rf"sample 2 .*caption is {type(caption).__name__}"):
        load_manifest(config(root, bad_sample_policy="strict"))
