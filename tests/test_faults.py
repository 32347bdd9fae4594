"""Fault campaign: nothing lost. SIGKILL anywhere in a sweep, SIGTERM/SIGINT, corrupt or truncated
files, a full or blocked results disk, two sweeps on one folder. After every fault the rerun
completes, no run is trained twice from scratch, and the final metrics equal an uninterrupted run's.

The fast subset (default `pytest`) holds one or two cases of each kind; `-m slow` runs the rest.
Kill points come from experiments/faults.py (SUITE_FAULT=<point>:<n>); in a basic-launcher sweep
both runs share one process, so the n-th checkpoint of the sweep is run 1's for n <= 4.

One file on purpose (~870 lines): every case shares the kill/rerun/compare helpers, and compares with the
uninterrupted references that tests/conftest.py trains once per test process (smoke_root, tiny_root).
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from filelock import FileLock
from hydra import compose, initialize_config_dir

from analysis import report as report_mod
from experiments import train as train_mod
from experiments.contract import read_json
from experiments.run import resume_guard
from experiments.run import trainer as trainer_mod
from experiments.run.checks import ConfigError
from experiments.run.stopping import Interrupted
from experiments.runfiles import WriteError
from experiments.sweep import launch as sweep_launch
from experiments.sweep import plan as sweep_plan
from experiments.sweep import status as sweep_status
from tests.helpers import REPO, TINY, cli, make, metrics, png_tree, run_folder, summary, tiny_cfg

SMOKE_RUNS = ("plain-8-none", "resnet-8-A")
POINTS = (10, 20, 30, 40)  # every tiny-recipe run (smoke sweep or single) evaluates and checkpoints here
# Timing, and the commit (other work may land between the reference and a rerun), are not results.
NOT_RESULTS = ("wall_time_s", "images_per_s", "git_commit")


def final(folder: Path) -> tuple[list[dict], dict]:
    """What a run computed: metrics without timing, summary without timing."""
    return metrics(folder), {k: v for k, v in summary(folder).items() if k not in NOT_RESULTS}


@pytest.fixture(scope="module")
def smoke_ref(smoke_root) -> dict:
    return {name: final(run_folder(smoke_root, name, exp="smoke")) for name in SMOKE_RUNS}


@pytest.fixture
def done_sweep(smoke_root, tmp_path) -> Path:
    """A finished smoke sweep in tmp_path, to damage."""
    shutil.copytree(smoke_root, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture(scope="module")
def tiny_ref(tiny_root) -> tuple:
    return final(tiny_root)


def sweep_cmd(results: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.sweep", "--exp", "smoke", "--results", str(results)]


def run_sweep(results: Path, env: dict | None = None, kill_after: float | None = None):
    """A smoke sweep as `make sweep` runs it; with kill_after, SIGKILL its whole process group then."""
    proc = subprocess.Popen(sweep_cmd(results), cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=kill_after if kill_after is not None else 300)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return proc.returncode, out, err


def finish(proc: subprocess.Popen, head: list[str], timeout: int = 300) -> tuple[str, str]:
    """The rest of a process's output after `head` was read line by line (communicate() would skip
    what the line reader had buffered)."""
    out = "".join(head) + proc.stdout.read()
    err = proc.stderr.read()
    proc.wait(timeout=timeout)
    return out, err


def run_state(results: Path) -> dict:
    """Per run, before a rerun: ('done', last.pt mtime), ('ckpt', its iteration) or ('none', None).
    A checkpoint left by a kill must always load: writes are atomic."""
    state = {}
    for name in SMOKE_RUNS:
        folder = run_folder(results, name, exp="smoke")
        done = read_json(folder / "summary.json")
        if done and done.get("status") == "completed":
            state[name] = ("done", (folder / "last.pt").stat().st_mtime_ns)
        elif (folder / "last.pt").exists():
            state[name] = ("ckpt", torch.load(folder / "last.pt", weights_only=False)["iteration"])
        else:
            state[name] = ("none", None)
    return state


def printed_iters(out: str, name: str) -> list[int]:
    return [int(i) for i in re.findall(rf"^{re.escape(name)}/seed=0 iter (\d+) ", out, re.M)]


def assert_rerun_resumed(results: Path, before: dict, out: str, ref: dict) -> None:
    """Completed runs untouched, partial runs continued from their checkpoint, numbers exact."""
    for name in SMOKE_RUNS:
        folder = run_folder(results, name, exp="smoke")
        kind, value = before[name]
        if kind == "done":
            assert (folder / "last.pt").stat().st_mtime_ns == value, f"{name} was trained again"
            assert printed_iters(out, name) == []
        elif kind == "ckpt":
            assert f"{folder}: resuming from last.pt at iteration {value}" in out, out
            assert printed_iters(out, name) == [i for i in POINTS if i > value], f"{name} retrained"
        else:  # killed before its first checkpoint: a full run is the only way
            assert printed_iters(out, name) == list(POINTS)
        assert final(folder) == ref[name], name
        assert not list(folder.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------ SIGKILL

SLOW = pytest.mark.slow
KILLS = [
    pytest.param("write:last.pt:3", id="mid-checkpoint-write-run1", marks=SLOW),
    pytest.param("write:summary.json:1", id="mid-summary-write-run1", marks=SLOW),
    pytest.param("after:checkpoint:4", id="between-runs", marks=SLOW),
    pytest.param("after:checkpoint:2", id="after-checkpoint-run1", marks=SLOW),
    pytest.param("append:metrics:6", id="mid-metrics-line-run2", marks=SLOW),
    pytest.param("write:last.pt:5", id="first-checkpoint-write-run2", marks=SLOW),
    pytest.param("after:checkpoint:7", id="after-checkpoint-run2", marks=SLOW),
    pytest.param("write:summary.json:2", id="last-summary-write", marks=SLOW),
    pytest.param("write:metrics.jsonl:2", id="metrics-rewrite-run2", marks=SLOW),
    pytest.param("write:config.yaml:2", id="config-write-run2", marks=SLOW),
    pytest.param("write:plan.json:1", id="plan-write-before-launch", marks=SLOW),
]
_RNG = random.Random(2016)
KILL_DELAYS = sorted(round(_RNG.uniform(0.5, 12.0), 2) for _ in range(5))  # seconds; a sweep takes ~12 s


@pytest.mark.parametrize("fault", KILLS)
def test_sigkill_at_a_fault_point_then_the_rerun_resumes_exactly(fault, tmp_path, smoke_ref):
    rc, out, err = run_sweep(tmp_path, env={"SUITE_FAULT": fault})
    assert rc != 0, f"{fault} never fired\n{out}"
    before = run_state(tmp_path)
    rc, out, err = run_sweep(tmp_path)
    assert rc == 0, err
    assert_rerun_resumed(tmp_path, before, out, smoke_ref)


def test_two_kills_in_a_row_then_the_rerun_resumes_exactly(tmp_path, smoke_ref):
    """The fast subset's sweep trials: a kill mid-checkpoint write in run 1, then, in the rerun, a kill
    in the sweep's very last write (run 2's summary), then a clean rerun."""
    rc, out, err = run_sweep(tmp_path, env={"SUITE_FAULT": "write:last.pt:3"})
    assert rc != 0 and run_state(tmp_path) == {"plain-8-none": ("ckpt", 20), "resnet-8-A": ("none", None)}
    rc, out, err = run_sweep(tmp_path, env={"SUITE_FAULT": "write:summary.json:2"})
    plain = run_folder(tmp_path, "plain-8-none", exp="smoke")
    assert rc != 0 and f"{plain}: resuming from last.pt at iteration 20" in out
    assert printed_iters(out, "plain-8-none") == [30, 40] and printed_iters(out, "resnet-8-A") == list(POINTS)
    before = run_state(tmp_path)
    assert before["plain-8-none"][0] == "done" and before["resnet-8-A"] == ("ckpt", 40)
    plan = subprocess.run([*sweep_cmd(tmp_path), "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert re.search(r"completed .*plain-8-none", plan.stdout) and re.search(r"partial .*resnet-8-A", plan.stdout)
    rc, out, err = run_sweep(tmp_path)
    assert rc == 0, err
    assert_rerun_resumed(tmp_path, before, out, smoke_ref)


@SLOW
@pytest.mark.parametrize("delay", KILL_DELAYS)
def test_sigkill_after_a_random_delay_then_the_rerun_resumes_exactly(delay, tmp_path, smoke_ref):
    run_sweep(tmp_path, kill_after=delay)
    before = run_state(tmp_path)
    rc, out, err = run_sweep(tmp_path)
    assert rc == 0, err
    assert_rerun_resumed(tmp_path, before, out, smoke_ref)


# ----------------------------------------------------------------------------------- SIGTERM / SIGINT

def interrupt_during_eval(cfg, monkeypatch, at_eval: int = 2) -> str:
    """Run in-process; SIGTERM arrives while the `at_eval`-th evaluation runs. Returns the message."""
    real, calls = trainer_mod.evaluate, []

    def evaluate_then_signal(*args, **kwargs):
        calls.append(None)
        if len(calls) == at_eval:
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "evaluate", evaluate_then_signal)
        with pytest.raises(Interrupted) as stopped:
            train_mod.run(cfg)
    return str(stopped.value)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=SLOW)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_checkpoints_exits_promptly_and_the_rerun_resumes_exactly(sig, code, tmp_path, tiny_ref, capsys):
    proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *TINY, f"results_dir={tmp_path}"], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if " iter 10 " in line:
            proc.send_signal(sig)
            sent = time.monotonic()
            break
    out, err = finish(proc, [line], timeout=60)
    assert proc.returncode == code and time.monotonic() - sent < 10, err
    folder = run_folder(tmp_path)
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(rf"interrupted: stopped by {sig.name} at iteration (\d+); rerun the same command to resume "
                     rf"from {re.escape(str(folder / 'last.pt'))}", last)
    assert m, err
    stopped_at = int(m[1])
    assert not (folder / "summary.json").exists()
    assert torch.load(folder / "last.pt", weights_only=False)["iteration"] == stopped_at
    capsys.readouterr()
    train_mod.run(tiny_cfg(tmp_path))
    out = capsys.readouterr().out
    assert f"resuming from last.pt at iteration {stopped_at}" in out and " iter 10 " not in out
    assert final(folder) == tiny_ref


def test_a_signal_during_evaluation_finishes_it_checkpoints_and_resumes_exactly(tmp_path, tiny_ref, monkeypatch,
                                                                                capsys):
    folder, handler = run_folder(tmp_path), signal.getsignal(signal.SIGTERM)
    message = interrupt_during_eval(tiny_cfg(tmp_path), monkeypatch, at_eval=2)
    assert message == (f"stopped by SIGTERM at iteration 20; rerun the same command to resume from "
                       f"{folder / 'last.pt'}")
    assert [r["iter"] for r in metrics(folder)] == [10, 20]  # the evaluation it interrupted was completed
    assert torch.load(folder / "last.pt", weights_only=False)["iteration"] == 20
    assert signal.getsignal(signal.SIGTERM) == handler  # the trainer's handler is gone again
    capsys.readouterr()
    train_mod.run(tiny_cfg(tmp_path))
    assert "resuming from last.pt at iteration 20" in capsys.readouterr().out
    assert final(folder) == tiny_ref


def test_slurm_time_limit_warning_checkpoints_before_submitit_requeues_the_job(tmp_path, tiny_ref, monkeypatch,
                                                                               capsys):
    """LAUNCHER=slurm: submitit turns SIGUSR2 (sent signal_delay_s before the time limit, or on preemption)
    into `scontrol requeue` + exit. The trainer saves last.pt first, so the requeued job loses nothing."""
    folder, seen = run_folder(tmp_path), []

    def submitit_requeue(signum, frame):  # stands in for submitit's checkpoint_and_try_requeue
        seen.append(torch.load(folder / "last.pt", weights_only=False)["iteration"])
        sys.exit(-1)
    real, calls = trainer_mod.evaluate, []

    def evaluate_then_usr2(*args, **kwargs):
        calls.append(None)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGUSR2)
        return real(*args, **kwargs)
    previous = signal.signal(signal.SIGUSR2, submitit_requeue)
    try:
        with monkeypatch.context() as m:
            m.setattr(trainer_mod, "evaluate", evaluate_then_usr2)
            with pytest.raises(SystemExit):
                train_mod.run(tiny_cfg(tmp_path))
        assert signal.getsignal(signal.SIGUSR2) is submitit_requeue  # handed back after the run
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [20] and not (folder / "summary.json").exists()  # checkpointed before the requeue
    capsys.readouterr()
    train_mod.run(tiny_cfg(tmp_path))  # what the requeued job does
    assert "resuming from last.pt at iteration 20" in capsys.readouterr().out
    assert final(folder) == tiny_ref


@SLOW
@pytest.mark.parametrize("sig,code,group", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
                         ids=["ctrl-c-to-the-group", "sigterm-to-the-driver-only"])
def test_a_signal_to_a_sweep_stops_it_cleanly_and_the_rerun_resumes(sig, code, group, tmp_path, smoke_ref):
    proc = subprocess.Popen(sweep_cmd(tmp_path), cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("resnet-8-A/seed=0 iter 10 "):
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
            break
    out, err = finish(proc, seen, timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == (f"interrupted: the sweep stopped on {sig.name}; rerun the same command "
                                            f"to resume it")
    assert re.search(r"resnet-8-A/seed=0\s+partial", out)
    before = run_state(tmp_path)
    assert before["plain-8-none"][0] == "done" and before["resnet-8-A"][0] == "ckpt"
    rc, out, err = run_sweep(tmp_path)
    assert rc == 0, err
    assert_rerun_resumed(tmp_path, before, out, smoke_ref)


# ------------------------------------------------------------------------------------- corrupt files

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


@pytest.mark.parametrize("damage", [_truncate, pytest.param(_garbage, marks=SLOW)], ids=["truncated", "garbage"])
def test_a_corrupt_checkpoint_is_named_and_the_run_retrained(damage, tmp_path, tiny_ref, monkeypatch, capsys):
    interrupt_during_eval(tiny_cfg(tmp_path), monkeypatch, at_eval=2)
    folder = run_folder(tmp_path)
    damage(folder / "last.pt")
    capsys.readouterr()
    train_mod.run(tiny_cfg(tmp_path))
    out, err = capsys.readouterr()
    assert f"warning: {folder / 'last.pt'} is unreadable" in err and "training this run from the start" in err
    assert "resuming" not in out and printed_iters(out, "resnet-8-A") == list(POINTS)
    assert final(folder) == tiny_ref


def test_a_corrupt_summary_is_named_and_redone_from_the_checkpoint_without_training(tmp_path, tiny_ref, capsys):
    train_mod.run(tiny_cfg(tmp_path))
    folder = run_folder(tmp_path)
    _truncate(folder / "summary.json")
    capsys.readouterr()
    train_mod.run(tiny_cfg(tmp_path))
    out, err = capsys.readouterr()
    assert f"warning: {folder / 'summary.json'} is unreadable" in err
    assert "resuming from last.pt at iteration 40" in out and printed_iters(out, "resnet-8-A") == []
    assert final(folder) == tiny_ref


def _drop_first_line(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("{not json\n" + "".join(lines[1:]))


def _cut_last_line(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) - 40])


@pytest.mark.parametrize("damage", [_drop_first_line, pytest.param(_cut_last_line, marks=SLOW),
                                    pytest.param(Path.unlink, marks=SLOW)],
                         ids=["corrupt-line", "truncated", "deleted"])
def test_metrics_damaged_before_the_checkpoint_are_named_and_the_run_retrained(damage, tmp_path, tiny_ref,
                                                                               monkeypatch, capsys):
    interrupt_during_eval(tiny_cfg(tmp_path), monkeypatch, at_eval=2)  # checkpoint at 20, points 10 and 20
    folder = run_folder(tmp_path)
    damage(folder / "metrics.jsonl")
    capsys.readouterr()
    train_mod.run(tiny_cfg(tmp_path))
    out, err = capsys.readouterr()
    assert f"warning: {folder / 'metrics.jsonl'} is truncated or corrupt" in err, err
    assert printed_iters(out, "resnet-8-A") == list(POINTS)
    assert final(folder) == tiny_ref


def _tree(root: Path) -> Path:
    return png_tree(root, train_per_class=8)


@pytest.mark.parametrize("damage", [pytest.param(_truncate, marks=SLOW), "flip"], ids=["truncated", "flipped-byte"])
def test_a_corrupt_data_cache_is_named_rebuilt_identically_and_the_run_completes(damage, tmp_path, capsys):
    tree, cache = _tree(tmp_path / "pngs"), tmp_path / "cache"
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfgs = [compose("config", overrides=[*TINY, "data=cifar10_folder", f"data.root={tree}",
                                             f"data.cache_dir={cache}", f"results_dir={tmp_path / 'r'}",
                                             "optim.batch_size=16", f"seed={seed}"]) for seed in (0, 1)]
    train_mod.run(cfgs[0])
    [train_file] = cache.glob("cifar10_folder-train-*.pt")
    good = torch.load(train_file, weights_only=True)
    if damage == "flip":
        raw = bytearray(train_file.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # inside the pixels: only the stored checksum notices
        train_file.write_bytes(bytes(raw))
    else:
        damage(train_file)
    capsys.readouterr()
    assert train_mod.run(cfgs[1])["status"] == "completed"
    err = capsys.readouterr().err  # a warning goes to stderr, marked as one
    assert f"warning: data cache {train_file} is corrupt" in err and "rebuilding it" in err
    rebuilt = torch.load(train_file, weights_only=True)
    assert all(torch.equal(rebuilt[k], good[k]) for k in ("images", "labels")) and rebuilt["digest"] == good["digest"]


def test_analysis_lists_a_corrupt_summary_as_corrupt_and_keeps_its_numbers_out(tmp_path, capsys):
    exp = tmp_path / "fx"
    for model in ("plain", "resnet"):
        train_mod.run(tiny_cfg(tmp_path, f"model={model}", "model.depth=8", "experiment_name=fx"))
    resnet, plain = run_folder(tmp_path, "resnet-8-A", exp="fx"), run_folder(tmp_path, "plain-8-none", exp="fx")
    _truncate(resnet / "summary.json")
    _drop_first_line(plain / "metrics.jsonl")
    capsys.readouterr()
    assert report_mod.main(["--results", str(exp)]) == 0  # python -m analysis.report, in-process
    err = capsys.readouterr().err
    assert f"warning: {resnet / 'summary.json'}: unreadable" in err and "run listed as corrupt" in err
    assert f"warning: {plain / 'metrics.jsonl'}: line 1: not valid JSON" in err
    inventory = pd.read_csv(exp / "tables" / "inventory.csv").set_index("run")
    assert inventory.loc["resnet-8-A", "status"] == "corrupt" and inventory.loc["plain-8-none", "status"] == "completed"
    assert pd.isna(inventory.loc["resnet-8-A", "final_test_err"])
    table6 = pd.read_csv(exp / "tables" / "table6.csv").set_index("arch")
    assert table6.loc["resnet", "n"] == 0 and pd.isna(table6.loc["resnet", "final_test_err_mean"])
    assert table6.loc["resnet", "not_counted"] == "1 corrupt"
    assert table6.loc["plain", "n"] == 1 and pd.isna(table6.loc["plain", "not_counted"])  # nothing left out
    report = (exp / "report.md").read_text()
    assert "resnet-8-A/seed=0: corrupt" in report


@SLOW
def test_corrupt_files_in_a_sweep_never_stop_it(tmp_path, smoke_ref):
    rc, out, err = run_sweep(tmp_path, env={"SUITE_FAULT": "after:checkpoint:6"})  # run 1 done, run 2 at 20
    plain, resnet = (run_folder(tmp_path, n, exp="smoke") for n in SMOKE_RUNS)
    _truncate(plain / "summary.json")
    _garbage(resnet / "last.pt")
    rc, out, err = run_sweep(tmp_path)
    assert rc == 0, err
    assert f"warning: {plain / 'summary.json'} is unreadable" in err
    assert f"warning: {resnet / 'last.pt'} is unreadable" in err
    assert f"{plain}: resuming from last.pt at iteration 40" in out and printed_iters(out, "plain-8-none") == []
    assert printed_iters(out, "resnet-8-A") == list(POINTS)
    for name, folder in zip(SMOKE_RUNS, (plain, resnet)):
        assert final(folder) == smoke_ref[name]


# -------------------------------------------------------------------------- full or blocked results disk

def file_size_limit(limit: int):
    """preexec_fn: writes past `limit` bytes fail with EFBIG (a disk that fills up), no SIGXFSZ kill."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("limit,blocked", [(20_000, "last.pt"), pytest.param(300, "config.yaml", marks=SLOW)],
                         ids=["fills-at-first-checkpoint", "fills-before-anything"])
