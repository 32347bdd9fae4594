"""`make sweep`: plan an experiment's Hydra multirun, print it, run it, and report every run.

The sweep itself is Hydra's: the plan (plan.py) expands the experiment's `hydra.sweeper.params` the way
Hydra's basic sweeper does (to print the plan with each run's status and cost), then this file launches
`python -m experiments.train --multirun experiment=<exp> ...` with the chosen launcher. What it
prints about the runs (plan, estimates, final table) is status.py.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments import CONF
from experiments.contract import FINISHED, read_jsonl
from experiments.data import DataError, check_data_option
from experiments.device import available_cores, local_launcher_problem
from experiments.run.stopping import BUDGET_EXIT, DEADLINE_ENV, budget_spent, parse_duration
from experiments.runfiles import WriteError, atomic_write_text
from experiments.sweep.plan import PARTIAL, TRAINING, PlannedRun, check_data, iterations_done, plan, planned_status, write_plan
from experiments.sweep.request import SweepError, base_overrides, parse_overrides, seeds_from_args
from experiments.sweep.status import print_plan, report
from experiments.train import SWEEP_ERRORS_ENV

LAUNCHERS = ("basic", "joblib", "slurm", "local")  # Hydra launcher configs: built-in basic, joblib, conf/hydra/launcher/*


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


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
