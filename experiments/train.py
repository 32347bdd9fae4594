"""One run: one network, one config, one seed. `python -m experiments.train [hydra overrides]`.

Reads top to bottom: check the config (nothing created on error), take the run's lock, resume
from its checkpoint, train with evaluation points, write summary.json last and atomically.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from experiments import CONF
from experiments.checks import ConfigError, check_config
from experiments.data import DEFAULT_AUGMENT, DataError, DeviceBatches, load_data
from experiments.device import RunDevice, claim_gpu, pick_device
from experiments.faults import fault_point
from experiments.graphs import GraphedStep
from experiments.models import (
    arch_kind, block_name, build_from_config, count_macs, count_params, model_name, response_layers,
    shortcut_name,
)
from experiments.probes import evaluate, gradient_norms
from experiments.progress import Progress
from experiments.runfiles import (
    FORMAT_VERSION, append_metrics, atomic_torch_save, atomic_write_json, atomic_write_text,
    WriteError, read_json, read_metrics, run_dir, to_jsonl,
)
from experiments.schedule import RUNNING_ERR_CHECK_EVERY, LrSchedule, RunningError

# Keys that change what a run computes; a resumed run must match them (the folder name
# alone does not pin iterations, data or recipe).
RESULT_KEYS = ("model", "optim", "schedule", "seed", "data.source", "data.split", "data.train_subset",
               "data.normalize", "data.augment", "trainer.eval_every", "trainer.probes", "trainer.precision")
# Result-config leaves the suite gained after runs were already recorded, with the value that a run
# recorded before the key existed effectively used. Completed runs (results/reference/ among them) keep
# the config.yaml they were written with: a leaf missing there is compared as this default, and a leaf
# missing and not listed here is not compared at all, so growing the config never turns a finished run
# into a "different config" (a key whose absence would change the result must be listed here).
RESULT_KEY_DEFAULTS = {"data.augment": DEFAULT_AUGMENT}
FINISHED = ("completed", "diverged")
LOCK_WAIT_S = 2  # a run locked longer than this is being trained by another process: skip it


class Interrupted(Exception):
    """SIGTERM / SIGINT arrived: the run checkpointed and stops; rerunning resumes it."""


# summary.json fields that restate result-config leaves: the last word when config.yaml and last.pt are gone.
SUMMARY_KEYS = {"iterations": "schedule.iterations", "lr": "optim.lr", "batch_size": "optim.batch_size",
                "weight_decay": "optim.weight_decay", "momentum": "optim.momentum", "seed": "seed",
                "data_source": "data.source", "data_split": "data.split", "depth": "model.depth"}
_ABSENT = object()


def result_config(cfg: DictConfig) -> dict:
    """The RESULT_KEYS of cfg as plain values, with the schedule as it computes. A key missing from cfg
    (a config.yaml older than the key) takes its documented default (RESULT_KEY_DEFAULTS) or is left out."""
    out = {}
    for k in RESULT_KEYS:
        value = OmegaConf.select(cfg, k, default=RESULT_KEY_DEFAULTS.get(k, _ABSENT))
        if value is not _ABSENT:
            out[k] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    # The schedule as it computes (milestones resolved; warm-up settings only where warm-up is on), so
    # a moved default (warmup_max_iters 4000 -> auto) cannot flag a finished run that never warmed up.
    try:
        resolved = LrSchedule.from_config(cfg.optim, cfg.schedule, cfg.model.depth)
        out["schedule"] = {"iterations": cfg.schedule.iterations, **resolved.identity()}
    except Exception:  # an unreadable schedule stays as written: it compares unequal, as it should
        pass
    return out


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= _leaves(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_keys(saved: dict, current: dict) -> list[str]:
    """The result-config leaves on which a saved run and `current` disagree (see RESULT_KEY_DEFAULTS)."""
    old, new = _leaves(saved), _leaves(current)
    changed = []
    for key in sorted(set(old) | set(new)):
        if key in old and key in new:
            differ = old[key] != new[key]
        elif key in new:  # added to the suite after this run was recorded
            differ = key in RESULT_KEY_DEFAULTS and new[key] != RESULT_KEY_DEFAULTS[key]
        else:  # dropped from the suite: nothing to compare with
            differ = False
        if differ:
            changed.append(key)
    return changed


def saved_result_config(path: Path) -> dict | None:
    try:
        loaded = OmegaConf.load(path)
        return result_config(loaded) if isinstance(loaded, DictConfig) else None
    except Exception:  # missing or unreadable: nothing to compare against
        return None


def recorded_precision(path: Path) -> str | None:
    """The precision a run computed in so far (trainer.precision_used, written since the GPU path
    landed; older configs do not have it)."""
    try:
        return OmegaConf.select(OmegaConf.load(path), "trainer.precision_used")
    except Exception:
        return None


def config_yaml(cfg: DictConfig, dev: RunDevice) -> str:
    """The run's resolved config, plus what `auto`/`fast` resolved to on this machine, so a resume on
    another kind of device continues in the same precision (pick_device)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["trainer"]["precision_used"] = dev.precision
    return OmegaConf.to_yaml(resolved)


