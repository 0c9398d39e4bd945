"""Validation and report media: mp4 clips, contact sheets, loss curves, with PyAV and Pillow only.

Frames convention: a clip is ``(F, C, H, W)`` (frames first, as the datasets return it), C = 3
(RGB) or 1 (grey). Pass ``layout="CFHW"`` for ``(C, F, H, W)`` (a diffusers pipeline's video
without its batch axis), or convert with ``cfhw_to_fchw``. Values are uint8, or floats in
``value_range`` (default ``(-1, 1)``, the models' pixel range; ``(0, 1)`` for decoded output),
clamped to it: a generated clip overshoots a little.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw, ImageFont

from vidctrl.data.video import image_to_rgb, write_video

Layout = Literal["FCHW", "CFHW"]
Frames = torch.Tensor | np.ndarray
ValueRange = tuple[float, float]

_BACKGROUND = (255, 255, 255)
_TEXT = (40, 40, 40)
_MUTED = (110, 110, 110)
_GRID = (228, 228, 228)
_AXIS = (90, 90, 90)
_RAW_LINE = (160, 196, 232)
_SMOOTH_LINE = (16, 60, 140)
_MIN_MARK = (200, 40, 40)


# ---------------------------------------------------------------------------------------------------
# Frames


def cfhw_to_fchw(video: Frames) -> Frames:
    """``(C, F, H, W)`` -> ``(F, C, H, W)``, or ``(B, C, F, H, W)`` -> ``(B, F, C, H, W)``; a view."""
    if video.ndim not in (4, 5):
        raise ValueError(f"expected a (C, F, H, W) or (B, C, F, H, W) video, got shape {tuple(video.shape)}")
    first = video.ndim - 4
    if isinstance(video, torch.Tensor):
        return video.transpose(first, first + 1)
    return np.swapaxes(video, first, first + 1)


def to_uint8_frames(
    frames: Frames, *, layout: Layout = "FCHW", value_range: ValueRange = (-1.0, 1.0), name: str = "frames"
) -> np.ndarray:
    """A clip as uint8 RGB ``(F, H, W, 3)``, ready for `write_video` or Pillow.

    ``name`` is used in error messages (``control``, ``generated``, ...).
    """
    if layout not in ("FCHW", "CFHW"):
        raise ValueError(f"layout must be 'FCHW' or 'CFHW', got {layout!r}")
    if frames.ndim != 4:
        hint = " (a batch? pass one sample)" if frames.ndim == 5 else ""
        raise ValueError(f"{name} must be a 4-d {layout} clip, got shape {tuple(frames.shape)}{hint}")
    if layout == "CFHW":
        frames = cfhw_to_fchw(frames)
    array = _to_uint8(frames, value_range, name)  # (F, C, H, W)
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no frames")
    return _channels_last(array, name)


def _to_uint8(values: Frames, value_range: ValueRange, name: str) -> np.ndarray:
    """uint8 array of the same shape; floats are mapped from ``value_range`` to 0..255."""
    if isinstance(values, torch.Tensor):
        values = values.detach()
        if values.dtype == torch.uint8:
            return values.cpu().numpy()
        if not values.is_floating_point():
            raise TypeError(f"{name} must be uint8 or floating point, got {values.dtype}")
        values = values.float().cpu().numpy()
    array = np.asarray(values)
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must be uint8 or floating point, got {array.dtype}")
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values; the model output is broken, not the writer")
    scaled = (array.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _channels_last(array: np.ndarray, name: str) -> np.ndarray:
    """(..., C, H, W) uint8 with C in (1, 3) -> (..., H, W, 3)."""
    channels = array.shape[-3]
    if channels not in (1, 3):
        raise ValueError(
            f"{name} has {channels} channels on the channel axis (shape {tuple(array.shape)}); expected 3 (RGB) "
            "or 1 (grey). Is the layout right? Clips are (F, C, H, W) unless layout='CFHW'"
        )
    array = np.moveaxis(array, -3, -1)
    if channels == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array)


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Pad (F, H, W, 3) by repeating the last row / column so that H and W are even (yuv420p)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def save_video_mp4(
    path: str | os.PathLike[str],
    frames: Frames,
    fps: float,
    *,
    layout: Layout = "FCHW",
    value_range: ValueRange = (-1.0, 1.0),
    crf: int = 18,
) -> Path:
    """Write a clip as an H.264 mp4 (yuv420p); returns the path.

    H.264 in yuv420p needs an even width and height: an odd size is padded by one row / column
    repeating the edge, so nothing of the clip is lost. The file appears complete or not at all.
    """
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    array = _pad_to_even(to_uint8_frames(frames, layout=layout, value_range=value_range))
    path = Path(path)
    write_video(path, iter(array), fps, codec="libx264", crf=crf)
    return path


# ---------------------------------------------------------------------------------------------------
# Contact sheet


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _image_array(image: Image.Image | Frames, value_range: ValueRange) -> np.ndarray:
    """A reference image as uint8 (H, W, 3): PIL, or (C, H, W) / (1, C, H, W) array or tensor."""
    if isinstance(image, Image.Image):
        return image_to_rgb(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3:
        raise ValueError(
            f"reference must be a PIL image or a (C, H, W) / (1, C, H, W) array, got shape {tuple(image.shape)}"
        )
    return _channels_last(_to_uint8(image, value_range, "reference"), "reference")


def _sample_indices(frames: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``frames`` frames, first and last included."""
    return np.unique(np.rint(np.linspace(0, frames - 1, count)).astype(int))


