"""One run: one network, one config, one seed. `python -m experiments.train [hydra overrides]`.

Reads top to bottom: check the config (nothing created on error), take the run's lock, refuse a
folder computed under another config (resume_guard.py), train or resume (trainer.py), write
summary.json last and atomically.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hydra
import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig

from experiments import CONF
from experiments.contract import COMPLETED, FAILED, FINISHED, FORMAT_VERSION, arch_kind, read_json, run_dir, shortcut_name
from experiments.data import DataError
from experiments.device import claim_gpu, pick_device
from experiments.models import block_name, model_name
from experiments.run.checks import ConfigError, check_config
from experiments.run.resume_guard import config_yaml, recorded_precision, refuse_changed_config
from experiments.run.stopping import Interrupted, budget_spent, run_deadline
from experiments.run.trainer import Trainer
from experiments.runfiles import WriteError, atomic_write_bytes, atomic_write_json, atomic_write_text, load_checkpoint
from experiments.weights import WEIGHTS, weights_bytes

LOCK_WAIT_S = 2  # a run locked longer than this is being trained by another process: skip it


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
    """Train (or resume, or return) the run `cfg` names; returns its summary. A wall-clock budget
    (trainer.time_limit, or the sweep's TIME_LIMIT) already spent starts nothing (stopping.Interrupted)."""
    check_config(cfg)
    folder = folder_of(cfg)
    deadline = run_deadline(cfg.trainer.get("time_limit"), time.time())
    if budget_spent(deadline):
        raise Interrupted(None, None, folder / "last.pt")
    created = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. a file where a folder of the path should be, a read-only disk
        raise WriteError(f"cannot create the run folder {folder} ({e.strerror or e}); make results_dir a writable "
                         f"folder (RESULTS=...) and remove what is in the way, then rerun") from None
    try:
        with FileLock(folder / ".lock", timeout=LOCK_WAIT_S):
            return _run_locked(cfg, folder, deadline)
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


def _run_locked(cfg: DictConfig, folder: Path, deadline: float | None = None) -> dict:
    summary_path, ckpt_path = folder / "summary.json", folder / "last.pt"
    for tmp in folder.glob(".*.tmp"):  # left by a kill mid-write; the real files are intact
        tmp.unlink()
    if cfg.trainer.resume:
        done = read_json(summary_path)
        finished = isinstance(done, dict) and done.get("status") in FINISHED
        refuse_changed_config(cfg, folder, finished)
        if done is None and summary_path.exists():
            print(f"warning: {summary_path} is unreadable (truncated or corrupt); redoing the run from its "
                  f"checkpoint, if any", file=sys.stderr)
        if finished:
            print(f"{folder}: already {done['status']}, nothing to do")
            if done["status"] == COMPLETED:
                weights_from_checkpoint(cfg, folder, done)
            return done
    else:
        for stale in (summary_path, ckpt_path, folder / "metrics.jsonl"):
            stale.unlink(missing_ok=True)
    resuming = cfg.trainer.resume and ckpt_path.exists()
    dev = pick_device(cfg.trainer, recorded_precision(folder / "config.yaml") if resuming else None)
    atomic_write_text(folder / "config.yaml", config_yaml(cfg, dev))
    summary_path.unlink(missing_ok=True)  # a failed summary from an earlier try is stale now
    try:
        trainer = Trainer(cfg, folder, dev)
        trainer.deadline = deadline
        summary = base_summary(cfg) | trainer.fit()
    except (ConfigError, DataError, Interrupted, WriteError):  # not results: nothing to record
        raise
    except Exception as e:  # a crash is a result of this run, not of the sweep
        summary = {"status": FAILED, "error": f"{type(e).__name__}: {e}"}
        atomic_write_json(summary_path, base_summary(cfg) | summary)
        raise
    if summary["status"] == COMPLETED:  # the trained net as data, before summary.json marks the run done
        atomic_write_bytes(folder / WEIGHTS, weights_bytes(trainer.model.state_dict(), cfg.model))
    atomic_write_json(summary_path, summary)
    return summary


def weights_from_checkpoint(cfg: DictConfig, folder: Path, done: dict) -> None:
    """A run completed before the suite wrote weights.safetensors gets them from its final last.pt, read as
    data (never unpickled code); a checkpoint of another iteration, or an unreadable one, is left alone."""
    path = folder / "last.pt"
    if (folder / WEIGHTS).exists() or not path.exists():
        return
    try:
        state = load_checkpoint(path)
        if state.get("iteration") != done.get("iterations_done"):
            return
        data = weights_bytes(state["model"], cfg.model)
    except Exception as e:
        print(f"warning: {path} gave no weights ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
              f"{folder} stays without {WEIGHTS}", file=sys.stderr)
        return
    atomic_write_bytes(folder / WEIGHTS, data)
    print(f"{folder}: wrote {WEIGHTS} from its final checkpoint")


def base_summary(cfg: DictConfig) -> dict:
    m = cfg.model
    return {"format_version": FORMAT_VERSION, "experiment": cfg.experiment_name,
            "run": folder_of(cfg).parent.name, "arch": arch_kind(m.arch), "depth": m.depth,
            "shortcut": shortcut_name(m.arch, m.shortcut), "seed": cfg.seed,
            "model_name": model_name(m.arch, m.depth), "block": block_name(m.arch), "stem": m.get("stem", "cifar"),
            "torch_version": torch.__version__, "git_commit": git_commit()}


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
            return {"status": FAILED, "error": str(e)}
        sys.exit(2)
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(e.exit_status)
    except WriteError as e:  # a full disk fails every later run too: stop the sweep here
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        print(f"error: run {folder_of(cfg)} failed: {type(e).__name__}: {e}", file=sys.stderr)
        if in_sweep:
            return {"status": FAILED, "error": str(e)}
        raise
    print(f"{folder_of(cfg)}: {summary.get('status')}"
          + (f", final train/test error {summary['final_train_err']:.2f}% / {summary['final_test_err']:.2f}%"
             if summary.get("final_test_err") is not None else ""))
    return summary


if __name__ == "__main__":
    main()
