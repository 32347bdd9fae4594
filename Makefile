# The degradation suite. `make help` lists the targets.
SHELL := /bin/bash
## PY         the Python to run: .venv/bin/python, built by `make setup` (default), or your own with the suite installed
PY := .venv/bin/python
# Only `make ... PY=...` sets it (a command line overrides :=); a PY in the environment, set for something else, does not.
# .venv is built for the default PY only; another Python (a cluster's or conda environment) is checked, never changed:
# -P keeps this folder off sys.path, so the check sees what is installed, not the source tree's egg-info.
READY := $(if $(filter .venv/bin/python,$(PY)),.venv/.installed,py-ready)
PY_READY := import importlib.metadata as m, re; d = m.distribution('degradation-suite'); \
	[m.version(re.match(r'[\w.-]+', r)[0]) for r in d.requires or [] if 'extra ==' not in r]
## EXP        experiment, a file in conf/experiment/ (quick, degradation, shortcuts, smoke, ...) (default quick)
EXP ?= quick
## SEEDS      seeds 0..SEEDS-1 of every run (a seed= in ARGS replaces them) (default 1)
SEEDS ?= 1
## DATA       data source: cifar10 (default, downloads), cifar10_folder (needs DATA_ROOT), fake
DATA ?=
## DATA_ROOT  an image-folder copy of CIFAR-10 or a .tar.gz of one, for DATA=cifar10_folder
DATA_ROOT ?=
## RESULTS    results folder; runs go to RESULTS/EXP/runs/, report and plots read RESULTS/EXP (default results)
RESULTS ?= results
## LAUNCHER   basic (one run at a time), joblib (JOBS in parallel), slurm (a job per run), local (default basic)
LAUNCHER ?= basic
## JOBS       parallel runs with LAUNCHER=joblib (default 1)
JOBS ?= 1
## DRY        DRY=1: print the plan (runs, status, time estimate) and train nothing
DRY ?=
## ARGS       any Hydra overrides for every run, comma lists sweep: ARGS='model.depth=20,32 seed=3'
ARGS ?=
# Paths reach the recipes through the environment, quoted there ("$$RESULTS"): a space, a comma, a
# quote or a non-ASCII letter in a path is then part of the path, never shell or make syntax.
export RESULTS DATA_ROOT

.DEFAULT_GOAL := help
.PHONY: help setup py-ready test test-all sweep plots report bench gpu-check data clean

help:  ## list the targets and variables
	@echo "targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "variables (make sweep EXP=degradation SEEDS=3 ...):"
	@grep -E '^## [A-Z_]+ ' $(MAKEFILE_LIST) | sed 's/^## /  /'

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

setup: .venv/.installed  ## create .venv and install the suite with its test extras (fast when done)

py-ready:
	@$(PY) -P -c "$(PY_READY)" 2>/dev/null || { echo "error: PY=$(PY) lacks the suite or a package it needs;" \
		"install them with '$(PY) -m pip install -e .[test]', or leave PY unset to use .venv (make setup)" >&2; exit 2; }

# The tests spend most of their time in one thread each (tiny nets, subprocesses that start torch): a worker
# per core halves the wall time on 2 cores; at most 4, since each worker imports its own torch.
PYTEST_WORKERS := -n auto --maxprocesses=4

test: $(READY)  ## the fast test suite (what CI runs)
	$(PY) -m pytest -q $(PYTEST_WORKERS)

test-all: $(READY)  ## every test, the slow ones included
	$(PY) -m pytest -q -m '' $(PYTEST_WORKERS)

sweep: $(READY)  ## train an experiment: make sweep [EXP=quick] [SEEDS=n] [DATA=... DATA_ROOT=...] [RESULTS=...] [LAUNCHER=...] [JOBS=n] [DRY=1] [ARGS=...]
	$(PY) -m experiments.sweep --exp $(EXP) --seeds $(SEEDS) --launcher $(LAUNCHER) --jobs $(JOBS) \
		--results "$$RESULTS" $(if $(DATA),--data $(DATA)) $(if $(DATA_ROOT),--data-root "$$DATA_ROOT") $(if $(DRY),--dry-run) $(ARGS)

plots: $(READY)  ## write the figures of an experiment: make plots [EXP=quick]
	$(PY) -m analysis.report --results "$$RESULTS/$(EXP)" --figures-only

report: $(READY)  ## write figures, tables and report.html/report.md: make report [EXP=quick]
	$(PY) -m analysis.report --results "$$RESULTS/$(EXP)"

bench: $(READY)  ## throughput of the suite vs a conventional PyTorch pipeline on this device
	$(PY) -m experiments.bench

gpu-check: $(READY)  ## on a GPU: resume, sync audit, profile, bench options, sharing -> results/bench/gpu-check-<card>.json (< 8 min)
	$(PY) -m experiments.gpu_check

data: $(READY)  ## show what the configured data source holds: make data [DATA=cifar10_folder DATA_ROOT=...]
	$(PY) -m experiments.data $(if $(DATA),data=$(DATA)) $(if $(DATA_ROOT),--data-root "$$DATA_ROOT")

clean:  ## remove the virtual environment and caches (never results)
	rm -rf .venv .pytest_cache build *.egg-info
