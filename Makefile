# Two commands for users: `make demo` and `make test`. Both set up .venv first if needed.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
NP ?= 2
PYTEST_ARGS ?=
LOCK_ARGS ?=

.PHONY: setup lock demo test test-serial test-mpi test-slow lint bench clean

setup:
	@bash scripts/setup.sh

# Re-resolve requirements/lock.txt (the exact versions `setup` installs) to the newest versions
# pyproject.toml allows; LOCK_ARGS=--keep keeps the current pins and only follows pyproject.toml.
lock:
	@bash scripts/lock.sh $(LOCK_ARGS)

demo: setup
	$(PY) demos/demo_segregation.py

test: setup
	@NP=$(NP) bash scripts/run_tests.sh $(PYTEST_ARGS)

test-serial: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-mpi: setup
	$(MPIEXEC) -n $(NP) $(PY) -m pytest -q $(PYTEST_ARGS)

# Long convergence studies, excluded from `make test`.
test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/bench_local.py --quick

clean:
	rm -rf output .pytest_cache
