"""Bad input catalogue: every mistake a user can make on the command line ends with one clear line
naming the problem and the fix, a non-zero exit, and nothing written (no results, no data cache).

One table, one test: add a row to extend it. A row is (id, command, expected substring of the error).
The command is what a user types, minus the test-only settings the runner appends: train rows get
the tiny CPU config, and every tool gets a results folder (and data cache) inside the test's tmp dir.
Placeholders: {results} the results folder, {file} a regular file (not an archive either),
{wrong_classes} / {big_image} / {empty_test_class} damaged image-folder trees, {future} an experiment
folder holding a newer metrics format. A `make` row must also end in make's "Error 2": the tool's own
exit status for a user error.
Rows in SUBPROCESS (and every `make` row) run as the user runs them, checking exit status and the
stderr format; the others run in-process (same code path below Hydra's command-line parsing).
"""
from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from analysis import report as report_mod
from experiments import train as train_mod
from experiments.data import DataError
from experiments.run.checks import ConfigError
from experiments.sweep import launch as sweep_launch
from tests.helpers import REPO, TINY, cli, make, png_tree

CASES = [
    # -- model
    ("depth-21", "train model.depth=21", "depth 21 is not 6n+2"),
    ("depth-0", "train model.depth=0", "depth 0 is not 6n+2"),
    ("depth-not-a-number", "train model.depth=abc", "depth must be an integer"),
    ("shortcut-D", "train model.shortcut=D", "unknown shortcut option 'D'; choose one of A, B, C"),
    ("arch-typo", "train model.arch=resnett", "unknown arch 'resnett'; choose one of"),
    ("model-group-unknown", "train model=foo", "Could not find 'model/foo'"),  # Hydra's own message
    ("key-typo", "train optim.lrr=0.1", "Could not override 'optim.lrr'"),  # Hydra's own message
    # -- recipe
    ("lr-negative", "train optim.lr=-0.1", "optim.lr must be a positive number, got -0.1"),
    ("lr-zero", "train optim.lr=0", "optim.lr must be a positive number, got 0"),
    ("lr-inf", "train optim.lr=inf", "optim.lr must be a positive number, got inf"),
    ("weight-decay-inf", "train optim.weight_decay=inf", "optim.weight_decay must be a finite number >= 0"),
    ("batch-0", "train optim.batch_size=0", "optim.batch_size must be a positive integer, got 0"),
    ("batch-above-data", "train optim.batch_size=1000", "batch size 1000 exceeds the 512 training images"),
    ("momentum-1.5", "train optim.momentum=1.5", "optim.momentum must be in [0, 1)"),
    ("iterations-before-milestone", "train schedule.iterations=100 schedule.milestones=[200,300]",
     "schedule.iterations=100 ends before the first milestone 200"),
    ("milestones-unsorted", "train schedule.milestones=[20,10]", "schedule.milestones must be increasing"),
    ("eval-every-0", "train trainer.eval_every=0", "trainer.eval_every must be a positive integer, got 0"),
    ("precision-unknown", "train trainer.precision=fp8", "trainer.precision must be auto, fast, fp32 or bf16"),
    ("seed-negative", "train seed=-1", "seed must be a non-negative integer, got -1"),
    # -- data
    ("data-source-unknown", "train data.source=imagenet", "unknown data source 'imagenet'; choose one of"),
    ("data-split-unknown", "train data.split=train", "data.split must be 'test' or 'val'"),
    ("data-root-missing", "train data=cifar10_folder data.root={results}/nowhere", "nowhere does not exist"),
    ("data-wrong-class-names", "train data=cifar10_folder data.root={wrong_classes}",
     "class folders must be exactly airplane automobile"),
    ("data-image-not-32x32", "train data=cifar10_folder data.root={big_image}", "is 64x64, expected 32x32"),
    ("data-root-not-an-archive", "train data=cifar10_folder data.root={file}", "as a .tar.gz of an image folder"),
    ("data-empty-test-class", "train data=cifar10_folder data.root={empty_test_class}",
     "class folder test/cat in"),  # the train split decodes fine first: its cache must not stay behind
    # -- results folder
    ("results-is-a-file", "train results_dir={file}", "is a file, not a folder"),
    ("results-below-a-file", "train results_dir={file}/sub", "which is a file, not a folder"),
    # -- sweeps
    ("sweep-exp-missing", "sweep --exp nope", "no experiment 'nope'; choose one of"),
    ("sweep-seeds-0", "sweep --exp smoke --seeds 0", "SEEDS must be at least 1, got 0"),
    ("sweep-jobs-above-cores", "sweep --exp smoke --launcher joblib --jobs 999", "JOBS=999 must be between 1 and"),
    ("sweep-jobs-without-joblib", "sweep --exp smoke --jobs 2", "JOBS=2 needs LAUNCHER=joblib"),
    ("sweep-launcher-unknown", "sweep --exp smoke --launcher pbs", "unknown LAUNCHER 'pbs'"),
    ("sweep-results-is-a-file", "sweep --exp smoke --results {file}", "is a file, not a folder"),
    ("sweep-bad-override", "sweep --exp smoke model.depth=21", "depth 21 is not 6n+2"),
    ("sweep-data-root-missing", "sweep --exp smoke --data cifar10_folder --data-root {results}/nowhere",
     "nowhere does not exist"),
    ("sweep-args-malformed", "sweep --exp smoke optim.lr=[0.1",
     "ARGS override 'optim.lr=[0.1' is not valid Hydra syntax"),
    ("sweep-args-not-an-override", "sweep --exp smoke lr", "ARGS override 'lr' is not valid Hydra syntax"),
    ("sweep-args-unknown-key", "sweep --exp smoke optim.lrr=0.1", "Could not override 'optim.lrr'; to append"),
    ("sweep-args-unknown-option", "sweep --exp smoke model=foo", "Could not find 'model/foo'; choose one of plain"),
    ("sweep-data-unknown", "sweep --exp smoke --data nope", "unknown DATA 'nope'; choose one of"),
    ("make-sweep-exp-missing", "make sweep EXP=nope RESULTS={results}", "no experiment 'nope'"),
    ("make-sweep-args-malformed", "make sweep EXP=smoke RESULTS={results} ARGS='optim.lr=[0.1'",
     "is not valid Hydra syntax"),
    ("make-sweep-args-unknown-key", "make sweep EXP=smoke RESULTS={results} ARGS=optim.lrr=1",
     "Could not override 'optim.lrr'"),
    ("make-sweep-lr-inf", "make sweep EXP=smoke RESULTS={results} ARGS=optim.lr=inf",
     "optim.lr must be a positive number, got inf"),
    ("make-data-root-missing", "make data DATA=cifar10_folder DATA_ROOT={results}/nowhere", "nowhere does not exist"),
    ("make-data-not-an-archive", "make data DATA=cifar10_folder DATA_ROOT={file}", "as a .tar.gz of an image folder"),
    ("make-sweep-seeds-0", "make sweep EXP=smoke SEEDS=0 RESULTS={results}", "SEEDS must be at least 1"),
    ("make-sweep-jobs-above-cores", "make sweep EXP=smoke LAUNCHER=joblib JOBS=999 RESULTS={results}",
     "JOBS=999 must be between 1 and"),
    # -- analysis
    ("report-no-runs", "report --results {results}/quick", "no runs under"),
    ("report-future-format", "report --results {future}", "has format_version 2, newer than this suite reads"),
    ("make-report-no-runs", "make report EXP=nope RESULTS={results}", "no runs under"),
]
SUBPROCESS = {"depth-21", "model-group-unknown", "key-typo", "data-wrong-class-names", "results-below-a-file",
              "sweep-jobs-above-cores", "report-future-format", "data-root-not-an-archive", "sweep-args-malformed"}
