# `make demo` and `make test` work on a fresh machine: they create the virtualenv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint types pytest services clean chaos bench

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m compileall -q alerts  # as the image does: processes read bytecode, not compile
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/alerts demo

services:
	./scripts/ensure-services.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) services
	$(BIN)/pytest -q

test: lint types pytest

# The full chaos scenarios (minutes; postgres_restart restarts the machine's PostgreSQL cluster), see chaos/README.md.
chaos: $(STAMP) services
	$(BIN)/python -m chaos

# The performance benchmarks (benchmarks/README.md): minutes; they use this machine's PostgreSQL and Redis.
bench: $(STAMP) services
	./scripts/ensure-package.sh wrk wrk
	$(BIN)/python -m benchmarks.fanout --n 100000 --naive --naive-n 1000
	$(BIN)/python -m benchmarks.digest --n 100000 --identical --fanout
	$(BIN)/python -m benchmarks.digest --n 100000
	$(BIN)/python -m benchmarks.web --duration 30 --clients 100
	$(BIN)/python -m benchmarks.watch --records 10000 --subscribers 1000 --kill
	$(BIN)/python -m benchmarks.web --scenario scanner --duration 30 --clients 100

clean:
	rm -rf var test-artifacts .pytest_cache .mypy_cache .ruff_cache
