"""Strict checkpoint loading onto meta-initialised models.

A model is built with its parameters on the meta device (no memory), the checkpoint's tensor names
and shapes are read from file headers, a key map says which checkpoint tensor becomes which model
tensor, and the whole plan is checked before a single byte of weights is read: every missing,
unexpected and mis-shaped key is named in one error. Only then are tensors read one at a time,
cast, and assigned into the model (``assign`` semantics), so a 14B model never exists twice in
memory and is never materialised in fp32 when bf16 is asked for.

Readers never unpickle arbitrary objects: safetensors files are parsed directly, ``.pth``/``.bin``
files go through ``torch.load(weights_only=True, mmap=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from vidctrl.errors import UserError

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]
Transform = Callable[[Tensor], Tensor]

# safetensors dtype names (the header's "dtype" field) -> torch dtypes.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}

_MAX_HEADER_BYTES = 256 * 1024 * 1024  # a header beyond this is a corrupt or foreign file


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be read as a flat name -> tensor mapping."""


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def read_safetensors_header(path: str | Path) -> dict[str, tuple[str, Shape]]:
    """Names, dtypes and shapes of a safetensors file, read from its header only (no tensor data)."""
    path = Path(path)
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: not a safetensors file (header size {size} bytes)")
        try:
            header = json.loads(f.read(size))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {e})") from e
    header.pop("__metadata__", None)
    return {name: (info["dtype"], tuple(int(d) for d in info["shape"])) for name, info in header.items()}


class CheckpointReader(ABC):
    """A flat mapping of tensor names to tensors, whose names and shapes are known before loading."""

    description: str

    @abstractmethod
    def shapes(self) -> dict[str, Shape]:
        """Every tensor name with its shape, without reading tensor data."""

    @abstractmethod
    def load(self, key: str) -> Tensor:
        """One tensor, on the CPU, in its stored dtype."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ShapeReader(CheckpointReader):
    """Shapes only (from a safetensors header listing, a JSON key list, ...); loads meta tensors.

    Used to prove that a released checkpoint loads strictly without having its weights.
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]], description: str = "key/shape list") -> None:
        self._shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
        self.description = description

    def shapes(self) -> dict[str, Shape]:
        return dict(self._shapes)

    def load(self, key: str) -> Tensor:
        return torch.empty(self._shapes[key], device="meta")


class StateDictReader(CheckpointReader):
    """An in-memory state dict (e.g. one gathered from a training engine)."""

    def __init__(self, state_dict: Mapping[str, Tensor], description: str = "state dict") -> None:
        self._tensors = dict(state_dict)
        self.description = description

    def shapes(self) -> dict[str, Shape]:
        return {k: tuple(v.shape) for k, v in self._tensors.items()}

    def load(self, key: str) -> Tensor:
        return self._tensors[key]


