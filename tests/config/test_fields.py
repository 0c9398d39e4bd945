import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from vidctrl.config.fields import add_arguments, build, coerce, given, option


@dataclass
class Section:
    meta: Path | None = option(None, help="metadata", flags=["--train_data_meta"])
    n_frames: int = option(49, help="frames", flags=["--sample_n_frames"])
    enable_bucket: bool = option(False, help="buckets")
    mode: Literal["a", "b"] = option("a", help="mode")
    modules: list[str] = option(help="modules", default_factory=lambda: ["."])


def parse(argv: list[str]) -> Section:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Section)
    return build(Section, given(parser.parse_args(argv), Section))


def test_seed_flag_and_field_name_are_two_spellings_of_one_field() -> None:
    assert parse(["--train_data_meta", "m.json"]).meta == Path("m.json")
    assert parse(["--meta", "m.json"]).meta == Path("m.json")
    assert parse(["--sample_n_frames", "21"]).n_frames == 21


def test_boolean_flags_accept_bare_and_valued_forms() -> None:
    assert parse(["--enable_bucket"]).enable_bucket is True
    assert parse(["--enable_bucket", "false"]).enable_bucket is False
    assert parse(["--enable_bucket=True"]).enable_bucket is True
    assert parse([]).enable_bucket is False


def test_untyped_flags_keep_defaults_and_lists_take_several_values() -> None:
    section = parse(["--modules", "blocks", "patch_embedding"])
    assert section.modules == ["blocks", "patch_embedding"]
    assert section.n_frames == 49


def test_literal_fields_reject_unknown_choices() -> None:
    with pytest.raises(SystemExit):
        parse(["--mode", "c"])


def test_coerce_converts_yaml_values_and_names_the_bad_key() -> None:
    values = coerce(Section, {"n_frames": "33", "enable_bucket": "yes", "meta": "x.json"}, source="cfg.yaml")
    assert values == {"n_frames": 33, "enable_bucket": True, "meta": Path("x.json")}
    with pytest.raises(ValueError, match=r"cfg.yaml: unknown key 'frames'"):
        coerce(Section, {"frames": 3}, source="cfg.yaml")
    with pytest.raises(ValueError, match=r"cfg.yaml: mode must be one of"):
        coerce(Section, {"mode": "z"}, source="cfg.yaml")
