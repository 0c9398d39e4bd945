"""`vidctrl train` configuration: sections, presets, YAML and seed flags folded into one typed object.

Precedence, lowest to highest: dataclass defaults, the preset's defaults, the YAML file(s)
(`vidctrl train config.yaml`, or a seed system's model YAML via `--config_path`), the flags
typed on the command line. A family-specific flag given to a preset of another family is an
error that says which family honours it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vidctrl.config.checks import check_cross_fields, check_train_config
from vidctrl.config.fields import ConfigError, add_arguments, coerce, flags_of, given
from vidctrl.config.refusals import refuse_unhonoured
from vidctrl.config.sections import ModelConfig, ObjectiveConfig, OptimConfig, RunConfig, ValidationConfig
from vidctrl.data.config import DataConfig

SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "objective": ObjectiveConfig,
    "run": RunConfig,
    "validation": ValidationConfig,
}


@dataclass
class TrainConfig:
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    objective: ObjectiveConfig
    run: RunConfig
    validation: ValidationConfig
    family: Any  # the family's options dataclass
    preset: str

    def to_dict(self) -> dict[str, Any]:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out["family"] = dataclasses.asdict(self.family) if self.family is not None else {}
        out["preset"] = self.preset

        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return plain(out)


# Seed flags of systems whose families are not in this version yet: parsed, so that the error
# says which system they belong to instead of argparse's "unrecognized arguments".
NOT_YET_SUPPORTED: dict[str, str] = {
    "controlnet_model_name_or_path": "ControlNeXt-SVD",
    "unet_model_name_or_path": "ControlNeXt-SVD",
}


def _families() -> list[type]:
    from vidctrl.families.registry import FAMILIES

    return FAMILIES


def _field_owner() -> dict[str, str]:
    """Field name -> section (or family option class) that declares it; names are unique."""
    owners: dict[str, str] = {}
    groups: list[tuple[str, type]] = list(SECTIONS.items())
    groups += [(f"family:{family.__name__}", family.options_class) for family in _families() if family.options_class]
    for name, section in groups:
        for f in dataclasses.fields(section):
            if f.name in owners and owners[f.name] != name:
                if owners[f.name].startswith("family:") and name.startswith("family:"):
                    continue  # two families may share an option spelling
                raise AssertionError(f"config field {f.name} is declared by {owners[f.name]} and {name}")
            owners.setdefault(f.name, name)
    return owners


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="vidctrl train")
    parser.add_argument("config_files", nargs="*", type=Path, help="YAML config file(s), later ones win")
    for title, section in SECTIONS.items():
        add_arguments(parser, section, group_title=title)
    seen: set[str] = set(_field_owner()) - {
        f.name for family in _families() if family.options_class for f in dataclasses.fields(family.options_class)
    }
    for family in _families():
        if family.options_class is None:
            continue
        group = parser.add_argument_group(f"{family.__name__} options ({', '.join(family.presets)})")
        for f in dataclasses.fields(family.options_class):
            if f.name in seen:
                continue
            seen.add(f.name)
            _add_single(group, family.options_class, f)
    hidden = parser.add_argument_group("seed flags of systems not in this version")
    for name in NOT_YET_SUPPORTED:
        hidden.add_argument(f"--{name}", dest=f"unsupported:{name}", nargs="?", const=True,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _add_single(group: Any, section: type, f: dataclasses.Field) -> None:
    """Add one field of a family's options (the same flag may be declared by several families)."""
    import typing

    from vidctrl.config.fields import argument_kwargs

    hints = typing.get_type_hints(section)
    group.add_argument(*flags_of(f), dest=f.name, default=argparse.SUPPRESS, **argument_kwargs(f, hints[f.name]))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def _seed_yaml_path(config_path: str) -> Path:
    """A seed model YAML: the path as given, else vidctrl's copy of the seeds' file at that path."""
    path = Path(config_path)
    if path.exists():
        return path
    from importlib.resources import files

    packaged = Path(str(files("vidctrl") / "resources")) / path
    if not path.is_absolute() and packaged.exists():
        return packaged
    raise ConfigError(f"--config_path {config_path} does not exist (and is not one of the seed YAMLs vidctrl ships)")


