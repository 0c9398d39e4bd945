"""Caption sources: a text file, one fixed text, and a tiny random Qwen2-VL / Qwen2.5-VL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vidctrl.prepare import PrepareError
from vidctrl.prepare.captions import (
    MODEL_SOURCE,
    CaptionItem,
    FileCaptions,
    FixedCaption,
    QwenVLCaptioner,
    caption_frame_indices,
    check_model_dir,
)
from vidctrl.prepare.tiny import tiny_qwen2_vl


def item(name: str, source: str) -> CaptionItem:
    return CaptionItem(name=name, source=source, video=f"/data/videos/{name}.mp4", frames=9)


def test_caption_file_matches_clips_by_name_path_file_name_or_stem(tmp_path: Path) -> None:
    path = tmp_path / "captions.txt"
    path.write_text(
        "a.mp4#####A person walks.\n"
        "takes/b.mov\tA person\n"  # a tab separates too
        "c#####Someone waves.\n"
        "d_clip001#####Only the second clip.\n\n",
        encoding="utf-8",
    )
    captions = FileCaptions(path)
    items = [
        item("a", "a.mp4"),
        item("takes__b", "takes/b.mov"),
        item("c_clip000", "c.mp4"),
        item("d_clip001", "d.mp4"),
        item("d_clip000", "d.mp4"),
    ]
    assert captions.missing(items) == ["d.mp4"]
    assert captions.caption(items[:4]) == [
        "A person walks.",
        "A person",
        "Someone waves.",
        "Only the second clip.",
    ]


def test_caption_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "captions.txt"
    path.write_text("a.mp4#####one\nb.mp4 two\n", encoding="utf-8")
    with pytest.raises(PrepareError, match="line 2"):
        FileCaptions(path)
    path.write_text("a.mp4#####one\na.mp4#####two\n", encoding="utf-8")
    with pytest.raises(PrepareError, match=r"second caption for a\.mp4"):
        FileCaptions(path)
    with pytest.raises(PrepareError, match="not found"):
        FileCaptions(tmp_path / "absent.txt")


def test_fixed_caption_is_one_line() -> None:
    assert FixedCaption("A person\n dances.\t").caption([item("a", "a.mp4")]) == ["A person dances."]


def test_caption_frames_are_spread_over_the_clip() -> None:
    assert caption_frame_indices(9, 1) == [4]
    assert caption_frame_indices(10, 4) == [1, 3, 6, 8]
    assert caption_frame_indices(2, 5) == [0, 1]


def test_a_model_folder_without_its_files_is_refused_with_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(PrepareError) as error:
        check_model_dir(tmp_path)
    assert "config.json" in str(error.value) and "preprocessor_config.json" in str(error.value)
    assert MODEL_SOURCE in str(error.value)
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json", "model.safetensors"):
        (tmp_path / name).write_text(json.dumps({"model_type": "llava"}), encoding="utf-8")
    with pytest.raises(PrepareError, match="'llava' model"):
        check_model_dir(tmp_path)


def frames(seed: int, count: int, height: int = 64, width: int = 96) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_tiny_qwen_vl_captions_clips_in_batches(tmp_path: Path, model_type: str) -> None:
    folder = tiny_qwen2_vl(tmp_path / model_type, model_type=model_type)
    captioner = QwenVLCaptioner(folder, frames=2, batch_size=3, max_new_tokens=12, device="cpu")
    clips = [frames(0, 2), frames(1, 2, 96, 64), frames(2, 1)]
    batched = captioner.caption_frames(clips)
    assert len(batched) == 3 and all(isinstance(c, str) and c and "\n" not in c for c in batched)
    captioner.batch_size = 1
    assert captioner.caption_frames(clips) == batched  # left padding: a clip's caption ignores its batch


def test_prompt_holds_one_image_placeholder_per_patch_group(caption_model_dir: Path) -> None:
    captioner = QwenVLCaptioner(caption_model_dir, frames=2, prompt="Describe.")
    text = captioner.text([4, 6])
    assert text.count("<|image_pad|>") == 10 and text.count("<|vision_start|>") == 2
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith(
        "The images are 2 frames of one video, in order. Describe.<|im_end|>\n<|im_start|>assistant\n"
    )
