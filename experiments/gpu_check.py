"""`make gpu-check`: what the GPU path needs measured, in one command, in under 8 minutes on one GPU.

    python -m experiments.gpu_check [--quick] [--budget-s 480] [--out results/bench/gpu-check-<card>.json]

Runs in this order and writes one JSON (rewritten after every section, so a cut-short check keeps
what it measured); each section is `ok`, `failed` (with the error) or `skipped` (with the reason):

  environment  GPU, compute capability (torch and NVML), native bf16, TF32, cuDNN, torch, CUDA
  resume       a 60-iteration run SIGKILLed after its 2nd checkpoint and rerun: it must resume and match
               an uninterrupted run (exactly on a CPU; within tolerance on CUDA, where cuDNN autotuning
               may pick other kernels after the restart); on CUDA again with trainer.cuda_graphs=true
  sync_audit   100 training steps under torch.cuda.set_sync_debug_mode("error"), eager and graphed; and
               the host syncs of one probe point, counted under "warn"
  profile      20 ResNet-56 steps under torch.profiler: kernels, host ms and GPU-busy ms per step
  bench        `make bench` suite and bound rows: ResNet-20/56/110 x fp32/bf16 x eager/compile/graphs
  sharing      two benchmark processes on one GPU against one alone (LAUNCHER=joblib JOBS=2 on one card)

On a CPU the CUDA parts are skipped, each named; the rest runs small. `--quick` shrinks everything
(the test suite runs it). Exit 1 if a section failed.
One file on purpose (~370 lines): one command whose sections share a context and write one JSON, read
top to bottom in the order they run.
"""
from __future__ import annotations

import argparse
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
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import torch
from hydra import compose, initialize_config_dir

from experiments import bench
from experiments import train as train_mod
from experiments.contract import COMPLETED, read_metrics
from experiments.device import available_cores, cpu_name, native_bf16, nvml_compute_capabilities
from experiments.models import response_layers
from experiments.probes import evaluate
from experiments.runfiles import atomic_write_json
from experiments.train import git_commit

REPO = Path(__file__).resolve().parents[1]
SHARING_RESERVE_S = 75  # kept back from the bench rows so the last section still runs
LOSS_RTOL, ERR_ATOL = 0.05, 3.0  # CUDA resume tolerance: cuDNN may choose other kernels after a restart


class Skip(Exception):
    """A section that cannot run here; str(e) says why."""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def needs_cuda(ctx) -> None:
    if ctx.dev.type != "cuda":
        raise Skip(f"needs CUDA; this is a {ctx.dev.type}")


# -- sections ----------------------------------------------------------------------------------------------
def environment(ctx) -> dict:
    env = {"device": ctx.dev.type, "torch": torch.__version__, "torch_cuda_build": torch.version.cuda, "cpu": cpu_name(),
           "cores": available_cores(), "native_bf16": native_bf16(ctx.dev), "git_commit": git_commit()}
    if ctx.dev.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.dev)
        cc = torch.cuda.get_device_capability(ctx.dev)
        env |= {"gpu": torch.cuda.get_device_name(ctx.dev), "compute_capability": f"{cc[0]}.{cc[1]}",
                "nvml_compute_capabilities": [f"{a}.{b}" for a, b in nvml_compute_capabilities() or []],
                "gpus_visible": torch.cuda.device_count(), "memory_gb": round(props.total_memory / 2**30, 1),
                "multiprocessors": props.multi_processor_count, "cudnn": torch.backends.cudnn.version(),
                "tf32_convolutions": getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None),
                "bf16_supported_with_emulation": torch.cuda.is_bf16_supported()}  # what `auto` asked before
    return env


def _killed_run(results: Path, overrides: list[str], fault: str) -> int:
    """A run in its own process, SIGKILLed at `fault` (experiments/faults.py); returns its exit code."""
    return subprocess.run([sys.executable, "-m", "experiments.train", f"results_dir={results}", *overrides],
                          cwd=REPO, env={**os.environ, "SUITE_FAULT": fault}, capture_output=True,
                          timeout=300).returncode


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