def checkpoint_result_config(path: Path) -> dict | None:
    """The result config a checkpoint was written under (None: no readable checkpoint, or one from
    before checkpoints carried it)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # unreadable: Trainer.load names it and trains from the start
        return None
    saved = state.get("result_config") if isinstance(state, dict) else None
    return saved if isinstance(saved, dict) else None


def refuse_changed_config(cfg: DictConfig, folder: Path) -> None:
    """Raise ConfigError when what the folder holds was computed under another result config. Every
    record is asked, so a deleted or garbled config.yaml cannot let a run resume under a new config:
    config.yaml, the checkpoint (which carries its config), and summary.json's restated fields."""
    current = result_config(cfg)
    checks = [("config.yaml", saved_result_config(folder / "config.yaml")),
              ("last.pt", checkpoint_result_config(folder / "last.pt"))]
    changed: dict[str, list[str]] = {}
    for source, saved in checks:
        if saved is not None:
            changed[source] = changed_keys(saved, current)
    summary = read_json(folder / "summary.json")
    if isinstance(summary, dict) and not changed:  # config.yaml and last.pt both gone or unreadable
        flat = _leaves(current)
        changed["summary.json"] = sorted(key for field, key in SUMMARY_KEYS.items()
                                         if field in summary and key in flat and summary[field] != flat[key])
    for source, keys in changed.items():
        if keys:
            raise ConfigError(
                f"{folder} holds a run with a different config ({', '.join(keys)}, per its {source}); "
                f"use trainer.resume=false to start it over or experiment_name=... for a new folder")


def folder_of(cfg: DictConfig) -> Path:
    m = cfg.model
    return run_dir(cfg.results_dir, cfg.experiment_name, m.arch, m.depth, m.shortcut, cfg.seed)


def read_git_commit(folder: Path = Path(__file__).resolve().parents[1]) -> str | None:
    """HEAD of the git checkout whose top is `folder` (this package's source tree), as `git rev-parse` sees it
    (packed refs, worktrees, detached HEADs); None when `folder` is no checkout's top (e.g. a pip-installed
    copy) or git is absent."""
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=folder, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != Path(folder).resolve():
        return None
    return lines[1]


_LOADED_COMMIT = read_git_commit()  # the code this process runs, even if HEAD moves during a long sweep


def git_commit() -> str | None:
    return _LOADED_COMMIT


def run(cfg: DictConfig) -> dict:
    """Train (or resume, or return) the run `cfg` names; returns its summary."""
    check_config(cfg)
    folder = folder_of(cfg)
    created = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a file where a folder of the path should be, a read-only disk
        raise WriteError(f"cannot create the run folder {folder} ({e.strerror or e}); make results_dir a writable "
                         f"folder (RESULTS=...) and remove what is in the way, then rerun") from None
    try:
        with FileLock(folder / ".lock", timeout=LOCK_WAIT_S):
            return _run_locked(cfg, folder)
    except Timeout:
        print(f"skipped {folder}: another process is training this run right now", file=sys.stderr)
        return {"status": "locked", "run_dir": str(folder)}
    except (ConfigError, DataError):
        if created is not None:  # a user error (e.g. bad images under data.root) leaves nothing behind
            _remove_created(folder, created)
        raise


