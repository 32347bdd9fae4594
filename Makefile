# The degradation suite. `make help` lists the targets.
SHELL := /bin/bash
PY := .venv/bin/python
EXP ?= quick
SEEDS ?= 1
DATA ?=
DATA_ROOT ?=
LAUNCHER ?= basic
JOBS ?= 1
RESULTS ?= results
DRY ?=
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-all sweep plots report bench gpu-check data clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

setup: .venv/.installed  ## create .venv and install the suite with its test extras (fast when done)

test: setup  ## the fast test suite (what CI runs)
	$(PY) -m pytest -q

test-all: setup  ## every test, the slow ones included
	$(PY) -m pytest -q -m ''

sweep: setup  ## train an experiment: make sweep [EXP=quick] [SEEDS=n] [DATA_ROOT=...] [LAUNCHER=basic|joblib|slurm|local] [JOBS=n] [DRY=1] [ARGS='hydra overrides']
	$(PY) -m experiments.sweep --exp $(EXP) --seeds $(SEEDS) --launcher $(LAUNCHER) --jobs $(JOBS) \
		--results $(RESULTS) $(if $(DATA),--data $(DATA)) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(if $(DRY),--dry-run) $(ARGS)

plots: setup  ## write the figures of an experiment: make plots [EXP=quick]
	$(PY) -m analysis.report --results $(RESULTS)/$(EXP) --figures-only

report: setup  ## write figures, tables and report.html/report.md: make report [EXP=quick]
	$(PY) -m analysis.report --results $(RESULTS)/$(EXP)

bench: setup  ## throughput of the suite vs a conventional PyTorch pipeline on this device
	$(PY) -m experiments.bench

gpu-check: setup  ## on a GPU: resume, sync audit, profile, bench options, sharing -> results/bench/gpu-check-<card>.json (< 8 min)
	$(PY) -m experiments.gpu_check

data: setup  ## show what the configured data source holds: make data [DATA=cifar10_folder DATA_ROOT=...]
	$(PY) -m experiments.data $(if $(DATA),data=$(DATA)) $(if $(DATA_ROOT),data.root=$(DATA_ROOT))

clean:  ## remove the virtual environment and caches (never results)
	rm -rf .venv .pytest_cache build *.egg-info