def resume(ctx) -> dict:
    if ctx.dev.type == "cuda":
        base = ["model=resnet", "model.depth=20", "data=fake", "data.num_train=10000", "data.num_eval=1000",
                "optim.batch_size=128"]
    else:
        base = ["model=resnet", "model.depth=8", "data=fake", "data.num_train=128", "data.num_eval=32",
                "optim.batch_size=16", "trainer.threads=1", "trainer.eval_batch_size=32"]
    base += ["schedule.iterations=60", "trainer.eval_every=20", "trainer.ckpt_every=20", "trainer.progress=false",
             f"trainer.device={ctx.dev.type}"]
    variants = {"eager": []} | ({"cuda_graphs": ["trainer.cuda_graphs=true"]} if ctx.dev.type == "cuda" else {})
    out, curves = {}, {}
    for name, extra in variants.items():
        work = ctx.tmp / f"resume-{name}"
        _run_here(work / "ref", base + extra)
        killed = _killed_run(work / "cut", base + extra, fault="after:checkpoint:2")  # SIGKILL at iteration 40
        summary, printed = _run_here(work / "cut", base + extra)
        resumed = "resuming from last.pt at iteration 40" in printed
        cmp = _compare(_rows(work / "cut"), _rows(work / "ref"))
        curves[name] = _rows(work / "ref")
        exact = ctx.dev.type == "cpu"
        ok = (killed == -9 and summary["status"] == COMPLETED and resumed and cmp["same_points"]
              and (cmp["identical"] if exact else cmp["max_loss_rel_diff"] < LOSS_RTOL
                   and cmp["max_err_diff_points"] < ERR_ATOL))
        out[name] = {"ok": bool(ok), "killed_rc": killed, "resumed_at_40": resumed, "vs_uninterrupted": cmp,
                     "required": "identical" if exact else f"loss within {LOSS_RTOL:.0%}, errors within {ERR_ATOL} points"}
    if "cuda_graphs" in curves:  # the option against the default, both uninterrupted
        out["cuda_graphs_vs_eager"] = _compare(curves["cuda_graphs"], curves["eager"])
    if not all(v["ok"] for k, v in out.items() if k in variants):
        raise RuntimeError(f"a killed run did not resume correctly: {json.dumps(out)[:800]}")
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
        raise RuntimeError(f"a training step synchronised with the host: {json.dumps(out)[:800]}")
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
                           warmup=2 if ctx.quick else 3, iters=2 if ctx.quick else 0, repeats=1 if ctx.quick else 3)
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
                if ctx.left() < SHARING_RESERVE_S + (90 if opt.get("compile") else 15):
                    skipped.append(f"{name}: time budget")
                    continue
                try:
                    row = bench.bench_row("resnet", depth, precision, args, ("suite", "bound"),
                                          opt.get("compile", False), opt.get("cuda_graphs", False))
                except Exception as e:  # one option failing (e.g. compile inside a graph) is a result
                    row = {"model": f"resnet-{depth}", "precision": precision, **opt, "error": f"{type(e).__name__}: {e}"[:400]}
                rows.append(row)
                print(f"  {name}: " + (f"{row['suite_images_per_s']:.0f} img/s (bound {row['bound_images_per_s']:.0f})"
                                        if "error" not in row else row["error"]), flush=True)
    return {"rows": rows, "skipped": skipped}


def sharing(ctx) -> dict:
    needs_cuda(ctx)
    cmd = [sys.executable, "-m", "experiments.bench", "--models", "resnet-56", "--precisions", ctx.precision,
           "--depths", "", "--suite-only", "--iters", "300", "--repeats", "5", "--num-train", str(ctx.num_train),
           "--threads", str(max(1, ctx.threads // 2))]

    def launch(tag: str):
        return subprocess.Popen(cmd + ["--out", str(ctx.tmp / f"share-{tag}.json")], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def rate(tag: str) -> float:
        return json.loads((ctx.tmp / f"share-{tag}.json").read_text())["rows"][0]["suite_images_per_s"]
    alone = launch("alone")
    if alone.wait(timeout=240):
        raise RuntimeError(alone.stdout.read()[-500:])
    pair = [launch("a"), launch("b")]
    for p in pair:
        if p.wait(timeout=240):
            raise RuntimeError(p.stdout.read()[-500:])
    a, b, one = rate("a"), rate("b"), rate("alone")
    return {"model": "resnet-56", "precision": ctx.precision, "alone_images_per_s": one, "shared_images_per_s": [a, b],
            "shared_total_images_per_s": round(a + b, 1), "total_vs_alone": round((a + b) / one, 3),
            "note": "medians of 5 windows of 300 steps per process; the two processes start together"}


SECTIONS = [("environment", environment), ("resume", resume), ("sync_audit", sync_audit),
            ("profile", profile_steps), ("bench", bench_rows), ("sharing", sharing)]


# -- driver ------------------------------------------------------------------------------------------------
def default_out(dev: torch.device) -> Path:
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{dev.type}-{cpu_name()}"
    return Path("results/bench") / f"gpu-check-{slug(name)}.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and windows (what the tests run)")
    p.add_argument("--budget-s", type=float, default=480, help="wall-time budget; later bench rows give way")
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cuda, cuda:N or cpu")
    p.add_argument("--out", type=Path, help="default: results/bench/gpu-check-<card>.json")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA GPU is visible; use --device auto or cpu")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    out = args.out or default_out(dev)
    out.parent.mkdir(parents=True, exist_ok=True)
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