def _tile(frame: np.ndarray, height: int) -> Image.Image:
    image = Image.fromarray(frame)
    width = max(1, round(frame.shape[1] * height / frame.shape[0]))
    if (width, height) == image.size:
        return image
    # Upscaling a tiny demo clip: keep its pixels sharp. Downscaling: smooth.
    resample = Image.Resampling.NEAREST if height > frame.shape[0] else Image.Resampling.LANCZOS
    return image.resize((width, height), resample)


def contact_sheet(
    reference: Image.Image | Frames | None,
    control: Frames,
    generated: Frames,
    *,
    max_frames: int = 8,
    label: bool = True,
    tile_height: int = 192,
    layout: Layout = "FCHW",
    value_range: ValueRange = (-1.0, 1.0),
) -> Image.Image:
    """One picture to judge a validation sample: does the generated person follow the control?

    Left, the reference image once (when given); right, two rows over the same points in time:
    the control clip on top, the generated clip below, ``max_frames`` frames sampled evenly from
    first to last. Every picture is scaled to ``tile_height`` keeping its aspect. With ``label``,
    a line of small text above each part names it and gives the frame numbers.

    Clips of different lengths are sampled at the same fractions of their length.
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if tile_height < 8:
        raise ValueError(f"tile_height must be at least 8 pixels, got {tile_height}")
    control_frames = to_uint8_frames(control, layout=layout, value_range=value_range, name="control")
    generated_frames = to_uint8_frames(generated, layout=layout, value_range=value_range, name="generated")
    count = min(max_frames, max(len(control_frames), len(generated_frames)))
    rows = []
    for row_name, clip in (("control", control_frames), ("generated", generated_frames)):
        indices = _sample_indices(len(clip), count)
        if len(indices) < count:  # a clip shorter than the other: repeat frames to keep time aligned
            indices = np.rint(np.linspace(0, len(clip) - 1, count)).astype(int)
        rows.append((row_name, indices, [_tile(clip[i], tile_height) for i in indices]))
    reference_tile = None if reference is None else _tile(_image_array(reference, value_range), tile_height)

    font = _font(13)
    gap = 6
    margin = 10
    label_h = 18 if label else 0
    column_w = max(tile.width for _, _, tiles in rows for tile in tiles)
    left = margin
    if reference_tile is not None:
        left += reference_tile.width + 3 * gap
    width = left + count * column_w + (count - 1) * gap + margin
    row_h = label_h + tile_height
    height = margin + 2 * row_h + gap + margin
    if reference_tile is not None:
        height = max(height, margin + label_h + tile_height + margin)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)

    if reference_tile is not None:
        top = margin + label_h
        if label:
            draw.text((margin, margin + 2), "reference", fill=_TEXT, font=font)
        sheet.paste(reference_tile, (margin, top))
        separator = margin + reference_tile.width + (3 * gap) // 2
        draw.line([(separator, margin), (separator, height - margin)], fill=_GRID, width=1)

    for row, (row_name, indices, tiles) in enumerate(rows):
        top = margin + row * (row_h + gap)
        for column, (index, tile) in enumerate(zip(indices, tiles, strict=True)):
            x = left + column * (column_w + gap)
            if label:
                text = f"{row_name}  #{index}" if column == 0 else f"#{index}"
                draw.text((x, top + 2), text, fill=_TEXT if column == 0 else _MUTED, font=font)
            sheet.paste(tile, (x + (column_w - tile.width) // 2, top + label_h))
    return sheet


def save_contact_sheet(
    path: str | os.PathLike[str],
    reference: Image.Image | Frames | None,
    control: Frames,
    generated: Frames,
    *,
    max_frames: int = 8,
    label: bool = True,
    tile_height: int = 192,
    layout: Layout = "FCHW",
    value_range: ValueRange = (-1.0, 1.0),
) -> Path:
    """`contact_sheet` written as a PNG (through a temporary file, renamed into place)."""
    sheet = contact_sheet(
        reference,
        control,
        generated,
        max_frames=max_frames,
        label=label,
        tile_height=tile_height,
        layout=layout,
        value_range=value_range,
    )
    return _save_png(sheet, path)


def _save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------------
# Loss curve


def ema(values: npt.ArrayLike, smooth: float) -> np.ndarray:
    """Exponential moving average with TensorBoard's debiasing (early values are not pulled to 0)."""
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    last = 0.0
    for i, value in enumerate(values):
        last = smooth * last + (1.0 - smooth) * value
        out[i] = last / (1.0 - smooth ** (i + 1))
    return out


