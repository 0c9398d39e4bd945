"""Under DDP rank 0 validates alone while the other ranks wait: the wait is bounded by
`--validation_timeout`, not by `--nccl_timeout` (which 50 sampling steps of a 14B model outlast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mp_helpers import DDP, launch, train_args

pytestmark = pytest.mark.slow

SLOW_VALIDATION = '''
import sys, time
from vidctrl.train.validation import ValidationRunner

original = ValidationRunner.run

def run(self, *args, **kwargs):
    time.sleep(12)  # longer than the run's --nccl_timeout
    return original(self, *args, **kwargs)

ValidationRunner.run = run
from vidctrl.cli import main
sys.exit(main(sys.argv[1:]))
'''


def validation_flags(data: Path) -> list[str]:
    control = json.loads((data / "metadata.json").read_text())[0]["control_file_path"]
    return ["--validation_steps", "2", "--validation_prompts", "a person dances", "--validation_control_videos",
            str(data / control), "--validation_num_inference_steps", "1", "--validation_frames", "5"]


def test_ranks_wait_for_a_validation_longer_than_the_collective_timeout(
    tiny_model: Path, sample_data: Path, tmp_path: Path
) -> None:
    script = tmp_path / "slow_validation.py"
    script.write_text(SLOW_VALIDATION)

    def run(out: Path, *extra: str):
        return launch(train_args(tiny_model, sample_data, out, "--train_batch_size", "1", "--max_train_steps", "3",
                                 "--checkpointing_steps", "3", "--nccl_timeout", "5", *validation_flags(sample_data),
                                 *extra),
                      launcher=DDP, script=[str(script), "train"], timeout=240)

    finished = run(tmp_path / "waits")
    assert finished.returncode == 0, finished.output[-3000:]
    assert (tmp_path / "waits" / "validation" / "step-2" / "sample-0.mp4").is_file()
    assert (tmp_path / "waits" / "checkpoint-3").is_dir()
    # and the wait is bounded: a validation timeout shorter than the validation stops the run
    bounded = run(tmp_path / "bounded", "--validation_timeout", "3")
    assert bounded.returncode != 0 and "--validation_timeout (3 s)" in bounded.output