HYDRA_OWN = {"model-group-unknown", "key-typo"}  # Hydra's multi-line errors: the first line must be clear


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """The damaged inputs, built once, outside each case's tmp dir (whose contents must not change)."""
    base = tmp_path_factory.mktemp("inputs")
    wrong = png_tree(base / "wrong_classes")
    (wrong / "train" / "cat").rename(wrong / "train" / "kitten")
    big = png_tree(base / "big_image")
    Image.new("RGB", (64, 64)).save(big / "train" / "cat" / "9.png")
    empty_test = png_tree(base / "empty_test_class")
    for image in (empty_test / "test" / "cat").iterdir():
        image.unlink()
    future = base / "future"
    run = future / "runs" / "resnet-8-A" / "seed=0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"format_version": 2, "iter": 10, "test_err": 50.0}) + "\n")
    return {"wrong_classes": wrong, "big_image": big, "empty_test_class": empty_test, "future": future}


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def _train_args(words: list[str], results: Path, cache: Path) -> list[str]:
    extra = [] if any(w.startswith("results_dir=") for w in words) else [f"results_dir={results}"]
    return [*TINY, *words, *extra, f"data.cache_dir={cache}"]


def _run_in_process(tool: str, words: list[str], results: Path, cache: Path) -> tuple[int, str]:
    if tool == "train":
        try:
            train_mod.run(_compose(_train_args(words, results, cache)))
        except (ConfigError, DataError) as e:
            return 2, f"error: {e}\n"
        return 0, ""
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        if tool == "sweep":
            rc = sweep_launch.main(words if "--results" in words else [*words, "--results", str(results)])
        else:
            rc = report_mod.main(words)
    return rc, err.getvalue()


