# `make test` sets up .venv from the lock and runs the test suite; `make demo` sets it up the same way and runs the
# main job (`hf-encoders demo`; DEMO_ARGS passes options to it). torch goes in first, as the CPU build, so that
# nothing pulls the CUDA one. `make matrix` runs the version matrix (.ci/matrix); `make lock` refreshes the lock.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
LOCK := constraints.txt

.PHONY: setup test demo matrix lock lint bench clean

DEMO_ARGS ?=

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c $(LOCK) "$(TORCH_SPEC)"
	$(PY) -m pip install -c $(LOCK) -e ".[dev]"
	$(PY) tests/transformers_sdist.py  # transformers' common model tests, from the sdist of the locked release
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/hf-encoders demo $(DEMO_ARGS)

matrix: setup
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" bash .ci/matrix

# The newest releases in a fresh .venv-lock; constraints.txt is rewritten only if the whole suite passes there.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install "$(TORCH_SPEC)"
	.venv-lock/bin/pip install -e ".[dev]"
	.venv-lock/bin/python tests/transformers_sdist.py
	.venv-lock/bin/python -m pytest -q
	{ echo "# The lock: what the test suite passed with (make lock wrote it; torch comes from TORCH_SPEC)."; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -v '^torch=='; } > $(LOCK)

lint: setup
	$(PY) -m ruff check hf_encoders tests benchmarks training .ci
	$(PY) -m ruff format --check hf_encoders tests benchmarks training .ci

bench: setup
	$(PY) benchmarks/bench_encoder_cpu.py

clean:
	rm -rf $(VENV) .venv-floor .venv-newest .venv-lock .cache .pytest_cache build *.egg-info
