"""`make gpu-check`: what the GPU path needs measured, in one command, in under 8 minutes on one GPU.

    python -m experiments.gpu_check [--quick] [--budget-s 480] [--out results/bench/gpu-check-<card>.json]

Runs in this order and writes one JSON (rewritten after every section, so a cut-short check keeps
what it measured); each section is `ok`, `failed` (with the error) or `skipped` (with the reason):

  environment  GPU, compute capability (torch and NVML), driver, native bf16, TF32 as the convolutions use it,
               cuDNN, torch, CUDA
  resume       a 60-iteration run SIGKILLed after its 2nd checkpoint and rerun: it must resume and match an
               uninterrupted run exactly. On CUDA with cuDNN's deterministic kernels (no autotuning, which may
               pick others after the restart), again with trainer.cuda_graphs=true, and the graphed run must
               match the eager one; a second uninterrupted run measures the run-to-run noise, and where it is
               not zero every comparison is held to it instead
  sync_audit   100 training steps under torch.cuda.set_sync_debug_mode("error"), eager and graphed; and
               the host syncs of one probe point, counted under "warn"
  profile      20 ResNet-56 steps under torch.profiler: kernels, host ms and GPU-busy ms per step
  bench        `make bench` suite and bound rows: ResNet-20/56/110 x fp32/bf16 x eager/compile/graphs
  sharing      two benchmark processes on one GPU against one alone (LAUNCHER=joblib JOBS=2 on one card):
               20 s windows that start together at a file barrier

On a CPU the CUDA parts are skipped, each named; the rest runs small. `--quick` shrinks everything
(the test suite runs it). Exit 1 if a section failed; 2, with one line, for a bad --device or --out.
With --device cuda:N every child process (the killed run, the sharing benchmarks) runs on that GPU too.
One file on purpose (~460 lines): one command whose sections share a context and write one JSON, read
top to bottom in the order they run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import io
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import torch
from hydra import compose, initialize_config_dir

from experiments import train as train_mod
from experiments.contract import COMPLETED, read_metrics
from experiments.device import (available_cores, cpu_name, native_bf16, nvml_compute_capabilities,
                                nvml_driver_version, tf32_convolutions, tool_device, visible_gpus)
from experiments.models import response_layers
from experiments.run.probes import evaluate
from experiments.runfiles import atomic_write_json
from experiments.tools import bench
from experiments.train import git_commit

REPO = Path(__file__).resolve().parents[2]
SHARING_RESERVE_S = 100  # kept back from the bench rows so the last section still runs (2 x 20 s windows + starts)
SHARE_WINDOW_S = 20      # sharing: each process times this long, all at once: long against their start-up skew
BENCH_WINDOW_S = 1.0     # bench rows compare options (make bench's 2 s windows calibrate the planner)
NOISE_FACTOR = 2         # with run-to-run noise: two drifts from one origin differ by about as much as each
STDERR_TAIL = 2000       # of a child that failed, kept in the JSON
# The killed run's process: experiments.train with cuDNN's deterministic kernels, as deterministic_cudnn()
# gives the runs in this process, so its kernels are the ones an uninterrupted run uses.
CHILD = ("import runpy, torch; torch.backends.cudnn.deterministic = True; "
         "runpy.run_module('experiments.train', run_name='__main__', alter_sys=True)")


class Skip(Exception):
    """A section that cannot run here; str(e) says why."""


class SectionFailed(RuntimeError):
    """A section that ran and failed; `result` keeps what it measured."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def needs_cuda(ctx) -> None:
    if ctx.dev.type != "cuda":
        raise Skip(f"needs CUDA; this is a {ctx.dev.type}")


def child_env(dev: torch.device, **extra) -> dict:
    """A child process's environment: only this check's GPU visible, so the child's "cuda" is that GPU
    and not GPU 0."""
    env = {**os.environ, **extra}
    if dev.type == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = visible_gpus()[dev.index]
    return env


