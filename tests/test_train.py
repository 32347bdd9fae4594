import pickle
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from experiments import train as train_mod
from experiments.run import trainer as trainer_mod
from experiments.run.checks import ConfigError
from experiments.run.schedule import LrSchedule
from experiments.run.stopping import Interrupted
from tests.helpers import TINY, cli, metrics, run_folder, summary, tiny_cfg

ROW_FIELDS = {"format_version", "iter", "epoch", "lr", "warmup", "train_loss", "train_err", "test_loss",
              "test_err", "elapsed_s", "images_per_s"}
SUMMARY_FIELDS = {"status", "arch", "depth", "shortcut", "seed", "data_source", "data_split", "params", "macs",
                  "iterations_done", "final_train_err", "final_test_err", "best_test_err", "best_test_iter",
                  "wall_time_s", "images_per_s", "device_name", "torch_version", "git_commit", "precision", "augment"}


def test_a_short_run_writes_the_contract_and_learns(tmp_path):
    s = train_mod.run(tiny_cfg(tmp_path, "optim.lr=0.05"))
    folder = run_folder(tmp_path)
    assert {p.name for p in folder.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "last.pt"}
    rows = metrics(folder, drop_timing=False)
    assert [r["iter"] for r in rows] == [10, 20, 30, 40]
    assert all(ROW_FIELDS <= set(r) for r in rows)
    probed = [r["iter"] for r in rows if "response_std" in r]
    assert probed == [10, 20, 30, 40]  # first, last, and the points at the lr drops (20, 30)
    assert len(rows[0]["response_std"]) == len(rows[0]["grad_norm"]) == 7
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert SUMMARY_FIELDS <= set(s) and s == summary(folder)
    assert s["status"] == "completed" and s["data_source"] == "fake" and s["params"] == 78_042 - 2_752
    assert s["final_test_err"] == rows[-1]["test_err"]


def test_same_seed_same_metrics_other_seed_differs(tmp_path, tiny_root):
    train_mod.run(tiny_cfg(tmp_path / "b"))
    train_mod.run(tiny_cfg(tmp_path / "c", "seed=1"))
    a, b, c = metrics(tiny_root), metrics(run_folder(tmp_path / "b")), metrics(run_folder(tmp_path / "c", seed=1))
    assert a == b and a != c


def test_sigkill_after_a_checkpoint_then_resume_gives_identical_metrics(tmp_path, tiny_root):
    args = [*TINY, f"results_dir={tmp_path / 'cut'}"]
    killed = cli(*args, env={"SUITE_FAULT": "after:checkpoint:2"})
    assert killed.returncode == -signal.SIGKILL
    folder = run_folder(tmp_path / "cut")
    assert not (folder / "summary.json").exists() and (folder / "last.pt").exists()
    assert cli(*args).returncode == 0
    assert metrics(folder) == metrics(tiny_root)
    assert summary(folder)["iterations_done"] == 40


def test_last_pt_keeps_the_step_sums_as_earlier_checkpoints_did_and_resumes_identically(tmp_path, monkeypatch,
                                                                                     tiny_root):
    """The sums since the last evaluation point stay in last.pt under "acc" as a plain dict (loss, wrong, seen,
    warmup, t), the layout checkpoints had before the sums got a type: old and new checkpoints resume alike."""
    real_iteration = trainer_mod.Trainer.train_iteration

    def stop_at_15(self, warming):
        out = real_iteration(self, warming)
        if self.iteration == 15:  # between evaluation points: the sums hold 5 steps
            self.signals.received = signal.SIGTERM
        return out
    with monkeypatch.context() as m:
        m.setattr(trainer_mod.Trainer, "train_iteration", stop_at_15)
        with pytest.raises(Interrupted) as stopped:
            train_mod.run(tiny_cfg(tmp_path / "cut"))
    assert stopped.value.exit_status == 143
    folder = run_folder(tmp_path / "cut")
    state = torch.load(folder / "last.pt", weights_only=False)
    acc = state["acc"]
    assert type(acc) is dict and set(acc) == {"loss", "wrong", "seen", "warmup", "t"}
    assert acc["seen"] == 5 * 32 and isinstance(acc["loss"], torch.Tensor) and acc["warmup"] is False
    state["acc"] = {"loss": acc["loss"].clone(), "wrong": acc["wrong"].clone(), "seen": 160, "warmup": False,
                    "t": acc["t"]}  # written as the trainer before StepSums wrote it
    torch.save(state, folder / "last.pt")
    train_mod.run(tiny_cfg(tmp_path / "cut"))
    assert metrics(folder) == metrics(tiny_root)


