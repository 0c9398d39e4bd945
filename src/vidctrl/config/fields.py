"""Typed config fields whose command-line flags are the seed systems' spellings.

A config section is a dataclass. Each field is declared once with `option(...)`, which records
its help text and every flag that spells it (`--train_data_meta`, `--meta_info_path`, ...).
`add_arguments` turns a section into argparse arguments and `from_namespace` reads it back, so a
seed flag, a YAML key and a Python attribute are three spellings of one typed value.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from vidctrl.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration the run cannot honour; the message says why and what to do."""


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: inclusive `min`/`max`, exclusive `gt`/`lt`.

    Every float must also be finite (NaN and inf are never a setting). A field declared without
    bounds still gets the finiteness rule, so a field nobody listed is covered too.
    """

    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None

    @property
    def bounded(self) -> bool:
        return any(v is not None for v in (self.min, self.max, self.gt, self.lt))

    def describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {_number(self.min)}")
        if self.gt is not None:
            parts.append(f"> {_number(self.gt)}")
        if self.max is not None:
            parts.append(f"<= {_number(self.max)}")
        if self.lt is not None:
            parts.append(f"< {_number(self.lt)}")
        return " and ".join(parts)

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return not (
            (self.min is not None and value < self.min)
            or (self.gt is not None and value <= self.gt)
            or (self.max is not None and value > self.max)
            or (self.lt is not None and value >= self.lt)
        )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flags: Iterable[str] = (),
    default_factory: Any = dataclasses.MISSING,
    min: float | None = None,
    max: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with help text, extra flag spellings (`--field_name` is always one) and,
    for numbers (or lists of numbers), the range of values it accepts (see `Range`)."""
    metadata = {"help": help, "flags": tuple(flags), "range": Range(min=min, max=max, gt=gt, lt=lt)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def range_of(f: dataclasses.Field) -> Range:
    return f.metadata.get("range") or Range()


def check_ranges(section: Any) -> None:
    """Refuse a numeric value outside its field's declared range, naming the flag and the range.

    Called when a config is built, before anything loads, so that `--checkpointing_steps 0` or
    `--learning_rate nan` fails in the first second and not after the model loaded.
    """
    hints = type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if value is None:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        integer = tp is int or (get_origin(tp) in (list, tuple) and int in get_args(tp))
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            allowed = range_of(f)
            if not allowed.admits(item):
                spelled = " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
                aliases = flags_of(f)[1:]
                also = f" (also spelled {', '.join(aliases)})" if aliases else ""
                rule = " ".join(filter(None, ["an integer" if integer else "a finite number", allowed.describe()]))
                which = f": {item}" if isinstance(value, (list, tuple)) else ""
                raise ConfigError(
                    f"{flags_of(f)[0]} {spelled}{also}{which} is out of range; it must be {rule} "
                    f"[{f.metadata.get('help', f.name)}]"
                )


def int_at_least(minimum: int) -> Any:
    """An argparse `type` for a plain command option (not a config field) with a lower bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def parse_bool(text: str | bool) -> bool:
    """`--flag`, `--flag true`, `--flag=False`: the seeds use all three."""
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


@functools.cache
def type_hints(section: type) -> dict[str, Any]:
    """`typing.get_type_hints`, once per section class (it evaluates every annotation string)."""
    return typing.get_type_hints(section)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def flags_of(f: dataclasses.Field) -> list[str]:
    names = [f"--{f.name}"]
    names += [flag for flag in f.metadata.get("flags", ()) if flag not in names]
    return names


def argument_kwargs(f: dataclasses.Field, tp: Any) -> dict[str, Any]:
    tp, _ = _unwrap_optional(tp)
    origin = get_origin(tp)
    kwargs: dict[str, Any] = {"help": f.metadata.get("help", "")}
    if tp is bool:
        kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
    elif origin is Literal:
        choices = get_args(tp)
        kwargs.update(choices=choices, type=type(choices[0]))
    elif origin in (list, tuple):
        (item,) = {a for a in get_args(tp) if a is not Ellipsis}
        kwargs.update(nargs="+", type=_scalar_parser(item))
    else:
        kwargs.update(type=_scalar_parser(tp))
    return kwargs


def _scalar_parser(tp: Any) -> Any:
    tp, _ = _unwrap_optional(tp)
    if tp is bool:
        return parse_bool
    if tp in (int, float, str):
        return tp
    if tp is Path:
        return Path
    if get_origin(tp) is Literal:
        return type(get_args(tp)[0])
    raise TypeError(f"unsupported config field type {tp!r}")


def add_arguments(parser: argparse.ArgumentParser, section: type, *, group_title: str | None = None) -> None:
    """Add one argparse argument per field of the dataclass `section`.

    Defaults are left as `argparse.SUPPRESS` so that `from_namespace` can tell a flag the user
    typed from a default (presets and YAML files fill in what the user did not type).
    """
    hints = type_hints(section)
    target = parser.add_argument_group(group_title) if group_title else parser
    for f in dataclasses.fields(section):
        kwargs = argument_kwargs(f, hints[f.name])
        default = _field_default(f)
        if default is not None and default is not dataclasses.MISSING:
            kwargs["help"] = f"{kwargs['help']} (default: {default})"
        target.add_argument(*flags_of(f), dest=f.name, default=argparse.SUPPRESS, **kwargs)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def given(namespace: argparse.Namespace, section: type) -> dict[str, Any]:
    """The fields of `section` that the user typed on the command line."""
    names = {f.name for f in dataclasses.fields(section)}
    return {k: v for k, v in vars(namespace).items() if k in names}


def coerce(section: type, values: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Type-check and convert raw values (from YAML or a preset) to the section's field types."""
    hints = type_hints(section)
    known = {f.name: f for f in dataclasses.fields(section)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{source}: unknown key {key!r} for {section.__name__}")
        out[key] = _coerce_value(hints[key], value, f"{source}: {key}")
    return out


def _coerce_value(tp: Any, value: Any, where: str) -> Any:
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where} may not be null")
    origin = get_origin(inner)
    try:
        if origin in (list, tuple):
            items = value if isinstance(value, (list, tuple)) else [value]
            (item_tp,) = {a for a in get_args(inner) if a is not Ellipsis}
            converted = [_coerce_value(item_tp, v, where) for v in items]
            return tuple(converted) if origin is tuple else converted
        if origin is Literal:
            if value not in get_args(inner):
                raise ValueError(f"{where} must be one of {get_args(inner)}, got {value!r}")
            return value
        if inner is bool:
            return parse_bool(value)
        if inner is Path:
            return Path(value)
        if inner is float and isinstance(value, (int, float, str)):
            return float(value)
        if inner is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if inner is str:
            return str(value)
    except (argparse.ArgumentTypeError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if isinstance(value, inner):
        return value
    raise ValueError(f"{where}: expected {getattr(inner, '__name__', inner)}, got {value!r}")


def build(section: type, *layers: dict[str, Any]) -> Any:
    """Instantiate `section` from layered values: later layers override earlier ones."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    built = section(**merged)
    check_ranges(built)
    return built