# -- sections ----------------------------------------------------------------------------------------------
def environment(ctx) -> dict:
    env = {"device": str(ctx.dev), "torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
           "cpu": cpu_name(), "cores": available_cores(), "native_bf16": native_bf16(ctx.dev),
           "git_commit": git_commit()}
    if ctx.dev.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.dev)
        cc = torch.cuda.get_device_capability(ctx.dev)
        conv = getattr(torch.backends.cudnn, "conv", None)
        env |= {"gpu": torch.cuda.get_device_name(ctx.dev), "compute_capability": f"{cc[0]}.{cc[1]}",
                "nvml_compute_capabilities": [f"{a}.{b}" for a, b in nvml_compute_capabilities() or []],
                "driver": nvml_driver_version(), "gpus_visible": torch.cuda.device_count(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "memory_gb": round(props.total_memory / 2**30, 1),
                "multiprocessors": props.multi_processor_count, "cudnn": torch.backends.cudnn.version(),
                # what fp32 convolutions run in, from both settings that decide it (device.tf32_convolutions)
                "tf32_convolutions": tf32_convolutions(ctx.dev, "fp32"),
                "tf32_settings": {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                                  "cudnn.conv.fp32_precision": getattr(conv, "fp32_precision", None)},
                "tf32_matmul": cc >= (8, 0) and torch.backends.cuda.matmul.allow_tf32,  # the FC layer
                "bf16_supported_with_emulation": torch.cuda.is_bf16_supported()}  # what `auto` asked before
    return env


def _killed_run(results: Path, overrides: list[str], fault: str, dev: torch.device) -> tuple[int, str]:
    """A run in its own process on `dev`, SIGKILLed at `fault` (experiments/faults.py); returns its exit
    code and the tail of its stderr (why it ended otherwise)."""
    proc = subprocess.run([sys.executable, "-c", CHILD, f"results_dir={results}", *overrides], cwd=REPO,
                          env=child_env(dev, SUITE_FAULT=fault), capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr[-STDERR_TAIL:]


def _run_here(results: Path, overrides: list[str]) -> tuple[dict, str]:
    """A run in this process (saves a second interpreter start); returns its summary and what it printed."""
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"results_dir={results}", *overrides])
    printed = io.StringIO()
    with redirect_stdout(printed):
        summary = train_mod.run(cfg)
    return summary, printed.getvalue()


def _rows(results: Path) -> list[dict]:
    path = next(results.glob("single/runs/*/seed=0/metrics.jsonl"))
    return read_metrics(path)


def _compare(a: list[dict], b: list[dict]) -> dict:
    """Largest differences between two runs' curves (timing fields aside)."""
    out = {"same_points": [r["iter"] for r in a] == [r["iter"] for r in b], "identical": False}
    if not out["same_points"]:
        return out
    strip = lambda r: {k: v for k, v in r.items() if k not in ("elapsed_s", "images_per_s")}  # noqa: E731
    out["identical"] = [strip(r) for r in a] == [strip(r) for r in b]
    out["max_loss_rel_diff"] = max(abs(x[k] - y[k]) / max(abs(y[k]), 1e-12)
                                   for x, y in zip(a, b) for k in ("train_loss", "test_loss"))
    out["max_err_diff_points"] = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in ("train_err", "test_err"))
    return out