def nice_ticks(low: float, high: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) in [low, high], about ``target`` of them."""
    if not high > low:
        return [low]
    raw_step = (high - low) / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10)), key=lambda s: abs((high - low) / s - target))
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels with the fewest decimals that still write every tick exactly (0.25, 0.50, 0.75)."""
    step = min((b - a for a, b in itertools.pairwise(ticks)), default=1.0)
    decimals = next(
        (d for d in range(10) if all(abs(round(t, d) - t) <= abs(step) * 1e-6 for t in ticks)), 10
    )
    return [f"{t:.{decimals}f}" for t in ticks]


def _format_value(value: float) -> str:
    return f"{value:.4g}"


def loss_curve_image(
    steps: npt.ArrayLike,
    losses: npt.ArrayLike,
    *,
    smooth: float = 0.9,
    title: str = "training loss",
    size: tuple[int, int] = (800, 400),
) -> Image.Image:
    """The loss per step: raw values as a light line, their EMA (``smooth``) as a dark line.

    Axes with round ticks, the step on x; the title line gives the minimum and maximum and the
    steps they occur at, and the minimum is marked. Non-finite losses (a diverged step) are left
    out and counted in the title line. Drawn at twice the size and scaled down, for smooth lines.
    """
    step_values = np.asarray(steps, dtype=np.float64).reshape(-1)
    loss_values = np.asarray(losses, dtype=np.float64).reshape(-1)
    if len(step_values) != len(loss_values):
        raise ValueError(f"steps has {len(step_values)} values but losses has {len(loss_values)}")
    if len(loss_values) == 0:
        raise ValueError("no losses to plot")
    width, height = size
    if width < 200 or height < 120:
        raise ValueError(f"size must be at least 200 x 120 pixels, got {size}")
    finite = np.isfinite(loss_values) & np.isfinite(step_values)
    skipped = int((~finite).sum())
    if not finite.any():
        raise ValueError(f"all {len(loss_values)} losses are NaN or infinite; nothing to plot")
    order = np.argsort(step_values[finite], kind="stable")
    xs, ys = step_values[finite][order], loss_values[finite][order]
    smoothed = ema(ys, smooth) if smooth > 0 else ys

    scale = 2
    canvas = Image.new("RGB", (width * scale, height * scale), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(12 * scale)
    title_font = _font(15 * scale)
    left, right, top, bottom = 72, 18, 46, 40
    plot = (left * scale, top * scale, (width - right) * scale, (height - bottom) * scale)
    x0, y0, x1, y1 = plot

    y_low, y_high = float(ys.min()), float(ys.max())
    pad = (y_high - y_low) * 0.05 or (abs(y_high) * 0.1 or 1.0)
    y_low, y_high = y_low - pad, y_high + pad
    x_low, x_high = float(xs[0]), float(xs[-1])
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1

    def px(x: np.ndarray | float) -> np.ndarray:
        return x0 + (np.asarray(x) - x_low) / (x_high - x_low) * (x1 - x0)

    def py(y: np.ndarray | float) -> np.ndarray:
        return y1 - (np.asarray(y) - y_low) / (y_high - y_low) * (y1 - y0)

    y_ticks = nice_ticks(y_low, y_high, target=max(3, height // 70))
    for value, text in zip(y_ticks, _tick_labels(y_ticks), strict=True):
        y = float(py(value))
        draw.line([(x0, y), (x1, y)], fill=_GRID, width=scale)
        text_w = draw.textlength(text, font=font)
        draw.text((x0 - 8 * scale - text_w, y - 7 * scale), text, fill=_MUTED, font=font)
    # Steps are whole numbers: no tick between them.
    x_ticks = [t for t in nice_ticks(x_low, x_high, target=max(3, width // 110)) if float(t).is_integer()]
    for value, text in zip(x_ticks, _tick_labels(x_ticks), strict=True):
        x = float(px(value))
        draw.line([(x, y0), (x, y1)], fill=_GRID, width=scale)
        draw.line([(x, y1), (x, y1 + 5 * scale)], fill=_AXIS, width=scale)
        text_w = draw.textlength(text, font=font)
        draw.text((x - text_w / 2, y1 + 8 * scale), text, fill=_MUTED, font=font)
    draw.rectangle(plot, outline=_AXIS, width=scale)
    step_label = "step"
    draw.text(
        ((x0 + x1 - draw.textlength(step_label, font=font)) / 2, y1 + 23 * scale),
        step_label,
        fill=_MUTED,
        font=font,
    )

    points = np.stack([px(xs), py(ys)], axis=1)
    smooth_points = np.stack([px(xs), py(smoothed)], axis=1)
    if len(points) == 1:
        cx, cy = points[0]
        radius = 3 * scale
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=_SMOOTH_LINE)
    else:
        draw.line([tuple(p) for p in points], fill=_RAW_LINE, width=scale, joint="curve")
        if smooth > 0:
            draw.line([tuple(p) for p in smooth_points], fill=_SMOOTH_LINE, width=2 * scale, joint="curve")

    low_at, high_at = int(np.argmin(ys)), int(np.argmax(ys))
    mx, my = points[low_at]
    radius = 4 * scale
    draw.ellipse([mx - radius, my - radius, mx + radius, my + radius], outline=_MIN_MARK, width=scale)

    draw.text((x0, 10 * scale), title, fill=_TEXT, font=title_font)
    summary = (
        f"min {_format_value(ys[low_at])} @ {_format_value(xs[low_at])}    "
        f"max {_format_value(ys[high_at])} @ {_format_value(xs[high_at])}    "
        f"last {_format_value(ys[-1])}"
    )
    if skipped:
        summary += f"    {skipped} non-finite left out"
    summary_w = draw.textlength(summary, font=font)
    draw.text((x1 - summary_w, 13 * scale), summary, fill=_MUTED, font=font)

    if smooth > 0 and len(points) > 1:
        legend_x, legend_y = x1 - 150 * scale, y0 + 10 * scale
        for i, (name, colour, line_w) in enumerate(
            (("raw", _RAW_LINE, scale), (f"EMA {smooth:g}", _SMOOTH_LINE, 2 * scale))
        ):
            y = legend_y + i * 16 * scale
            draw.line(
                [(legend_x, y + 7 * scale), (legend_x + 22 * scale, y + 7 * scale)], fill=colour, width=line_w
            )
            draw.text((legend_x + 28 * scale, y), name, fill=_TEXT, font=font)
    return canvas.resize((width, height), Image.Resampling.LANCZOS)


def loss_curve_png(
    path: str | os.PathLike[str],
    steps: Sequence[float] | npt.ArrayLike,
    losses: Sequence[float] | npt.ArrayLike,
    *,
    smooth: float = 0.9,
    title: str = "training loss",
    size: tuple[int, int] = (800, 400),
) -> Path:
    """`loss_curve_image` written as a PNG; returns the path."""
    return _save_png(loss_curve_image(steps, losses, smooth=smooth, title=title, size=size), path)


__all__ = [
    "cfhw_to_fchw",
    "contact_sheet",
    "ema",
    "loss_curve_image",
    "loss_curve_png",
    "nice_ticks",
    "save_contact_sheet",
    "save_video_mp4",
    "to_uint8_frames",
]