def test_interrupted_carries_its_signal_to_the_exit_status_and_survives_pickling():
    stopped = Interrupted(signal.SIGINT, 7, Path("r/last.pt"))
    assert stopped.exit_status == 130 and Interrupted(signal.SIGTERM, 7, Path("x")).exit_status == 143
    assert str(stopped) == "stopped by SIGINT at iteration 7; rerun the same command to resume from r/last.pt"
    copied = pickle.loads(pickle.dumps(stopped))
    assert copied.exit_status == 130 and str(copied) == str(stopped)


def test_kill_mid_metrics_line_resumes_cleanly(tmp_path, tiny_root):
    # a kill mid-checkpoint write is test_faults' (its two-kills trial, and the slow campaign)
    args = [*TINY, f"results_dir={tmp_path}"]
    assert cli(*args, env={"SUITE_FAULT": "append:metrics:2"}).returncode == -signal.SIGKILL
    assert cli(*args).returncode == 0
    folder = run_folder(tmp_path)
    assert metrics(folder) == metrics(tiny_root)
    assert not list(folder.glob(".*.tmp"))


def test_a_completed_run_returns_at_once_without_training(tmp_path, monkeypatch):
    first = train_mod.run(tiny_cfg(tmp_path))
    mtime = (run_folder(tmp_path) / "last.pt").stat().st_mtime_ns

    def no_training(*_a, **_k):
        raise AssertionError("a completed run must not train again")
    monkeypatch.setattr(train_mod, "Trainer", no_training)
    assert train_mod.run(tiny_cfg(tmp_path)) == first
    assert (run_folder(tmp_path) / "last.pt").stat().st_mtime_ns == mtime


def test_resume_false_starts_over_and_a_changed_config_is_refused(tmp_path):
    train_mod.run(tiny_cfg(tmp_path))
    with pytest.raises(ConfigError, match="schedule"):
        train_mod.run(tiny_cfg(tmp_path, "schedule.iterations=20"))
    s = train_mod.run(tiny_cfg(tmp_path, "schedule.iterations=20", "trainer.resume=false"))
    assert s["iterations_done"] == 20 and len(metrics(run_folder(tmp_path))) == 2


