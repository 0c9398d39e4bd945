"""Clips per second for loading a training clip from 720p H.264 video, several loaders side by side.

A clip is 49 frames at stride 2 from a random start (the default VideoX-Fun sampling). Every method
loads the same clips, taking turns clip by clip in a random order, and is compared with the first
method clip by clip (see `run`), because other processes load the machine unevenly. The source
videos are synthetic (a textured scene panning under a little sensor noise), encoded by libx264
with a keyframe every 60 frames, and cached in `--cache-dir`.

    python benchmarks/bench_clip_loading.py [--cache-dir DIR] [--clips 24]

To add a loader, write `load_clip_<name>(path, indices) -> (F, H, W, 3) uint8` and append it to
METHODS; the first entry is the baseline of the ratio column. A loader may keep state between clips
(open readers, a dataset); `release_state` drops it at the end.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from vidctrl.data.video import MediaInfo, probe, read_frames, write_video

WIDTH, HEIGHT = 1280, 720
CLIP_FRAMES, STRIDE = 49, 2

LoadClip = Callable[[Path, np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------------
# Loaders


def load_clip_pyav_bare(path: Path, indices: np.ndarray) -> np.ndarray:
    """The floor: seek to the keyframe before the first frame, decode forward, keep what is asked.

    Assumes what clips and the synthetic sources guarantee (sorted unique indices, constant frame
    rate, first timestamp 0) and checks nothing.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ticks_per_frame = 1 / (Fraction(stream.time_base) * stream.average_rate)
        slots = {index: slot for slot, index in enumerate(indices.tolist())}
        clip = np.empty((len(indices), stream.height, stream.width, 3), np.uint8)
        container.seek(int(indices[0] * ticks_per_frame), stream=stream)
        for frame in container.decode(stream):
            index = round(frame.pts / ticks_per_frame)
            if index in slots:
                clip[slots[index]] = frame.to_ndarray(format="rgb24")
            if index >= indices[-1]:
                break
    return clip


_INFOS: dict[Path, MediaInfo] = {}


def load_clip_read_frames(path: Path, indices: np.ndarray) -> np.ndarray:
    """`read_frames` given the probed metadata, as the dataset has it from the manifest."""
    return read_frames(path, indices, info=_INFOS[path])


def load_clip_read_frames_no_info(path: Path, indices: np.ndarray) -> np.ndarray:
    return read_frames(path, indices)


def load_clip_decord(path: Path, indices: np.ndarray) -> np.ndarray:
    """What the seed trainers do: a new VideoReader per clip, then get_batch."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    return reader.get_batch(indices.tolist()).asnumpy()


_READERS: dict[Path, Any] = {}


def load_clip_decord_reused(path: Path, indices: np.ndarray) -> np.ndarray:
    """decord with one VideoReader per file kept open across clips."""
    import decord

    reader = _READERS.get(path)
    if reader is None:
        reader = _READERS[path] = decord.VideoReader(str(path), ctx=decord.cpu(0))
    return reader.get_batch(indices.tolist()).asnumpy()


_DATASETS: dict[Path, Any] = {}


def load_clip_dataset(path: Path, indices: np.ndarray) -> np.ndarray:
    """vidctrl's torch Dataset, as a DataLoader worker runs it: manifest record -> ClipRequest ->
    (F, 3, H, W) uint8 tensor at the source size. Only the frame choice is fixed to `indices`, so
    that every method decodes the same frames."""
    from vidctrl.data.clips import ClipRules
    from vidctrl.data.dataset import ClipDataset
    from vidctrl.data.manifest import Manifest
    from vidctrl.data.records import Record
    from vidctrl.data.sampler import ClipRequest

    class GivenIndices(ClipRules):
        def sample(self, num_frames: int, frames: int, rng: np.random.Generator) -> tuple[np.ndarray, None]:
            return self.indices, None

    dataset = _DATASETS.get(path)
    if dataset is None:
        info = _INFOS[path]
        record = Record(media=str(path), frames=info.frames, fps=info.fps, width=info.width, height=info.height)
        rules = GivenIndices(crop="stretch")
        dataset = _DATASETS[path] = ClipDataset(Manifest.from_records([record]), rules, strict=True)
    object.__setattr__(dataset.rules, "indices", indices)
    sample = dataset[ClipRequest(0, HEIGHT, WIDTH, len(indices), seed=0)]
    return sample["pixels"].numpy()


METHODS: list[tuple[str, LoadClip]] = [
    ("pyav bare loop", load_clip_pyav_bare),
    ("read_frames", load_clip_read_frames),
    ("read_frames, no info", load_clip_read_frames_no_info),
    ("vidctrl Dataset", load_clip_dataset),
    ("decord", load_clip_decord),
    ("decord, reader reused", load_clip_decord_reused),
]


# ---------------------------------------------------------------------------------------------------
# Sources


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Periodic separable box blur by cumulative sums: turns white noise into soft texture."""
    out = image
    for axis in (0, 1):
        padded = np.concatenate(
            [np.take(out, range(-radius - 1, 0), axis=axis), out, np.take(out, range(radius), axis=axis)],
            axis=axis,
        )
        cumulative = np.cumsum(padded, axis=axis, dtype=np.float32)
        size = out.shape[axis]
        upper = np.take(cumulative, range(2 * radius + 1, 2 * radius + 1 + size), axis=axis)
        lower = np.take(cumulative, range(size), axis=axis)
        out = (upper - lower) / (2 * radius + 1)
    return out


