# Two commands on a fresh machine: `make serve` and `make test`.
# Each creates the virtual environment in .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test test-tools lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/serverlord serve

# The dashboard test queries a real Prometheus. As root with apt-get, a missing one is
# installed from Debian's packages; elsewhere that test is skipped and says why.
test-tools:
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { apt-get install -y -qq prometheus >/dev/null 2>&1 \
			|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq prometheus >/dev/null 2>&1; }; }; } \
		|| echo "prometheus is not installed and could not be: the dashboard test will be skipped"

test: $(STAMP) test-tools
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
