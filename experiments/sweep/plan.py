"""The plan of a sweep: every run it asks for (PlannedRun), with its state on disk and its cost, composed and
checked before anything trains; plan.json, the runs asked for; and the data sources the runs read, checked once."""
from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from experiments import CONF
from experiments.contract import FINISHED, FORMAT_VERSION, FormatError, read_json, read_metrics
from experiments.data import DataError, DataUnavailable, prepare_source
from experiments.device import resolve_trainer
from experiments.models import build_from_config, count_macs
from experiments.run.checks import ConfigError, check_config
from experiments.run.resume_guard import finished_recipes, recorded_precision, refuse_changed_config, refuse_other_recipe
from experiments.runfiles import atomic_write_json
from experiments.sweep.request import SweepError, check_overrides, expand, hydra_error
from experiments.train import folder_of

# What the sweep calls a run that is not finished (beside the contract's statuses): not begun, begun
# (a checkpoint to resume), being trained by another process now.
TO_DO, PARTIAL, TRAINING = "to do", "partial", "training"


@dataclass
class PlannedRun:
    overrides: list[str]
    folder: Path
    status: str
    iterations: int
    images: int
    macs: int
    precision: str  # what the run computed in (finished), resumes in (partial) or will compute in here
    data: dict      # the run's data node, checked once per distinct source before any run starts
    device: str     # the device type it will train on here: cuda, mps or cpu
    done: int = 0   # iterations a begun run has behind it (its curve's last point): the estimate's head start


# -- a run's state on disk ----------------------------------------------------------------------------------
def locked_elsewhere(folder: Path) -> bool:
    """True while another process holds the run's lock, i.e. is training it right now. The probe holds
    the lock for microseconds; a trainer arriving meanwhile waits for it (train.LOCK_WAIT_S). It opens
    the lock file read-only (flock works on any open file; filelock takes the same flock), so a
    read-only results folder can still be looked at."""
    try:
        fd = os.open(folder / ".lock", os.O_RDONLY)
    except OSError:  # no lock file: never create one (or folders) just to look
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)  # closing releases our probe lock
    return False


def planned_status(folder: Path) -> str:
    """completed or diverged (nothing to train), training (locked by another process), partial (a checkpoint
    to resume from) or to do."""
    summary = read_json(folder / "summary.json")
    if isinstance(summary, dict) and summary.get("status") in FINISHED:
        return summary["status"]
    return TRAINING if locked_elsewhere(folder) else PARTIAL if (folder / "last.pt").exists() else TO_DO


def iterations_done(folder: Path) -> int:
    """About how far a begun run got: its curve's last point, within one evaluation of the checkpoint it
    resumes from (a signal checkpoints between evaluations). 0 where the curve is missing or unreadable."""
    try:
        points = read_metrics(folder / "metrics.jsonl")
    except (FormatError, OSError):
        return 0
    return points[-1]["iter"] if points else 0


# -- every run of the sweep, composed and checked ----------------------------------------------------------
def plan(args) -> list[PlannedRun]:
    """Every run with its status and cost. Never starts CUDA: a context here would hold GPU memory for the
    whole sweep (device type and native bf16 come from NVML, MACs from one image through the model on the CPU)."""
    check_overrides(args)
    try:
        return _plan(args)
    except HydraException as e:  # an unknown key or group option in ARGS, DATA=, ...
        raise SweepError(hydra_error(e)) from None


def refuse_mixing(cfg, folder: Path, status: str, finished: list) -> None:
    """Before anything trains: a run folder computed under another config, or a run that would train under
    another recipe than the experiment's finished runs, stops the whole sweep (one line)."""
    if not cfg.trainer.resume:
        return
    try:
        refuse_changed_config(cfg, folder, finished=status in FINISHED)
        refuse_other_recipe(cfg, folder, finished)
    except ConfigError as e:
        raise SweepError(str(e)) from None


def _plan(args) -> list[PlannedRun]:
    runs, finished = [], {}
    with initialize_config_dir(str(CONF), version_base="1.3"):
        jobs = expand(args)
        print(f"planning {len(jobs)} run{'s' * (len(jobs) != 1)} of {args.exp}: composing and checking each "
              f"config, counting each model's MACs, reading each run folder's state", flush=True)
        for overrides in jobs:
            cfg = compose("config", overrides=overrides)
            try:
                check_config(cfg)
            except ConfigError as e:
                raise SweepError(f"run {cfg.model.arch}-{cfg.model.depth} seed={cfg.seed}: {e}") from None
            m, folder = cfg.model, folder_of(cfg)
            where, status = resolve_trainer(cfg.trainer, planning=True), planned_status(folder)
            runs_dir = folder.parents[1]
            if runs_dir not in finished:  # every finished run's config.yaml read once per sweep, not once per job
                finished[runs_dir] = finished_recipes(runs_dir)
            refuse_mixing(cfg, folder, status, finished[runs_dir])
            # a finished run computed, and a partial one resumes, in the precision it recorded
            recorded = recorded_precision(folder / "config.yaml") if status != TO_DO else None
            runs.append(PlannedRun(overrides, folder, status, cfg.schedule.iterations,
                                   cfg.schedule.iterations * cfg.optim.batch_size, _macs(m),
                                   recorded or where.precision,
                                   OmegaConf.to_container(cfg.data, resolve=True), where.device.type,
                                   iterations_done(folder) if status in (PARTIAL, TRAINING) and cfg.trainer.resume
                                   else 0))
    return runs


_MAC_CACHE: dict = {}


def _macs(m) -> int:
    key = tuple(sorted((k, str(v)) for k, v in m.items()))
    # One forward pass of one image on the CPU. Not on the meta device: there torch runs its Python
    # decompositions and imports torch._dynamo, which made every plan twice as slow (13 s vs 7 s for degradation).
    if key not in _MAC_CACHE:
        _MAC_CACHE[key] = count_macs(build_from_config(m))
    return _MAC_CACHE[key]


def write_plan(runs: list[PlannedRun], args) -> None:
    """results/<exp>/plan.json: the runs this sweep asked for, so the analysis can name the
    ones that are missing, not only the ones that failed."""
    exp_dir = runs[0].folder.parents[2]
    atomic_write_json(exp_dir / "plan.json", {
        "format_version": FORMAT_VERSION, "experiment": args.exp,
        "seeds": len({r.folder.name for r in runs}),
        "runs": sorted(str(r.folder.relative_to(exp_dir)) for r in runs)})


def check_data(runs: list[PlannedRun]) -> None:
    """Before any run starts: the data sources the runs read are there (the official archive downloaded
    once, here). Offline, one line says what to do instead of each run failing in turn."""
    for data in {json.dumps(r.data, sort_keys=True): r.data for r in runs}.values():
        _check_source(data)


def _check_source(data: dict) -> None:
    try:
        prepare_source(data)
    except DataUnavailable as e:
        raise SweepError(f"CIFAR-10 is not in {data['root']}/ ({e.reason}); offline, train on an image-folder copy: "
                         f"make sweep DATA=cifar10_folder DATA_ROOT=<folder or .tar.gz>, or download "
                         f"cifar-10-python.tar.gz by hand from https://www.cs.toronto.edu/~kriz/cifar.html "
                         f"into {data['root']}/") from None
    except DataError as e:
        raise SweepError(str(e)) from None
