# The two commands of the README: `make run` (the main job) and `make test` (lint, then the tests without the
# slow tier); `make test-all` runs every test (what CI runs: `.ci/run`).
# Both set up everything on a fresh machine that has only Python 3.11, pip, gcc, make and git.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
PROFILE ?= quick
# test processes (pytest-xdist): each test file runs whole in one of them, so a file's module-scoped
# project and pipeline run are shared as before; the pipeline tests spend much of their time in one
# core (process start-up, ZenML, MLflow, DVC), so two of them on two cores finish sooner. The files are
# handed out longest first, in the order tests/conftest.py gives (--no-loadscope-reorder keeps it)
JOBS ?= 2
# --compile-bytecode: every `liverlesion` process (a cron retrain, each test's subprocess) then starts from
# bytecode instead of compiling MLflow, ZenML and TensorFlow again (~6 s each)
UV_INSTALL := $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python

.PHONY: run test test-all lint format install install-dev lock docs bench clean-state

$(BIN)/uv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# the main job's dependencies only (requirements.lock); added to what is there, never removing the test tools
$(BIN)/.installed: requirements.lock pyproject.toml | $(BIN)/uv
	$(UV_INSTALL) -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

# the tests', the team server's and the cluster's too (requirements-dev.lock, a superset at the same versions),
# and the tests' real CT (requirements-fixtures.lock: a data package, without the dependencies it declares)
$(BIN)/.installed-dev: requirements-dev.lock requirements-fixtures.lock pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements-dev.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --require-hashes -r requirements-fixtures.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@ $(BIN)/.installed

install: $(BIN)/.installed
install-dev: $(BIN)/.installed-dev

## the main job: the whole DAG on the embedded default cohort (quick profile)
run: install
	$(BIN)/liverlesion run --profile $(PROFILE)

## lint and format check (ruff), then the test suite without the slow tier
test: lint
	$(BIN)/python -m pytest -q -m "not slow" -n $(JOBS) --dist loadfile --no-loadscope-reorder

## lint, then every test, the slow tier too (what CI runs)
test-all: lint
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile --no-loadscope-reorder --durations=25

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## rewrite the code as the formatter wants it, and fix what the linter can
format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## docs/cli.md, generated from the commands' own help (a test checks it is current)
docs: install
	$(BIN)/python -m liverlesion_ops.cli.reference > docs/cli.md

## figures: wall time by step, patch extraction, CPU inference
bench: install
	$(BIN)/python bench/pipeline_steps.py
	$(BIN)/python bench/data_steps.py
	$(BIN)/python bench/inference_cpu.py

## re-resolve the pinned dependencies (after editing pyproject.toml): the dev lock first, then the main job's
## lock constrained to it (the same versions), then the step image's (JAX on CUDA)
lock: | $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml $(foreach e,tensorflow jax ops server kubeflow test,--extra $(e)) \
		--python-version 3.11 --quiet -o requirements-dev.lock
	$(BIN)/uv pip compile pyproject.toml --extra tensorflow --extra ops -c requirements-dev.lock \
		--python-version 3.11 --quiet -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml $(foreach e,jax-cuda ops kubeflow,--extra $(e)) \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet -o infra/kubeflow/requirements-gpu.lock

## forget every run, model and cached artifact (keeps data/ and the DVC cache)
clean-state:
	rm -rf .liverlesion
