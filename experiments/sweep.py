"""`make sweep`: plan an experiment's Hydra multirun, print it, run it, and report every run.

The sweep itself is Hydra's: this wrapper expands the experiment's `hydra.sweeper.params` the way
Hydra's basic sweeper does (to print the plan with each run's status and cost), then launches
`python -m experiments.train --multirun experiment=<exp> ...` with the chosen launcher.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, OverrideParseException
from omegaconf import OmegaConf

from experiments.checks import ConfigError, check_config
from experiments import CONF
from experiments.data import DataError, DataUnavailable, prepare_source
from experiments.device import (
    available_cores, cpu_name, detect_device_type, nvml_gpu_name, planned_native_bf16, resolve_precision,
)
from experiments.models import build_from_config, count_macs
from experiments.contract import (
    COMPLETED, CORRUPT, DAMAGED, FINISHED, FORMAT_VERSION, MISSING, FormatError, lost_curve, read_json, read_metrics,
)
from experiments.runfiles import WriteError, atomic_write_json, atomic_write_text, hydra_quote
from experiments.train import SWEEP_ERRORS_ENV, folder_of

SOURCE_TREE = Path(__file__).resolve().parents[1]  # the checkout this package runs from (if any)
LAUNCHERS = ("basic", "joblib", "slurm", "local")  # Hydra launcher configs: built-in basic, joblib, conf/hydra/launcher/*
# Training images/s per GMAC of forward work, measured on this project's machines; used only when
# no benchmark of a matching device is found (see `make bench` and bench_files).
# (ResNet-56 at 0.125 GMAC: ~450 img/s bf16 on 2 EPYC cores; the H100 target is 25k img/s.)
FALLBACK_GMAC_IMAGES_PER_S = {"cpu": 450 * 0.125, "cuda": 25_000 * 0.125}
# What the sweep calls a run that is not finished (beside the contract's statuses): not begun, begun
# (a checkpoint to resume), being trained by another process now, stopped on an error the user must fix.
TO_DO, PARTIAL, TRAINING, ERROR = "to do", "partial", "training", "error"


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
    data: dict      # the run's data node, checked once per distinct source before any run starts


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def base_overrides(args) -> list[str]:
    """What `make sweep` hands to Hydra, in order: its own choices, then ARGS (so hydra.launcher.* refines the
    launcher), then SEEDS as a seed list unless ARGS names the seeds itself."""
    # Paths are quoted for Hydra: a comma, a space or a non-ASCII letter is part of the path, not grammar.
    out = [f"experiment={args.exp}", f"results_dir={hydra_quote(args.results)}"]
    if args.data:
        out.append(f"data={args.data}")
    if args.data_root:
        out.append(f"data.root={hydra_quote(args.data_root)}")
    if args.jobs > 1 and args.launcher in ("joblib",):
        out.append(f"trainer.threads={max(1, available_cores() // args.jobs)}")  # share the cores
    if args.launcher != "basic":  # chosen before the user's overrides, so hydra.launcher.* can refine it
        out.append(f"hydra/launcher={args.launcher}")
    if args.launcher == "joblib":
        out.append(f"hydra.launcher.n_jobs={args.jobs}")
    out += list(args.overrides)
    if seeds_from_args(args) is None:
        out.append(f"seed={','.join(str(s) for s in range(args.seeds))}")
    return out


def parse_overrides(overrides: list[str]) -> list[Override]:
    # Inside initialize_config_dir the parser gets Hydra's config loader, so glob(...) can list config groups.
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    try:
        return OverridesParser.create(config_loader=loader).parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise SweepError(f"ARGS: {str(e).splitlines()[0]}; write Hydra overrides as key=value (a,b for a sweep)") from None


def seeds_from_args(args) -> str | None:
    """The seed override in ARGS (e.g. `seed=3` or `seed=0,5`), which replaces SEEDS; None if ARGS has none."""
    named = [o for o in parse_overrides(args.overrides) if o.get_key_element() == "seed"]
    return named[-1].input_line if named else None


def hydra_sweep(task_overrides: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes from these task overrides (the experiment's
    hydra.sweeper.params first, then the command line's): the cartesian product of every comma list,
    a later value of a key replacing an earlier one in place. Hydra's private API, used here only;
    tests/test_sweep.py pins its behaviour."""
    return BasicSweeper.split_arguments(parse_overrides(task_overrides), None)[0]


