"""Video I/O: probing, exact frame access by seeking, damaged files, images, atomic writes."""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vidctrl.data import video
from vidctrl.data.video import (
    MediaError,
    MediaInfo,
    probe,
    read_frames,
    verify_decodable,
    write_image,
    write_video,
)

FRAMES = 40
GOP = 5
HEIGHT, WIDTH = 48, 64
FORMATS = {  # file name -> write_video keywords; mp4 has a frame count in its header, the others not
    "h264.mp4": {},
    "h264.mkv": {},
    "vp9.webm": {"codec": "libvpx-vp9"},
}


def scene(count: int = FRAMES, seed: int = 0) -> list[np.ndarray]:
    """Frames that stay distinct after lossy coding: a texture shifting 3 px per frame."""
    texture = np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return [np.roll(texture, 3 * i, axis=1) for i in range(count)]


def decode_all(path: Path) -> np.ndarray:
    """The reference: every frame of a plain sequential decode."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def write_with_timestamps(path: Path, timestamps_ms: list[int]) -> None:
    """An H.264 video whose frames carry the given presentation times (variable frame rate)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"keyint": str(GOP), "min-keyint": str(GOP), "scenecut": "0"}
        for frame, pts in zip(scene(len(timestamps_ms)), timestamps_ms, strict=True):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


