"""A completed run's trained net with its own data and arithmetic, for the tools that measure it
(evaluate.py, lesion.py, landscape.py), and the JSON files those tools write beside it.

The net, data, device and precision are found here once for all of them, so an
unchanged net evaluated here gives the run's recorded final test error. A tool's file records the
settings it was computed with (the weights' hash among them); `up_to_date` lets a rerun skip it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from experiments.contract import (COMPLETED, FORMAT_VERSION, FormatError, arch_kind, atomic_write, check_version,
                                  read_json, shortcut_name)
from experiments.data import DEFAULT_AUGMENT, DataError, DeviceBatches, load_data
from experiments.device import RunDevice, pick_device, tool_device
from experiments.run.resume_guard import recorded_precision
from experiments.weights import WEIGHTS, WeightsError, load_trained, run_config

PRECISION_CHOICES = ("run", "fp32", "bf16")  # run: the precision the run trained in (trainer.precision_used)


class OptionError(ValueError):
    """An option the user gave that cannot work; str(e) names the fix."""


# What a tool's command line reports as one line and exit status 2: mistakes a user can fix.
USER_ERRORS = (WeightsError, DataError, FormatError, OptionError)


@dataclass
class TrainedRun:
    """A completed run, opened cheaply: the net and the data are loaded on first use, so a tool whose
    file is up to date (settings need only the config, the device and the weights' hash) loads nothing."""
    run_dir: Path
    cfg: DictConfig   # config.yaml, with the caller's data root and device put in
    dev: RunDevice    # where and in what precision the tools compute

    @property
    def name(self) -> str:
        """'resnet-56-A/seed=0': the run as the report names it."""
        return f"{self.run_dir.parent.name}/{self.run_dir.name}"

    @cached_property
    def weights_sha256(self) -> str:
        """The weights' hash: a tool's result belongs to these weights and no others (a retrained net)."""
        digest = hashlib.sha256()
        with open(self.run_dir / WEIGHTS, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    @cached_property
    def model(self) -> torch.nn.Module:
        """The trained net (load_trained: checked against config.yaml), eval mode, on the device."""
        return load_trained(self.run_dir).to(self.dev.device, memory_format=self.dev.memory_format)

    @cached_property
    def batches(self) -> DeviceBatches:
        cfg = self.cfg
        return DeviceBatches(load_data(cfg.data), self.dev.device, cfg.optim.batch_size, cfg.seed,
                             augment=cfg.data.get("augment", DEFAULT_AUGMENT), channels_last=self.dev.channels_last)

    def identity(self) -> dict:
        m = self.cfg.model
        return {"run": self.name, "arch": arch_kind(str(m.arch)), "depth": int(m.depth),
                "shortcut": shortcut_name(str(m.arch), str(m.shortcut)), "seed": int(self.cfg.seed),
                "eval_split": str(self.cfg.data.get("split", "test"))}

    def computed_with(self) -> dict:
        d = self.dev.describe()
        return {"device": d["device"], "device_name": d["device_name"], "precision": self.dev.precision,
                "threads": d["threads"], "torch_version": torch.__version__}


def open_run(run_dir: Path, data_root: str | None = None, device: str | None = None,
             precision: str = "run") -> TrainedRun:
    """A completed run opened for measuring: its config, device and recorded precision;
    `precision` other than "run" overrides the recorded one (bf16 is emulated, hence slow, on CPUs
    without native bf16). Raises WeightsError with one line where the folder holds no run."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if not (run_dir / WEIGHTS).is_file():
        raise WeightsError(f"{run_dir / WEIGHTS} is missing: the run has not completed since the suite keeps its "
                           f"weights (rerun its sweep: a completed run with its last.pt gets them from it)")
    with open_dict(cfg):
        if data_root is not None:
            cfg.data.root = data_root
        if device is not None:
            cfg.trainer.device = device
        if precision != "run":
            cfg.trainer.precision = precision
    recorded = recorded_precision(run_dir / "config.yaml") if precision == "run" else None
    return TrainedRun(run_dir, cfg, pick_device(cfg.trainer, recorded))


def completed_runs(exp_dir: Path) -> tuple[list[Path], list[Path]]:
    """(completed runs with weights, completed runs without) of an experiment folder, in name order."""
    with_weights, without = [], []
    for run_dir in sorted(Path(exp_dir).glob("runs/*/seed=*")):
        summary = read_json(run_dir / "summary.json")
        if isinstance(summary, dict) and summary.get("status") == COMPLETED:
            (with_weights if (run_dir / WEIGHTS).is_file() else without).append(run_dir)
    return with_weights, without


def read_result(path: Path) -> dict | None:
    """A tool's earlier file, or None when it is missing, unreadable or of another format (then it is
    recomputed); a newer format than ours is kept: FormatError, one line."""
    found = read_json(path)
    if not isinstance(found, dict):
        return None
    check_version(found.get("format_version"), path)
    return found if found.get("format_version") == FORMAT_VERSION and isinstance(found.get("settings"), dict) else None


def up_to_date(found: dict | None, settings: dict) -> bool:
    """Whether an earlier result was computed with exactly these settings (JSON-equal)."""
    return found is not None and found.get("settings") == json.loads(json.dumps(settings))


def write_result(path: Path, result: dict) -> None:
    """Atomically: a reader (the report) never sees half a file."""
    text = json.dumps({"format_version": FORMAT_VERSION, **result}, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))



def common_options(p: argparse.ArgumentParser) -> None:
    """The options every net-measuring tool shares (lesion, landscape, analyse_nets)."""
    p.add_argument("--data-root", help="where the run's images are now, if not at its recorded data.root")
    p.add_argument("--device", help="where to compute: auto, cpu, cuda, cuda:N or mps (default: the run's "
                   "trainer.device)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="run",
                   help="run (default): the precision the run trained in; fp32 where bf16 is emulated (slow)")
    p.add_argument("--force", action="store_true", help="recompute even if the file's settings match")


def open_from_args(args, run_dir: Path) -> TrainedRun:
    """open_run with the common options' data root, device and precision."""
    try:
        device = str(tool_device(args.device)) if args.device else None
    except ValueError as e:
        raise OptionError(str(e)) from None
    return open_run(run_dir, args.data_root, device, args.precision)


def check_positive(args, *names: str) -> None:
    """OptionError for an option among `names` given as zero or less."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise OptionError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def run_tool(args, measure_run, path: Path, describe) -> int:
    """The end of a measuring tool's main: open the run, `measure_run(run)` -> (result, computed), one line
    saying what was written (or that the file is up to date); a user error is one line and exit 2."""
    try:
        result, computed = measure_run(open_from_args(args, args.run_dir))
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verb = "wrote" if computed else "up to date (same settings; --force recomputes):"
    print(f"{verb} {path}: {describe(result)}")
    return 0