def _remove_created(folder: Path, created: Path) -> None:
    """Delete the run folder this call made, then its parents up to `created` while they are empty."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if not parent.is_relative_to(created):
            break
        try:
            parent.rmdir()
        except OSError:  # another run lives there now
            break


def _run_locked(cfg: DictConfig, folder: Path) -> dict:
    summary_path, ckpt_path = folder / "summary.json", folder / "last.pt"
    for tmp in folder.glob(".*.tmp"):  # left by a kill mid-write; the real files are intact
        tmp.unlink()
    if cfg.trainer.resume:
        refuse_changed_config(cfg, folder)
        done = read_json(summary_path)
        if done is None and summary_path.exists():
            print(f"warning: {summary_path} is unreadable (truncated or corrupt); redoing the run from its "
                  f"checkpoint, if any", file=sys.stderr)
        if done and done.get("status") in FINISHED:
            print(f"{folder}: already {done['status']}, nothing to do")
            return done
    else:
        for stale in (summary_path, ckpt_path, folder / "metrics.jsonl"):
            stale.unlink(missing_ok=True)
    resuming = cfg.trainer.resume and ckpt_path.exists()
    dev = pick_device(cfg.trainer, recorded_precision(folder / "config.yaml") if resuming else None)
    atomic_write_text(folder / "config.yaml", config_yaml(cfg, dev))
    summary_path.unlink(missing_ok=True)  # a failed summary from an earlier try is stale now
    try:
        summary = Trainer(cfg, folder, dev).fit()
    except (ConfigError, DataError, Interrupted, WriteError):  # not results: nothing to record
        raise
    except Exception as e:  # a crash is a result of this run, not of the sweep
        summary = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        atomic_write_json(summary_path, base_summary(cfg) | summary)
        raise
    atomic_write_json(summary_path, summary)
    return summary


def base_summary(cfg: DictConfig) -> dict:
    m = cfg.model
    return {"format_version": FORMAT_VERSION, "experiment": cfg.experiment_name,
            "run": folder_of(cfg).parent.name, "arch": arch_kind(m.arch), "depth": m.depth,
            "shortcut": shortcut_name(m.arch, m.shortcut), "seed": cfg.seed,
            "model_name": model_name(m.arch, m.depth), "block": block_name(m.arch), "stem": m.get("stem", "cifar"),
            "torch_version": torch.__version__, "git_commit": git_commit()}


class Trainer:
    """One run's model, data, optimiser and loop. What `make bench` and `make gpu-check` use: `step_on`,
    `train_iteration`, `first_nonfinite`; `fit` is the run."""

    def __init__(self, cfg: DictConfig, folder: Path, dev: RunDevice | None = None):
        self.cfg, self.folder = cfg, folder
        self.dev: RunDevice = dev or pick_device(cfg.trainer)
        if self.dev.note:
            print(f"note: {self.dev.note}", flush=True)
        torch.manual_seed(cfg.seed)  # initialisation; data order and augmentation are seeded in DeviceBatches
        m = cfg.model
        self.model = build_from_config(m)
        self.params, self.macs = count_params(self.model), count_macs(self.model)
        self.model.to(self.dev.device, memory_format=self.dev.memory_format)
        self.data = load_data(cfg.data)
        self.batches = DeviceBatches(self.data, self.dev.device, cfg.optim.batch_size, cfg.seed,
                                     augment=cfg.data.get("augment", DEFAULT_AUGMENT),
                                     channels_last=self.dev.channels_last)
        self.schedule = LrSchedule.from_config(cfg.optim, cfg.schedule, m.depth)
        # Weight decay on every parameter (BN affine and biases too): the paper says only "weight decay of
        # 0.0001"; decaying all parameters is what the Torch/Caffe ResNet code of its time did (fb.resnet.torch).
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.schedule.lr_at(0), momentum=cfg.optim.momentum,
                                   weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov,
                                   **self.dev.sgd_kwargs)
        self.lr = self.schedule.lr_at(0)  # host copy: under CUDA graphs the optimizer's lr is a device tensor
        # torch.compile the model, not the step: a compiled step breaks at backward and recompiles the optimizer.
        self.model_fn = torch.compile(self.model) if self.dev.compile else self.model
        # CUDA graphs: the whole step, captured at its first call (after any resume); experiments/graphs.py.
        self.graphed = GraphedStep(self._step, self.model, self.opt, capture=self.dev.device.type == "cuda") \
            if self.dev.cuda_graphs else None
        self.iteration, self.elapsed, self.warmup_end = 0, 0.0, None
        self.running_err = RunningError()  # the warm-up's window of recent batches
        self.acc = {"loss": 0.0, "wrong": 0, "seen": 0, "warmup": False, "t": 0.0}
        self.stop_signal = None
        self.first_bad = torch.tensor(-1, device=self.dev.device)

    # -- one optimisation step ------------------------------------------------------------
    def _step(self, x, y):
        with self.dev.autocast():
            logits = self.model_fn(x)
            loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach(), (logits.argmax(1) != y).sum()

    def step_on(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on the batch (x, y), at the current lr: (loss, wrong count), on the device."""
        return self.graphed(x, y) if self.graphed is not None else self._step(x, y)

    def set_lr(self, lr: float) -> None:
        if self.graphed is not None:
            self.graphed.set_lr(lr)
        else:
            for g in self.opt.param_groups:
                g["lr"] = lr
        self.lr = lr

    def first_nonfinite(self) -> int | None:
        """The iteration whose loss first was not finite, or None; a host sync (fit does it every 50 steps)."""
        bad = int(self.first_bad)
        return bad if bad >= 0 else None

    def train_iteration(self, warming: bool) -> tuple[float, torch.Tensor]:
        """One iteration of the loop (also what `make bench` times): the scheduled lr, the run's
        batch, the step, and on-device sums with no host sync. Returns the lr and the wrong count."""
        it = self.iteration
        lr = self.schedule.lr_at(it, warming)
        if self.lr != lr:
            self.set_lr(lr)
        x, y = self.batches.train_batch(it)
        loss, wrong = self.step_on(x, y)
        # The first non-finite loss, found later without a sync per step.
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss), it + 1, self.first_bad)
        self.acc["loss"] = self.acc["loss"] + loss * len(y)
        self.acc["wrong"] = self.acc["wrong"] + wrong
        self.acc["seen"] += len(y)
        self.acc["warmup"] |= warming
        self.iteration = it + 1
        return lr, wrong

    # -- checkpoint -------------------------------------------------------------------------
    def save(self):
        opt = self.opt.state_dict()
        for g in opt["param_groups"]:  # a float, not the CUDA graph's device tensor: portable across devices
            g["lr"] = self.lr
        atomic_torch_save(self.folder / "last.pt", {
            "format_version": FORMAT_VERSION, "iteration": self.iteration, "elapsed": self.elapsed,
            "result_config": result_config(self.cfg),  # lets a resume refuse a changed config on its own
            "warmup_end": self.warmup_end, "warmup_window": self.running_err.state(), "acc": self.acc,
            "model": self.model.state_dict(), "opt": opt, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.dev.device.type == "cuda" else None,
        })

    def load(self) -> bool:
        """Resume from last.pt. Everything is read onto the CPU (the RNG states must stay there:
        `set_rng_state` takes only a CPU ByteTensor); `load_state_dict` copies weights and momentum onto
        the run's device. Any failure leaves the fresh model and optimiser as they were and retrains."""
        path = self.folder / "last.pt"
        if not (self.cfg.trainer.resume and path.exists()):
            return False
        fresh = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()), torch.get_rng_state())
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            gap = self._metrics_gap(state["iteration"])
            if gap:  # the curve before the checkpoint is damaged: only a fresh run can redo it exactly
                print(f"warning: {gap}; training this run from the start", file=sys.stderr)
                path.unlink(missing_ok=True)
                return False
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            for g in self.opt.param_groups:  # this device's SGD kernel, whichever device saved the checkpoint
                g.update(self.dev.sgd_kwargs)
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and self.dev.device.type == "cuda":
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            acc = {k: v.to(self.dev.device) if isinstance(v, torch.Tensor) else v for k, v in state["acc"].items()}
            iteration, elapsed, warmup_end = state["iteration"], state["elapsed"], state["warmup_end"]
            window = list(state.get("warmup_window", []))
        except Exception as e:  # a truncated or corrupt checkpoint: retrain rather than crash
            print(f"warning: {path} is unreadable ({type(e).__name__}); training this run from the start",
                  file=sys.stderr)
            self.model.load_state_dict(fresh[0])
            self.opt.load_state_dict(fresh[1])
            torch.set_rng_state(fresh[2])
            path.unlink(missing_ok=True)
            return False
        self.iteration, self.elapsed, self.warmup_end, self.acc = iteration, elapsed, warmup_end, acc
        self.running_err.batches = window
        self.lr = float(self.opt.param_groups[0]["lr"])
        print(f"{self.folder}: resuming from last.pt at iteration {self.iteration}", flush=True)
        return True

    def _metrics_gap(self, upto: int) -> str | None:
        """Why metrics.jsonl cannot be continued from a checkpoint at `upto`, or None when it can."""
        path, every, total = self.folder / "metrics.jsonl", self.cfg.trainer.eval_every, self.cfg.schedule.iterations
        want = list(range(every, upto + 1, every)) + ([upto] if upto == total and total % every else [])
        have = [r["iter"] for r in read_metrics(path, upto)]
        if have == want:
            return None
        return (f"{path} is truncated or corrupt: {len(have)} readable evaluation points up to the checkpoint "
                f"at iteration {upto}, expected {len(want)}")

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, tr = self.cfg, self.cfg.trainer
        total = cfg.schedule.iterations
        metrics_path = self.folder / "metrics.jsonl"
        resumed = self.load()
        # Lines past the checkpoint (written after it, before a kill) are recomputed, not duplicated.
        rows = read_metrics(metrics_path, self.iteration if resumed else -1)
        atomic_write_text(metrics_path, "".join(to_jsonl(r) for r in rows))
        probe_at = self._probe_points(total)
        progress = Progress(tr.progress, total, self.iteration, self.folder, cfg.optim.batch_size)
        fixed_x, fixed_y = self.batches.fixed_train_batch(128) if tr.probes else (None, None)
        warming = self.schedule.warmup and self.warmup_end is None
        bad_at = None
        old = self._trap_signals()
        try:
            t0 = time.perf_counter()
            while self.iteration < total:
                lr, wrong = self.train_iteration(warming)
                if warming:
                    self.running_err.add(wrong, cfg.optim.batch_size)
                    if self.iteration % RUNNING_ERR_CHECK_EVERY == 0 and \
                            self.schedule.warmup_should_end(self.iteration, self.running_err.percent()):
                        warming, self.warmup_end = False, self.iteration
                eval_now = self.iteration % tr.eval_every == 0 or self.iteration == total
                if eval_now or self.iteration % 50 == 0 or self.stop_signal:
                    bad_at = self.first_nonfinite()
                    if bad_at is not None:
                        break
                    progress.update(self.iteration, lr, self.acc)
                if eval_now:
                    self.elapsed += time.perf_counter() - t0
                    row = self._eval_point(lr, probe_at, fixed_x, fixed_y)
                    append_metrics(metrics_path, row)
                    rows.append(row)
                    progress.point(row)
                    t0 = time.perf_counter()
                if self.iteration % tr.ckpt_every == 0 or self.iteration == total or self.stop_signal:
                    self.elapsed += time.perf_counter() - t0
                    self.save()
                    fault_point("after:checkpoint")
                    t0 = time.perf_counter()
                if self.stop_signal:
                    if self.stop_signal == "SIGUSR2" and callable(old.get(signal.SIGUSR2)):
                        old[signal.SIGUSR2](signal.SIGUSR2, None)  # checkpoint saved: submitit requeues, exits
                    raise Interrupted(f"stopped by {self.stop_signal} at iteration {self.iteration}; "
                                      f"rerun the same command to resume from {self.folder / 'last.pt'}")
        finally:
            progress.close()
            self._restore_signals(old)
        return self._summary(rows, bad_at)

    def _eval_point(self, lr, probe_at, fixed_x, fixed_y) -> dict:
        acc, it = self.acc, self.iteration
        seen = max(acc["seen"], 1)
        row = {"format_version": FORMAT_VERSION, "iter": it,
               "epoch": it * self.cfg.optim.batch_size / self.batches.train_size, "lr": lr,
               "warmup": bool(acc["warmup"]), "train_loss": float(acc["loss"]) / seen,
               "train_err": 100.0 * float(acc["wrong"]) / seen, "elapsed_s": round(self.elapsed, 3),
               "images_per_s": round(seen / max(self.elapsed - acc["t"], 1e-9), 1)}
        probe = self.cfg.trainer.probes and it in probe_at
        row |= evaluate(self.model, self.batches, self.dev.autocast, self.cfg.trainer.eval_batch_size, probe)
        if probe:
            row["grad_norm"] = gradient_norms(self.model, fixed_x, fixed_y, self.dev.autocast)
        self.acc = {"loss": 0.0, "wrong": 0, "seen": 0, "warmup": False, "t": self.elapsed}
        return row

    def _probe_points(self, total: int) -> set[int]:
        """First and last evaluation points, and the first point at or after each lr drop."""
        every = self.cfg.trainer.eval_every
        points = sorted({min(i, total) for i in range(every, total + every, every)})
        chosen = {points[0], points[-1]}
        for m in self.schedule.milestones:
            after = [p for p in points if p >= m]
            if after:
                chosen.add(after[0])
        return chosen

    def _summary(self, rows: list[dict], bad_at: int | None) -> dict:
        cfg, last = self.cfg, rows[-1] if rows else {}
        scored = [r for r in rows if "test_err" in r]
        best = min(scored, key=lambda r: r["test_err"]) if scored else {}
        return base_summary(cfg) | {
            "status": "diverged" if bad_at is not None else "completed", "diverged_at": bad_at,
            "data_source": self.data.source, "augment": self.batches.augment, "data_split": self.data.split, "eval_split": self.data.split,
            "train_size": self.batches.train_size, "eval_size": len(self.data.eval_labels),
            "params": self.params, "macs": self.macs, "batch_size": cfg.optim.batch_size, "lr": cfg.optim.lr,
            "milestones": list(self.schedule.milestones), "gamma": self.schedule.gamma,
            "weight_decay": cfg.optim.weight_decay, "momentum": cfg.optim.momentum,
            "warmup": self.schedule.warmup, "warmup_end_iter": self.warmup_end,
            "warmup_max_iters": self.schedule.warmup_max_iters if self.schedule.warmup else None,
            "iterations": cfg.schedule.iterations, "iterations_done": self.iteration,
            "final_train_err": last.get("train_err"), "final_test_err": last.get("test_err"),
            "final_train_loss": last.get("train_loss"), "final_test_loss": last.get("test_loss"),
            "best_test_err": best.get("test_err"), "best_test_iter": best.get("iter"),
            "wall_time_s": round(self.elapsed, 2),
            "images_per_s": round(self.iteration * cfg.optim.batch_size / max(self.elapsed, 1e-9), 1),
            "response_layers": [n for n, _ in response_layers(self.model)],
        } | self.dev.describe()

    # -- signals: a scheduler's SIGTERM or a Ctrl-C checkpoints and stops cleanly -----------------
    def _trap_signals(self):
        def handler(signum, _frame):
            self.stop_signal = signal.Signals(signum).name
        trapped = [signal.SIGTERM, signal.SIGINT]
        usr2 = getattr(signal, "SIGUSR2", None)
        if usr2 is not None and callable(signal.getsignal(usr2)):
            # submitit's (LAUNCHER=slurm) warning before a time limit or preemption: checkpoint first, then
            # hand it on to submitit, which requeues the job; the requeued job resumes from last.pt
            trapped.append(usr2)
        try:
            return {s: signal.signal(s, handler) for s in trapped}
        except ValueError:  # not the main thread (e.g. some launchers): leave signals alone
            return {}

    @staticmethod
    def _restore_signals(old):
        for s, h in old.items():
            signal.signal(s, h)