def write_rotated(path: Path, frames: list[np.ndarray], degrees: int) -> None:
    """A video stored as `frames` with a display matrix turning it `degrees` counter-clockwise, as phones write."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"keyint": str(GOP), "min-keyint": str(GOP), "scenecut": "0", "crf": "0"}
        stream.set_display_rotation(degrees)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_faststart_mp4(path: Path) -> None:
    """An mp4 with its index before the frames, as streaming sites serve them."""
    with av.open(str(path), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"keyint": str(GOP), "min-keyint": str(GOP), "scenecut": "0"}
        for frame in scene():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out = path.with_name(f"cut_{path.name}")
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    """Each format written with a keyframe every 5 frames, with its sequential decode."""
    folder = tmp_path_factory.mktemp("videos")
    out = {}
    for name, options in FORMATS.items():
        path = folder / name
        write_video(path, scene(), fps=24, gop=GOP, **options)
        reference = decode_all(path)
        assert len(reference) == FRAMES
        # A wrong frame index must show: no two frames decode alike.
        assert all(not np.array_equal(reference[i], reference[i + 1]) for i in range(FRAMES - 1))
        out[name] = (path, reference)
    return out


# ---------------------------------------------------------------------------------------------------
# probe


def test_probe_reads_frame_count_from_mp4_header(videos: dict[str, tuple[Path, np.ndarray]]) -> None:
    path, _ = videos["h264.mp4"]
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == FRAMES  # the header has it
    assert probe(path) == MediaInfo("video", FRAMES, 24.0, WIDTH, HEIGHT)


@pytest.mark.parametrize("name", ["h264.mkv", "vp9.webm"])
def test_probe_counts_packets_when_header_has_no_frame_count(
    videos: dict[str, tuple[Path, np.ndarray]], name: str
) -> None:
    path, _ = videos[name]
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    assert probe(path) == MediaInfo("video", FRAMES, 24.0, WIDTH, HEIGHT)


def test_probe_reports_ntsc_frame_rate(tmp_path: Path) -> None:
    path = tmp_path / "ntsc.mp4"
    write_video(path, scene(10), fps=30000 / 1001)
    assert probe(path).fps == pytest.approx(29.97, abs=1e-3)


# ---------------------------------------------------------------------------------------------------
# read_frames: exactness


@pytest.mark.parametrize("name", list(FORMATS))
def test_read_frames_matches_sequential_decode_with_short_gop(
    videos: dict[str, tuple[Path, np.ndarray]], name: str
) -> None:
    path, reference = videos[name]
    info = probe(path)
    rng = np.random.default_rng(7)
    index_sets = [
        [0],
        [FRAMES - 1],
        [FRAMES - 1, 0],
        list(range(FRAMES)),
        list(range(FRAMES - 1, -1, -1)),
        [3, 3, 3],
        [4, 5, 9, 10],  # the frames on either side of keyframes
    ]
    index_sets += [rng.integers(0, FRAMES, rng.integers(1, 16)).tolist() for _ in range(120)]
    index_sets += [sorted(rng.choice(FRAMES, 8, replace=False).tolist()) for _ in range(30)]
    for n, indices in enumerate(index_sets):
        frames = read_frames(path, indices, info=info if n % 2 else None)
        assert frames.dtype == np.uint8 and frames.shape == (len(indices), HEIGHT, WIDTH, 3)
        assert frames.flags.writeable and frames.flags.c_contiguous
        assert np.array_equal(frames, reference[indices]), f"{name} {indices}"


def test_read_frames_matches_sequential_decode_for_every_single_frame(
    videos: dict[str, tuple[Path, np.ndarray]],
) -> None:
    for path, reference in videos.values():
        for i in range(FRAMES):
            assert np.array_equal(read_frames(path, [i])[0], reference[i]), f"{path.name} frame {i}"


def test_read_frames_decodes_only_from_the_keyframe_before_each_run(
    videos: dict[str, tuple[Path, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = 0
    decode_packets = video._decode_packets

    def counting(*args):  # type: ignore[no-untyped-def]
        nonlocal decoded
        for frame in decode_packets(*args):
            decoded += 1
            yield frame

    monkeypatch.setattr(video, "_decode_packets", counting)
    path, reference = videos["h264.mp4"]
    frames = read_frames(path, [2, 37])
    assert np.array_equal(frames, reference[[2, 37]])
    # Frames 0-2 and 35-37, plus the few a decoder holds back to reorder; far fewer than 38.
    assert decoded < 15


def test_read_frames_recovers_when_a_seek_lands_after_the_requested_frame(
    videos: dict[str, tuple[Path, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some demuxers index keyframes by decode time and land on the keyframe after the frame asked
    # for; simulate it by asking the demuxer for a time 3 frames too late.
    seek_ts = video._Timing.seek_ts
    monkeypatch.setattr(video._Timing, "seek_ts", lambda self, index: seek_ts(self, index + 3))
    for name in ("h264.mp4", "h264.mkv"):
        path, reference = videos[name]
        for indices in ([1], [4], [8, 9], [0, 13, 14, 27], [FRAMES - 4]):
            assert np.array_equal(read_frames(path, indices), reference[indices]), f"{name} {indices}"


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_read_frames_decodes_sequentially_when_timestamps_do_not_count_frames(
    tmp_path: Path, suffix: str
) -> None:
    # Regular 40 ms frames except one 90 ms frame early on: after it, a frame's timestamp no
    # longer gives its number, although every frame from a later keyframe on looks regular.
    durations = [40] * FRAMES
    durations[2] = 90
    path = tmp_path / f"vfr{suffix}"
    write_with_timestamps(path, np.cumsum([0, *durations[:-1]]).tolist())
    reference = decode_all(path)
    rng = np.random.default_rng(3)
    for indices in [[12], [FRAMES - 1], *(rng.integers(0, FRAMES, 6).tolist() for _ in range(20))]:
        assert np.array_equal(read_frames(path, indices), reference[indices]), indices


# ---------------------------------------------------------------------------------------------------
# read_frames: errors


@pytest.mark.parametrize(
    ("suffix", "degrees"), [(".mp4", 90), (".mp4", -90), (".mov", 180), (".mkv", 90), (".mkv", 180), (".mp4", 0)]
)
def test_rotated_video_is_probed_and_decoded_as_displayed(tmp_path: Path, suffix: str, degrees: int) -> None:
    # 8-pixel blocks survive yuv420p's chroma subsampling; each frame differs, and no turn maps onto another
    blocks = np.random.default_rng(1).integers(0, 256, (12, HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
    stored = list(blocks.repeat(8, axis=1).repeat(8, axis=2))
    path = tmp_path / f"phone{suffix}"
    write_rotated(path, stored, degrees)
    turns = degrees // 90 % 4
    displayed = np.rot90(np.stack(stored), turns, axes=(1, 2))  # counter-clockwise, like the matrix
    info = probe(path)
    assert (info.width, info.height, info.rotation, info.frames) == (
        displayed.shape[2], displayed.shape[1], turns * 90, 12
    )
    for indices in ([0, 7, 11], [3]):  # a seek per run, and one frame
        frames = read_frames(path, indices, info=info)
        assert frames.shape == (len(indices), *displayed.shape[1:])
        assert np.abs(frames.astype(int) - displayed[indices]).mean() < 10  # another frame or turn: about 85
    half = (info.height // 2, info.width // 2)
    assert read_frames(path, [5], info=info, size=half).shape == (1, *half, 3)


def test_metadata_giving_a_rotated_videos_stored_size_is_refused_not_squashed(tmp_path: Path) -> None:
    path = tmp_path / "phone.mp4"
    write_rotated(path, scene(6), 90)
    stale = MediaInfo("video", 6, 24.0, WIDTH, HEIGHT)  # the stored size, as probed before rotation counted
    with pytest.raises(MediaError, match=rf"metadata gives {WIDTH}x{HEIGHT}.*displayed turned 90°") as caught:
        read_frames(path, [2], info=stale, size=(HEIGHT, WIDTH))
    assert "vidctrl data convert" in caught.value.fix
    assert read_frames(path, [2], info=probe(path)).shape == (1, WIDTH, HEIGHT, 3)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_rate_is_probed_from_real_timestamps(tmp_path: Path, suffix: str) -> None:
    times_ms = [0, 40, 80, 100, 120, 160, 200, 300, 340, 380]
    path = tmp_path / f"phone{suffix}"
    write_with_timestamps(path, times_ms)
    info = probe(path)
    assert info.variable_rate and info.frames == 10
    assert info.fps == pytest.approx(10 / 0.42)  # 10 frames over 380 ms plus a typical 40 ms
    np.testing.assert_allclose(video.frame_times(path), np.array(times_ms) / 1000)
    steady = tmp_path / f"steady{suffix}"
    write_video(steady, scene(10), fps=Fraction(30000, 1001))  # NTSC: ms timestamps alternate 33 and 34 ms
    assert not probe(steady).variable_rate


def test_read_frames_out_of_range_names_file_index_and_frame_count(
    videos: dict[str, tuple[Path, np.ndarray]],
) -> None:
    for path, _ in videos.values():
        for info in (None, probe(path)):
            with pytest.raises(MediaError) as caught:
                read_frames(path, [3, FRAMES + 5], info=info)
            message = str(caught.value)
            assert path.name in message
            assert f"the video has {FRAMES} frames, frame {FRAMES + 5} was requested" in message
            assert "truncated" in message


def test_read_frames_rejects_negative_index(videos: dict[str, tuple[Path, np.ndarray]]) -> None:
    path, _ = videos["h264.mp4"]
    with pytest.raises(MediaError, match="frame index -1 is negative"):
        read_frames(path, [0, -1])


def test_media_error_survives_pickling() -> None:
    # DataLoader workers send exceptions to the main process pickled.
    error = pickle.loads(pickle.dumps(MediaError("a/b.mp4", "the video has 20 frames", "re-encode it")))
    assert isinstance(error, MediaError) and isinstance(error, ValueError)
    assert (error.path, error.reason, error.fix) == ("a/b.mp4", "the video has 20 frames", "re-encode it")
    assert str(error) == "a/b.mp4: the video has 20 frames; re-encode it"
    # torch's DataLoader re-raises a worker's error as type(error)(message)
    assert str(MediaError("Caught MediaError in worker 0")) == "Caught MediaError in worker 0"


# ---------------------------------------------------------------------------------------------------
# Damaged and missing files


def test_truncated_mp4_with_index_at_the_end_fails_to_probe(
    videos: dict[str, tuple[Path, np.ndarray]],
) -> None:
    truncated = cut(videos["h264.mp4"][0], 0.5)
    with pytest.raises(MediaError, match="truncated") as caught:
        probe(truncated)
    assert truncated.name in str(caught.value)


def test_truncated_mp4_with_index_first_is_caught_by_verify_decodable(tmp_path: Path) -> None:
    path = tmp_path / "faststart.mp4"
    write_faststart_mp4(path)
    verify_decodable(path, probe(path))
    truncated = cut(path, 0.5)
    info = probe(truncated)
    assert info.frames == FRAMES  # the header still promises every frame
    with pytest.raises(MediaError, match=rf"truncated: header says {FRAMES} frames, only \d+ decode"):
        verify_decodable(truncated, info)
    with pytest.raises(MediaError, match="truncated") as caught:
        read_frames(truncated, [FRAMES - 1], info=info)
    assert truncated.name in str(caught.value)


@pytest.mark.parametrize("name", ["h264.mkv", "vp9.webm"])
def test_truncated_matroska_is_caught_by_verify_decodable(
    videos: dict[str, tuple[Path, np.ndarray]], name: str
) -> None:
    truncated = cut(videos[name][0], 0.5)
    info = probe(truncated)  # counts the packets that are left
    assert 0 < info.frames < FRAMES
    with pytest.raises(MediaError, match=f"truncated: the header gives a duration of {FRAMES} frames"):
        verify_decodable(truncated, info)


def test_verify_decodable_accepts_complete_files(
    videos: dict[str, tuple[Path, np.ndarray]], tmp_path: Path
) -> None:
    for path, _ in videos.values():
        verify_decodable(path, probe(path))
    image = tmp_path / "still.png"
    write_image(image, scene(1)[0])
    verify_decodable(image, probe(image))


def test_empty_file_is_reported_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    info = MediaInfo("video", FRAMES, 24.0, WIDTH, HEIGHT)
    for call in (lambda: probe(path), lambda: read_frames(path, [0]), lambda: verify_decodable(path, info)):
        with pytest.raises(MediaError, match=r"empty\.mp4: the file is empty \(0 bytes\)"):
            call()


@pytest.mark.parametrize("name", ["noise.mp4", "noise.png", "noise.bin"])
def test_garbage_bytes_are_reported_as_unreadable(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    info = MediaInfo("video", FRAMES, 24.0, WIDTH, HEIGHT)
    for call in (lambda: probe(path), lambda: read_frames(path, [0]), lambda: verify_decodable(path, info)):
        with pytest.raises(MediaError, match="re-encode it with `ffmpeg -i") as caught:
            call()
        assert name in str(caught.value)


def test_missing_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "clip.mp4"
    for call in (lambda: probe(path), lambda: read_frames(path, [0])):
        with pytest.raises(MediaError, match=r"clip\.mp4: no such file"):
            call()


def test_file_without_video_stream_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "speech.wav"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        samples.sample_rate = 8000
        container.mux(stream.encode(samples))
        container.mux(stream.encode())
    with pytest.raises(MediaError, match=r"speech\.wav: the file has no video stream \(streams: audio\)"):
        probe(path)


# ---------------------------------------------------------------------------------------------------
# Images


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".webp"])
def test_image_is_a_one_frame_clip(tmp_path: Path, suffix: str) -> None:
    frame = scene(1)[0]
    path = tmp_path / f"still{suffix}"
    write_image(path, frame)
    assert probe(path) == MediaInfo("image", 1, 0.0, WIDTH, HEIGHT)
    if suffix != ".webp":  # webp is lossy by default
        assert np.array_equal(read_frames(path, [0])[0], frame)
    assert read_frames(path, [0]).flags.writeable  # torch.from_numpy warns about read-only arrays
    assert read_frames(path, [0, 0], info=probe(path)).shape == (2, HEIGHT, WIDTH, 3)
    with pytest.raises(MediaError, match="an image is a single frame, frame 1 was requested"):
        read_frames(path, [1])


def test_image_with_exif_orientation_is_returned_upright(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to display
    Image.fromarray(scene(1)[0]).save(path, exif=exif, quality=95)
    info = probe(path)
    assert (info.width, info.height) == (HEIGHT, WIDTH)
    assert read_frames(path, [0], info=info).shape == (1, WIDTH, HEIGHT, 3)


GREYS = np.array([[0, 70, 128], [200, 254, 255]], dtype=np.uint8)  # 8-bit greys, the expected output


def _expected_grey() -> np.ndarray:
    return np.repeat(GREYS[..., None], 3, axis=2)


def _sixteen_bit(dtype: str) -> Image.Image:
    return Image.fromarray((GREYS.astype(np.uint32) * 257).astype(dtype))  # 70 -> 17990, 255 -> 65535


def _palette_with_transparency() -> Image.Image:
    image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([255, 0, 0, 0, 255, 0, 10, 20, 30])
    image.info["transparency"] = 2  # index 2 is transparent: composited on black
    return image


def _cmyk() -> Image.Image:
    pixels = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 255, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    return Image.fromarray(pixels, mode="CMYK")


def _rgba() -> Image.Image:
    pixels = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 51]]], dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGBA")


IMAGE_MODES = {  # mode -> (source image, file name keeping that mode, expected uint8 RGB)
    "I;16": (lambda: _sixteen_bit("<u2"), "grey16.png", _expected_grey),
    "I;16B": (lambda: _sixteen_bit(">u2"), "grey16be.tif", _expected_grey),
    "I": (lambda: _sixteen_bit("<i4"), "grey32.tif", _expected_grey),
    "F": (lambda: Image.fromarray((GREYS / 255.0).astype(np.float32)), "float.tif", _expected_grey),
    "L": (lambda: Image.fromarray(GREYS), "grey.png", _expected_grey),
    "1": (
        lambda: Image.fromarray(GREYS > 127),
        "bits.png",
        lambda: np.repeat(np.where(GREYS > 127, 255, 0).astype(np.uint8)[..., None], 3, axis=2),
    ),
    "LA": (
        lambda: Image.fromarray(np.stack([GREYS, np.full_like(GREYS, 255)], axis=2), mode="LA").convert("LA"),
        "grey_alpha.png",
        _expected_grey,
    ),
    "P": (
        _palette_with_transparency,
        "palette.png",
        lambda: np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 0]]], dtype=np.uint8),
    ),
    "RGBA": (
        _rgba,
        "cutout.png",
        lambda: np.array([[[200, 100, 50], [0, 0, 0], [40, 20, 10]]], dtype=np.uint8),
    ),
    "CMYK": (
        _cmyk,
        "print.tif",
        lambda: np.array([[[255, 255, 255], [0, 255, 255], [255, 0, 0], [0, 0, 0]]], dtype=np.uint8),
    ),
}


@pytest.mark.parametrize("mode", sorted(IMAGE_MODES))
def test_image_of_every_mode_decodes_to_rgb_by_its_real_range(tmp_path: Path, mode: str) -> None:
    make, name, expected = IMAGE_MODES[mode]
    path = tmp_path / name
    make().save(path)
    with Image.open(path) as saved:
        assert saved.mode == mode  # the file really holds the mode under test
    decoded = read_frames(path, [0])[0]
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected())


def test_sixteen_bit_grey_70_is_not_clipped_to_white(tmp_path: Path) -> None:
    path = tmp_path / "grey70.png"
    Image.fromarray(np.full((4, 4), 70 * 257, dtype=np.uint16)).save(path)
    assert (read_frames(path, [0]) == 70).all()
    assert (video.read_image(path, size=(2, 2)) == 70).all()


@pytest.mark.parametrize(
    ("pixels", "match"),
    [
        (np.array([[0, 70000]], dtype=np.int32), r"mode I\) with values 0\.\.70000"),
        (np.array([[0.0, 2.5]], dtype=np.float32), r"mode F\) with values 0\.\.2\.5"),
        (np.array([[0.0, np.nan]], dtype=np.float32), "NaN or infinite"),
    ],
)
def test_wide_image_outside_its_nominal_range_is_refused_with_the_rule(
    tmp_path: Path, pixels: np.ndarray, match: str
) -> None:
    path = tmp_path / "wide.tif"
    Image.fromarray(pixels).save(path)
    with pytest.raises(MediaError, match=match) as caught:
        read_frames(path, [0])
    assert "wide.tif" in str(caught.value) and "16-bit PNG" in caught.value.fix


def test_image_under_a_video_name_is_probed_as_image(tmp_path: Path) -> None:
    path = tmp_path / "still.png"
    write_image(path, scene(1)[0])
    renamed = path.rename(tmp_path / "still.mp4")
    assert probe(renamed).kind == "image"


# ---------------------------------------------------------------------------------------------------
# Writing


def test_write_video_leaves_no_partial_file_when_frames_fail(tmp_path: Path) -> None:
    def frames_then_failure():
        yield from scene(5)
        raise RuntimeError("renderer crashed")

    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_video(path, frames_then_failure(), fps=24)
    assert list(tmp_path.iterdir()) == []


def test_write_video_keeps_the_previous_file_when_rewriting_fails(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    write_video(path, scene(5), fps=24)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="even width and height"):
        write_video(path, [np.zeros((9, 16, 3), np.uint8)], fps=24)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_write_video_rejects_an_empty_frame_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "out.mp4", [], fps=24)
    assert list(tmp_path.iterdir()) == []


def test_write_image_leaves_no_partial_file_on_failure(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_image(tmp_path / "out.unknown-format", scene(1)[0])
    with pytest.raises(ValueError, match="uint8 RGB"):
        write_image(tmp_path / "out.png", np.zeros((4, 4), np.float32))
    assert list(tmp_path.iterdir()) == []
