# Two commands on a fresh machine: `make serve` and `make test`.
# Each creates the virtual environment in .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/serverlord serve

test: $(STAMP)
	$(BIN)/ruff check serverlord tests perf
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check serverlord tests perf
	$(BIN)/ruff format --check serverlord tests perf

typecheck: $(STAMP)
	$(BIN)/mypy

# The standard benchmark set; rewrites its table in docs/benchmarks.md. BENCH_ARGS=--quick
# runs smaller, shorter versions. The HTTP ceilings need wrk and nginx (Debian packages).
bench: $(STAMP)
	$(BIN)/python perf/bench_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
