"""Checks of a run's config that run before anything is created: a bad override ends with one
clear line (what is wrong, how to fix it) and no folder on disk.

`check_config` is the one entry, used by the run (train.run) and by the sweep planner for every run it
plans. The rules of the data and model groups live next to the code that gives those keys their meaning
(data.validate_data_config, models.build_model) and are called from here; `auto` resolves in one place,
device.resolve_trainer. The sweep's parse_args checks only the sweep's own command line (EXP, SEEDS,
LAUNCHER, JOBS), never a run's config.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from experiments.data import DataError, validate_data_config
from experiments.device import PRECISIONS, resolve_device
from experiments.models import build_from_config
from experiments.run.stopping import parse_duration


class ConfigError(ValueError):
    """A config a user can fix; str(e) is one line naming the key and the fix."""


def _positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _positive_float(value, key: str) -> float:
    # inf is no learning rate: accepted, it would be recorded as a diverged result, not as a typo
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def check_model(model) -> None:
    try:
        with torch.device("meta"):  # validates arch/depth/shortcut/stem without allocating anything
            build_from_config(model)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def check_optim(optim) -> None:
    _positive_float(optim.lr, "optim.lr")
    _positive_int(optim.batch_size, "optim.batch_size")
    if not 0 <= optim.momentum < 1:
        raise ConfigError(f"optim.momentum must be in [0, 1), got {optim.momentum!r}")
    if not 0 <= optim.weight_decay < math.inf:
        raise ConfigError(f"optim.weight_decay must be a finite number >= 0, got {optim.weight_decay!r}")


def check_schedule(schedule) -> None:
    iters = _positive_int(schedule.iterations, "schedule.iterations")
    if schedule.milestones is not None:
        ms = list(schedule.milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms) or ms != sorted(ms):
            raise ConfigError(f"schedule.milestones must be increasing positive iterations, got {ms}")
        if ms and ms[0] >= iters:
            raise ConfigError(
                f"schedule.iterations={iters} ends before the first milestone {ms[0]}; raise the iterations "
                f"or set schedule.milestones=null to scale the paper's milestones to the run"
            )
    if not 0 < schedule.gamma <= 1:
        raise ConfigError(f"schedule.gamma must be in (0, 1], got {schedule.gamma!r}")
    if schedule.warmup not in ("auto", True, False):
        raise ConfigError(f"schedule.warmup must be auto, true or false, got {schedule.warmup!r}")
    _positive_float(schedule.warmup_lr, "schedule.warmup_lr")
    if schedule.warmup_max_iters != "auto":
        _positive_int(schedule.warmup_max_iters, "schedule.warmup_max_iters")


def check_trainer(trainer) -> None:
    _positive_int(trainer.eval_every, "trainer.eval_every")
    _positive_int(trainer.ckpt_every, "trainer.ckpt_every")
    _positive_int(trainer.eval_batch_size, "trainer.eval_batch_size")
    _positive_int(trainer.probe_batch, "trainer.probe_batch")
    if trainer.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be auto, fast, fp32 or bf16, got {trainer.precision!r}")
    if trainer.threads != "auto":
        _positive_int(trainer.threads, "trainer.threads")
    for key in ("compile", "cuda_graphs"):
        if not isinstance(trainer.get(key, False), bool):
            raise ConfigError(f"trainer.{key} must be true or false, got {trainer.get(key)!r}")
    if trainer.get("time_limit") not in (None, ""):
        try:
            parse_duration(trainer.time_limit)
        except ValueError as e:
            raise ConfigError(str(e).replace("TIME_LIMIT", "trainer.time_limit")) from None
    if trainer.channels_last not in ("auto", True, False):
        raise ConfigError(f"trainer.channels_last must be auto, true or false, got {trainer.channels_last!r}")
    dev = str(trainer.device)
    try:
        kind = resolve_device(dev).type  # GPUs counted via NVML: the sweep planner must not start CUDA
    except RuntimeError:
        raise ConfigError(f"trainer.device {dev!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev != "auto":
        if kind == "cuda" and torch.cuda.device_count() == 0:
            raise ConfigError(f"trainer.device={dev} but no CUDA GPU is visible; use trainer.device=auto or cpu")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"trainer.device={dev} but MPS is not available; use trainer.device=auto or cpu")
    if trainer.get("cuda_graphs", False) and kind != "cuda":
        raise ConfigError(f"trainer.cuda_graphs=true needs a CUDA GPU, and this run is on {kind}; "
                          f"set trainer.cuda_graphs=false")


def check_results_dir(results_dir: str, experiment: str) -> None:
    if not experiment or ".." in Path(experiment).parts or Path(experiment).is_absolute():
        raise ConfigError(f"experiment_name {experiment!r} must be a relative folder name without '..'")
    path = Path(results_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"results_dir {results_dir!r} is a file, not a folder; point RESULTS/results_dir at a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"results_dir {results_dir!r} lies inside {str(existing)!r}, which is a file, not a folder; "
                          f"point RESULTS/results_dir at a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"results folder {str(existing)!r} is not writable; choose another with results_dir=... (RESULTS=...)")


def check_config(cfg) -> None:
    """Every check, cheapest first; raises ConfigError."""
    check_model(cfg.model)
    check_optim(cfg.optim)
    check_schedule(cfg.schedule)
    check_trainer(cfg.trainer)
    try:
        validate_data_config(cfg.data)
    except DataError as e:
        raise ConfigError(str(e)) from None
    check_results_dir(str(cfg.results_dir), str(cfg.experiment_name))
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