def _flatten(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Accept flat YAML (`learning_rate: 1e-4`) and sectioned YAML (`optim: {learning_rate: ...}`)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS or key == "family":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section {key} must be a mapping")
            flat.update(value)
        else:
            flat[key] = value
    return flat


def parse_train_config(argv: list[str]) -> TrainConfig:
    """Parse `vidctrl train` arguments into a `TrainConfig` (see the module docstring)."""
    namespace = build_parser().parse_args(argv)
    return resolve(namespace)


def resolve(namespace: argparse.Namespace) -> TrainConfig:
    from vidctrl.families.registry import family_for_preset

    unsupported = [k.split(":", 1)[1] for k in vars(namespace) if k.startswith("unsupported:")]
    if unsupported:
        systems = sorted({NOT_YET_SUPPORTED[name] for name in unsupported})
        raise ConfigError(
            f"{', '.join('--' + n for n in unsupported)}: flags of {', '.join(systems)}, which this version of vidctrl "
            "does not train yet"
        )
    owners = _field_owner()
    typed = {k: v for k, v in vars(namespace).items() if k in owners}
    yaml_values: dict[str, Any] = {}
    for path in namespace.config_files:
        yaml_values.update(_flatten(_read_yaml(path), str(path)))
    unknown = sorted(set(yaml_values) - set(owners))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown} in {', '.join(map(str, namespace.config_files))}")

    config_path = typed.get("config_path", yaml_values.get("config_path"))
    preset = typed.get("preset", yaml_values.get("preset"))
    seed_yaml: dict[str, Any] = {}
    if config_path:
        if Path(config_path).suffix in (".yaml", ".yml"):
            seed_yaml = _read_yaml(_seed_yaml_path(config_path))
        elif preset is None:
            preset = config_path  # `--config_path` may name a preset
        elif preset != config_path:
            raise ConfigError(f"--config_path {config_path} and --preset {preset} disagree")
    if preset is None:
        raise ConfigError("choose a model with --preset (vidctrl presets lists them)")
    family = family_for_preset(preset)
    family_fields = {f.name for f in dataclasses.fields(family.options_class)} if family.options_class else set()

    layers: list[tuple[str, dict[str, Any]]] = [
        (f"preset {preset}", dict(family.presets[preset])),
        (f"--config_path {config_path}", family.read_seed_yaml(seed_yaml) if seed_yaml else {}),
        ("config file", yaml_values),
        ("command line", typed),
    ]
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    merged["family"] = {}
    for source, values in layers:
        for key, value in values.items():
            owner = owners.get(key)
            if owner is None:
                raise ConfigError(f"{source}: unknown key {key!r}")
            if owner.startswith("family:") or key in family_fields:
                if key not in family_fields:
                    users = [f.presets for f in _families() if f.options_class and key in
                             {x.name for x in dataclasses.fields(f.options_class)}]
                    names = ", ".join(p for presets in users for p in presets)
                    raise ConfigError(
                        f"--{key} ({source}) belongs to {names}; preset {preset} cannot honour it. Remove the flag "
                        "or choose one of those presets."
                    )
                merged["family"][key] = value
            else:
                merged[owner][key] = value
    sections = {}
    for name, section in SECTIONS.items():
        try:
            sections[name] = section(**coerce(section, merged[name], source=name))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    options = None
    if family.options_class is not None:
        try:
            options = family.options_class(**coerce(family.options_class, merged["family"], source=preset))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    sections["model"].preset = preset
    config = TrainConfig(**sections, family=options, preset=preset)
    check_train_config(config, family)  # every flag's range, before anything loads
    refuse_unhonoured(config)
    try:
        family.validate_config(config)
    except ConfigError as err:  # every refusal names the preset that refuses
        if preset in str(err):
            raise
        raise ConfigError(f"preset {preset}: {err}") from None
    check_cross_fields(config, family)
    return config


__all__ = ["SECTIONS", "ConfigError", "TrainConfig", "build_parser", "given", "parse_train_config", "resolve"]