SWEEP_ERRORS_ENV = "SUITE_SWEEP_ERRORS"  # set by `make sweep`: a file collecting the runs' user errors


def tell_sweep(cfg: DictConfig, error: str) -> None:
    """Append {run, error} to the sweep's error file: a Hydra multirun exits 0 whatever its jobs
    return, and the job may run in another process (joblib, submitit), so a file is the channel."""
    path = os.environ.get(SWEEP_ERRORS_ENV)
    if not path:
        return
    try:
        run = str(folder_of(cfg))
    except Exception:  # a config too broken to name its folder
        run = "?"
    try:  # one O_APPEND write per line: lines from parallel jobs do not interleave
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, (json.dumps({"run": run, "error": error}) + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # the sweep is gone or its temp folder unreachable (another node): the printed line stays


@hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    hc = HydraConfig.get()
    in_sweep = hc.mode == RunMode.MULTIRUN
    if in_sweep and "joblib" in str(hc.launcher.get("_target_", "")).lower() and cfg.trainer.device in ("auto", "cuda"):
        claim_gpu(Path(hc.sweep.dir) / ".gpu-slots")  # one run per GPU, chosen before this worker starts CUDA
    try:
        summary = run(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        if in_sweep:  # the other runs go on; `make sweep` names this one at the end and exits 2
            tell_sweep(cfg, str(e))
            return {"status": "failed", "error": str(e)}
        sys.exit(2)
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(143 if "SIGTERM" in str(e) else 130)
    except WriteError as e:  # a full disk fails every later run too: stop the sweep here
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        print(f"error: run {folder_of(cfg)} failed: {type(e).__name__}: {e}", file=sys.stderr)
        if in_sweep:
            return {"status": "failed", "error": str(e)}
        raise
    print(f"{folder_of(cfg)}: {summary.get('status')}"
          + (f", final train/test error {summary['final_train_err']:.2f}% / {summary['final_test_err']:.2f}%"
             if summary.get("final_test_err") is not None else ""))
    return summary


if __name__ == "__main__":
    main()
