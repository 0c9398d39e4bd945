"""A seed-layout dataset is probed by rank 0 only; the other ranks receive its findings (2 processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mp_helpers import free_port

RANK_SCRIPT = r'''
import json, sys
import torch.distributed as dist
import vidctrl.data.check as check
from vidctrl.data.config import DataConfig
from vidctrl.data.loader import load_manifest

opened = []
real_probe = check.probe
check.probe = lambda path, **kw: opened.append(str(path)) or real_probe(path, **kw)
dist.init_process_group("gloo")
root = sys.argv[1]
results = {}
for policy in ("lenient", "strict"):
    config = DataConfig(train_data_meta=f"{root}/metadata.json", train_data_dir=root, video_sample_n_frames=5,
                        video_sample_stride=1, bad_sample_policy=policy)
    try:
        loaded = load_manifest(config, workers=1)
        result = {"records": [r.to_dict() for r in loaded.manifest], "excluded": [p.sample for p in loaded.excluded]}
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    results[policy] = {"rank": dist.get_rank(), "opened": list(opened), **result}
    opened.clear()
print("RESULT " + json.dumps(results))
dist.destroy_process_group()
'''


def run_two_ranks(script: Path, data: Path) -> list[dict]:
    port = str(free_port())
    processes = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
               "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen([sys.executable, str(script), str(data)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output[-3000:]
        line = next(line for line in output.splitlines() if line.startswith("RESULT "))
        results.append(json.loads(line.removeprefix("RESULT ")))
    return results


@pytest.mark.slow
def test_rank_0_probes_the_dataset_once_and_every_rank_gets_the_same_records(
    sample_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.symlink_to(sample_data)
    entries = json.loads((sample_data / "metadata.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("videos", "poses"):
        (broken / name).symlink_to(sample_data / name)
    # sample 1 declared an image: rank 0 finds it, and both ranks leave it out (lenient) or stop (strict)
    entries[1] = {**entries[1], "type": "image"}
    (broken / "metadata.json").write_text(json.dumps(entries))
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)

    ranks = run_two_ranks(script, broken)
    zero, one = (r["lenient"] for r in ranks)
    assert (zero["rank"], one["rank"]) == (0, 1)
    files = {str(broken / e["file_path"]) for e in entries} | {str(broken / e["control_file_path"]) for e in entries}
    assert sorted(zero["opened"]) == sorted(files)  # each file once, on rank 0 only
    assert one["opened"] == []
    assert zero["excluded"] == one["excluded"] == [1]
    assert zero["records"] == one["records"] and len(zero["records"]) == len(entries) - 1
    assert all(r["frames"] and r["width"] for r in one["records"])

    zero, one = (r["strict"] for r in ranks)
    assert one["opened"] == []
    assert "declared as image" in zero["error"] and zero["error"] == one["error"]
