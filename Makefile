# The two commands of the README: `make run` (the main job) and `make test` (the test suite, without
# the tests marked slow); `make test-all` runs every test (what CI runs: `.ci/run`).
# Both set up everything on a fresh machine that has only Python 3.11, pip, gcc, make and git.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
PROFILE ?= quick
# test processes (pytest-xdist): each test file runs whole in one of them, so a file's module-scoped
# project and pipeline run are shared as before; the pipeline tests spend much of their time in one
# core (process start-up, ZenML, MLflow, DVC), so two of them on two cores finish sooner
JOBS ?= 2

.PHONY: run test test-all install lock bench clean-state

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	# --compile-bytecode: every `liverlesion` process (a cron retrain, each test's subprocess) then
	# starts from bytecode instead of compiling MLflow, ZenML and TensorFlow again (~6 s each)
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

install: $(BIN)/.installed

## the main job: the whole DAG on the embedded default cohort (quick profile)
run: install
	$(BIN)/liverlesion run --profile $(PROFILE)

## the test suite (unit + integration through the real pipeline in an isolated state), without the slow tier
test: install
	$(BIN)/python -m pytest -q -m "not slow" -n $(JOBS) --dist loadfile

## every test, the slow tier too (Table 2's five models, the default job's thresholds, operations, resume, real data)
test-all: install
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile --durations=25

## figures: wall time by step, patch extraction, CPU inference
bench: install
	$(BIN)/python bench/pipeline_steps.py
	$(BIN)/python bench/data_steps.py
	$(BIN)/python bench/inference_cpu.py

## re-resolve the pinned dependencies (after editing pyproject.toml)
## requirements.lock: this machine (CPU); infra/kubeflow/requirements-gpu.lock: the step image (JAX on CUDA)
lock:
	$(BIN)/uv pip compile pyproject.toml $(foreach e,tensorflow jax ops server kubeflow test,--extra $(e)) \
		--python-version 3.11 --quiet -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml $(foreach e,jax-cuda ops kubeflow,--extra $(e)) \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet -o infra/kubeflow/requirements-gpu.lock

## forget every run, model and cached artifact (keeps data/ and the DVC cache)
clean-state:
	rm -rf .liverlesion