def split_hydra(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(hydra overrides: hydra.* and hydra/..., applied to every job; task overrides: what the sweeper combines)."""
    parsed = parse_overrides(overrides)
    return ([o.input_line for o in parsed if o.is_hydra_override()],
            [o.input_line for o in parsed if not o.is_hydra_override()])


def expand(args) -> list[list[str]]:
    """Every run of the sweep as the overrides that compose it, in Hydra's order (call inside initialize)."""
    hydra_part, task = split_hydra(base_overrides(args))
    fixed = [o.input_line for o in parse_overrides(task) if not o.is_sweep_override()]
    cfg = compose("config", overrides=hydra_part + fixed, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params or {}, resolve=False)
    return [hydra_part + job for job in hydra_sweep([f"{k}={v}" for k, v in params.items()] + task)]


def hydra_error(e: HydraException) -> str:
    """Hydra's multi-line message as one line: its first line, the options it lists, its hint."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    listed = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
    if listed is not None:
        options = takewhile(lambda line: not line.startswith("Config search path"), lines[listed + 1:])
        return f"{lines[0]}; choose one of {', '.join(options)}"
    hint = next((line for line in lines[1:] if line.startswith(("To append", "2. To use it as string"))), None)
    hint = hint and hint.removeprefix("2. ")
    return lines[0].rstrip(".") + (f"; {hint[0].lower()}{hint[1:]}" if hint else "")


def check_overrides(args) -> None:
    """A malformed ARGS override (`optim.lr=[0.1`, `foo`) as one line naming it."""
    parser = OverridesParser.create()
    for override in args.overrides:
        try:
            parser.parse_override(override)
        except HydraException as e:
            raise SweepError(f"ARGS override {override!r} is not valid Hydra syntax "
                             f"({str(e).splitlines()[0].strip()}); write it as key=value, quoting values with "
                             f"special characters: key='value'") from None


def plan(args) -> list[PlannedRun]:
    """Every run with its status and cost. Never starts CUDA: a context here would hold GPU memory for the
    whole sweep (device type and native bf16 come from NVML, MACs from the meta device)."""
    check_overrides(args)
    try:
        return _plan(args)
    except HydraException as e:  # an unknown key or group option in ARGS, DATA=, ...
        raise SweepError(hydra_error(e)) from None


def _plan(args) -> list[PlannedRun]:
    runs = []
    device = _device_type()
    native = planned_native_bf16(device)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        jobs = expand(args)
        print(f"planning {len(jobs)} runs of {args.exp}: composing and checking each config, counting each "
              f"model's MACs, reading each run folder's state", flush=True)
        for overrides in jobs:
            cfg = compose("config", overrides=overrides)
            try:
                check_config(cfg)
            except ConfigError as e:
                raise SweepError(f"run {cfg.model.arch}-{cfg.model.depth} seed={cfg.seed}: {e}") from None
            m, folder = cfg.model, folder_of(cfg)
            summary = read_json(folder / "summary.json")
            status = summary["status"] if isinstance(summary, dict) and summary.get("status") in FINISHED else (
                TRAINING if locked_elsewhere(folder) else PARTIAL if (folder / "last.pt").exists() else TO_DO)
            runs.append(PlannedRun(overrides, folder, status, cfg.schedule.iterations,
                                   cfg.schedule.iterations * cfg.optim.batch_size, _macs(m),
                                   resolve_precision(cfg.trainer.precision, device, native),
                                   OmegaConf.to_container(cfg.data, resolve=True)))
    return runs


_MAC_CACHE: dict = {}


def _macs(m) -> int:
    key = tuple(sorted((k, str(v)) for k, v in m.items()))
    if key not in _MAC_CACHE:  # counted by a forward pass on the meta device: shapes only, no memory
        with torch.device("meta"):
            _MAC_CACHE[key] = count_macs(build_from_config(m))
    return _MAC_CACHE[key]


def bench_files(results: str) -> list[Path]:
    """Benchmarks to calibrate time estimates, best first: this results folder's `make bench`
    (<results>/bench/latest.json), then committed ones (results/reference/bench/*.json) beside it and in
    the suite's source tree."""
    found = [Path(results) / "bench" / "latest.json", *sorted((Path(results) / "reference" / "bench").glob("*.json")),
             *sorted((SOURCE_TREE / "results" / "reference" / "bench").glob("*.json"))]
    return list(dict.fromkeys(p.resolve() for p in found if p.is_file()))


def this_device() -> dict:
    """What a benchmark must have run on to calibrate this machine: device type, name, CPU threads."""
    if detect_device_type() == "cuda":  # named through NVML: the planner never starts CUDA (issue 17)
        return {"device": "cuda", "device_name": nvml_gpu_name()}
    return {"device": "cpu", "device_name": cpu_name(), "threads": available_cores()}


def calibration(results: str) -> tuple[dict, Path | None]:
    """{precision: training GMAC x images/s} from the first benchmark of a matching device, and its file."""
    here = this_device()
    for path in bench_files(results):
        bench = read_json(path) or {}
        if any(bench.get(k) != v for k, v in here.items()):
            continue
        rates: dict[str, list[float]] = {}
        for r in bench.get("rows", []):
            if r.get("device") == here["device"] and r.get("suite_images_per_s") and r.get("macs"):
                rates.setdefault(r["precision"], []).append(r["suite_images_per_s"] * r["macs"] / 1e9)
        if rates:  # images/s x GMAC of the benchmarked models at each precision, averaged
            return {p: sum(v) / len(v) for p, v in rates.items()}, path
    return {}, None


def estimate_seconds(run: PlannedRun, device: str, rates: dict) -> float:
    rate = rates.get(run.precision, FALLBACK_GMAC_IMAGES_PER_S[device])
    return run.images * run.macs / 1e9 / rate


def _device_type() -> str:
    """cuda or cpu (the estimates know these two), without starting CUDA."""
    return "cuda" if detect_device_type() == "cuda" else "cpu"


def print_plan(runs: list[PlannedRun], args) -> None:
    device = _device_type()
    rates, bench = calibration(args.results)
    todo = [r for r in runs if r.status not in FINISHED]
    print(f"sweep {args.exp}: {len(runs)} runs, {len(runs) - len(todo)} done, {len(todo)} to train "
          f"(launcher {args.launcher}, jobs {args.jobs}, results {args.results})")
    if seeds_from_args(args):
        print(f"seeds from ARGS ({seeds_from_args(args)}) replace SEEDS={args.seeds}")
    total = 0.0
    for r in runs:
        secs = estimate_seconds(r, device, rates) if r in todo else 0.0
        total += secs
        print(f"  {r.status:8s} {r.folder}  {r.iterations} it, {r.macs * r.images * 3 / 1e15:7.2f} PMAC"
              + (f", {duration(secs)}" if secs else ""))
    print(f"estimated time on {device} (one job at a time): {duration(total)}"
          + (f" (calibrated by {_shown(bench)})" if bench else " (rough: no benchmark of this device; run `make bench`)"))


def _shown(path: Path) -> str:
    return str(path.relative_to(Path.cwd().resolve())) if path.is_relative_to(Path.cwd().resolve()) else str(path)


def duration(seconds: float) -> str:
    return f"~{seconds / 60:.0f} min" if seconds < 5400 else f"~{seconds / 3600:.1f} h"


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


def write_multirun_yaml(args, exp_dir: Path) -> str:
    """Write the sweep's multirun.yaml atomically before Hydra rewrites it in place (Hydra opens it
    with "w"): a full or read-only disk then fails here, as one line, with the old file intact, and
    Hydra's own write reuses the space just taken. Returns the text, to repair a half-written file."""
    overrides = base_overrides(args)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        # compose() is a single run's: sweep lists (seed=0,1, ARGS='model.depth=8,14') are left out of the
        # composition and put back in the recorded task list, as Hydra's multirun.yaml records them.
        sweeps = {o.input_line for o in parse_overrides(overrides) if o.is_sweep_override()}
        cfg = compose("config", overrides=[o for o in overrides if o not in sweeps], return_hydra_config=True)
    OmegaConf.set_readonly(cfg, False)
    cfg.hydra.overrides.task = overrides
    text = OmegaConf.to_yaml(cfg)
    atomic_write_text(exp_dir / "multirun.yaml", text)
    return text


def repair_multirun_yaml(path: Path, text: str) -> None:
    """After a failed launch: a multirun.yaml Hydra left unreadable goes back to what we wrote."""
    try:
        OmegaConf.load(path)
    except FileNotFoundError:
        return
    except Exception:
        try:
            atomic_write_text(path, text)
        except WriteError:
            path.unlink(missing_ok=True)  # better no file than half of one


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


def launch(args, errors_file: str | None = None) -> int:
    cmd = [sys.executable, "-m", "experiments.train", "--multirun", *base_overrides(args)]
    print("$ " + " ".join(cmd), flush=True)
    child = subprocess.Popen(cmd, env={**os.environ, **({SWEEP_ERRORS_ENV: errors_file} if errors_file else {})})

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


def read_errors(path: str | None) -> dict[str, str]:
    """run folder -> the user error its job reported (train.tell_sweep)."""
    errors = {}
    try:
        lines = Path(path).read_text().splitlines() if path else []
    except OSError:
        return errors
    for line in lines:
        try:
            entry = json.loads(line)
            errors[entry["run"]] = entry["error"]
        except (ValueError, KeyError, TypeError):
            continue
    return errors


def curve_lost(folder: Path, summary: dict) -> bool:
    """A completed run whose metrics.jsonl no longer reaches its last iteration: deleted, emptied or cut."""
    try:
        points = read_metrics(folder / "metrics.jsonl")
    except FormatError:  # written by a newer suite: not this sweep's to judge, and the report says so
        return False
    return lost_curve(points, summary.get("iterations_done")) is not None


def report(runs: list[PlannedRun], errors: dict[str, str] | None = None) -> int:
    """The final table; the exit status: 2 when a run stopped on an error the user must fix,
    1 when runs are unfinished or damaged, 0 otherwise."""
    errors = errors or {}
    print(f"\n{'run':44s} {'status':10s} {'train err':>9s} {'test err':>9s} {'time':>8s}")
    unfinished, damaged, refused, elsewhere = [], [], [], 0
    for r in runs:
        s = read_json(r.folder / "summary.json") or {
            "status": CORRUPT if (r.folder / "summary.json").exists()
            else PARTIAL if (r.folder / "last.pt").exists() else MISSING}
        status = s.get("status", CORRUPT)
        if str(r.folder) in errors:
            status = ERROR
            refused.append(r)
        elif status == MISSING and locked_elsewhere(r.folder):
            status, elsewhere = TRAINING, elsewhere + 1
        elif status == COMPLETED and curve_lost(r.folder, s):
            status = DAMAGED
            damaged.append(r)
        elif status not in (*FINISHED, TRAINING):
            unfinished.append(r)
        fmt = lambda v: f"{v:8.2f}%" if isinstance(v, (int, float)) else f"{'-':>9s}"  # noqa: E731
        wall = s.get("wall_time_s")
        print(f"{str(r.folder):44s} {status:10s} {fmt(s.get('final_train_err'))} {fmt(s.get('final_test_err'))} "
              f"{(f'{wall / 60:6.1f}m' if wall else '-'):>8s}")
    if elsewhere:  # e.g. two sweeps started on one results folder: each run is trained once, by one of them
        print(f"{elsewhere} run(s) are being trained by another process right now; rerun the same command "
              f"after it finishes to see their results", file=sys.stderr)
    if damaged:  # the numbers survive in summary.json, the curve cannot be recomputed from a checkpoint
        print(f"{len(damaged)} completed run(s) lost their curve (metrics.jsonl missing, empty or cut short): "
              f"{', '.join(str(r.folder) for r in damaged)}; the report lists them as damaged and leaves them out; "
              f"to retrain them, delete those folders and rerun the same command", file=sys.stderr)
    if unfinished:
        print(f"{len(unfinished)} run(s) did not complete; rerun the same command to resume them", file=sys.stderr)
    planned = {str(r.folder) for r in runs}
    unplanned = [(run, error) for run, error in errors.items() if run not in planned]
    for run, error in [(str(r.folder), errors[str(r.folder)]) for r in refused] + unplanned:
        print(f"error: {run}: {error}", file=sys.stderr)  # rerunning cannot help: something must change first
    if refused or unplanned:
        print(f"{len(refused) + len(unplanned)} run(s) stopped on the error(s) above; fix them, then rerun the "
              f"same command", file=sys.stderr)
        return 2
    return 1 if unfinished or damaged else 0


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
        print_plan(runs, args)
        if args.dry_run:
            return 0
        check_data(runs)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    exp_dir = runs[0].folder.parents[2]
    try:
        write_plan(runs, args)
        multirun_text = write_multirun_yaml(args, exp_dir)
    except WriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    fd, errors_file = tempfile.mkstemp(prefix="suite-sweep-errors-", suffix=".jsonl")
    os.close(fd)
    try:
        rc = launch(args, errors_file)
        errors = read_errors(errors_file)
    finally:
        Path(errors_file).unlink(missing_ok=True)
    if rc:
        repair_multirun_yaml(exp_dir / "multirun.yaml", multirun_text)
    code = report(runs, errors)
    if rc in (130, 143, -signal.SIGINT, -signal.SIGTERM):
        print(f"interrupted: the sweep stopped on {'SIGTERM' if rc in (143, -signal.SIGTERM) else 'SIGINT'}; "
              f"rerun the same command to resume it", file=sys.stderr)
        return 143 if rc in (143, -signal.SIGTERM) else 130
    return code or (1 if rc else 0)


if __name__ == "__main__":
    sys.exit(main())