def _scene_frames(seed: int, count: int) -> Iterator[np.ndarray]:
    """A large texture (blobs of several sizes) panning diagonally, with fresh noise per frame."""
    rng = np.random.default_rng(seed)
    margin = 4 * count
    shape = (HEIGHT + margin, WIDTH + margin, 3)
    texture = np.zeros(shape, np.float32)
    for radius, weight in ((24, 1.0), (6, 0.6), (1, 0.35)):
        layer = _box_blur(rng.normal(0, 1, shape).astype(np.float32), radius)
        texture += weight * layer / layer.std()
    texture = np.clip(128 + 40 * texture, 0, 255).astype(np.uint8)
    for i in range(count):
        y, x = (3 * i) % margin, (4 * i) % margin
        frame = texture[y : y + HEIGHT, x : x + WIDTH].astype(np.int16)
        frame += rng.integers(-3, 4, size=(HEIGHT, WIDTH, 1), dtype=np.int16)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def make_sources(cache_dir: Path, videos: int, seconds: float, fps: int, gop: int) -> list[Path]:
    paths = []
    for k in range(videos):
        path = cache_dir / f"source_{WIDTH}x{HEIGHT}_{fps}fps_{seconds:g}s_gop{gop}_crf20_{k}.mp4"
        if not path.exists():
            started = time.perf_counter()
            frames = _scene_frames(seed=k, count=round(seconds * fps))
            write_video(path, frames, fps, crf=20, gop=gop, preset="veryfast")
            print(
                f"wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s"
            )
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------
# Measurement


def clip_indices(rng: np.random.Generator, frames: int) -> np.ndarray:
    span = (CLIP_FRAMES - 1) * STRIDE + 1
    start = int(rng.integers(0, frames - span + 1))
    return np.arange(start, start + span, STRIDE)


@dataclass
class Measured:
    """One method's times per clip, in the order of the clips."""

    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)  # the process's, all threads, background included


def settle(window: float = 0.05, limit: float = 1.0) -> float:
    """Wait until the process stops using CPU in the background; return the CPU it used meanwhile.

    A decord reader keeps decoding ahead in its own threads after `get_batch` returns. Untimed, that
    work would slow whichever method runs next; waiting it out keeps it off the others' clocks, and
    its CPU time is charged to the method that caused it.
    """
    used = 0.0
    waited = 0.0
    while waited < limit:
        before = time.process_time()
        time.sleep(window)
        waited += window
        spent = time.process_time() - before
        used += spent
        if spent < 0.05 * window:
            break
    return used


def release_state() -> None:
    """Close what loaders kept open between clips (decord readers)."""
    _READERS.clear()
    _DATASETS.clear()
    gc.collect()


def run(paths: list[Path], clips: int, seed: int, methods: list[tuple[str, LoadClip]]) -> dict[str, Measured]:
    """Load each clip with every method, in a new random order of methods per clip.

    Measuring all methods on the same clip within a second or two, and comparing them clip by clip,
    keeps the comparison fair while other processes load the machine unevenly.
    """
    rng = np.random.default_rng(seed)
    for path in paths:
        _INFOS[path] = probe(path)
    jobs = [(path, clip_indices(rng, _INFOS[path].frames)) for path in rng.choice(paths, size=clips)]
    # Warm-up: import decord, page the files in, let every method open every file once.
    for path in paths:
        for _, load in methods:
            load(path, np.arange(0, CLIP_FRAMES * STRIDE, STRIDE))
            settle()
    measured = {name: Measured() for name, _ in methods}
    for path, indices in jobs:
        reference = None
        for m in rng.permutation(len(methods)):
            name, load = methods[m]
            started, cpu_started = time.perf_counter(), time.process_time()
            clip = load(path, indices)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            if clip.shape != (CLIP_FRAMES, HEIGHT, WIDTH, 3) or clip.dtype != np.uint8:
                sys.exit(f"{name} returned {clip.dtype} {clip.shape}")
            if name.startswith(("pyav", "read_frames")):
                # Same decoder and colour conversion: the frames must be identical.
                if reference is None:
                    reference = clip
                elif not np.array_equal(reference, clip):
                    sys.exit(f"{name} returned other frames than the PyAV loaders for {path.name} {indices}")
            del clip
            measured[name].walls.append(wall)
            measured[name].cpus.append(cpu + settle())
    release_state()
    return measured


def report(measured: dict[str, Measured]) -> str:
    baseline = next(iter(measured))
    base = np.array(measured[baseline].walls)
    lines = [
        f"| method | clips/s | ms/clip (median) | CPU ms/clip | speed vs {baseline} (median per clip) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in measured.items():
        walls = np.array(m.walls)
        lines.append(
            f"| {name} | {len(walls) / walls.sum():.2f} | {1000 * np.median(walls):.0f} | "
            f"{1000 * np.mean(m.cpus):.0f} | {np.median(base / walls):.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="keep source videos here (default: a temp dir)"
    )
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--gop", type=int, default=60)
    parser.add_argument("--clips", type=int, default=24, help="clips per method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="names of the methods to run (default: all)")
    args = parser.parse_args()
    methods = [m for m in METHODS if not args.only or m[0] in args.only]
    if importlib.util.find_spec("decord") is None:
        print("decord is not installed (pip install -e '.[bench]'): its lines are left out")
        methods = [m for m in methods if not m[0].startswith("decord")]
    with tempfile.TemporaryDirectory() as temp:
        cache_dir = args.cache_dir or Path(temp)
        cache_dir.mkdir(parents=True, exist_ok=True)
        paths = make_sources(cache_dir, args.videos, args.seconds, args.fps, args.gop)
        measured = run(paths, args.clips, args.seed, methods)
    print(
        f"\n{args.clips} clips of {CLIP_FRAMES} frames at stride {STRIDE}, {WIDTH}x{HEIGHT} H.264 "
        f"{args.fps} fps, keyframe every {args.gop} frames, {args.videos} source videos of {args.seconds:g} s\n"
    )
    print(report(measured))


if __name__ == "__main__":
    main()