def test_paper_schedule_and_warmup():
    from omegaconf import OmegaConf
    optim = OmegaConf.create({"lr": 0.1})
    sched = OmegaConf.create({"iterations": 64000, "milestones": None, "gamma": 0.1, "warmup": "auto",
                              "warmup_lr": 0.01, "warmup_until_err": 80.0, "warmup_max_iters": 4000})
    s = LrSchedule.from_config(optim, sched, depth=56)
    assert [s.lr_at(i) for i in (0, 31999, 32000, 47999, 48000, 63999)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert not s.warmup and LrSchedule.from_config(optim, sched, depth=110).warmup
    w = LrSchedule.from_config(optim, sched, depth=110)
    assert w.lr_at(0, warming_up=True) == 0.01 and w.lr_at(400) == 0.1
    assert w.warmup_should_end(400, 79.9) and not w.warmup_should_end(400, 85.0)
    assert w.warmup_should_end(4000, 90.0)  # never stuck at the warm-up lr
    short = LrSchedule.from_config(optim, OmegaConf.merge(sched, {"iterations": 16000, "warmup_max_iters": "auto"}),
                                   depth=110)
    assert w.warmup_max_iters == 4000 and short.warmup_max_iters == 1000  # the cap scales with the run
    assert short.identity()["warmup_max_iters"] == 1000 and "warmup_max_iters" not in s.identity()


def test_a_run_killed_during_warmup_resumes_with_the_same_running_error(tmp_path):
    """The warm-up window (last 20 batches) is part of the checkpoint: without it a resumed run
    judges warm-up on fewer batches and can leave it at another iteration."""
    warm = ["schedule.warmup=true", "schedule.warmup_until_err=0", "schedule.warmup_max_iters=25",
            "schedule.milestones=[]"]
    train_mod.run(tiny_cfg(tmp_path / "ref", *warm))
    args = [*TINY, f"results_dir={tmp_path / 'cut'}", *warm]
    assert cli(*args, env={"SUITE_FAULT": "after:checkpoint:1"}).returncode == -signal.SIGKILL
    saved = torch.load(run_folder(tmp_path / "cut") / "last.pt", weights_only=False)
    assert [n for _, n in saved["warmup_window"]] == [32] * 10  # 10 batches of 32 so far, as ints
    assert cli(*args).returncode == 0
    assert metrics(run_folder(tmp_path / "cut")) == metrics(run_folder(tmp_path / "ref"))
    assert summary(run_folder(tmp_path / "cut"))["warmup_end_iter"] == 30  # the cap, checked every 10


def test_warmup_in_a_run_ends_and_returns_to_the_scheduled_lr(tmp_path):
    s = train_mod.run(tiny_cfg(tmp_path, "schedule.warmup=true", "schedule.warmup_until_err=101",
                               "schedule.milestones=[]"))
    rows = metrics(run_folder(tmp_path))
    assert s["warmup_end_iter"] == 10 and rows[0]["warmup"] and not rows[1]["warmup"]
    assert rows[-1]["lr"] == 0.1


def test_divergence_is_a_result_not_a_crash(tmp_path):
    args = [*TINY, f"results_dir={tmp_path}", "optim.lr=1e6"]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    s = summary(run_folder(tmp_path))
    assert s["status"] == "diverged" and 1 <= s["diverged_at"] <= 40


def test_gradient_norms_are_measured_on_probe_batch_images(tmp_path):
    tr = trainer_mod.Trainer(tiny_cfg(tmp_path, "trainer.probe_batch=7"), tmp_path)
    points, (x, y) = tr._probe_plan()
    assert points == {10, 20, 30, 40} and len(x) == len(y) == 7


@pytest.mark.parametrize("override,needle", [
    ("model.depth=21", "nearest valid: 20 or 26"),
    ("model.shortcut=D", "choose one of A, B, C"),
    ("optim.lr=-0.1", "optim.lr must be a positive number"),
    ("trainer.eval_every=0", "trainer.eval_every must be a positive integer"),
    ("trainer.probe_batch=0", "trainer.probe_batch must be a positive integer"),
    ("data.source=imagenet", "data"),
])
def test_bad_overrides_fail_before_anything_is_created(tmp_path, override, needle):
    with pytest.raises(ConfigError, match=needle):
        train_mod.run(tiny_cfg(tmp_path / "r", override))
    assert not (tmp_path / "r").exists()


def test_cli_bad_override_is_one_line_and_nonzero(tmp_path):
    proc = cli(*TINY, f"results_dir={tmp_path}", "model.depth=21")
    assert proc.returncode != 0 and not tmp_path.joinpath("single").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model: depth 21"), proc.stderr


# -- data.augment: recorded by every run; a run recorded before the key existed means the paper's default -----

def test_augment_is_recorded_and_a_config_without_it_means_the_default(tmp_path):
    s = train_mod.run(tiny_cfg(tmp_path, "schedule.iterations=20"))
    folder = run_folder(tmp_path)
    assert s["augment"] == "crop_flip" and "augment: crop_flip" in (folder / "config.yaml").read_text()
    # An older run's config.yaml has no data.augment: it trained with crop_flip and still counts as done.
    cfg_file = folder / "config.yaml"
    cfg_file.write_text("".join(l for l in cfg_file.read_text().splitlines(True) if "augment:" not in l))
    assert train_mod.run(tiny_cfg(tmp_path, "schedule.iterations=20"))["status"] == "completed"
    with pytest.raises(ConfigError, match=r"different config \(data.augment, per its config.yaml\)"):
        train_mod.run(tiny_cfg(tmp_path, "schedule.iterations=20", "data.augment=flip"))


# -- git_commit: what `git rev-parse HEAD` says, packed refs included; None outside a checkout ----------------

def _git(folder, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_reads_packed_refs_and_is_none_outside_a_checkout(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "pkg" / "f").write_text("x")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    _git(repo, "pack-refs", "--all")  # as after `git gc`: no loose ref file under .git/refs/heads
    head = _git(repo, "rev-parse", "HEAD")
    assert not list((repo / ".git" / "refs" / "heads").iterdir())
    assert train_mod.read_git_commit(repo) == head
    assert train_mod.read_git_commit(repo / "pkg") is None  # inside a checkout but not its top: not our repo
    (tmp_path / "plain").mkdir()
    assert train_mod.read_git_commit(tmp_path / "plain") is None


# -- progress in a log (nohup, SLURM, | tee): iteration / total, percent and ETA on every line ----------------

def test_progress_lines_in_a_log_carry_iteration_total_percent_and_eta(monkeypatch, capsys):
    from pathlib import Path

    from experiments.run import progress as P
    clock = iter([0.0, 100.0, 100.0, 130.0, 200.0, 200.0, 200.0])  # start; point at 500 (pace, log); 2 updates
    monkeypatch.setattr(P.time, "perf_counter", lambda: next(clock))
    bar = P.Progress("log", total=2000, start=0, folder=Path("resnet-8-A/seed=0"))
    bar.point({"iter": 500, "lr": 0.1, "train_err": 40.0, "test_err": 42.0, "images_per_s": 900.0})
    bar.update(600, 0.1, 30.0)  # 30 s after the last line: quiet
    bar.update(750, 0.1, 30.0)  # 70 s: a line
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "iter 500 / 2000 (25%), ETA 0:05:00" in lines[0] and "test_err 42.00%" in lines[0]
    assert "training, iter 750 / 2000 (37%), ETA 0:05:33" in lines[1]
