"""What `make sweep` shows about its runs: the plan with time estimates (calibrated by a `make bench` of the
same device), and the final table with the sweep's exit status. Each run's state on disk is the plan's (plan.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from experiments.contract import (
    COMPLETED, CORRUPT, DAMAGED, FINISHED, MISSING, FormatError, lost_curve, read_json, read_metrics,
)
from experiments.device import available_cores, cpu_kind, made_on_a_machine_like, nvml_gpu_name
from experiments.sweep.plan import PARTIAL, TRAINING, PlannedRun, locked_elsewhere

ERROR = "error"  # beside the plan's statuses: a run stopped on an error the user must fix
SOURCE_TREE = Path(__file__).resolve().parents[2]  # the checkout this package runs from (if any)
# Training images/s per GMAC of forward work, measured on this project's machines; used only when
# no benchmark of a matching device is found (see `make bench` and bench_files).
# (ResNet-56 at 0.125 GMAC: ~450 img/s bf16 on 2 EPYC cores; the H100 target is 25k img/s.)
# MPS has no measurement: its estimate needs a `make bench` on the Mac.
FALLBACK_GMAC_IMAGES_PER_S = {"cpu": 450 * 0.125, "cuda": 25_000 * 0.125}


# -- the plan, with time estimates --------------------------------------------------------------------------
def bench_files(results: str) -> list[Path]:
    """Benchmarks to calibrate time estimates, best first: this results folder's `make bench`
    (<results>/bench/latest.json), then committed ones (results/reference/bench/*.json) beside it and in
    the suite's source tree."""
    found = [Path(results) / "bench" / "latest.json", *sorted((Path(results) / "reference" / "bench").glob("*.json")),
             *sorted((SOURCE_TREE / "results" / "reference" / "bench").glob("*.json"))]
    return list(dict.fromkeys(p.resolve() for p in found if p.is_file()))


def this_device(device: str) -> dict:
    """What a benchmark must have run on to calibrate runs on `device` here: device type, name; for a CPU
    also its threads and its kind (device.cpu_kind: native bf16, kernel level)."""
    if device == "cuda":  # named through NVML: the planner never starts CUDA (issue 17)
        return {"device": "cuda", "device_name": nvml_gpu_name()}
    if device == "mps":
        return {"device": "mps", "device_name": "Apple MPS"}  # as `make bench` names it
    kind = cpu_kind()
    return {"device": "cpu", "device_name": kind.pop("cpu"), "threads": available_cores(), **kind}


def calibration(results: str, device: str) -> tuple[dict, Path | None]:
    """{precision: training GMAC x images/s} from the first benchmark of this machine's `device`, and its file."""
    here = this_device(device)
    for path in bench_files(results):
        bench = read_json(path) or {}
        # a benchmark of compiled or graphed steps (`bench --compile`) is not the default step's speed
        if not made_on_a_machine_like(bench, here) or bench.get("compile") or bench.get("cuda_graphs"):
            continue
        rates: dict[str, list[float]] = {}
        for r in bench.get("rows", []):
            if r.get("device") == here["device"] and r.get("suite_images_per_s") and r.get("macs"):
                rates.setdefault(r["precision"], []).append(r["suite_images_per_s"] * r["macs"] / 1e9)
        if rates:  # images/s x GMAC of the benchmarked models at each precision, averaged
            return {p: sum(v) / len(v) for p, v in rates.items()}, path
    return {}, None


def estimate_seconds(run: PlannedRun, rates: dict) -> float | None:
    """The run's training time at its precision's benchmarked rate on its device; at the rough fallback
    rate only where the device has no benchmark at all. A benchmark without the run's precision gives
    None, never another precision's rate: bf16 on an AVX2-only CPU is emulated, about 10x slower than
    its fp32 (README), and the fallback (native bf16) would promise it 60x too fast."""
    rate = rates.get(run.precision) if rates else FALLBACK_GMAC_IMAGES_PER_S.get(run.device)
    left = max(run.iterations - run.done, 0) / run.iterations  # a begun run trains only what it has left
    return None if rate is None else run.images * left * run.macs / 1e9 / rate


def print_plan(runs: list[PlannedRun], args, seeds_from_args: str | None = None) -> None:
    devices = sorted({r.device for r in runs})
    calibrated = {d: calibration(args.results, d) for d in devices}
    todo = [r for r in runs if r.status not in FINISHED]
    print(f"sweep {args.exp}: {len(runs)} run{'s' * (len(runs) != 1)}, {len(runs) - len(todo)} done, "
          f"{len(todo)} to train (launcher {args.launcher}, jobs {args.jobs}, results {args.results})")
    if seeds_from_args:
        print(f"seeds from ARGS ({seeds_from_args}) replace SEEDS={args.seeds}")
    total, unknown = 0.0, False
    for r in runs:
        secs = estimate_seconds(r, calibrated[r.device][0]) if r in todo else 0.0
        unknown |= secs is None
        total += secs or 0.0
        print(f"  {r.status:8s} {r.folder}  {r.iterations} it, {r.macs * r.images * 3 / 1e15:7.2f} PMAC"
              + (f", {duration(secs)}" if secs else "") + (f" (resumes near iteration {r.done:,})" if secs and r.done else ""))
    benches = [bench for _, bench in calibrated.values() if bench]
    unmeasured = sorted({r.precision for r in todo if calibrated[r.device][0]
                         and r.precision not in calibrated[r.device][0]})
    if unmeasured:
        how = (f" (the benchmark of this device has no {' or '.join(unmeasured)} rows; "
               + ("`make bench` skips bf16 where it is not native: emulated, it is far slower than fp32)"
                  if "bf16" in unmeasured else "run `make bench`)"))
    elif unknown:
        how = " (no benchmark of this device; run `make bench`)"
    elif len(benches) == len(devices):
        how = f" (calibrated by {', '.join(_shown(b) for b in benches)})"
    else:
        how = " (rough: no benchmark of this device; run `make bench`)"
    print(f"estimated time on {' and '.join(devices)} (one job at a time): "
          f"{'unknown' if unknown else duration(total)}{how}")
    note = precision_note(runs)
    if note:
        print(note)


def precision_note(runs: list[PlannedRun]) -> str | None:
    """A sweep finished elsewhere: `fast`/`auto` resolve per machine, so the runs still to train may compute
    in another precision than the finished ones, and every comparison across them would mix the two."""
    finished = [r for r in runs if r.status in FINISHED]
    todo = [r for r in runs if r.status not in FINISHED]
    done, coming = sorted({r.precision for r in finished}), sorted({r.precision for r in todo})
    if not done or not coming or len({*done, *coming}) == 1:
        return None
    n = len(finished)
    return (f"note: {n} finished run{'s' * (n != 1)} computed in {' and '.join(done)}, {len(todo)} "
            f"to train will compute in {' and '.join(coming)} here, so comparisons across them mix precisions "
            f"(the report counts the runs of each and names every paired seed that mixes them); to keep one, "
            f"train them on a machine like the first, or set it with ARGS=trainer.precision={done[0]}"
            + (" (where bf16 is not native, emulated and far slower than fp32)" if done[0] == "bf16" else ""))


def _shown(path: Path) -> str:
    return str(path.relative_to(Path.cwd().resolve())) if path.is_relative_to(Path.cwd().resolve()) else str(path)


def duration(seconds: float) -> str:
    return f"~{seconds / 60:.0f} min" if seconds < 5400 else f"~{seconds / 3600:.1f} h"


# -- after the sweep ----------------------------------------------------------------------------------------
def curve_lost(folder: Path, summary: dict) -> bool:
    """A completed run whose metrics.jsonl no longer reaches its last iteration: deleted, emptied or cut."""
    try:
        points = read_metrics(folder / "metrics.jsonl")
    except FormatError:  # written by a newer suite: not this sweep's to judge, and the report says so
        return False
    return lost_curve(points, summary.get("iterations_done")) is not None


def _summary(folder: Path) -> dict:
    """summary.json as the final table reads it; one that is unreadable or valid JSON of another shape
    (a list, a number) stands for a corrupt run, as in the report."""
    s = read_json(folder / "summary.json")
    if isinstance(s, dict):
        return s
    exists = (folder / "summary.json").exists()
    return {"status": CORRUPT if exists else PARTIAL if (folder / "last.pt").exists() else MISSING}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def report(runs: list[PlannedRun], errors: dict[str, str] | None = None) -> int:
    """The final table; the exit status: 2 when a run stopped on an error the user must fix,
    1 when runs are unfinished or damaged, 0 otherwise."""
    errors = errors or {}
    print(f"\n{'run':44s} {'status':10s} {'train err':>9s} {'test err':>9s} {'time':>8s}")
    unfinished, damaged, refused, elsewhere = [], [], [], 0
    for r in runs:
        s = _summary(r.folder)
        status = s["status"] if isinstance(s.get("status"), str) else CORRUPT
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
        fmt = lambda v: f"{v:8.2f}%" if _number(v) else f"{'-':>9s}"  # noqa: E731
        wall = s.get("wall_time_s")
        print(f"{str(r.folder):44s} {status:10s} {fmt(s.get('final_train_err'))} {fmt(s.get('final_test_err'))} "
              f"{(f'{wall / 60:6.1f}m' if _number(wall) and wall else '-'):>8s}")
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
