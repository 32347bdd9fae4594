"""`make sweep`: plan an experiment's Hydra multirun, print it, run it, and report every run.

The sweep itself is Hydra's: this wrapper expands the experiment's `hydra.sweeper.params` the way
Hydra's basic sweeper does (to print the plan with each run's status and cost), then launches
`python -m experiments.train --multirun experiment=<exp> ...` with the chosen launcher. What it
prints about the runs (plan, estimates, final table) is experiments/sweep_status.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, OverrideParseException
from omegaconf import OmegaConf

from experiments.checks import ConfigError, check_config
from experiments import CONF
from experiments.data import DataError, DataUnavailable, check_data_option, prepare_source
from experiments.device import available_cores, local_launcher_problem, resolve_trainer
from experiments.models import build_from_config, count_macs
from experiments.contract import FINISHED, FORMAT_VERSION, read_jsonl
from experiments.runfiles import WriteError, atomic_write_json, atomic_write_text, hydra_quote
from experiments.resume_guard import finished_recipes, recorded_precision, refuse_changed_config, refuse_other_recipe
from experiments.stopping import BUDGET_EXIT, DEADLINE_ENV, budget_spent, parse_duration
from experiments.sweep_status import PARTIAL, TO_DO, TRAINING, iterations_done, planned_status, print_plan, report
from experiments.train import SWEEP_ERRORS_ENV, folder_of

LAUNCHERS = ("basic", "joblib", "slurm", "local")  # Hydra launcher configs: built-in basic, joblib, conf/hydra/launcher/*


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
    precision: str  # what the run computed in (finished), resumes in (partial) or will compute in here
    data: dict      # the run's data node, checked once per distinct source before any run starts
    device: str     # the device type it will train on here: cuda, mps or cpu
    done: int = 0   # iterations a begun run has behind it (its curve's last point): the estimate's head start


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def base_overrides(args) -> list[str]:
    """What `make sweep` hands to Hydra, in order: its own choices, then ARGS (so hydra.launcher.* refines the
    launcher), then SEEDS as a seed list unless ARGS names the seeds itself."""
    # Paths are quoted for Hydra: a comma, a space or a non-ASCII letter is part of the path, not grammar.
    out = [f"experiment={args.exp}", f"results_dir={hydra_quote(args.results)}"]
    if args.data:
        out.append(f"data={args.data}")  # checked by parse_args: a name of conf/data/, never a path
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
            refuse_mixing(cfg, folder, status, finished.setdefault(folder.parents[1], finished_recipes(folder.parents[1])))
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


def launch(args, errors_file: str | None = None, deadline: float | None = None) -> int:
    cmd = [sys.executable, "-m", "experiments.train", "--multirun", *base_overrides(args)]
    print("$ " + " ".join(cmd), flush=True)
    env = {**os.environ, **({SWEEP_ERRORS_ENV: errors_file} if errors_file else {}),
           **({DEADLINE_ENV: repr(deadline)} if deadline is not None else {})}
    child = subprocess.Popen(cmd, env=env)

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
    """run folder -> the user error its job reported (train.tell_sweep); unreadable lines are skipped."""
    try:
        entries = [e for _, e in read_jsonl(Path(path))] if path else []
    except OSError:
        return {}
    return {e["run"]: e["error"] for e in entries if isinstance(e.get("run"), str) and "error" in e}


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
    p.add_argument("--time-limit", help="wall-clock budget of this invocation (2h30m, 90m, 45s, seconds): the run "
                   "in progress checkpoints and stops when it is spent, no further run starts; exit status 75")
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
    if args.launcher == "local" and (problem := local_launcher_problem()):
        raise SweepError(problem)
    if args.data:
        try:
            check_data_option(args.data)
        except DataError as e:
            raise SweepError(str(e)) from None
    args.budget_s = budget_seconds(args)
    return args


def budget_seconds(args) -> float | None:
    """TIME_LIMIT in seconds (None: no budget), or a SweepError naming the accepted forms."""
    if args.time_limit in (None, ""):
        return None
    try:
        seconds = parse_duration(args.time_limit)
    except ValueError as e:
        raise SweepError(str(e).replace("time limit", "TIME_LIMIT")) from None
    if args.launcher == "slurm":
        raise SweepError("TIME_LIMIT counts this machine's wall time, which SLURM jobs do not share; give each "
                         "job its limit with ARGS=hydra.launcher.timeout_min=<minutes> (it checkpoints and "
                         "requeues before it)")
    return seconds


def continue_command(args) -> str:
    """The `make sweep` line that continues this sweep (the same request, the same budget)."""
    defaults = {"RESULTS": "results", "LAUNCHER": "basic", "JOBS": 1}
    parts = [f"EXP={args.exp}", f"SEEDS={args.seeds}"]
    parts += [f"{k}={v}" for k, v in (("DATA", args.data), ("DATA_ROOT", args.data_root), ("RESULTS", args.results),
                                      ("LAUNCHER", args.launcher), ("JOBS", args.jobs),
                                      ("TIME_LIMIT", args.time_limit), ("ARGS", " ".join(args.overrides)))
              if v and defaults.get(k) != v]
    return "make sweep " + " ".join(shlex.quote(p) for p in parts)


def budget_report(runs: list[PlannedRun], args) -> None:
    """After the budget stopped a sweep: what is finished, what is partial (at which iteration), and the
    command that continues it."""
    states = [(r, planned_status(r.folder)) for r in runs]
    finished = sum(status in FINISHED for _, status in states)
    partial = [(r, iterations_done(r.folder)) for r, status in states if status in (PARTIAL, TRAINING)]
    print(f"stopped by the time budget (TIME_LIMIT={args.time_limit}): {finished} of {len(runs)} runs finished, "
          f"{len(partial)} partial, {len(runs) - finished - len(partial)} not started", file=sys.stderr)
    for r, it in partial:
        print(f"  partial  {r.folder}  at iteration {it} of {r.iterations} (resumes from its last.pt)",
              file=sys.stderr)
    print(f"continue with: {continue_command(args)}", file=sys.stderr)


def main(argv=None) -> int:
    started = time.time()  # the budget counts this invocation's wall time, its planning included
    try:
        args = parse_args(argv)
        runs = plan(args)
        print_plan(runs, args, seeds_from_args(args))
        if args.dry_run:
            return 0
        check_data(runs)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    deadline = None if args.budget_s is None else started + args.budget_s
    if budget_spent(deadline):
        print(f"the time budget (TIME_LIMIT={args.time_limit}) was spent before any run started: nothing trained",
              file=sys.stderr)
        budget_report(runs, args)
        return BUDGET_EXIT
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
        rc = launch(args, errors_file, deadline)
        errors = read_errors(errors_file)
    finally:
        Path(errors_file).unlink(missing_ok=True)
    if rc:
        repair_multirun_yaml(exp_dir / "multirun.yaml", multirun_text)
    code = report(runs, errors)
    if rc == BUDGET_EXIT:
        budget_report(runs, args)
        return BUDGET_EXIT
    if rc in (130, 143, -signal.SIGINT, -signal.SIGTERM):
        print(f"interrupted: the sweep stopped on {'SIGTERM' if rc in (143, -signal.SIGTERM) else 'SIGINT'}; "
              f"rerun the same command to resume it", file=sys.stderr)
        return 143 if rc in (143, -signal.SIGTERM) else 130
    return code or (1 if rc else 0)


if __name__ == "__main__":
    sys.exit(main())
