# `make test` sets up .venv (torch 2.13.0 CPU first, so nothing pulls the CUDA build) and runs the test suite;
# `make demo` sets it up the same way and runs the main job (`hf-encoders demo`; DEMO_ARGS passes options to it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test demo lint bench clean

DEMO_ARGS ?=

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/hf-encoders demo $(DEMO_ARGS)

lint: setup
	$(PY) -m ruff check hf_encoders tests benchmarks training
	$(PY) -m ruff format --check hf_encoders tests benchmarks training

bench: setup
	$(PY) benchmarks/bench_encoder_cpu.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
