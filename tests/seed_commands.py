"""The seed commands as users type them: every `accelerate launch` block of the five seed docs.

The docs ship with the tests (tests/fixtures/seeds, the training docs of the five public systems,
verbatim). One parser for all tests: each block becomes a `SeedCommand` with its launcher flags and
its script flags, the doc's shell variables filled in. A test replaces the doc's paths by its own
through `SeedCommand.args_with` (the way a user edits the variables at the top of the block). A
missing doc is an error, never a skip.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SEEDS = Path(__file__).resolve().parent / "fixtures" / "seeds"
# fixture file -> the system whose training doc it is
DOCS = {
    "dynamictrl.txt": "DynamiCtrl",
    "easyanimate.txt": "EasyAnimate",
    "wan2.1-fun.txt": "Wan2.1-Fun",
    "controlnext-svd.txt": "ControlNeXt-SVD",
    "cogvideox-fun.txt": "CogVideoX-Fun",
}
# A typo in the seed doc's ZeRO-3 launch lines that accelerate itself rejects ("unrecognized
# arguments"): the original command cannot run either. Corrected here, and said in the README.
SEED_TYPOS = {"--deepspeed_multinode_launcherr": "--deepspeed_multinode_launcher"}
# DynamiCtrl's doc loops over these arrays and passes the loop variable
LOOP_VARIABLES = {"learning_rate": "LEARNING_RATES", "lr_schedule": "LR_SCHEDULES", "optimizer": "OPTIMIZERS",
                  "steps": "MAX_TRAIN_STEPS"}


def seed_doc(system: str) -> str:
    """The text of one system's seed doc (a key of DOCS' values, e.g. ``"Wan2.1-Fun"``)."""
    name = next((file for file, doc_system in DOCS.items() if doc_system == system), None)
    if name is None:
        raise KeyError(f"no seed doc for {system!r}; the docs are {sorted(DOCS.values())}")
    path = SEEDS / name
    if not path.is_file():
        raise FileNotFoundError(f"seed doc {path} is missing: it ships with the repository (tests/fixtures/seeds); "
                                "restore it from git")
    return path.read_text(encoding="utf-8")


def _fill(word: str, variables: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), word)


@dataclass
class SeedCommand:
    system: str
    index: int  # the block's position among the doc's `accelerate launch` blocks
    launcher: list[str]  # accelerate launch flags, shell variables filled from the doc
    script_args: list[str]  # the training script's flags, likewise
    variables: dict[str, str] = field(default_factory=dict)
    fixed_typos: list[str] = field(default_factory=list)
    raw_launcher: list[str] = field(default_factory=list)  # before the doc's variables were filled in
    raw_script_args: list[str] = field(default_factory=list)  # likewise

    @property
    def engine(self) -> str:
        if "--use_deepspeed" in self.launcher:
            stage = self.launcher[self.launcher.index("--zero_stage") + 1] if "--zero_stage" in self.launcher else "2"
            return f"zero{stage}"
        if "--config_file" in self.launcher:
            return "accelerate-yaml"
        if any(word.startswith("--num_machines") for word in self.launcher):
            return "multinode"
        return "plain"

    def args_with(self, values: Mapping[str, str | Path] | None = None,
                  replace: Mapping[str, str | Path] | None = None) -> list[str]:
        """The script flags with the doc's shell variables filled in, ``values`` overriding the doc's
        (``{"MODEL_NAME": tiny_model}``), then each literal path in ``replace`` swapped for its new
        value (longest first, so a folder does not match inside its own file's path)."""
        variables = {**self.variables, **{name: str(value) for name, value in (values or {}).items()}}
        args = [_fill(word, variables) for word in self.raw_script_args]
        for old, new in sorted((replace or {}).items(), key=lambda kv: -len(kv[0])):
            args = [arg.replace(old, str(new)) for arg in args]
        return args


def _variables(block: str, text: str) -> dict[str, str]:
    """Shell assignments of a block (`export X="..."`, `X="..."`, `X=("...")`), falling back to the doc's."""
    found: dict[str, str] = {}
    for source in (text, block):
        for name, value in re.findall(r'^\s*(?:export\s+)?(\w+)=\("?([^")\s]*)"?\)', source, flags=re.M):
            found[name] = value
        for name, value in re.findall(r'^\s*(?:export\s+)?(\w+)="([^"]*)"', source, flags=re.M):
            found[name] = value
        for name, value in re.findall(r"^\s*(?:export\s+)?(\w+)=([^\s\"'(]+)\s*(?:#.*)?$", source, flags=re.M):
            found[name] = value
    return found


def _command_text(block: str) -> str:
    """The `accelerate launch ...` command of a block, continuation lines joined."""
    quoted = re.search(r'cmd="(accelerate\s+launch.*?[^\\])"', block, flags=re.S)
    if quoted:  # DynamiCtrl builds it in a string and evals it: newlines there are word breaks
        return quoted.group(1).replace('\\"', '"').replace("\\\n", " ").replace("\n", " ")
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(r"accelerate\s+launch", line))
    command = []
    for line in lines[start:]:
        command.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            break
    text = " ".join(command)
    launch = re.search(r"accelerate\s+launch", text)
    assert launch is not None
    return text[launch.start():]


def doc_commands(system: str) -> list[SeedCommand]:
    """Every `accelerate launch` block of one system's seed doc, in the doc's order."""
    text = seed_doc(system)
    blocks = [b for b in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S) if re.search(r"accelerate\s+launch", b)]
    commands = []
    for index, block in enumerate(blocks):
        variables = _variables(block, text)
        variables.update({k: variables[v] for k, v in LOOP_VARIABLES.items() if v in variables})
        command = _command_text(block)
        # `--output_dir= $PATH` (ControlNeXt) is one flag with its value
        command = re.sub(r"=\s+\$", "=$", command)
        raw = shlex.split(command)[2:]  # after `accelerate launch`; split first, so values keep their spaces
        fixed = [w for w in raw if w in SEED_TYPOS]
        raw = [SEED_TYPOS.get(w, w) for w in raw]
        script = next(i for i, w in enumerate(raw) if w.endswith(".py"))
        commands.append(SeedCommand(
            system, index, [_fill(w, variables) for w in raw[:script]],
            [_fill(w, variables) for w in raw[script + 1 :]], variables, fixed, raw[:script], raw[script + 1 :],
        ))
    return commands


def seed_commands() -> list[SeedCommand]:
    """The commands of all five docs."""
    return [command for system in DOCS.values() for command in doc_commands(system)]


def plain_commands(system: str) -> list[SeedCommand]:
    """A doc's single-process training commands (no DeepSpeed, no accelerate YAML, not the bare
    multi-machine launcher example), in the doc's order."""
    return [c for c in doc_commands(system) if c.engine == "plain" and c.script_args]
