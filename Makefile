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
## TIME_LIMIT wall-clock budget of a sweep, e.g. 2h30m: the run in progress checkpoints and stops, exit status 75
TIME_LIMIT ?=
## ARGS       any Hydra overrides for every run, comma lists sweep: ARGS='model.depth=20,32 seed=3'
ARGS ?=
# Paths reach the recipes through the environment, quoted there ("$$RESULTS"): a space, a comma, a
# quote or a non-ASCII letter in a path is then part of the path, never shell or make syntax.
export RESULTS DATA_ROOT TIME_LIMIT

.DEFAULT_GOAL := help
.PHONY: help setup py-ready test test-all sweep plots report bench gpu-check data clean

help:  ## list the targets and variables
	@echo "targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "variables (make sweep EXP=degradation SEEDS=3 ...):"
	@grep -E '^## [A-Z_]+ ' $(MAKEFILE_LIST) | sed 's/^## /  /'

# dev-constraints.txt pins the torch this project's machines hold on disk: .venv takes it from there, never a
# download; the package's metadata keeps lower bounds only (a user's own torch stays as it is).
.venv/.installed: pyproject.toml dev-constraints.txt
	python3 -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check -c dev-constraints.txt -e '.[test]'
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

# `make test` in a fresh environment per Python in COMPAT_PYTHONS, built under COMPAT_ENVS (beside the checkout) with
# the lowest torch and torchvision that pyproject.toml admits (read from it): what the metadata promises, tested.
# Each environment's own pip installs them, several GB from the registry the first time: never CI (offline, fast).
# Either list may be set on the command line: COMPAT_PYTHONS='python3.11 /path/to/python3.12'.
# PYTEST_WORKERS='-n 0' runs each suite in one process, beside other work.
COMPAT_ENVS := ../envs
COMPAT_PYTHONS := python3.11 python3.12
# Through a variable, not $$(MAKE) itself: `make -n test-compat` then prints the plan and installs nothing.
COMPAT_TEST = $(MAKE) --no-print-directory test
COMPAT_PINS := import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
	print(' '.join(d.replace('>=', '==') for d in deps if re.fullmatch(r'torch(vision)?>=[0-9.]+', d)))
.PHONY: test-compat
test-compat:  ## the tests at the lowest torch/torchvision kept, per Python in COMPAT_PYTHONS (downloads GBs; not CI)
	@pins="$$($(firstword $(COMPAT_PYTHONS)) -c "$(COMPAT_PINS)")"; tag="$${pins%% *}"; failed=; \
	[[ "$$pins" == torch==*" "torchvision==* ]] || { echo "error: no torch>=X / torchvision>=Y in pyproject.toml" >&2; exit 2; }; \
	for py in $(COMPAT_PYTHONS); do \
		env="$(COMPAT_ENVS)/$$($$py -c 'import sys; print("py%d.%d" % sys.version_info[:2])')-$${tag/==/}" || exit 2; \
		echo "== $$env: $$pins"; \
		{ [ -x "$$env/bin/python" ] || $$py -m venv "$$env"; } \
		&& "$$env/bin/python" -m pip install -q --disable-pip-version-check $$pins -e '.[test]' \
		&& "$$env/bin/python" -P -c 'import sys, torch as t, torchvision as v; print(sys.version, t.__version__, v.__version__)' \
		&& $(COMPAT_TEST) PY="$$env/bin/python" || failed="$$failed $$env"; \
	done; \
	[ -z "$$failed" ] || { echo "error: make test failed in:$$failed" >&2; exit 1; }

sweep: $(READY)  ## train an experiment: make sweep [EXP=quick] [SEEDS=n] [DATA=... DATA_ROOT=...] [RESULTS=...] [LAUNCHER=...] [JOBS=n] [DRY=1] [ARGS=...]
	$(PY) -m experiments.sweep --exp $(EXP) --seeds $(SEEDS) --launcher $(LAUNCHER) --jobs $(JOBS) \
		--results "$$RESULTS" $(if $(DATA),--data $(DATA)) $(if $(DATA_ROOT),--data-root "$$DATA_ROOT") $(if $(DRY),--dry-run) $(if $(TIME_LIMIT),--time-limit="$$TIME_LIMIT") $(ARGS)

plots: $(READY)  ## write the figures of an experiment: make plots [EXP=quick]
	$(PY) -m analysis.report --results "$$RESULTS/$(EXP)" --figures-only

report: $(READY)  ## write figures, tables and report.html/report.md: make report [EXP=quick]
	$(PY) -m analysis.report --results "$$RESULTS/$(EXP)"

# Here ARGS are the tools' options (python -m experiments.analyse_nets --help), e.g. on a GPU ARGS='--grid 51 --points 51 --subset 10000'.
.PHONY: analyse-nets
analyse-nets: $(READY)  ## lesion study + loss landscape of an experiment's trained nets (skips what is done): make analyse-nets EXP=... [ARGS=...]
	$(PY) -m experiments.analyse_nets --results "$$RESULTS/$(EXP)" $(ARGS)

bench: $(READY)  ## throughput of the suite vs a conventional PyTorch pipeline on this device
	$(PY) -m experiments.bench

gpu-check: $(READY)  ## on a GPU: resume, sync audit, profile, bench options, sharing -> results/bench/gpu-check-<card>.json (< 8 min)
	$(PY) -m experiments.gpu_check

data: $(READY)  ## show what the configured data source holds: make data [DATA=cifar10_folder DATA_ROOT=...]
	$(PY) -m experiments.data $(if $(DATA),data=$(DATA)) $(if $(DATA_ROOT),--data-root "$$DATA_ROOT")

clean:  ## remove the virtual environment and caches (never results)
	rm -rf .venv .pytest_cache build *.egg-info