class SafetensorsReader(CheckpointReader):
    """One safetensors file or the shards of one sharded checkpoint."""

    def __init__(self, files: Sequence[str | Path], description: str | None = None) -> None:
        if not files:
            raise CheckpointError("no safetensors files given")
        self.files = [Path(f) for f in files]
        self.description = description or (
            str(self.files[0])
            if len(self.files) == 1
            else f"{self.files[0].parent} ({len(self.files)} shards)"
        )
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, Shape] = {}
        for file in self.files:
            for name, (_, shape) in read_safetensors_header(file).items():
                if name in self._where:
                    raise CheckpointError(
                        f"{self.description}: tensor {name!r} is stored twice ({self._where[name].name} and {file.name})"
                    )
                self._where[name] = file
                self._shapes[name] = shape
        self._handles: dict[Path, Any] = {}

    @classmethod
    def from_index(cls, index_file: str | Path) -> SafetensorsReader:
        """Shards listed by a ``*.safetensors.index.json`` (its ``weight_map``)."""
        index_file = Path(index_file)
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        shard_names = sorted(set(weight_map.values()))
        missing = [n for n in shard_names if not (index_file.parent / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{index_file}: {len(missing)} of {len(shard_names)} shards are missing: {', '.join(missing)}"
            )
        reader = cls([index_file.parent / n for n in shard_names], description=str(index_file))
        disagree = sorted(
            set(weight_map) ^ set(reader._where)
            | {k for k, n in weight_map.items() if k in reader._where and reader._where[k].name != n}
        )
        if disagree:
            raise CheckpointError(
                f"{index_file}: weight_map disagrees with the shard headers for {len(disagree)} tensors: "
                + ", ".join(disagree)
            )
        return reader

    def shapes(self) -> dict[str, Shape]:
        return dict(self._shapes)

    def load(self, key: str) -> Tensor:
        from safetensors import safe_open

        file = self._where[key]
        handle = self._handles.get(file)
        if handle is None:
            handle = self._handles[file] = safe_open(str(file), framework="pt", device="cpu")
        return handle.get_tensor(key)

    def close(self) -> None:
        self._handles.clear()


class TorchFileReader(CheckpointReader):
    """A ``.pth``/``.bin`` state dict, memory-mapped, loaded with ``weights_only=True``."""

    def __init__(self, file: str | Path) -> None:
        self.file = Path(file)
        self.description = str(self.file)
        try:
            obj = torch.load(self.file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            # Files written with the legacy (pre-zip) serialisation cannot be memory-mapped.
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            obj = torch.load(self.file, map_location="cpu", weights_only=True)
        if isinstance(obj, Mapping) and set(obj) == {"state_dict"} and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{self.file}: expected a state dict, found {type(obj).__name__}")
        not_tensors = sorted(k for k, v in obj.items() if not isinstance(v, Tensor))
        if not_tensors:
            raise CheckpointError(
                f"{self.file}: entries that are not tensors: {', '.join(map(str, not_tensors))}"
            )
        self._tensors: dict[str, Tensor] = dict(obj)

    def shapes(self) -> dict[str, Shape]:
        return {k: tuple(v.shape) for k, v in self._tensors.items()}

    def load(self, key: str) -> Tensor:
        return self._tensors[key]

    def close(self) -> None:
        self._tensors.clear()


def find_weight_files(folder: Path, stem: str) -> list[Path]:
    """The weight files of one model in ``folder``: ``<stem>.safetensors.index.json`` (sharded), one
    ``<stem>.safetensors``, index-less ``<stem>-*-of-*.safetensors`` shards, or ``<stem>.bin``/``.pth``,
    in that order of preference; ``[]`` when there are none (the caller says what is missing)."""
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        return [index]
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    shards = sorted(folder.glob(f"{stem}-*-of-*.safetensors"))
    if shards:
        return shards
    return [folder / f"{stem}{suffix}" for suffix in (".bin", ".pth") if (folder / f"{stem}{suffix}").is_file()][:1]


def open_checkpoint(path: str | Path | Sequence[str | Path]) -> CheckpointReader:
    """A reader for a safetensors file, a sharded ``*.safetensors.index.json``, shards, or a ``.pth``."""
    if not isinstance(path, (str, Path)):
        files = [Path(p) for p in path]
        if all(f.name.endswith(".safetensors") for f in files):
            return SafetensorsReader(files)
        if len(files) == 1:
            return open_checkpoint(files[0])
        raise CheckpointError(f"cannot combine these files into one checkpoint: {', '.join(map(str, files))}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.name.endswith(".safetensors.index.json"):
        return SafetensorsReader.from_index(path)
    if path.suffix == ".safetensors":
        return SafetensorsReader([path])
    if path.suffix in {".pth", ".pt", ".bin", ".ckpt"}:
        return TorchFileReader(path)
    raise CheckpointError(
        f"{path}: unknown checkpoint format (expected .safetensors, .safetensors.index.json or .pth)"
    )


# --------------------------------------------------------------------------------------------
# Key maps
# --------------------------------------------------------------------------------------------

# Placeholders usable in rule templates, and what they match.
PLACEHOLDERS: dict[str, str] = {
    "n": r"\d+",
    "m": r"\d+",
    "param": r"weight|bias",
    "any": r".+",
}


def _template_regex(template: str, patterns: Mapping[str, str]) -> tuple[re.Pattern[str], list[str]]:
    parts: list[str] = []
    names: list[str] = []
    pos = 0
    for m in re.finditer(r"\{(\w+)\}", template):
        parts.append(re.escape(template[pos : m.start()]))
        name = m.group(1)
        if name in names:
            parts.append(f"(?P={name})")
        else:
            if name not in patterns:
                raise KeyError(f"template {template!r}: unknown placeholder {{{name}}}")
            parts.append(f"(?P<{name}>{patterns[name]})")
            names.append(name)
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts)), names


class Rule(ABC):
    """Maps one checkpoint key to model keys (usually one), and back."""

    @abstractmethod
    def forward(self, key: str) -> list[tuple[str, Transform | None]] | None:
        """Model keys (with tensor transforms) made from checkpoint ``key``; None if not this rule's."""

    @abstractmethod
    def inverse(self, target: str) -> tuple[str, int] | None:
        """The checkpoint key a model key comes from and its position among ``forward``'s outputs."""

    def merge(self, parts: Sequence[Tensor]) -> Tensor:
        """The checkpoint tensor rebuilt from the model tensors ``forward`` produced (in order)."""
        (only,) = parts
        return only


class TemplateRule(Rule):
    """``"blocks.{n}.self_attn.o.{param}" -> "blocks.{n}.attn1.to_out.0.{param}"``, both ways.

    Templates match whole keys. Placeholders default to ``PLACEHOLDERS``; extra ones are passed as
    keyword arguments (``qkv="q|k|v"``). An optional tensor transform (and its inverse) covers
    layouts that differ by a reshape or transpose.
    """

    def __init__(
        self,
        source: str,
        target: str,
        *,
        transform: Transform | None = None,
        inverse_transform: Transform | None = None,
        **patterns: str,
    ) -> None:
        table = {**PLACEHOLDERS, **patterns}
        self.source, self.target = source, target
        self._src, src_names = _template_regex(source, table)
        self._dst, dst_names = _template_regex(target, table)
        if set(src_names) != set(dst_names):
            raise ValueError(f"rule {source!r} -> {target!r}: both sides need the same placeholders")
        self.transform, self.inverse_transform = transform, inverse_transform

    def forward(self, key: str) -> list[tuple[str, Transform | None]] | None:
        m = self._src.fullmatch(key)
        if m is None:
            return None
        return [(self.target.format(**m.groupdict()), self.transform)]

    def inverse(self, target: str) -> tuple[str, int] | None:
        m = self._dst.fullmatch(target)
        return None if m is None else (self.source.format(**m.groupdict()), 0)

    def merge(self, parts: Sequence[Tensor]) -> Tensor:
        (only,) = parts
        return only if self.inverse_transform is None else self.inverse_transform(only)

    def __repr__(self) -> str:
        return f"TemplateRule({self.source!r} -> {self.target!r})"


class SplitRule(Rule):
    """One fused checkpoint tensor split in equal chunks along ``dim`` (fused qkv -> q, k, v)."""

    def __init__(self, source: str, targets: Sequence[str], *, dim: int = 0, **patterns: str) -> None:
        table = {**PLACEHOLDERS, **patterns}
        self.source, self.targets, self.dim = source, list(targets), dim
        self._src, _ = _template_regex(source, table)
        self._dsts = [_template_regex(t, table)[0] for t in self.targets]

    def _chunk(self, index: int) -> Transform:
        count, dim = len(self.targets), self.dim

        def chunk(t: Tensor) -> Tensor:
            if t.shape[dim] % count:
                raise ValueError(f"dimension {dim} of shape {list(t.shape)} does not split in {count}")
            return t.chunk(count, dim=dim)[index]

        return chunk

    def forward(self, key: str) -> list[tuple[str, Transform | None]] | None:
        m = self._src.fullmatch(key)
        if m is None:
            return None
        return [(t.format(**m.groupdict()), self._chunk(i)) for i, t in enumerate(self.targets)]

    def inverse(self, target: str) -> tuple[str, int] | None:
        for i, regex in enumerate(self._dsts):
            m = regex.fullmatch(target)
            if m is not None:
                return self.source.format(**m.groupdict()), i
        return None

    def merge(self, parts: Sequence[Tensor]) -> Tensor:
        return torch.cat(list(parts), dim=self.dim)


@dataclass(frozen=True)
class Assignment:
    """Model tensor = ``transform(checkpoint[source])``."""

    source: str
    transform: Transform | None = None

    def apply(self, tensor: Tensor) -> Tensor:
        return tensor if self.transform is None else self.transform(tensor)


@dataclass
class LoadPlan:
    """What a key map makes of a checkpoint's keys, before looking at the model."""

    assignments: dict[str, Assignment] = field(default_factory=dict)  # model key -> source
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why it is not loaded
    unmapped: list[str] = field(default_factory=list)  # checkpoint keys no rule accepts
    conflicts: dict[str, list[str]] = field(default_factory=dict)  # model key -> several sources


class KeyMap:
    """Ordered rules from a checkpoint layout to a model's key names; the first matching rule wins.

    ``ignore`` lists checkpoint keys that are known and deliberately not loaded (with the reason),
    for example the text tower of a CLIP file whose image tower is all Wan uses. Anything else
    that no rule accepts is unexpected.
    """

    def __init__(self, rules: Sequence[Rule], ignore: Sequence[tuple[str, str]] = (), name: str = "") -> None:
        self.rules = list(rules)
        self.ignore = [(re.compile(p), reason) for p, reason in ignore]
        self.name = name

    def targets_for(self, key: str) -> list[tuple[str, Transform | None]] | None:
        for rule in self.rules:
            out = rule.forward(key)
            if out is not None:
                return out
        return None

    def ignore_reason(self, key: str) -> str | None:
        for pattern, reason in self.ignore:
            if pattern.fullmatch(key):
                return reason
        return None

    def plan(self, keys: Iterable[str]) -> LoadPlan:
        plan = LoadPlan()
        for key in keys:
            reason = self.ignore_reason(key)
            if reason is not None:
                plan.ignored[key] = reason
                continue
            targets = self.targets_for(key)
            if targets is None:
                plan.unmapped.append(key)
                continue
            for target, transform in targets:
                if target in plan.assignments:
                    plan.conflicts.setdefault(target, [plan.assignments[target].source]).append(key)
                else:
                    plan.assignments[target] = Assignment(key, transform)
        return plan

    def rename(self, key: str) -> str:
        """The model key of a checkpoint key that maps one-to-one (for tests and messages)."""
        targets = self.targets_for(key)
        if targets is None or len(targets) != 1:
            raise KeyError(f"{self.name or 'key map'}: {key!r} does not map to exactly one model key")
        return targets[0][0]

    def to_source(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A model state dict written back in the checkpoint layout (the inverse of loading)."""
        groups: dict[str, tuple[Rule, dict[int, Tensor]]] = {}
        for target, tensor in state_dict.items():
            for rule in self.rules:
                found = rule.inverse(target)
                if found is not None:
                    source, index = found
                    groups.setdefault(source, (rule, {}))[1][index] = tensor
                    break
            else:
                raise KeyError(f"{self.name or 'key map'}: no rule writes model key {target!r} back")
        out: dict[str, Tensor] = {}
        for source, (rule, parts) in groups.items():
            expected = len(rule.forward(source) or [])
            if sorted(parts) != list(range(expected)):
                raise KeyError(
                    f"{self.name or 'key map'}: {source!r} needs {expected} model tensors, got {len(parts)}"
                )
            out[source] = rule.merge([parts[i] for i in range(expected)])
        return out


def identity_key_map(name: str = "identity", ignore: Sequence[tuple[str, str]] = ()) -> KeyMap:
    """Checkpoint keys are model keys (diffusers / transformers folders written by save_pretrained)."""
    return KeyMap([TemplateRule("{any}", "{any}")], ignore=ignore, name=name)


# --------------------------------------------------------------------------------------------
# Strict check
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedTensors:
    """Model tensors a checkpoint must provide: shapes by canonical name, and every alias of a tied one."""

    shapes: dict[str, Shape]
    canonical: dict[str, str]  # every state-dict name (tied aliases included) -> canonical name

    @classmethod
    def of(cls, model: nn.Module) -> ExpectedTensors:
        """Parameters and persistent buffers; tied parameters (same tensor or declared ties) count once."""
        canonical: dict[str, str] = {}
        shapes: dict[str, Shape] = {}
        by_identity: dict[int, str] = {}
        for name, tensor in model.state_dict(keep_vars=True).items():
            first = by_identity.setdefault(id(tensor), name)
            canonical[name] = first
            if first == name:
                shapes[name] = tuple(tensor.shape)
        # transformers >= 5 declares ties as {alias: source}; on the meta device they are not yet tied.
        declared = getattr(model, "_tied_weights_keys", None)
        if isinstance(declared, Mapping):
            for alias, source in declared.items():
                if alias in canonical and source in canonical and canonical[alias] != canonical[source]:
                    old = canonical[alias]
                    shapes.pop(old, None)
                    for name, c in canonical.items():
                        if c == old:
                            canonical[name] = canonical[source]
        return cls(shapes=shapes, canonical=canonical)

    def aliases(self, canonical_name: str) -> list[str]:
        return [n for n, c in self.canonical.items() if c == canonical_name]


@dataclass(frozen=True)
class ShapeMismatch:
    target: str
    source: str
    checkpoint_shape: Shape | None  # after the key map's transform; None if the transform failed
    model_shape: Shape
    note: str = ""

    def __str__(self) -> str:
        via = "" if self.source == self.target else f" (from {self.source})"
        got = (
            "untransformable: " + self.note if self.checkpoint_shape is None else list(self.checkpoint_shape)
        )
        return f"{self.target}{via}: checkpoint {got}, model {list(self.model_shape)}"


@dataclass
class LoadReport:
    """Result of matching a checkpoint against a model. ``ok`` means nothing is missing or wrong."""

    what: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[ShapeMismatch] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        return (
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} with a different shape"
        )

    def format(self) -> str:
        verdict = "matches the model" if self.ok else "does not match the model"
        lines = [f"{self.what}: checkpoint {verdict}: {self.summary()}"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}), in the model but not in the checkpoint:")
            lines += [f"    {k}" for k in self.missing]
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}), in the checkpoint but not in the model:")
            lines += [f"    {k}" for k in self.unexpected]
        if self.mismatched:
            lines.append(f"  shape differs ({len(self.mismatched)}):")
            lines += [f"    {m}" for m in self.mismatched]
        return "\n".join(lines)


class StrictLoadError(UserError, ValueError):
    """A checkpoint that does not match its model key for key and shape for shape."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__(report.format())
        self.report = report


def _transformed_shape(assignment: Assignment, shape: Shape) -> tuple[Shape | None, str]:
    if assignment.transform is None:
        return shape, ""
    try:
        return tuple(assignment.apply(torch.empty(shape, device="meta")).shape), ""
    except Exception as e:  # a transform that cannot apply to this shape is a shape mismatch
        return None, str(e)


def check_plan(
    plan: LoadPlan, source_shapes: Mapping[str, Shape], expected: ExpectedTensors, what: str
) -> LoadReport:
    """Compare a load plan with a model's tensors. Nothing is read from disk."""
    report = LoadReport(what=what, ignored=dict(plan.ignored))
    report.unexpected += list(plan.unmapped)
    for target, sources in plan.conflicts.items():
        report.unexpected += [
            f"{s} (also maps to {target}, already provided by {sources[0]})" for s in sources[1:]
        ]
    provided: dict[str, str] = {}  # canonical -> model key that provides it
    for target, assignment in plan.assignments.items():
        canonical = expected.canonical.get(target)
        if canonical is None:
            via = "" if assignment.source == target else f" (from {assignment.source})"
            report.unexpected.append(f"{target}{via}")
            continue
        if canonical in provided:
            report.ignored[assignment.source] = (
                f"tied to {canonical}, already provided by {provided[canonical]}"
            )
            continue
        provided[canonical] = target
        shape, note = _transformed_shape(assignment, source_shapes[assignment.source])
        if shape != expected.shapes[canonical]:
            report.mismatched.append(
                ShapeMismatch(target, assignment.source, shape, expected.shapes[canonical], note)
            )
    report.missing = [k for k in expected.shapes if k not in provided]
    return report


def plan_and_check(
    model: nn.Module, reader: CheckpointReader, key_map: KeyMap, what: str | None = None
) -> tuple[LoadPlan, LoadReport]:
    """The load plan of ``reader`` into ``model`` and its strict report."""
    shapes = reader.shapes()
    plan = key_map.plan(shapes)
    what = what or f"{type(model).__name__} <- {reader.description}"
    return plan, check_plan(plan, shapes, ExpectedTensors.of(model), what)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@contextmanager
def empty_weights() -> Iterator[None]:
    """Build modules with parameters on the meta device and real buffers.

    Buffers stay real because the ones computed in ``__init__`` (rotary tables, position ids) are
    not in checkpoints; persistent buffers that are in a checkpoint are replaced like parameters.
    Unlike ``accelerate.init_empty_weights``, a parameter that is already on the meta device is
    registered as is, so weights tied by assignment (``b.weight = a.weight``) stay one tensor.
    """
    original = nn.Module.register_parameter

    def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and not param.is_meta:
            kwargs = dict(param.__dict__)
            kwargs["requires_grad"] = param.requires_grad
            module._parameters[name] = type(param)(param.to("meta"), **kwargs)

    nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _set_tensor(model: nn.Module, name: str, value: Tensor | nn.Parameter) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if leaf in module._parameters:
        module._parameters[leaf] = value  # type: ignore[assignment]
    elif leaf in module._buffers:
        module._buffers[leaf] = value
    else:
        raise KeyError(f"{type(model).__name__} has no parameter or buffer {name!r}")


def _shares_storage(a: Tensor, b: Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _target_dtype(
    name: str, tensor: Tensor, dtype: torch.dtype | None, keep_in_fp32: Sequence[str]
) -> torch.dtype:
    if dtype is None or not tensor.is_floating_point():
        return tensor.dtype
    if keep_in_fp32 and any(part in keep_in_fp32 for part in name.split(".")):
        return torch.float32
    return dtype


def load_checkpoint(
    model: nn.Module,
    reader: CheckpointReader,
    key_map: KeyMap,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    keep_in_fp32: Sequence[str] = (),
    strict: bool = True,
    what: str | None = None,
) -> LoadReport:
    """Check ``reader`` against ``model`` through ``key_map``, then assign every tensor into the model.

    ``model`` is normally built under ``empty_weights()``. Missing and mis-shaped keys always raise
    (a model with holes cannot run); unexpected keys raise unless ``strict=False``, in which case
    they are logged and returned in the report. Floating tensors are cast to ``dtype`` one at a
    time (``None`` keeps the stored dtype), except in modules named in ``keep_in_fp32``. Tied
    parameters end up as one ``Parameter`` shared by all their names.
    """
    plan, report = plan_and_check(model, reader, key_map, what)
    if report.missing or report.mismatched or (strict and report.unexpected):
        raise StrictLoadError(report)
    if report.unexpected:
        logger.warning(
            "%s: %d unexpected checkpoint keys not loaded: %s",
            report.what,
            len(report.unexpected),
            ", ".join(report.unexpected),
        )
    expected = ExpectedTensors.of(model)
    aliases: dict[str, list[str]] = {}
    for name, canonical_name in expected.canonical.items():
        aliases.setdefault(canonical_name, []).append(name)
    old = dict(model.state_dict(keep_vars=True))
    done: set[str] = set()
    for target, assignment in plan.assignments.items():
        canonical = expected.canonical.get(target)
        if canonical is None or canonical in done:
            continue
        done.add(canonical)
        stored = reader.load(assignment.source)
        tensor = assignment.apply(stored)
        tensor = tensor.to(device=device, dtype=_target_dtype(canonical, tensor, dtype, keep_in_fp32))
        if assignment.transform is not None and _shares_storage(tensor, stored):
            # A split or transposed view would keep the whole source alive and share its storage
            # with its siblings (which safetensors refuses to save): give it its own memory.
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        previous = old[canonical]
        value: Tensor = (
            nn.Parameter(tensor, requires_grad=previous.requires_grad)
            if isinstance(previous, nn.Parameter)
            else tensor
        )
        for alias in aliases[canonical]:
            _set_tensor(model, alias, value)
        report.loaded += 1
    model.to(device)  # buffers computed at build time (rotary tables, position ids) follow the weights
    still_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:
        raise StrictLoadError(
            LoadReport(what=f"{report.what} (tensors left on the meta device)", missing=still_meta)
        )
    return report


def load_component(model: nn.Module, reader: CheckpointReader, key_map: KeyMap, *, dtype: torch.dtype | None,
                   device: torch.device | str, strict: bool = True, what: str) -> LoadReport:
    """`load_checkpoint` for a model component, keeping in fp32 what its library keeps there
    (`fp32_module_names`), closing the reader, and leaving the model in eval mode (as
    ``from_pretrained`` returns it; trainers call ``.train()`` on what they train)."""
    with reader:
        report = load_checkpoint(model, reader, key_map, dtype=dtype, device=device,
                                 keep_in_fp32=fp32_module_names(model, dtype), strict=strict, what=what)
    model.eval()
    return report


def fp32_module_names(model: nn.Module, dtype: torch.dtype | None) -> tuple[str, ...]:
    """Module names a library keeps in fp32 when loading ``model`` in ``dtype``, by its own rules.

    diffusers keeps ``_keep_in_fp32_modules`` whenever a dtype is given; transformers keeps
    ``_keep_in_fp32_modules`` for fp16 only and ``_keep_in_fp32_modules_strict`` for fp16 and bf16.
    """
    if dtype is None or dtype == torch.float32:
        return ()
    from transformers import PreTrainedModel

    names: set[str] = set()
    if isinstance(model, PreTrainedModel):
        if dtype == torch.float16:
            names |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
        if dtype in (torch.float16, torch.bfloat16):
            names |= set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    else:
        names |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    return tuple(sorted(names))


def read_json(path: Path) -> dict[str, Any]:
    """A model folder's JSON file (config.json, scheduler_config.json, ...)."""
    return json.loads(Path(path).read_text())


@contextmanager
def hub_offline() -> Iterator[None]:
    """Forbid Hugging Face hub access for the duration (belt and braces next to ``local_files_only``):
    vidctrl loads models from local folders only."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
