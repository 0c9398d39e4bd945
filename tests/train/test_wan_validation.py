"""Wan2.1-Fun validation conditions the model as VideoX-Fun's inference does and as training shows it:
V1.1's reference image feeds the full-reference tokens and CLIP, a start image the frame-0 slot;
Control-Camera takes a camera trajectory per sample; the videos reach tensorboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vidctrl.config.train import ConfigError, parse_train_config
from vidctrl.families.base import EncodedBatch, ValidationSample
from vidctrl.families.wan_fun import WanFunControl, WanFunOptions

SIZE, FRAMES = 32, 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_wan")
    return {preset: WanFunControl.write_tiny(root / preset, preset)
            for preset in ("wan2.1-fun-control-v1.1", "wan2.1-fun-control-camera")}


def loaded(path: Path, preset: str, train_mode: str, **options: Any) -> WanFunControl:
    family = WanFunControl(preset, WanFunOptions(**options), train_mode=train_mode)
    family.load(path, dtype=torch.float32, device=torch.device("cpu"))
    return family


def image(seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def conditions_seen(family: WanFunControl, sample: ValidationSample) -> dict[str, torch.Tensor]:
    """The conditions of the first denoiser call of a one-step generation."""
    seen: list[dict[str, torch.Tensor]] = []
    predict = family.predict

    def spy(model: torch.nn.Module, encoded: EncodedBatch, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(dict(encoded.conditions))
        return predict(model, encoded, noisy, t)

    family.predict = spy  # type: ignore[method-assign]
    family.generate(family.denoiser, sample, height=SIZE, width=SIZE, frames=FRAMES, steps=1, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(0))
    return seen[0]


def latent(family: WanFunControl, picture: torch.Tensor) -> torch.Tensor:
    return family.vae_encode((picture[None].float() / 127.5 - 1.0).unsqueeze(2), generator=None)[:, :, 0]


def test_v11_reference_feeds_full_reference_tokens_and_clip_and_start_image_the_frame_0_slot(
        tiny: dict[str, Path]) -> None:
    family = loaded(tiny["wan2.1-fun-control-v1.1"], "wan2.1-fun-control-v1.1", "control_ref",
                    add_full_ref_image_in_self_attention=True)
    control = torch.randint(0, 256, (FRAMES, 3, SIZE, SIZE), dtype=torch.uint8)
    reference, start = image(1), image(2)

    def run(ref: torch.Tensor | None, first: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return conditions_seen(family, ValidationSample(prompt="a dancer", reference=ref, control=control,
                                                        name="s", start=first))

    # A reference alone: full-reference tokens and CLIP, the frame-0 slot empty (training zeroes one or
    # the other, never feeds one frame to both).
    only_reference = run(reference, None)
    torch.testing.assert_close(only_reference["full_ref"], latent(family, reference))
    assert torch.count_nonzero(only_reference["y"][:, 16:]) == 0
    torch.testing.assert_close(only_reference["clip"], family.encode_clip(reference[None].float() / 127.5 - 1))

    # A start image as well: it fills the frame-0 slot; the reference keeps the tokens and CLIP.
    both = run(reference, start)
    torch.testing.assert_close(both["y"][:, 16:, 0], latent(family, start))
    assert torch.count_nonzero(both["y"][:, 16:, 1:]) == 0
    torch.testing.assert_close(both["full_ref"], only_reference["full_ref"])
    torch.testing.assert_close(both["clip"], only_reference["clip"])

    # A start image alone: the slot and CLIP; the tokens get zeros (the pipeline's empty reference).
    only_start = run(None, start)
    torch.testing.assert_close(only_start["y"][:, 16:, 0], latent(family, start))
    assert torch.count_nonzero(only_start["full_ref"]) == 0
    torch.testing.assert_close(only_start["clip"], family.encode_clip(start[None].float() / 127.5 - 1))

    # Neither: zero CLIP features, as training's CLIP dropout (not the features of a black picture).
    neither = run(None, None)
    assert torch.count_nonzero(neither["clip"]) == 0 and torch.count_nonzero(neither["full_ref"]) == 0


def test_without_full_reference_tokens_the_reference_is_the_first_frame(tiny: dict[str, Path]) -> None:
    family = loaded(tiny["wan2.1-fun-control-v1.1"], "wan2.1-fun-control-v1.1", "control_ref",
                    add_full_ref_image_in_self_attention=False)
    control = torch.zeros((FRAMES, 3, SIZE, SIZE), dtype=torch.uint8)
    seen = conditions_seen(family, ValidationSample(prompt="a dancer", reference=image(3), control=control,
                                                    name="s"))
    torch.testing.assert_close(seen["y"][:, 16:, 0], latent(family, image(3)))
    assert seen.get("full_ref") is None


def test_start_images_are_refused_where_they_have_no_slot_or_would_share_it() -> None:
    with pytest.raises(ConfigError, match="both would fill the frame-0 slot"):
        parse_train_config(["--preset", "wan2.1-fun-control-v1.0", "--validation_images", "a.png",
                            "--validation_start_images", "b.png"])
    with pytest.raises(ConfigError, match="no frame-0 slot"):
        parse_train_config(["--preset", "wan2.1-fun-control-v1.1", "--train_mode", "control",
                            "--add_full_ref_image_in_self_attention", "false", "--validation_start_images", "b.png"])
    with pytest.raises(ConfigError, match="validation_start_images"):
        parse_train_config(["--preset", "cogvideox-fun-control", "--validation_start_images", "b.png"])
    config = parse_train_config(["--preset", "wan2.1-fun-control-v1.1", "--validation_images", "a.png",
                                 "--validation_start_images", "b.png"])
    assert config.family.validation_start_images == ["b.png"]


def write_trajectory(path: Path, poses: int) -> np.ndarray:
    from vidctrl.data.camera import CameraTrajectory, write_camera_txt

    angles = np.linspace(0, 0.6, poses)
    w2c = np.zeros((poses, 3, 4))
    w2c[:, 0, 0] = w2c[:, 2, 2] = np.cos(angles)
    w2c[:, 0, 2], w2c[:, 2, 0] = np.sin(angles), -np.sin(angles)
    w2c[:, 1, 1] = 1.0
    w2c[:, :, 3] = np.stack([np.linspace(0, 1, poses), np.zeros(poses), np.linspace(0, -0.5, poses)], 1)
    intrinsics = np.tile([0.45, 0.8, 0.5, 0.5], (poses, 1))
    rows = np.concatenate([np.arange(poses)[:, None], intrinsics, np.zeros((poses, 2)), w2c.reshape(poses, 12)], 1)
    write_camera_txt(path, CameraTrajectory.from_array(rows))
    return rows


def camera_config(tmp_path: Path, control: Path, *extra: str) -> Any:
    return parse_train_config([
        "--preset", "wan2.1-fun-control-camera", "--validation_steps", "1", "--validation_prompts", "a room",
        "--validation_control_videos", str(control), "--validation_height", str(SIZE), "--validation_width",
        str(SIZE * 2), "--validation_frames", str(FRAMES), "--output_dir", str(tmp_path), *extra,
    ])


def test_camera_validation_takes_a_trajectory_per_sample_and_passes_its_rays(tiny: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    from vidctrl.adapters.camera import VIDEOX_POSE_HW, pack_camera_frames, plucker_embedding

    rows = write_trajectory(tmp_path / "pan.txt", 9)
    family = loaded(tiny["wan2.1-fun-control-camera"], "wan2.1-fun-control-camera", "control_camera_ref")
    runner = family.validation_runner(camera_config(tmp_path, tmp_path / "pan.txt"), output_dir=tmp_path)
    sample = runner.samples[0]
    # VideoX-Fun's inference: the first `frames` poses, rays at the validation size, 1280x720 focal correction.
    expected = pack_camera_frames(plucker_embedding(rows[:FRAMES, 1:5], rows[:FRAMES, 7:].reshape(-1, 3, 4), SIZE,
                                                    SIZE * 2, original_hw=VIDEOX_POSE_HW))
    torch.testing.assert_close(sample.camera, torch.from_numpy(rows[:FRAMES]))
    # The contact sheet's control row: each pixel's ray direction (packed channels 12-23) as a colour.
    directions = expected[12:].view(3, 4, -1, SIZE, SIZE * 2).permute(2, 1, 0, 3, 4).reshape(-1, 3, SIZE, SIZE * 2)
    assert sample.control.dtype == torch.uint8
    torch.testing.assert_close(sample.control.float(), ((directions[3:] + 1) * 127.5).round(), atol=1, rtol=0)

    seen: list[torch.Tensor] = []
    adapter = family.denoiser.control_adapter
    handle = adapter.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        family.generate(family.denoiser, sample, height=SIZE, width=SIZE * 2, frames=FRAMES, steps=1,
                        guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], expected[None])


def test_camera_validation_refuses_videos_and_short_trajectories(tiny: dict[str, Path], tmp_path: Path) -> None:
    write_trajectory(tmp_path / "short.txt", 3)
    family = WanFunControl("wan2.1-fun-control-camera", WanFunOptions(), train_mode="control_camera_ref")
    with pytest.raises(ValueError, match=r"has 3 poses, validation needs 5: pass --validation_frames 1"):
        family.validation_runner(camera_config(tmp_path, tmp_path / "short.txt"), output_dir=tmp_path)
    with pytest.raises(ValueError, match=r"camera trajectory \.txt files"):
        family.validation_runner(camera_config(tmp_path, tmp_path / "pose.mp4"), output_dir=tmp_path)


def camera_dataset(root: Path) -> Path:
    """Two 9-frame videos with their camera trajectories, in the VideoX-Fun layout."""
    import json

    from vidctrl.data.video import write_video

    entries = []
    for i in range(2):
        write_video(root / f"v{i}.mp4", [np.full((SIZE, SIZE * 2, 3), 20 * k + 60 * i, dtype=np.uint8)
                                         for k in range(9)], fps=8)
        write_trajectory(root / f"v{i}.txt", 9)
        entries.append({"file_path": f"v{i}.mp4", "control_file_path": f"v{i}.txt", "text": "a room", "type": "video"})
    (root / "metadata.json").write_text(json.dumps(entries))
    return root


@pytest.mark.slow
def test_validation_videos_and_contact_sheets_reach_tensorboard(tiny: dict[str, Path], tmp_path: Path) -> None:
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vidctrl.cli import main

    data, out = camera_dataset(tmp_path / "data"), tmp_path / "out"
    write_trajectory(tmp_path / "pan.txt", 9)
    assert main([
        "train", "--preset", "wan2.1-fun-control-camera", "--pretrained_model_name_or_path",
        str(tiny["wan2.1-fun-control-camera"]), "--train_data_meta", str(data / "metadata.json"), "--train_data_dir",
        str(data), "--output_dir", str(out), "--image_sample_size", str(SIZE), "--video_sample_size", str(SIZE),
        "--token_sample_size", str(SIZE), "--video_sample_stride", "1", "--video_sample_n_frames", str(FRAMES),
        "--dataloader_num_workers", "0", "--mixed_precision", "no", "--report_to", "tensorboard",
        "--max_train_steps", "1", "--checkpointing_steps", "1", "--validation_steps", "1",
        "--validation_prompts", "a room", "--validation_control_videos", str(tmp_path / "pan.txt"),
        "--validation_num_inference_steps", "1", "--validation_frames", str(FRAMES),
    ]) == 0
    assert (out / "validation" / "step-1" / "sample-0.mp4").is_file()
    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*")).parent),
                              size_guidance={"images": 0})
    events.Reload()
    assert {"validation/sample-0/video", "validation/sample-0/contact_sheet"} <= set(events.Tags()["images"])
    video = events.Images("validation/sample-0/video")[0]
    assert video.step == 1
    with Image.open(io.BytesIO(video.encoded_image_string)) as gif:
        assert gif.format == "GIF" and gif.n_frames == FRAMES and gif.size == (SIZE, SIZE)
    sheet = events.Images("validation/sample-0/contact_sheet")[0]
    assert sheet.width > SIZE and sheet.height > SIZE
