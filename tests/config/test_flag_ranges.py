"""Every numeric flag of every preset refuses an out-of-range value in one `error:` line, before
anything loads: the rule is declared on the field (`option(..., min=1)`), so it covers fields nobody
listed here."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import typing

import pytest

from vidctrl import cli
from vidctrl.config.fields import _unwrap_optional, flags_of, range_of
from vidctrl.config.train import SECTIONS
from vidctrl.data.config import DataConfig
from vidctrl.families import FAMILIES, all_presets
from vidctrl.prepare.config import PrepareConfig

# Fields where any finite number is a meaningful setting.
UNBOUNDED = {"logit_mean"}
CANDIDATES = ("0", "-1", "nan", "inf")


@pytest.fixture(scope="module")
def parser():
    return cli.build_parser()


def numeric_fields(section: type) -> list[tuple[dataclasses.Field, type, bool]]:
    """(field, int or float, is a list) for every numeric field of `section`."""
    out = []
    hints = typing.get_type_hints(section)
    for f in dataclasses.fields(section):
        tp, _ = _unwrap_optional(hints[f.name])
        is_list = typing.get_origin(tp) in (list, tuple)
        item = typing.get_args(tp)[0] if is_list else tp
        if item in (int, float):
            out.append((f, item, is_list))
    return out


def invalid_values(f: dataclasses.Field, kind: type) -> list[str]:
    allowed = range_of(f)
    values = []
    for text in CANDIDATES:
        if kind is int and text in ("nan", "inf"):
            values.append(text)  # not an integer at all: argparse refuses it
        elif not allowed.admits(kind(float(text)) if kind is int else float(text)):
            values.append(text)
    for bound in (allowed.max, allowed.lt):
        if bound is not None:
            values.append(str(kind(bound + 1)))
    return values


def run(parser, argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv, parser=parser)
    except SystemExit as exc:  # argparse's own refusal (not a number at all)
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_every_numeric_field_declares_its_range() -> None:
    sections = [*SECTIONS.values(), PrepareConfig, *(f.options_class for f in FAMILIES if f.options_class)]
    undeclared = [
        f"{section.__name__}.{f.name}"
        for section in sections
        for f, _, _ in numeric_fields(section)
        if not range_of(f).bounded and f.name not in UNBOUNDED
    ]
    assert undeclared == []


@pytest.mark.parametrize("preset", sorted(all_presets()))
def test_every_numeric_flag_of_the_preset_refuses_zero_negative_nan_and_inf(preset, parser, capsys) -> None:
    family = all_presets()[preset]
    sections = [*SECTIONS.values(), *([family.options_class] if family.options_class else [])]
    tried = 0
    for section in sections:
        for f, kind, is_list in numeric_fields(section):
            flag = flags_of(f)[0]
            for value in invalid_values(f, kind):
                argv = ["train", "--preset", preset, "--train_data_meta", "meta.json", flag,
                        *([value, value] if is_list else [value])]
                code, err = run(parser, argv, capsys)
                assert code != 0, argv
                assert "Traceback" not in err, argv
                assert flag in err, (argv, err)
                tried += 1
    assert tried > 100


@pytest.mark.parametrize("preset", sorted(all_presets()))
def test_the_preset_defaults_are_within_every_declared_range(preset, parser) -> None:
    from vidctrl.config.train import resolve

    config = resolve(parser.parse_args(["train", "--preset", preset, "--train_data_meta", "meta.json"]))
    assert config.preset == preset


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--checkpointing_steps", "0"], "--checkpointing_steps"),
        (["--train_batch_size", "-2"], "--train_batch_size"),
        (["--learning_rate=-1e-4"], "--learning_rate"),
        (["--learning_rate", "nan"], "--learning_rate"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
        (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit"),
        (["--dataloader_num_workers", "-2"], "--dataloader_num_workers"),
        (["--seed", "-1"], "--seed"),
        (["--flow_shift", "-3"], "--flow_shift"),
        (["--video_repeat", "-1"], "--video_repeat"),
        (["--use_lora", "--rank", "0"], "--rank"),
        (["--report_to", "bogus"], "--report_to"),
        (["--height_buckets", "512"], "--height_buckets"),
        (["--validation_images", "missing.png"], "--validation_images"),
        (["--video_sample_n_frames", "0"], "--video_sample_n_frames"),
        (["--video_sample_stride", "0"], "--video_sample_stride"),
        (["--video_length_drop_start", "0.8", "--video_length_drop_end", "0.2"], "--video_length_drop_start"),
        (["--video_sample_n_frames", "50"], "4k+1"),
        (["--fix_sample_size", "512"], "fix_sample_size takes HEIGHT WIDTH"),
        (["--lr_scheduler", "bogus"], "--lr_scheduler bogus"),
    ],
)
def test_issue_flag_values_are_refused_before_the_model_loads(argv, named, parser, capsys, tmp_path) -> None:
    # No --pretrained_model_name_or_path: a refusal that came after the model would name that instead.
    meta = tmp_path / "m.json"
    meta.write_text("[]")
    code, err = run(parser, ["train", "--preset", "wan2.1-fun-control-v1.1", "--train_data_meta", str(meta),
                             "--output_dir", str(tmp_path / "out"), *argv], capsys)
    assert code != 0 and err.startswith("error: ") and named in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_data_commands_refuse_out_of_range_flags_too(parser, capsys) -> None:
    code, err = run(parser, ["data", "plan", "--video_sample_stride", "0"], capsys)
    assert code == 2 and err.startswith("error: --video_sample_stride 0 is out of range")
    field = next(f for f in dataclasses.fields(DataConfig) if f.name == "video_sample_stride")
    assert not range_of(field).admits(0) and range_of(field).admits(1)
    assert not range_of(field).admits(math.inf)


@pytest.mark.slow  # a fresh interpreter imports torch and diffusers
def test_a_bad_flag_value_ends_in_one_error_line_end_to_end(tmp_path) -> None:
    """The real entry point (`python -m vidctrl`), not the in-process call: stderr and exit status."""
    done = subprocess.run(
        [sys.executable, "-m", "vidctrl", "train", "--preset", "cogvideox-fun-control", "--train_data_meta",
         str(tmp_path / "m.json"), "--learning_rate", "nan"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: --learning_rate nan is out of range")