def test_a_full_disk_is_one_clear_error_leaves_nothing_trusted_and_a_rerun_completes(limit, blocked, tmp_path,
                                                                                      tiny_ref):
    proc = subprocess.run([sys.executable, "-m", "experiments.train", *TINY, f"results_dir={tmp_path}"], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
                          preexec_fn=file_size_limit(limit))
    folder = run_folder(tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"error: cannot write {folder / blocked} (EFBIG: File too large); free disk space")
    assert not (folder / "summary.json").exists() and not (folder / "last.pt").exists()
    assert not list(folder.glob(".*.tmp"))
    train_mod.run(tiny_cfg(tmp_path))  # the limit lifted
    assert final(folder) == tiny_ref


def test_a_file_where_the_run_folder_belongs_is_one_clear_error(tmp_path):
    (tmp_path / "single" / "runs").mkdir(parents=True)
    (tmp_path / "single" / "runs" / "resnet-8-A").write_text("in the way\n")
    with pytest.raises(WriteError) as e:
        train_mod.run(tiny_cfg(tmp_path))
    assert str(e.value).startswith(f"cannot create the run folder {run_folder(tmp_path)} (Not a directory)")
    assert "\n" not in str(e.value) and (tmp_path / "single" / "runs" / "resnet-8-A").read_text() == "in the way\n"


