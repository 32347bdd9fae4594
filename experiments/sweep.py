"""`make sweep`: plan an experiment's Hydra multirun, print it, run it, and report every run.

The sweep itself is Hydra's: this wrapper expands the experiment's `hydra.sweeper.params` the way
Hydra's basic sweeper does (to print the plan with each run's status and cost), then launches
`python -m experiments.train --multirun experiment=<exp> ...` with the chosen launcher.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from experiments.checks import ConfigError, check_config
from experiments.device import available_cores, detect_device_type, planned_native_bf16, resolve_precision
from experiments.models import build_from_config, count_macs
from experiments.runfiles import FORMAT_VERSION, atomic_write_json, read_json, run_dir

CONF = Path(__file__).resolve().parents[1] / "conf"
LAUNCHERS = ("basic", "joblib", "slurm", "local")  # Hydra launcher configs: built-in basic, joblib, conf/hydra/launcher/*
# Training images/s per GMAC of forward work, measured on this project's machines; used only when
# results/bench/latest.json has no figure for the device (see `make bench`).
# (ResNet-56 at 0.125 GMAC: ~450 img/s bf16 on 2 EPYC cores; the H100 target is 25k img/s.)
FALLBACK_GMAC_IMAGES_PER_S = {"cpu": 450 * 0.125, "cuda": 25_000 * 0.125}


class SweepError(Exception):
    """A sweep request a user can fix; printed as one line."""


@dataclass
class PlannedRun:
    overrides: list[str]
    folder: Path
    status: str
    iterations: int
    images: int
    macs: int
    precision: str  # what the run will compute in on this machine (for the time estimate)


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def base_overrides(args) -> list[str]:
    out = [f"experiment={args.exp}", f"results_dir={args.results}"]
    if args.data:
        out.append(f"data={args.data}")
    if args.data_root:
        out.append(f"data.root={args.data_root}")
    if args.jobs > 1 and args.launcher in ("joblib",):
        out.append(f"trainer.threads={max(1, available_cores() // args.jobs)}")  # share the cores
    if args.launcher != "basic":  # chosen before the user's overrides, so hydra.launcher.* can refine it
        out.append(f"hydra/launcher={args.launcher}")
    if args.launcher == "joblib":
        out.append(f"hydra.launcher.n_jobs={args.jobs}")
    return out + list(args.overrides)


def expand(args) -> list[list[str]]:
    """Every run of the sweep as its list of overrides, in Hydra's order (call inside initialize)."""
    cfg = compose("config", overrides=base_overrides(args), return_hydra_config=True)
    params = dict(OmegaConf.to_container(cfg.hydra.sweeper.params or {}, resolve=False))
    for override in args.overrides:  # as in Hydra, the command line wins over the experiment's params
        key, _, value = override.partition("=")
        if key in params:
            params[key] = value
    params["seed"] = ",".join(str(s) for s in range(args.seeds))
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return BasicSweeper.split_arguments(parsed, None)[0]


def plan(args) -> list[PlannedRun]:
    """Every run with its status and cost. Never starts CUDA: a context here would hold GPU memory for the
    whole sweep (device type and native bf16 come from NVML, MACs from the meta device)."""
    runs = []
    device = _device_type()
    native = planned_native_bf16(device)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for sweep_overrides in expand(args):
            cfg = compose("config", overrides=base_overrides(args) + sweep_overrides)
            try:
                check_config(cfg)
            except ConfigError as e:
                raise SweepError(f"{' '.join(sweep_overrides)}: {e}") from None
            m = cfg.model
            folder = run_dir(cfg.results_dir, cfg.experiment_name, m.arch, m.depth, m.shortcut, cfg.seed)
            summary = read_json(folder / "summary.json")
            status = summary["status"] if summary and summary.get("status") in ("completed", "diverged") else (
                "training" if locked_elsewhere(folder) else "partial" if (folder / "last.pt").exists() else "to do")
            runs.append(PlannedRun(sweep_overrides, folder, status, cfg.schedule.iterations,
                                   cfg.schedule.iterations * cfg.optim.batch_size, _macs(m),
                                   resolve_precision(cfg.trainer.precision, device, native)))
    return runs


_MAC_CACHE: dict = {}


def _macs(m) -> int:
    key = tuple(sorted((k, str(v)) for k, v in m.items()))
    if key not in _MAC_CACHE:  # counted by a forward pass on the meta device: shapes only, no memory
        with torch.device("meta"):
            _MAC_CACHE[key] = count_macs(build_from_config(m))
    return _MAC_CACHE[key]


def estimate_seconds(run: PlannedRun, device: str) -> float:
    rate = FALLBACK_GMAC_IMAGES_PER_S[device]
    bench = read_json(Path("results/bench/latest.json")) or {}
    rows = [r for r in bench.get("rows", []) if r.get("device") == device and r.get("suite_images_per_s")
            and r.get("precision") == run.precision]
    if rows:  # images/s x GMAC of the benchmarked models at the run's precision, averaged
        rate = sum(r["suite_images_per_s"] * r["macs"] / 1e9 for r in rows) / len(rows)
    return run.images * run.macs / 1e9 / rate


def _device_type() -> str:
    """cuda or cpu (the estimates know these two), without starting CUDA."""
    return "cuda" if detect_device_type() == "cuda" else "cpu"


