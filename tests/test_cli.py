import subprocess
import sys

import pytest

from vidctrl import __version__
from vidctrl.cli import main


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "vidctrl", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"vidctrl {__version__}"


def test_every_subcommand_has_help(capsys) -> None:
    for command in (["train"], ["data", "check"], ["data", "plan"], ["data", "convert"], ["data", "sample"],
                    ["model", "tiny"], ["demo"]):
        try:
            main([*command, "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        assert "usage: vidctrl" in capsys.readouterr().out


def test_a_data_error_is_one_line_without_traceback(tmp_path, capsys) -> None:
    code = main(["data", "check", "--train_data_meta", str(tmp_path / "missing.json")])
    out = capsys.readouterr().out
    assert code == 1 and out.startswith("error: ") and "missing.json" in out and "cannot be read" in out
    code = main(["data", "plan", "--height", "64"])
    assert code == 2 and capsys.readouterr().err.startswith("error: --height and --width go together")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["data", "sample", "--out", "x", "--num_videos", "-1"], "--num_videos"),
        (["data", "check", "--workers", "-1"], "--workers"),
        (["data", "convert", "--to", "manifest", "--out", "x", "--workers", "0"], "--workers"),
        (["model", "tiny", "--preset", "bogus", "--out", "x"], "--preset"),
        (["demo", "--steps", "1"], "--steps"),
    ],
)
def test_plain_command_options_refuse_out_of_range_values_in_one_line(argv, flag, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert f"error: argument {flag}" in err.strip().splitlines()[-1]
