# Two commands set up everything on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test gpu-check lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	# torch first, from the pin: anything installed later finds it satisfied (no CUDA wheels).
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -c constraints.txt torch

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidctrl demo

# Two worker processes (the suite's budget is 10 minutes on 2 cores). worksteal hands each worker a
# contiguous half of the tests, so module fixtures are mostly built once, then balances by stealing.
# Every test runs: only CUDA-gated tests may skip, and -ra (pyproject addopts) prints each skip's reason.
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# One command on a CUDA machine (after the README's GPU set-up): the GPU tests, then the step benchmark
# (MFU at the Wan2.1 1.3B and 14B shapes, engine ratio). Without CUDA the GPU tests are reported as
# skipped, not passed, and the benchmark runs at the tiny size on the CPU.
gpu-check: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu -rs tests/gpu
	$(BIN)/python benchmarks/bench_gpu_step.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/pip install -c constraints.txt -e ".[dev,bench]"
	$(BIN)/python benchmarks/bench_clip_loading.py
	$(BIN)/python benchmarks/bench_manifest_scale.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