def print_plan(runs: list[PlannedRun], args) -> None:
    device = _device_type()
    todo = [r for r in runs if r.status != "completed" and r.status != "diverged"]
    print(f"sweep {args.exp}: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to train "
          f"(launcher {args.launcher}, jobs {args.jobs}, results {args.results})")
    total = 0.0
    for r in runs:
        secs = estimate_seconds(r, device) if r in todo else 0.0
        total += secs
        print(f"  {r.status:8s} {r.folder}  {r.iterations} it, {r.macs * r.images * 3 / 1e15:7.2f} PMAC"
              + (f", ~{secs / 60:.0f} min" if secs else ""))
    print(f"estimated time on {device} (one job at a time): ~{total / 60:.0f} min"
          + (" (rough: run `make bench` to calibrate)" if not Path("results/bench/latest.json").exists() else ""))


def write_plan(runs: list[PlannedRun], args) -> None:
    """results/<exp>/plan.json: the runs this sweep asked for, so the analysis can name the
    ones that are missing, not only the ones that failed."""
    exp_dir = runs[0].folder.parents[2]
    atomic_write_json(exp_dir / "plan.json", {
        "format_version": FORMAT_VERSION, "experiment": args.exp, "seeds": args.seeds,
        "runs": sorted(str(r.folder.relative_to(exp_dir)) for r in runs)})


def locked_elsewhere(folder: Path) -> bool:
    """True while another process holds the run's lock, i.e. is training it right now. The probe holds
    the lock for microseconds; a trainer arriving meanwhile waits for it (train.LOCK_WAIT_S)."""
    if not (folder / ".lock").exists():  # never create a lock file (or folders) just to look
        return False
    try:
        with FileLock(folder / ".lock", timeout=0):
            return False
    except Timeout:
        return True


def launch(args) -> int:
    cmd = [sys.executable, "-m", "experiments.train", "--multirun", *base_overrides(args),
           f"seed={','.join(str(s) for s in range(args.seeds))}"]
    print("$ " + " ".join(cmd), flush=True)
    child = subprocess.Popen(cmd)

    def forward(signum, _frame):
        # Ctrl-C reaches the whole process group, a scheduler's SIGTERM maybe only this process: either
        # way the run in progress checkpoints and stops, and this driver waits for it instead of killing it.
        if child.poll() is None:
            child.send_signal(signum)
    try:
        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        old = {}
    try:
        return child.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def report(runs: list[PlannedRun]) -> int:
    print(f"\n{'run':44s} {'status':10s} {'train err':>9s} {'test err':>9s} {'time':>8s}")
    bad = elsewhere = 0
    for r in runs:
        s = read_json(r.folder / "summary.json") or {
            "status": "corrupt" if (r.folder / "summary.json").exists()
            else "partial" if (r.folder / "last.pt").exists() else "missing"}
        status = s.get("status", "corrupt")
        if status == "missing" and locked_elsewhere(r.folder):
            status, elsewhere = "training", elsewhere + 1
        bad += status not in ("completed", "diverged", "training")
        fmt = lambda v: f"{v:8.2f}%" if isinstance(v, (int, float)) else f"{'-':>9s}"  # noqa: E731
        wall = s.get("wall_time_s")
        print(f"{str(r.folder):44s} {status:10s} {fmt(s.get('final_train_err'))} {fmt(s.get('final_test_err'))} "
              f"{(f'{wall / 60:6.1f}m' if wall else '-'):>8s}")
    if elsewhere:  # e.g. two sweeps started on one results folder: each run is trained once, by one of them
        print(f"{elsewhere} run(s) are being trained by another process right now; rerun the same command "
              f"after it finishes to see their results", file=sys.stderr)
    if bad:
        print(f"{bad} run(s) did not complete; rerun the same command to resume them", file=sys.stderr)
    return 1 if bad else 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exp", default="quick")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--launcher", default="basic")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--results", default="results")
    p.add_argument("--data")
    p.add_argument("--data-root")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = p.parse_args(argv)
    if args.exp not in experiments():
        raise SweepError(f"no experiment {args.exp!r}; choose one of {', '.join(experiments())} (conf/experiment/)")
    if args.seeds < 1:
        raise SweepError(f"SEEDS must be at least 1, got {args.seeds}")
    if args.launcher not in LAUNCHERS:
        raise SweepError(f"unknown LAUNCHER {args.launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    if args.jobs < 1 or (args.launcher != "slurm" and args.jobs > available_cores()):
        raise SweepError(f"JOBS={args.jobs} must be between 1 and this machine's {available_cores()} cores")
    if args.jobs > 1 and args.launcher == "basic":
        raise SweepError(f"JOBS={args.jobs} needs LAUNCHER=joblib: the basic launcher trains one run at a time")
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        runs = plan(args)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_plan(runs, args)
    if args.dry_run:
        return 0
    write_plan(runs, args)
    rc = launch(args)
    code = report(runs)
    if rc in (130, 143, -signal.SIGINT, -signal.SIGTERM):
        print(f"interrupted: the sweep stopped on {'SIGTERM' if rc in (143, -signal.SIGTERM) else 'SIGINT'}; "
              f"rerun the same command to resume it", file=sys.stderr)
        return 143 if rc in (143, -signal.SIGTERM) else 130
    return code or (1 if rc else 0)


if __name__ == "__main__":
    sys.exit(main())