@contextmanager
def deterministic_cudnn():
    """cuDNN's deterministic kernels, chosen by heuristics rather than by timing (pick_device leaves
    autotuning off under deterministic), so a run and its restarted copy compute alike."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def close_enough(cmp: dict, noise: dict | None) -> bool:
    """Identical curves where two uninterrupted runs are identical (a CPU; CUDA with deterministic kernels):
    a lost momentum, stale BN statistics or a graph that baked in the lr all show. Where the noise is not
    zero, no further off than NOISE_FACTOR times it."""
    if not cmp["same_points"]:
        return False
    if noise is None or noise["identical"]:
        return cmp["identical"]
    return noise["same_points"] and all(cmp[k] <= NOISE_FACTOR * noise[k]
                                        for k in ("max_loss_rel_diff", "max_err_diff_points"))


def resume(ctx) -> dict:
    cuda = ctx.dev.type == "cuda"
    if cuda:
        base = ["model=resnet", "model.depth=20", "data=fake", "data.num_train=10000", "data.num_eval=1000",
                "optim.batch_size=128"]
    else:
        base = ["model=resnet", "model.depth=8", "data=fake", "data.num_train=128", "data.num_eval=32",
                "optim.batch_size=16", "trainer.threads=1", "trainer.eval_batch_size=32"]
    base += ["schedule.iterations=60", "trainer.eval_every=20", "trainer.ckpt_every=20", "trainer.progress=false",
             f"trainer.device={ctx.dev.type}"]
    variants = {"eager": []} | ({"cuda_graphs": ["trainer.cuda_graphs=true"]} if cuda else {})
    out = {"cudnn": {"deterministic": True, "benchmark": False}} if cuda else {}
    curves = {}
    with deterministic_cudnn():
        for name, extra in variants.items():
            work = ctx.tmp / f"resume-{name}"
            _run_here(work / "ref", base + extra)
            curves[name] = _rows(work / "ref")
            killed, tail = _killed_run(work / "cut", base + extra, "after:checkpoint:2", ctx.dev)  # at iteration 40
            summary, printed = _run_here(work / "cut", base + extra)
            out[name] = {"killed_rc": killed, "completed": summary["status"] == COMPLETED,
                         "resumed_at_40": "resuming from last.pt at iteration 40" in printed,
                         "vs_uninterrupted": _compare(_rows(work / "cut"), curves[name])}
            if killed != -9:
                out[name]["killed_stderr_tail"] = tail
        if cuda:  # the run-to-run noise: the same uninterrupted run again (a CPU's is zero by design)
            _run_here(ctx.tmp / "resume-noise", base)
            out["noise"] = _compare(_rows(ctx.tmp / "resume-noise"), curves["eager"])
    noise = out.get("noise")
    required = ("identical" if noise is None or noise["identical"]
                else f"within {NOISE_FACTOR}x the run-to-run noise (two uninterrupted runs differ)")
    for name in variants:
        r = out[name]
        r["ok"] = bool(r["killed_rc"] == -9 and r["completed"] and r["resumed_at_40"]
                       and close_enough(r["vs_uninterrupted"], noise))
        r["required"] = required
    if "cuda_graphs" in curves:  # the option against the default, both uninterrupted
        cmp = out["cuda_graphs_vs_eager"] = _compare(curves["cuda_graphs"], curves["eager"])
        cmp |= {"ok": close_enough(cmp, noise), "required": required}
    if bad := [k for k, v in out.items() if v.get("ok") is False]:
        raise SectionFailed(f"not {required}, or no resume at iteration 40: {', '.join(bad)}", out)
    return out


def _trainer(ctx, depth: int, precision: str | None = None, **options):
    return bench.make_trainer("resnet", depth, precision or ctx.precision, ctx.dev.type, ctx.threads,
                              ctx.num_train, **options)


def sync_audit(ctx) -> dict:
    needs_cuda(ctx)
    out = {}
    for name, options in (("eager", {}), ("cuda_graphs", {"cuda_graphs": True})):
        tr = _trainer(ctx, 56, **options)
        for _ in range(5):  # warm-up: cuDNN autotuning, allocator growth, the graph's capture
            tr.train_iteration(warming=False)
        sync(ctx.dev)
        start = tr.iteration  # the 100 steps cross an epoch boundary (78 steps per epoch): a new permutation
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(100):
                tr.train_iteration(warming=False)
            out[name] = {"ok": True, "steps": 100, "from_iteration": start}
        except RuntimeError as e:
            where = [f"{f.filename.split('/')[-1]}:{f.lineno} {f.name}" for f in traceback.extract_tb(e.__traceback__)
                     if "/experiments/" in f.filename]
            out[name] = {"ok": False, "at_step": tr.iteration - start, "error": str(e).splitlines()[0], "where": where}
        finally:
            torch.cuda.set_sync_debug_mode(0)
        tr.first_nonfinite()  # fit's planned sync, every trainer.SYNC_EVERY steps
    tr = _trainer(ctx, 56)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            evaluate(tr.model, tr.batches, tr.dev.autocast, 1000, with_responses=True)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    out["probe_point_syncs"] = sum("synchroniz" in str(w.message).lower() for w in caught)
    out["probe_point_layers"] = len(response_layers(tr.model))  # syncs must not scale with layers
    if not (out["eager"]["ok"] and out["cuda_graphs"]["ok"]):
        raise SectionFailed("a training step synchronised with the host", out)
    return out


def _profile_one(ctx, depth: int, steps: int, **options) -> dict:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    tr = _trainer(ctx, depth, **options)
    for _ in range(5):
        tr.train_iteration(warming=False)
    sync(ctx.dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_iteration(warming=False)
    host = time.perf_counter() - t0  # time to enqueue: the CPU's share of a step
    sync(ctx.dev)
    wall = time.perf_counter() - t0
    row = {"depth": depth, "precision": ctx.precision, **options, "steps": steps,
           "host_ms_per_step": round(1e3 * host / steps, 3), "wall_ms_per_step": round(1e3 * wall / steps, 3)}
    if ctx.dev.type != "cuda":
        return row | {"gpu_busy_ms_per_step": None, "kernels_per_step": None}
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            tr.train_iteration(warming=False)
        sync(ctx.dev)
    return row | kernel_stats([e for e in prof.events() if e.device_type == DeviceType.CUDA], steps)


def kernel_stats(kernels, steps: int) -> dict:
    """Per step: how many kernels, how long the device was busy (the union of their intervals, so
    overlapping kernels count once), and the ten costliest kernels."""
    busy, end = 0.0, float("-inf")
    for a, b in sorted((e.time_range.start, e.time_range.end) for e in kernels):
        busy += max(0.0, b - max(a, end))
        end = max(end, b)
    totals: dict[str, list] = {}
    for e in kernels:
        t = totals.setdefault(e.name, [0, 0.0])
        t[0], t[1] = t[0] + 1, t[1] + e.time_range.elapsed_us()
    top = sorted(totals.items(), key=lambda kv: -kv[1][1])[:10]
    return {"kernels_per_step": round(len(kernels) / steps, 1), "gpu_busy_ms_per_step": round(busy / 1e3 / steps, 3),
            "top_kernels": [{"name": n[:120], "calls": c, "ms_per_step": round(us / 1e3 / steps, 3)}
                            for n, (c, us) in top]}


def profile_steps(ctx) -> dict:
    depth, steps = (56, 20) if not ctx.quick else (8, 3)
    runs = [_profile_one(ctx, depth, steps)]
    if ctx.dev.type == "cuda":
        runs.append(_profile_one(ctx, depth, steps, cuda_graphs=True))
    return {"runs": runs, "skipped": [] if ctx.dev.type == "cuda" else ["GPU-busy time and kernels: need CUDA"]}


def bench_rows(ctx) -> dict:
    args = SimpleNamespace(device=ctx.dev.type, threads=ctx.threads, num_train=ctx.num_train, workers=0,
                           warmup=2 if ctx.quick else 3, iters=2 if ctx.quick else 0, repeats=1 if ctx.quick else 3,
                           window_s=BENCH_WINDOW_S, sync_start=None, parties=1)
    depths = [8] if ctx.quick else [20, 56, 110]
    precisions = ["fp32", "bf16"] if native_bf16(ctx.dev) else ["fp32"]
    options = [{}]
    skipped = [] if "bf16" in precisions else [f"bf16 rows: no native bf16 on this {ctx.dev.type}"]
    if ctx.dev.type == "cuda":  # cheap rows first; compile costs a minute or so per model
        options += [{"cuda_graphs": True}, {"compile": True}, {"compile": True, "cuda_graphs": True}]
    else:
        skipped.append("compile and cuda_graphs rows: CUDA only (graphs need CUDA; compile is measured where it matters)")
    rows = []
    for opt in options:
        for depth in depths:
            for precision in precisions:
                name = f"resnet-{depth} {precision} " + ("+".join(k for k in opt) or "eager")
                if ctx.left() < SHARING_RESERVE_S + (90 if opt.get("compile") else 12):
                    skipped.append(f"{name}: time budget")
                    continue
                try:
                    row = bench.bench_row("resnet", depth, precision, args, ("suite", "bound"),
                                          opt.get("compile", False), opt.get("cuda_graphs", False))
                except Exception as e:  # a compile row failing (e.g. compile inside a graph) is a result
                    row = {"model": f"resnet-{depth}", "precision": precision, **opt, "error": f"{type(e).__name__}: {e}"[:400]}
                rows.append(row)
                print(f"  {name}: " + (f"{row['suite_images_per_s']:.0f} img/s (bound {row['bound_images_per_s']:.0f})"
                                        if "error" not in row else row["error"]), flush=True)
    result = {"rows": rows, "skipped": skipped}
    if failed := [r for r in rows if "error" in r and not r.get("compile")]:  # eager or graphed: not an option's limit
        raise SectionFailed("; ".join(f"{r['model']} {r['precision']}{' cuda_graphs' if r.get('cuda_graphs') else ''}: "
                                      f"{r['error']}" for r in failed), result)
    return result


def sharing(ctx) -> dict:
    needs_cuda(ctx)
    cmd = [sys.executable, "-m", "experiments.tools.bench", "--models", "resnet-56", "--precisions", ctx.precision,
           "--depths", "", "--suite-only", "--device", "cuda", "--repeats", "1", "--window-s", str(SHARE_WINDOW_S),
           "--num-train", str(ctx.num_train), "--threads", str(max(1, ctx.threads // 2))]

    def launch(tag: str, barrier: Path, parties: int):  # on this check's GPU (child_env), timed by the clock
        barrier.mkdir(exist_ok=True)
        return subprocess.Popen(cmd + ["--sync-start", str(barrier), "--parties", str(parties),
                                       "--out", str(ctx.tmp / f"share-{tag}.json")], cwd=REPO, env=child_env(ctx.dev),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait(p) -> None:
        if p.wait(timeout=240):
            raise RuntimeError(p.stdout.read()[-500:])

    def rate(tag: str) -> float:
        return json.loads((ctx.tmp / f"share-{tag}.json").read_text())["rows"][0]["suite_images_per_s"]
    wait(launch("alone", ctx.tmp / "share-alone", 1))
    pair = [launch(tag, ctx.tmp / "share-pair", 2) for tag in ("a", "b")]
    for p in pair:
        wait(p)
    a, b, one = rate("a"), rate("b"), rate("alone")
    return {"model": "resnet-56", "precision": ctx.precision, "alone_images_per_s": one, "shared_images_per_s": [a, b],
            "shared_total_images_per_s": round(a + b, 1), "total_vs_alone": round((a + b) / one, 3),
            "note": f"one {SHARE_WINDOW_S} s window per process, timed by the clock; the pair's windows start "
                    f"together at a file barrier (bench --sync-start)"}


SECTIONS = [("environment", environment), ("resume", resume), ("sync_audit", sync_audit),
            ("profile", profile_steps), ("bench", bench_rows), ("sharing", sharing)]


# -- driver ------------------------------------------------------------------------------------------------
def default_out(dev: torch.device) -> Path:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{dev.type}-{cpu_name()}"
    return Path("results/bench") / f"gpu-check-{slug(name)}.json"


def parse_args(argv=None):
    p = bench.Parser(prog="python -m experiments.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and windows (what the tests run)")
    p.add_argument("--budget-s", type=float, default=480, help="wall-time budget; later bench rows give way")
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cuda, cuda:N, mps or cpu")
    p.add_argument("--out", type=Path, help="default: results/bench/gpu-check-<card>.json")
    args = p.parse_args(argv)
    try:
        args.device = tool_device(args.device)  # indexed where CUDA: torch.cuda.set_device refuses a bare "cuda"
    except ValueError as e:
        p.fail(str(e))
    if not args.budget_s > 0:
        p.fail(f"--budget-s {args.budget_s} must be a positive number of seconds (default 480)")
    if args.out is not None and (problem := bench.out_problem(args.out)):
        p.fail(problem)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = args.device
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    out = args.out or default_out(dev)
    if args.out is None and (problem := bench.out_problem(out)):  # named after the card: known only now
        print(f"error: {problem}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    ctx = SimpleNamespace(dev=dev, quick=args.quick, threads=1 if args.quick else available_cores(),
                          num_train=256 if args.quick else 10_000,
                          precision="bf16" if native_bf16(dev) else "fp32",
                          left=lambda: args.budget_s - (time.perf_counter() - start))
    report = {"format_version": 1, "complete": False, "quick": args.quick, "budget_s": args.budget_s,
              "order": [name for name, _ in SECTIONS], "sections": {}}
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx.tmp = Path(tmp)
        for name, section in SECTIONS:
            t0 = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                result = {"status": "ok"} | section(ctx)
            except Skip as e:
                result = {"status": "skipped", "reason": str(e)}
            except SectionFailed as e:
                result = {"status": "failed", "error": str(e)[:2000], **e.result}
                failed.append(name)
            except Exception as e:
                result = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
                failed.append(name)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            report["sections"][name] = result
            print(f"   {result['status']}" + (f": {result.get('reason') or result.get('error')}"
                                              if result["status"] != "ok" else "") + f" ({result['seconds']} s)", flush=True)
            atomic_write_json(out, report)
    sections = report["sections"]
    report |= {"complete": True, "total_s": round(time.perf_counter() - start, 1), "failed": failed,
               "skipped": [f"{n}: {r['reason']}" for n, r in sections.items() if r["status"] == "skipped"]
               + [f"{n}: {why}" for n, r in sections.items() for why in r.get("skipped", [])]}
    atomic_write_json(out, report)
    print(f"wrote {out}; {len(failed)} section(s) failed, total {report['total_s']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