def _compose(overrides: list[str]):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def _run_subprocess(tool: str, words: list[str], results: Path, cache: Path) -> tuple[int, str]:
    if tool == "make":  # with this test run's Python as PY (helpers.make): never .venv's, nor its setup
        # As a user types it, at the top level: under `make test` (CI) the inherited MAKELEVEL would turn
        # make's own status line into 'make[1]: ***'.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
        proc = subprocess.run(make(*words), cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    elif tool == "train":
        proc = cli(*_train_args(words, results, cache), timeout=120)
    else:
        module = {"sweep": "experiments.sweep", "report": "analysis.report"}[tool]
        args = words if tool != "sweep" or "--results" in words else [*words, "--results", str(results)]
        proc = cli(*args, module=module, timeout=120)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("case,command,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_nonzero_and_writes_nothing(case, command, needle, inputs, tmp_path):
    results, cache, afile = tmp_path / "results", tmp_path / "cache", tmp_path / "afile"
    afile.write_text("not a folder\n")
    words = shlex.split(command.format(results=results, file=afile, **inputs))
    tool, words = words[0], words[1:]
    before, inputs_before = _snapshot(tmp_path), {k: _snapshot(v) for k, v in inputs.items()}
    if tool == "make" or case in SUBPROCESS:
        rc, stderr = _run_subprocess(tool, words, results, cache)
    else:
        rc, stderr = _run_in_process(tool, words, results, cache)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc != 0, f"{case}: exit status 0\n{stderr}"
    assert "Traceback" not in stderr, stderr
    if case in HYDRA_OWN:
        assert needle in lines[0], stderr
    elif tool == "make":  # make adds its own 'make: *** ... Error 2' line after the tool's line
        ours = [line for line in lines if not line.startswith("make")]
        assert len(ours) == 1 and ours[0].startswith("error: ") and needle in ours[0], stderr
        assert lines[-1].startswith("make: ***") and lines[-1].endswith("Error 2"), stderr  # the tool's status
    else:
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], stderr
    assert _snapshot(tmp_path) == before, f"{case}: wrote {set(_snapshot(tmp_path)) - set(before)}"
    assert {k: _snapshot(v) for k, v in inputs.items()} == inputs_before


def test_the_catalogue_is_large_and_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 20 and SUBPROCESS | HYDRA_OWN <= set(ids)