@SLOW
def test_a_disk_that_fills_during_a_sweep_stops_it_clearly_and_a_rerun_completes(tmp_path, smoke_ref):
    proc = subprocess.run(sweep_cmd(tmp_path), cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(100_000))
    first = run_folder(tmp_path, "plain-8-none", exp="smoke")
    assert proc.returncode != 0
    assert f"error: cannot write {first / 'last.pt'} (EFBIG: File too large)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("summary.json")) and not list(tmp_path.rglob("last.pt"))
    rc, out, err = run_sweep(tmp_path)
    assert rc == 0, err
    for name in SMOKE_RUNS:
        assert final(run_folder(tmp_path, name, exp="smoke")) == smoke_ref[name]


# ------------------------------------------------------------------------------ two trainers, one folder

def test_a_run_locked_by_another_process_is_skipped_and_reported_as_such(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_mod, "LOCK_WAIT_S", 0.2)
    cfg = tiny_cfg(tmp_path)
    folder = run_folder(tmp_path)
    folder.mkdir(parents=True)
    with FileLock(folder / ".lock"):  # another trainer holds this run
        assert train_mod.run(cfg) == {"status": "locked", "run_dir": str(folder)}
        err = capsys.readouterr().err
        assert f"skipped {folder}: another process is training this run right now" in err
        assert not (folder / "metrics.jsonl").exists()
        planned = [sweep_plan.PlannedRun([], folder, "to do", 40, 1280, 1, "fp32", {}, "cpu")]
        assert sweep_status.report(planned) == 0
        out, err = capsys.readouterr()
        assert re.search(r"seed=0\s+training", out)
        assert "1 run(s) are being trained by another process right now" in err and "failed" not in err


