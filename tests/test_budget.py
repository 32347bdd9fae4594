"""A wall-clock budget (make sweep TIME_LIMIT=..., trainer.time_limit) and checkpoints read as data only."""
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments import train as train_mod
from experiments.run import trainer as trainer_mod
from experiments.run.checks import ConfigError
from experiments.run.stopping import BUDGET_EXIT, DEADLINE_ENV, Interrupted, parse_duration, run_deadline
from experiments.sweep import launch as sweep_launch
from tests.helpers import REPO, TINY, cli, metrics, run_folder, summary, tiny_cfg


@pytest.mark.parametrize("text,seconds", [("2h30m", 9000), ("90m", 5400), ("45s", 45), ("5400", 5400),
                                          ("1.5h", 5400), ("1d2h", 93600), ("0", 0)])
def test_a_budget_reads_as_hours_minutes_and_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5m", "2h30", "1e3", "inf", ""])
def test_a_budget_that_is_no_duration_is_refused(text):
    with pytest.raises(ValueError, match="is not a duration; write it as 2h30m"):
        parse_duration(text)


def test_a_spent_budget_checkpoints_stops_mid_run_and_the_rerun_resumes_exactly(tmp_path, tiny_root, monkeypatch):
    """The loop asks the budget after every step: spent at iteration 17 (between checkpoints), the run
    checkpoints there, stops with the budget's exit status, and the rerun ends as an uninterrupted run."""
    steps = []
    monkeypatch.setattr(trainer_mod, "budget_spent", lambda deadline: steps.append(None) or len(steps) >= 17)
    with pytest.raises(Interrupted) as stopped:
        train_mod.run(tiny_cfg(tmp_path))
    folder = run_folder(tmp_path)
    assert stopped.value.exit_status == BUDGET_EXIT and stopped.value.iteration == 17
    assert "stopped by the time budget at iteration 17" in str(stopped.value)
    assert not (folder / "summary.json").exists()
    assert torch.load(folder / "last.pt", weights_only=True)["iteration"] == 17
    monkeypatch.undo()
    train_mod.run(tiny_cfg(tmp_path))
    assert metrics(folder) == metrics(tiny_root)
    strip = lambda s: {k: v for k, v in s.items() if k not in ("wall_time_s", "images_per_s")}  # noqa: E731
    assert strip(summary(folder)) == strip(summary(tiny_root))


def sweep(results: Path, *args: str, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "experiments.sweep", "--exp", "smoke", "--results", str(results),
                           *args], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=timeout)


def test_a_sweep_stops_when_its_budget_is_spent_names_what_is_left_and_a_spent_budget_starts_nothing(tmp_path):
    """Runs far longer than the budget, on a real clock: the sweep stops with the budget's status and its
    closing lines add up, whether the first run got to train (a busy machine may take the whole budget to
    start it); the mid-run stop itself is pinned above, to the iteration."""
    long = ("schedule.iterations=100000", "trainer.ckpt_every=100000")
    out = sweep(tmp_path, "--time-limit", "15s", *long)
    assert out.returncode == BUDGET_EXIT, out.stderr[-3000:]
    m = re.search(r"stopped by the time budget \(TIME_LIMIT=15s\): 0 of 2 runs finished, (\d) partial, (\d) not "
                  r"started", out.stderr)
    assert m and int(m[1]) + int(m[2]) == 2, out.stderr[-3000:]
    assert "continue with: make sweep EXP=smoke SEEDS=1 RESULTS=" in out.stderr and "TIME_LIMIT=15s" in out.stderr
    runs = tmp_path / "smoke" / "runs"
    partial = [p for p in runs.glob("*/seed=0") if (p / "last.pt").exists()]
    assert len(partial) == int(m[1]) and not any((p / "summary.json").exists() for p in partial)
    assert out.stderr.count("at iteration") == int(m[1]) * 2  # the run's own line and the sweep's list
    before = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file() and p.name != ".lock"}
    again = sweep(tmp_path, "--time-limit", "0", *long)
    assert again.returncode == BUDGET_EXIT and "spent before any run started: nothing trained" in again.stderr
    assert {p: p.read_bytes() for p in runs.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_the_sweeps_deadline_reaches_its_runs_and_the_sooner_limit_wins(monkeypatch):
    monkeypatch.setenv(DEADLINE_ENV, "1000.0")
    assert run_deadline(None, 0.0) == 1000.0 and run_deadline("10m", 0.0) == 600.0
    assert run_deadline("1h", 900.0) == 1000.0
    monkeypatch.delenv(DEADLINE_ENV)
    assert run_deadline(None, 5.0) is None and run_deadline("45s", 5.0) == 50.0


@pytest.mark.parametrize("value", ["soon", "-5m"])
def test_a_bad_time_limit_is_one_line_and_exit_2_for_a_sweep_and_a_run(value, tmp_path, capsys):
    assert sweep_launch.main(["--exp", "smoke", "--results", str(tmp_path), f"--time-limit={value}"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and f"TIME_LIMIT {value!r} is not a duration; write it as 2h30m" in err
    with pytest.raises(ConfigError, match=rf"time limit {re.escape(repr(value))} is not a duration.*trainer.time_limit=2h30m"):
        train_mod.run(tiny_cfg(tmp_path, f"trainer.time_limit={value}"))
    assert not any(tmp_path.iterdir())


# -- checkpoints are data, never code ------------------------------------------------------------------
class RunsCode:
    """Unpickling this calls Path.touch(marker): what a hostile checkpoint could do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def hostile_checkpoint(folder: Path, marker: Path) -> None:
    state = torch.load(folder / "last.pt", weights_only=True)
    state["payload"] = RunsCode(marker)
    torch.save(state, folder / "last.pt")
    with pytest.raises(pickle.UnpicklingError):  # proof that the file holds more than data
        torch.load(folder / "last.pt", weights_only=True)


def test_resuming_from_a_checkpoint_that_would_run_code_refuses_it_and_changes_nothing(tmp_path, tiny_root):
    root = tmp_path / "res"
    folder = run_folder(root)
    shutil.copytree(tiny_root, folder)
    (folder / "summary.json").unlink()  # a run in progress: the next command resumes from last.pt
    (folder / "weights.safetensors").unlink()
    marker = tmp_path / "code-ran"
    hostile_checkpoint(folder, marker)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"}
    out = cli(*TINY, f"results_dir={root}")
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {folder / 'last.pt'} holds more than data") and "delete it to retrain" in last
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_a_completed_runs_checkpoint_is_never_unpickled(tmp_path, tiny_root):
    root = tmp_path / "res"
    folder = run_folder(root)
    shutil.copytree(tiny_root, folder)
    (folder / "weights.safetensors").unlink()  # tempts the suite to read its weights from last.pt
    marker = tmp_path / "code-ran"
    hostile_checkpoint(folder, marker)
    done = train_mod.run(tiny_cfg(root))
    assert done["status"] == "completed" and not marker.exists()
    assert not (folder / "weights.safetensors").exists()
