from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vidctrl.train.media import (
    cfhw_to_fchw,
    contact_sheet,
    ema,
    loss_curve_png,
    nice_ticks,
    save_contact_sheet,
    save_video_mp4,
    to_uint8_frames,
)

WHITE = (255, 255, 255)


def solid_clip(colours: list[tuple[int, int, int]], height: int, width: int) -> torch.Tensor:
    """(F, 3, H, W) uint8, frame i filled with colours[i]."""
    return (
        torch.tensor(colours, dtype=torch.uint8)[:, :, None, None].expand(-1, -1, height, width).contiguous()
    )


def decode(path: Path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, float(stream.average_rate)


def colour_box(image: Image.Image, colour: tuple[int, int, int]) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the pixels of exactly `colour`, or None."""
    array = np.asarray(image)
    ys, xs = np.nonzero((array == colour).all(axis=-1))
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# ---------------------------------------------------------------------------------------------------
# mp4


def test_float_clip_in_minus_one_to_one_is_written_as_h264_with_its_frames_and_fps(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128), (255, 255, 255)]
    clip = solid_clip(colours, 32, 48).float() / 127.5 - 1.0
    path = save_video_mp4(tmp_path / "out" / "sample.mp4", clip, fps=8)
    frames, fps = decode(path)
    assert frames.shape == (5, 32, 48, 3)
    assert fps == 8
    # yuv420p is lossy, but a solid colour survives within a few levels.
    np.testing.assert_allclose(frames[:, 16, 24].astype(int), np.array(colours), atol=6)


def test_cfhw_uint8_clip_with_odd_size_is_padded_to_even(tmp_path: Path) -> None:
    clip = np.zeros((3, 4, 33, 47), dtype=np.uint8)  # C, F, H, W
    clip[0] = 200  # red everywhere
    clip[1, :, :, -1] = 200  # last column yellow: the padding repeats it
    path = save_video_mp4(tmp_path / "odd.mp4", clip, fps=24, layout="CFHW")
    frames, _ = decode(path)
    assert frames.shape == (4, 34, 48, 3)
    assert abs(int(frames[0, 10, -1, 1]) - 200) <= 8 and abs(int(frames[0, 10, 10, 1])) <= 8
    assert abs(int(frames[0, -1, 10, 0]) - 200) <= 8


def test_to_uint8_frames_maps_ranges_layouts_and_grey() -> None:
    clip = torch.tensor([-1.0, 0.0, 1.0, 1.5]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    frames = to_uint8_frames(clip)
    assert frames.shape == (4, 2, 2, 3) and frames.dtype == np.uint8
    assert frames[:, 0, 0, 0].tolist() == [0, 128, 255, 255]  # overshoot is clamped
    unit = to_uint8_frames(torch.full((1, 3, 2, 2), 0.5), value_range=(0.0, 1.0))
    assert unit[0, 0, 0].tolist() == [128, 128, 128]
    cfhw = torch.rand(3, 5, 4, 6)
    assert cfhw_to_fchw(cfhw).shape == (5, 3, 4, 6)
    assert cfhw_to_fchw(np.zeros((2, 3, 5, 4, 6))).shape == (2, 5, 3, 4, 6)
    np.testing.assert_array_equal(to_uint8_frames(cfhw, layout="CFHW"), to_uint8_frames(cfhw_to_fchw(cfhw)))


def test_bad_clips_are_rejected_with_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"4-d FCHW clip.*a batch\? pass one sample"):
        save_video_mp4(tmp_path / "a.mp4", torch.zeros(1, 2, 3, 4, 4), fps=8)
    with pytest.raises(ValueError, match=r"4 channels.*expected 3"):
        save_video_mp4(tmp_path / "a.mp4", torch.zeros(2, 4, 4, 4), fps=8)
    with pytest.raises(ValueError, match="Is the layout right"):
        save_video_mp4(tmp_path / "a.mp4", torch.zeros(3, 9, 4, 4), fps=8)  # CFHW passed as FCHW
    with pytest.raises(TypeError, match="uint8 or floating point"):
        save_video_mp4(tmp_path / "a.mp4", torch.zeros(2, 3, 4, 4, dtype=torch.int64), fps=8)
    with pytest.raises(ValueError, match="NaN"):
        save_video_mp4(tmp_path / "a.mp4", torch.full((2, 3, 4, 4), float("nan")), fps=8)
    with pytest.raises(ValueError, match="no frames"):
        save_video_mp4(tmp_path / "a.mp4", torch.zeros(0, 3, 4, 4), fps=8)
    with pytest.raises(ValueError, match="fps"):
        save_video_mp4(tmp_path / "a.mp4", torch.zeros(2, 3, 4, 4), fps=0)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------
# Contact sheet

CONTROL = [(10 * i + 5, 0, 200) for i in range(17)]
GENERATED = [(0, 10 * i + 5, 100) for i in range(17)]
REFERENCE = (250, 160, 20)


def test_contact_sheet_places_reference_control_and_generated_frames() -> None:
    height, width = 24, 30
    sheet = contact_sheet(
        solid_clip([REFERENCE], height, width)[0],
        solid_clip(CONTROL, height, width),
        solid_clip(GENERATED, height, width),
        max_frames=5,
        tile_height=height,
    )
    reference_box = colour_box(sheet, REFERENCE)
    assert reference_box is not None and reference_box[2] - reference_box[0] == width
    sampled = [0, 4, 8, 12, 16]  # evenly from first to last
    control_boxes = [colour_box(sheet, CONTROL[i]) for i in sampled]
    generated_boxes = [colour_box(sheet, GENERATED[i]) for i in sampled]
    for control_box, generated_box in zip(control_boxes, generated_boxes, strict=True):
        # Each sampled frame is one whole tile at its own size, generated right under its control.
        assert control_box is not None and generated_box is not None
        assert (control_box[2] - control_box[0], control_box[3] - control_box[1]) == (width, height)
        assert (generated_box[2] - generated_box[0], generated_box[3] - generated_box[1]) == (width, height)
        assert generated_box[0] == control_box[0] and generated_box[1] >= control_box[3]
        assert control_box[0] >= reference_box[2]  # the reference is the left column
    assert [box[0] for box in control_boxes] == sorted(
        box[0] for box in control_boxes
    )  # time runs left to right
    for skipped in set(range(17)) - set(sampled):
        assert colour_box(sheet, CONTROL[skipped]) is None
    # Nothing but the tiles, the labels and some margin.
    assert sheet.width < width * 6 + 100 and sheet.height < height * 2 + 80


def test_contact_sheet_without_labels_holds_only_tiles_on_white() -> None:
    sheet = contact_sheet(
        None,
        solid_clip(CONTROL[:3], 16, 16),
        solid_clip(GENERATED[:3], 16, 16),
        label=False,
        tile_height=16,
    )
    array = np.asarray(sheet).reshape(-1, 3)
    colours = {tuple(int(v) for v in c) for c in np.unique(array, axis=0)}
    assert colours == {WHITE, *CONTROL[:3], *GENERATED[:3]}
    labelled = contact_sheet(
        None, solid_clip(CONTROL[:3], 16, 16), solid_clip(GENERATED[:3], 16, 16), tile_height=16
    )
    assert (np.asarray(labelled).sum(axis=-1) < 300).any()  # dark label text


def test_contact_sheet_samples_clips_of_different_lengths_at_the_same_times() -> None:
    sheet = contact_sheet(
        Image.new("RGB", (8, 8), REFERENCE),  # a PIL reference, scaled to the tile height
        solid_clip(CONTROL[:9], 8, 8),
        solid_clip(GENERATED, 8, 8),  # 17 frames
        max_frames=3,
        tile_height=16,
    )
    reference_box = colour_box(sheet, REFERENCE)
    assert reference_box is not None and reference_box[3] - reference_box[1] == 16
    for control_index, generated_index in ((0, 0), (4, 8), (8, 16)):
        control_box, generated_box = (
            colour_box(sheet, CONTROL[control_index]),
            colour_box(sheet, GENERATED[generated_index]),
        )
        assert control_box is not None and generated_box is not None and control_box[0] == generated_box[0]


def test_save_contact_sheet_writes_a_png_of_float_clips(tmp_path: Path) -> None:
    clip = torch.rand(9, 3, 40, 64) * 2 - 1
    path = save_contact_sheet(tmp_path / "sheets" / "step-100.png", clip[0], clip, clip.flip(0), max_frames=4)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.height > 2 * 192 and image.width > 5 * 192 * 64 // 40


def test_contact_sheet_rejects_bad_inputs() -> None:
    clip = torch.zeros(5, 3, 8, 8)
    with pytest.raises(ValueError, match="max_frames"):
        contact_sheet(None, clip, clip, max_frames=0)
    with pytest.raises(ValueError, match="control has 2 channels"):
        contact_sheet(None, torch.zeros(5, 2, 8, 8), clip)
    with pytest.raises(ValueError, match="generated must be a 4-d"):
        contact_sheet(None, clip, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="reference must be a PIL image"):
        contact_sheet(torch.zeros(8, 8), clip, clip)


# ---------------------------------------------------------------------------------------------------
# Loss curve


def test_loss_curve_png_draws_a_falling_smoothed_line(tmp_path: Path) -> None:
    steps = np.arange(0, 2000, 5)
    rng = np.random.default_rng(0)
    losses = 0.1 + 0.5 * np.exp(-steps / 400) + rng.normal(0, 0.02, len(steps))
    losses[10] = float("nan")
    path = loss_curve_png(tmp_path / "loss.png", steps, losses, title="loss")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 400)
        array = np.asarray(image.convert("RGB")).astype(int)
    assert len(np.unique(array.reshape(-1, 3), axis=0)) > 50  # not blank
    # The dark EMA line: where it is drawn in the left and right quarters of the plot, it falls.
    dark_blue = (np.abs(array - (16, 60, 140)).sum(axis=-1) < 40) & (array[..., 2] > array[..., 0] + 60)
    ys, xs = np.nonzero(dark_blue[60:360, 80:780])
    assert len(xs) > 500
    left_rows = ys[xs < 150]
    right_rows = ys[xs > 550]
    assert left_rows.size and right_rows.size and left_rows.mean() < right_rows.mean() - 100
    light = (np.abs(array - (160, 196, 232)).sum(axis=-1) < 30)[60:360, 80:780]
    assert light.sum() > 500  # the raw line


def test_ema_is_debiased_and_ticks_are_round() -> None:
    np.testing.assert_allclose(ema([2.0, 2.0, 2.0], 0.9), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(ema([0.0, 10.0], 0.5), [0.0, 5.0 / 0.75])
    np.testing.assert_allclose(ema([1.0, 3.0], 0.0), [1.0, 3.0])
    assert nice_ticks(0.035, 0.54, 5) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert nice_ticks(0, 1000, 5) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(3, 3) == [3]


def test_loss_curve_handles_a_single_point_and_flat_losses(tmp_path: Path) -> None:
    for name, steps, losses in (("one", [100], [0.3]), ("flat", [1, 2, 3], [0.2, 0.2, 0.2])):
        with Image.open(loss_curve_png(tmp_path / f"{name}.png", steps, losses)) as image:
            assert image.size == (800, 400)


def test_loss_curve_rejects_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="steps has 3 values but losses has 2"):
        loss_curve_png(tmp_path / "l.png", [1, 2, 3], [0.1, 0.2])
    with pytest.raises(ValueError, match="no losses"):
        loss_curve_png(tmp_path / "l.png", [], [])
    with pytest.raises(ValueError, match="NaN or infinite"):
        loss_curve_png(tmp_path / "l.png", [1, 2], [float("nan"), float("inf")])
    with pytest.raises(ValueError, match="smooth"):
        loss_curve_png(tmp_path / "l.png", [1, 2], [0.1, 0.2], smooth=1.0)
    assert not list(tmp_path.iterdir())