def assert_each_run_trained_once(outs: list[str], results: Path, ref: dict) -> None:
    for name in SMOKE_RUNS:
        trained = [i for out in outs for i in printed_iters(out, name)]
        assert trained == list(POINTS), f"{name}: {trained}"  # every point once, across all sweeps
        assert final(run_folder(results, name, exp="smoke")) == ref[name]


@SLOW
def test_two_sweeps_started_at_once_train_each_run_exactly_once(tmp_path, smoke_ref):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweeps = [subprocess.Popen(sweep_cmd(tmp_path), cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [p.communicate(timeout=300) for p in sweeps]
    for p, (out, err) in zip(sweeps, done):
        assert p.returncode == 0, err
        if re.search(r"seed=0\s+training", out):  # finished while the other still trained a run
            assert "being trained by another process" in err and "did not complete" not in err
    assert_each_run_trained_once([out for out, _ in done], tmp_path, smoke_ref)


@SLOW
def test_a_sweep_that_finishes_while_another_trains_a_run_says_so_and_exits_0(tmp_path, smoke_ref):
    """Deterministic interleaving: sweep A is frozen (SIGSTOP) while it holds plain's lock; sweep B
    skips plain, trains resnet and ends; A then resumes, finishes plain and finds resnet done."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(sweep_cmd(tmp_path), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    head = []
    for line in first.stdout:
        head.append(line)
        if line.startswith("plain-8-none/seed=0 iter 10 "):
            os.killpg(first.pid, signal.SIGSTOP)
            break
    try:
        rc2, out2, err2 = run_sweep(tmp_path)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    out1, err1 = finish(first, head)
    plain = run_folder(tmp_path, "plain-8-none", exp="smoke")
    assert rc2 == 0, err2
    assert f"skipped {plain}: another process is training this run right now" in err2
    assert re.search(r"plain-8-none/seed=0\s+training", out2)
    assert "1 run(s) are being trained by another process right now" in err2 and "did not complete" not in err2
    assert first.returncode == 0, err1
    assert "resnet-8-A/seed=0: already completed, nothing to do" in out1
    assert_each_run_trained_once([out1, out2], tmp_path, smoke_ref)


# ----------------------------------------------------- second campaign: the sweep and the report level

def _summary_of(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


@pytest.mark.parametrize("damage", [Path.unlink, _garbage], ids=["config-deleted", "config-garbled"])
def test_a_changed_config_is_refused_by_the_checkpoint_when_config_yaml_is_lost(damage, tmp_path, tiny_ref,
                                                                                monkeypatch, capsys):
    interrupt_during_eval(tiny_cfg(tmp_path), monkeypatch, at_eval=2)  # last.pt at iteration 20
    folder = run_folder(tmp_path)
    damage(folder / "config.yaml")
    checkpoint = (folder / "last.pt").read_bytes()
    with pytest.raises(ConfigError) as refused:
        train_mod.run(tiny_cfg(tmp_path, "schedule.iterations=60"))
    assert str(refused.value) == (f"{folder} holds a run with a different config (schedule.iterations, "
                                  f"schedule.milestones, per its last.pt); use trainer.resume=false to start it "
                                  f"over or experiment_name=... for a new folder")
    assert (folder / "last.pt").read_bytes() == checkpoint and not (folder / "summary.json").exists()
    capsys.readouterr()
    train_mod.run(tiny_cfg(tmp_path))  # the config it was started with resumes it
    assert "resuming from last.pt at iteration 20" in capsys.readouterr().out
    assert final(folder) == tiny_ref


def test_a_finished_run_with_neither_config_nor_checkpoint_is_refused_by_its_summary(tmp_path):
    train_mod.run(tiny_cfg(tmp_path))
    folder = run_folder(tmp_path)
    (folder / "config.yaml").unlink()
    (folder / "last.pt").unlink()  # removable, as README says
    with pytest.raises(ConfigError, match=r"different config \(optim.lr, per its summary.json\)"):
        train_mod.run(tiny_cfg(tmp_path, "optim.lr=0.05"))
    assert train_mod.run(tiny_cfg(tmp_path))["status"] == "completed"  # the same config: nothing to do


def test_a_key_the_suite_gained_later_does_not_make_an_old_run_a_different_config(monkeypatch):
    """Committed runs keep the config.yaml they were written with; a key added since is compared as its
    documented default (RESULT_KEY_DEFAULTS) or, when not listed, not at all."""
    monkeypatch.setattr(resume_guard, "RESULT_KEY_DEFAULTS", {"data.augment": True})
    old = {"optim": {"lr": 0.1}, "data.source": "fake", "trainer.dropped": 1}
    assert resume_guard.changed_keys(old, {"optim": {"lr": 0.1, "new_knob": 3}, "data.source": "fake",
                                        "data.augment": True}) == []
    assert resume_guard.changed_keys(old, {"optim": {"lr": 0.1}, "data.source": "fake",
                                        "data.augment": False}) == ["data.augment"]
    assert resume_guard.changed_keys(old, {"optim": {"lr": 0.2}, "data.source": "fake"}) == ["optim.lr"]


def test_no_committed_reference_run_is_a_different_config_to_this_suite():
    """`make sweep` over a committed reference run must find it done (or resume a partial one), not refuse it:
    what this code composes for each committed run matches the config.yaml the run was written with."""
    saved = sorted((REPO / "results" / "reference").glob("*/runs/*/seed=*/config.yaml"))
    assert saved, "no committed reference runs"
    for path in saved:
        cfg = yaml.safe_load(path.read_text())
        m = cfg["model"]
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            now = compose("config", overrides=[
                f"experiment={cfg['experiment_name']}", f"data={cfg['data']['source']}",
                f"model={m['arch']}", f"model.depth={m['depth']}", f"model.shortcut={m['shortcut']}",
                f"seed={cfg['seed']}"])
        saved = resume_guard.saved_result_config(path)
        # compared as the guard compares: a partial run begun with an explicit fp32 resumes under `fast`
        as_computed = resume_guard.precision_as_computed(saved, resume_guard.result_config(now),
                                                         resume_guard.recorded_precision(path))
        assert resume_guard.changed_keys(*as_computed) == [], path


def _rerun_sweep(results: Path, *extra: str):
    return subprocess.run([*sweep_cmd(results), *extra], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_completed_run_that_lost_its_curve_is_damaged_in_the_sweep_and_the_report(damage, done_sweep, capsys):
    plain = run_folder(done_sweep, "plain-8-none", exp="smoke")
    if damage == "deleted":
        (plain / "metrics.jsonl").unlink()
    else:
        (plain / "metrics.jsonl").write_text("")
    proc = _rerun_sweep(done_sweep)
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"plain-8-none/seed=0\s+damaged", proc.stdout) and re.search(r"resnet-8-A/seed=0\s+completed",
                                                                                   proc.stdout)
    assert (f"1 completed run(s) lost their curve (metrics.jsonl missing, empty or cut short): {plain}; the report "
            f"lists them as damaged and leaves them out; to retrain them, delete those folders and rerun the same "
            f"command") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert report_mod.main(["--results", str(done_sweep / "smoke")]) == 0
    inventory = pd.read_csv(done_sweep / "smoke" / "tables" / "inventory.csv").set_index("run")
    assert inventory.loc["plain-8-none", "status"] == "damaged"
    report = (done_sweep / "smoke" / "report.md").read_text()
    problems = report.split("## Problems")[1]
    assert ("plain-8-none/seed=0: damaged: summary says completed but metrics.jsonl is missing or empty: the curve "
            "is lost; not counted") in problems
    table6 = pd.read_csv(done_sweep / "smoke" / "tables" / "table6.csv").set_index("arch")
    assert table6.loc["plain", "n"] == 0 and table6.loc["plain", "not_counted"] == "1 damaged"


def test_an_edited_config_of_a_finished_run_fails_the_sweep_with_exit_2(done_sweep):
    plain = run_folder(done_sweep, "plain-8-none", exp="smoke")
    edited = (plain / "config.yaml").read_text().replace("lr: 0.1\n", "lr: 0.05\n")
    (plain / "config.yaml").write_text(edited)
    proc = _rerun_sweep(done_sweep)
    assert proc.returncode == 2, proc.stderr
    # refused by the plan, before anything launches (sweep/plan.py refuse_mixing): no run, no final table
    assert "$ " not in proc.stdout and "status" not in proc.stdout, proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"error: {plain} holds a run with a different config (optim.lr, schedule.lr, per its config.yaml); use "
        f"trainer.resume=false to start it over or experiment_name=... for a new folder"]
    assert (plain / "config.yaml").read_text() == edited


@pytest.mark.parametrize("override,needle", [
    ("optim.batch_size=1000", "batch size 1000 exceeds the 512 training images"),
    ("data.train_subset=100000", "data.train_subset=100000 exceeds the 512 training images available"),
], ids=["batch-size", "data"])
def test_a_user_error_inside_a_sweep_says_what_to_fix_and_exits_2(override, needle, tmp_path):
    proc = _rerun_sweep(tmp_path, override)
    assert proc.returncode == 2, proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert errors[-1] == "2 run(s) stopped on the error(s) above; fix them, then rerun the same command"
    assert all(needle in line for line in errors[-3:-1]) and "resume" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("seed=*"))  # no run folder left


def test_run_folders_of_unknown_kinds_are_problems_and_the_rest_is_reported(done_sweep, capsys):
    runs = done_sweep / "smoke" / "runs"
    shutil.copytree(runs / "plain-8-none", runs / "vgg-16-none")  # a copied run of a kind nobody knows
    shutil.copytree(runs / "resnet-8-A", runs / "resnet-8-Z")
    assert report_mod.main(["--results", str(done_sweep / "smoke")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    problems = (done_sweep / "smoke" / "report.md").read_text().split("## Problems")[1]
    assert "warning: runs/vgg-16-none/seed=0: a run of a kind this analysis does not know (vgg, shortcut none" in problems
    assert "warning: runs/resnet-8-Z/seed=0: a run of a kind this analysis does not know (resnet, shortcut Z" in problems
    inventory = pd.read_csv(done_sweep / "smoke" / "tables" / "inventory.csv")
    assert sorted(inventory["run"]) == ["plain-8-none", "resnet-8-A"]


def test_the_report_lists_planned_runs_never_started_and_a_nan_result_as_problems(done_sweep, capsys):
    args = sweep_launch.parse_args(["--exp", "smoke", "--seeds", "2", "--results", str(done_sweep)])
    sweep_plan.write_plan(sweep_plan.plan(args), args)  # seed 1 planned, never started
    resnet = run_folder(done_sweep, "resnet-8-A", exp="smoke")
    summary_ = _summary_of(resnet)
    (resnet / "summary.json").write_text(json.dumps(summary_ | {"final_test_err": float("nan")}))
    assert report_mod.main(["--results", str(done_sweep / "smoke")]) == 0
    inventory = pd.read_csv(done_sweep / "smoke" / "tables" / "inventory.csv")
    assert sorted(zip(inventory["run"], inventory["seed"], inventory["status"])) == [
        ("plain-8-none", 0, "completed"), ("plain-8-none", 1, "not started"),
        ("resnet-8-A", 0, "damaged"), ("resnet-8-A", 1, "not started")]
    problems = (done_sweep / "smoke" / "report.md").read_text().split("## Problems")[1]
    assert "plain-8-none/seed=1: not started: planned by the sweep (plan.json), no run folder yet" in problems
    assert "resnet-8-A/seed=0: damaged: final_test_err not a finite number (nan); not counted" in problems
    assert pd.read_csv(done_sweep / "smoke" / "tables" / "table6.csv").set_index("arch").loc["resnet", "n"] == 0


def _outputs(exp: Path) -> dict:
    return {str(p.relative_to(exp)): p.read_bytes() for p in exp.rglob("*")
            if p.is_file() and "runs" not in p.relative_to(exp).parts}


def test_a_full_disk_during_a_report_is_one_line_and_the_old_report_stays_intact(done_sweep, capsys):
    exp = done_sweep / "smoke"
    assert report_mod.main(["--results", str(exp)]) == 0
    before = _outputs(exp)
    (exp / "runs" / "plain-8-none" / "seed=0" / "summary.json").unlink()  # the next report would differ
    proc = subprocess.run([sys.executable, "-m", "analysis.report", "--results", str(exp)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(20_000))
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("warning: ")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert re.fullmatch(rf"error: cannot write {re.escape(str(exp))}/figures/\w+\.png \(EFBIG: File too large\); "
                        r"free disk space or make the folder writable, then rerun; the previous report is unchanged",
                        errors[0]), errors[0]
    assert _outputs(exp) == before and not list(exp.glob(".report-staging-*"))


def test_hidden_files_left_by_a_killed_report_are_removed_by_the_next(done_sweep):
    exp = done_sweep / "smoke"
    assert report_mod.main(["--results", str(exp)]) == 0
    leftovers = [exp / ".report.md.k2j3x9", exp / "figures" / ".curves.png.ab12cd",
                 exp / "tables" / ".inventory.csv.zz99", exp / ".report-staging-q1w2" / "figures" / "curves.png"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    assert report_mod.main(["--results", str(exp)]) == 0
    assert not any(p.exists() for p in leftovers) and not list(exp.glob(".report-staging-*"))


@pytest.mark.parametrize("limit,blocked", [(100, "plan.json"), (1500, "multirun.yaml")])
def test_a_sweep_that_cannot_write_its_plan_is_one_line_and_leaves_the_old_file(limit, blocked, tmp_path):
    exp = tmp_path / "smoke"
    exp.mkdir()
    (exp / "multirun.yaml").write_text("old: 1\n")
    proc = subprocess.run(sweep_cmd(tmp_path), cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(limit))
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"error: cannot write {exp / blocked} (EFBIG: File too large)"), errors[0]
    assert (exp / "multirun.yaml").read_text() == "old: 1\n"
    assert not (exp / "runs").exists() and not list(exp.glob(".*.tmp"))


def test_the_sweeps_final_table_reads_a_read_only_results_folder(done_sweep, monkeypatch, capsys):
    """A disk mounted read-only (EROFS; root ignores permissions, so it is simulated): every open for
    writing under it fails, the run folders' lock files included."""
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(done_sweep)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)
    planned = [sweep_plan.PlannedRun([], run_folder(done_sweep, name, exp="smoke"), "to do", 40, 1280, 1, "fp32", {},
                                    "cpu")
               for name in SMOKE_RUNS]
    for run in planned:
        (run.folder / ".lock").touch()  # what every trained run leaves
    monkeypatch.setattr(os, "open", read_only)
    assert sweep_status.report(planned) == 0
    out = capsys.readouterr().out
    assert all(re.search(rf"{name}/seed=0\s+completed", out) for name in SMOKE_RUNS), out


def test_paths_with_spaces_commas_and_non_ascii_letters_simply_work(tmp_path, smoke_ref):
    results = tmp_path / "my results, für später"
    proc = subprocess.run(make("sweep", "EXP=smoke", f"RESULTS={results}"), cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    for name in SMOKE_RUNS:
        assert final(run_folder(results, name, exp="smoke")) == smoke_ref[name]
    proc = subprocess.run(make("report", "EXP=smoke", f"RESULTS={results}"), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and (results / "smoke" / "report.md").exists(), proc.stderr
    tree = _tree(tmp_path / "dätä, copy")
    proc = cli("--data-root", str(tree), f"data.cache_dir={tmp_path / 'cache'}", "data=cifar10_folder",
               module="experiments.data", timeout=120)
    assert proc.returncode == 0 and "train         80 images" in proc.stdout, proc.stderr


# ---------------------------------------------------------------------------- stale data cache

def _uncompressed_tree(root: Path) -> Path:
    """PNGs saved without compression: every image file has the same size."""
    return png_tree(root, train_per_class=2, test_per_class=1, seed=1, compress_level=0)
    return root


def test_swapped_images_with_their_names_sizes_and_mtimes_kept_are_not_served_from_the_cache(tmp_path):
    from experiments.data import load_data
    tree = _uncompressed_tree(tmp_path / "pngs")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        data_cfg = compose("config", overrides=["data=cifar10_folder", f"data.root={tree}",
                                                f"data.cache_dir={tmp_path / 'cache'}"]).data
    before = load_data(data_cfg)
    a, b = tree / "train" / "cat" / "0.png", tree / "train" / "cat" / "1.png"
    assert a.stat().st_size == b.stat().st_size
    times = [(p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in (a, b)]
    pixels_a, pixels_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(pixels_b)
    b.write_bytes(pixels_a)
    for path, ns in zip((a, b), times):
        os.utime(path, ns=ns)  # what `touch -d` or `cp -p` would do: names, sizes and mtimes as before
    after = load_data(data_cfg)
    cat = before.train_labels == 3
    assert torch.equal(after.train_images[cat], before.train_images[cat].flip(0))  # the two cats swapped
    assert after.cache_files[0] != before.cache_files[0]


@SLOW
def test_a_cached_load_of_the_full_image_folder_takes_under_2_s(shared_jpeg, tmp_path):
    """The fingerprint stats every file (60k JPEGs) on each load. Measured in CPU time with a warm page
    cache, so that a machine shared with other work (a sweep, parallel tests) measures the code, not
    the wait for a core."""
    import tarfile

    from experiments.data import load_data
    with tarfile.open(shared_jpeg) as tf:
        tf.extractall(tmp_path / "tree", filter="data")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        data_cfg = compose("config", overrides=["data=cifar10_folder", f"data.root={tmp_path / 'tree'}",
                                                f"data.cache_dir={tmp_path / 'cache'}"]).data
    load_data(data_cfg)  # decodes and caches
    start, wall = time.process_time(), time.perf_counter()
    data = load_data(data_cfg)
    seconds, wall = time.process_time() - start, time.perf_counter() - wall
    assert len(data.train_images) == 50_000 and seconds < 2.0, f"cached load took {seconds:.2f} s ({wall:.2f} s wall)"
