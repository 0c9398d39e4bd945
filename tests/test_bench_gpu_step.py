"""`benchmarks/bench_gpu_step.py` runs in its CPU mode (tiny shapes): `make gpu-check` on a machine
without CUDA, and the proof that the script a GPU machine runs works."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu_step.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_flop_count_of_the_14b_shape_matches_the_formula_by_hand() -> None:
    bench = load_bench()
    config = {**bench.RELEASED, **bench.SHAPES["14B-shape"]}
    n, d, f, t, i = 32_760, 5120, 13_824, 512, 257
    block = 12 * n * d * d + 4 * n * n * d + 4 * (t + i) * d * d + 4 * n * (t + i) * d + 4 * n * d * f
    assert bench.Sample(81, 480, 832).tokens == n
    assert bench.forward_flops(config, n) == pytest.approx(40 * block, rel=2e-3)  # embeddings are < 0.2%
    per_block, _ = bench.parameter_counts(config)
    assert per_block == pytest.approx((10 * d * d + 2 * d * f), rel=1e-2)  # 404M: 40 blocks = the 16.4B release


def test_cpu_mode_prints_the_table_and_the_final_line(capsys: pytest.CaptureFixture[str]) -> None:
    load_bench().main(["--device", "cpu", "--steps", "1"])
    out = capsys.readouterr().out
    assert "tiny" in out and "s/step" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("MFU n/a (tiny, cpu); engine ratio ") and float(last.rsplit(" ", 1)[1]) > 0
