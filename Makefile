# The two commands of the README: `make run` (the main job) and `make test` (lint + the test suite);
# `make gpu-check` on a CUDA machine: the CUDA tests and the GPU benchmark (scripts/gpu_check.sh).
PYTHON ?= python

.PHONY: install run test lint gpu-check

install:
	$(PYTHON) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install --quiet -e ".[dev]"

run: install
	$(PYTHON) -m vil train

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test: install lint
	$(PYTHON) -m pytest -q --durations=15

gpu-check:
	scripts/gpu_check.sh
