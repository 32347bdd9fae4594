"""`make bench`: training throughput of the suite vs a conventional PyTorch pipeline, on this device.

    python -m experiments.bench [--models resnet-20,resnet-56,plain-56] [--precisions fp32,bf16]
                                [--iters N] [--repeats R] [--depths 20,56,110] [--out results/bench/latest.json]
                                [--compile] [--cuda-graphs] [--suite-only] [--sync-start DIR --parties N]

Per model and precision, at batch 128, on the same model, data and device:
  suite         experiments.run.trainer.Trainer's own step (RunDevice: channels_last, autocast, foreach/fused SGD)
                and its loop's bookkeeping, fed by DeviceBatches (uint8 on the device, batched augmentation)
  conventional  the usual recipe: a Dataset of PIL images, torchvision RandomCrop/Flip/ToTensor/Normalize,
                DataLoader(2 workers), NCHW model, plain SGD, loss.item() every step
  bound         the suite's step on one fixed batch already on the device: no data path at all
The pipelines run in turn (suite, conventional, bound, suite, ...) after a warm-up; medians over repeats.
Each window lasts about --window-s (2 s), sized from a probe of the pipeline's own speed. With --sync-start,
several bench processes sharing one GPU time the same interval: each window starts at a file barrier and
stops on the clock.
`depth_scaling` times the suite loop on resnets of several depths: cost should be linear in depth.
The sweep's planner (sweep/status.py) reads rows[*].{device, macs, suite_images_per_s} from the JSON: keep those names.
One file on purpose (~450 lines): the three pipelines are timed by the same code on the same data, which
is what makes their ratio fair; the trainer's public surface is all it borrows.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from experiments import CONF
from experiments.data import channel_stats
from experiments.device import available_cores, cpu_kind, cpu_name, native_bf16, tool_device
from experiments.models import blocks_per_stage, build_model
from experiments.run.trainer import SYNC_EVERY, Trainer
from experiments.runfiles import atomic_write_json
from experiments.train import git_commit

BATCH = 128          # the paper's mini-batch (Sec. 4.2)
WINDOW_S = 2.0       # --iters auto: aim each timed window at about this long
PROBE_S = 0.25       # ...sized from at least this long of steps: one step of a fast GPU is a few ms of noise
CHUNK_S = 0.1        # --sync-start: how often a window looks at the clock (a sync each time)
SEED = 0
_WINDOWS = itertools.count()  # --sync-start: every party runs the same windows in the same order


def make_trainer(arch: str, depth: int, precision: str, device: str, threads: int, num_train: int,
                 batch_size: int = BATCH, compile: bool = False, cuda_graphs: bool = False) -> Trainer:
    """A real Trainer on the fake source (same model, optimiser, step and data path as a run); it is never
    fit(), so nothing is written to its folder."""
    overrides = [f"model={arch}", f"model.depth={depth}", "data=fake", f"data.num_train={num_train}",
                 "data.num_eval=100", f"optim.batch_size={batch_size}", f"trainer.device={device}",
                 f"trainer.precision={precision}", f"trainer.threads={threads}", f"seed={SEED}",
                 f"trainer.compile={compile}", f"trainer.cuda_graphs={cuda_graphs}"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return Trainer(cfg, Path(tempfile.gettempdir()))


class Suite:
    """Trainer.fit's own loop body (`Trainer.train_iteration`) minus evaluation points and
    checkpoints, with fit's sync every SYNC_EVERY iterations; the ResNet-110 warm-up is left out."""

    def __init__(self, tr: Trainer):
        self.tr = tr

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.tr.train_iteration(warming=False)
            if self.tr.iteration % SYNC_EVERY == 0:
                self.tr.first_nonfinite()


class Bound:
    """The suite's step on one fixed batch already on the device (augmented, in its layout): no data path."""

    def __init__(self, tr: Trainer):
        self.step_on, (self.x, self.y) = tr.step_on, tr.batches.train_batch(0)

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step_on(self.x, self.y)


class PilImages(Dataset):
    """What torchvision.datasets.CIFAR10 does: one uint8 HWC array, a PIL image per item."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images.numpy(), labels.tolist(), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


class Conventional:
    """The usual CIFAR recipe on the same images, model, device and hyperparameters."""

    def __init__(self, tr: Trainer, workers: int):
        self.device, self.precision = tr.dev.device, tr.dev.precision
        mean, std = channel_stats(tr.data.train_images)  # per-channel, as torchvision recipes normalise
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(mean.tolist(), std.tolist())])
        self.loader = DataLoader(PilImages(tr.data.train_images, tr.data.train_labels, tf), batch_size=BATCH,
                                 shuffle=True, num_workers=workers, pin_memory=self.device.type == "cuda",
                                 drop_last=True, persistent_workers=workers > 0)
        m, o = tr.cfg.model, tr.cfg.optim
        torch.manual_seed(SEED)
        self.model = build_model(m.arch, m.depth, m.shortcut if m.arch == "resnet" else "A",
                                 width=m.width).to(self.device)  # NCHW, as built
        self.opt = torch.optim.SGD(self.model.parameters(), lr=o.lr, momentum=o.momentum,
                                   weight_decay=o.weight_decay)  # no foreach/fused: the default
        self.batches = self._forever()
        self.running_loss, self.correct = 0.0, 0

    def _forever(self):
        while True:
            yield from self.loader

    def close(self) -> None:
        # Close the generator first: left to the garbage collector, the suspended loader iterator's
        # workers miss their shutdown message and each join waits out a 5 s timeout.
        self.batches.close()
        self.loader = None

    def steps(self, n: int) -> None:
        for _ in range(n):
            x, y = next(self.batches)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                out = self.model(x)
                loss = F.cross_entropy(out, y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.running_loss += loss.item()  # a sync every step, as the usual recipes do
            self.correct += out.argmax(1).eq(y).sum().item()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def images_per_s(run, n: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    run(n)
    sync(device)
    return n * BATCH / (time.perf_counter() - t0)


def probe_rate(run, device: torch.device) -> float:
    """images/s over at least PROBE_S of steps (doubling their number): the window sizes come from it."""
    n = 1
    while True:
        rate = images_per_s(run, n, device)
        if n * BATCH / rate >= PROBE_S:
            return rate
        n *= 2


def window_steps(rate: float, seconds: float = WINDOW_S) -> int:
    """Steps for a window of about `seconds` at `rate` images/s; no upper cap: on a fast GPU 2 s is
    hundreds of steps, and a window of 50 (0.05-0.15 s) gave the planner noisy rates."""
    return max(3, math.ceil(seconds * rate / BATCH))


def images_per_s_for(run, seconds: float, device: torch.device, chunk: int) -> float:
    """images/s over at least `seconds`, in chunks of steps with a sync after each: processes that start
    together stop together (within a chunk), whatever their speed, so they time the same interval."""
    sync(device)
    t0, n = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - t0) < seconds:
        run(chunk)
        sync(device)
        n += chunk
    return n * BATCH / elapsed


def wait_for_parties(folder: Path, tag: str, parties: int, timeout_s: float = 300) -> None:
    """A barrier across processes: each drops `<tag>.<pid>` in `folder` and waits for `parties` of them."""
    (folder / f"{tag}.{os.getpid()}").touch()
    deadline = time.monotonic() + timeout_s
    while (n := len(list(folder.glob(f"{tag}.*")))) < parties:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {n} of {parties} bench processes reached window {tag} in {folder}")
        time.sleep(0.005)


# -- peak memory of the suite loop ----------------------------------------------------------------------
def reset_peak(device: torch.device) -> str:
    """Start a peak-memory window; returns how the peak is measured (stated in the JSON)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "torch.cuda.max_memory_allocated during the suite's timed windows"
    try:  # Linux >= 4.0: writing 5 resets the process's peak RSS (VmHWM) to its current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return "peak RSS of the whole bench process (VmHWM) during the suite's timed windows"
    except OSError:  # psutil would only give the current RSS, not a peak
        return "peak RSS of the whole bench process since it started (ru_maxrss; no reset possible here)"


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


# -- one table row ----------------------------------------------------------------------------------------
ALL = ("suite", "conventional", "bound")


def bench_row(arch, depth, precision, args, pipelines=ALL, compile=False, cuda_graphs=False) -> dict:
    """One table row: images/s of each of `pipelines` (suite always) with the trainer options given."""
    if compile:  # a fresh compile per row: dynamo's per-function cache would otherwise fill up and fall back to eager
        torch._dynamo.reset()
    tr = make_trainer(arch, depth, precision, args.device, args.threads, args.num_train, compile=compile,
                      cuda_graphs=cuda_graphs)
    dev = tr.dev.device
    runs = {"suite": Suite(tr).steps}
    if "conventional" in pipelines:
        conv = Conventional(tr, args.workers)
        runs |= {"conventional": conv.steps}
    if "bound" in pipelines:
        runs |= {"bound": Bound(tr).steps}
    for run in runs.values():  # first steps build kernels/primitives and grow the allocator: untimed
        run(args.warmup)
    # Each pipeline's windows last about --window-s at its own speed (the conventional one is slower).
    probed = {name: probe_rate(run, dev) for name, run in runs.items()} if not args.iters or args.sync_start else {}
    iters = {name: args.iters or window_steps(probed[name], args.window_s) for name in runs}
    rates, peak = {name: [] for name in runs}, 0.0
    for _ in range(args.repeats):  # interleaved, so load changes hit every pipeline alike
        for name, run in runs.items():
            if name == "conventional":
                run(1)  # the loader prefetched while the others ran: spend that head start untimed
            if name == "suite":
                method = reset_peak(dev)
            if args.sync_start:  # the other processes start this window now too, and stop on the clock
                wait_for_parties(args.sync_start, str(next(_WINDOWS)), args.parties)
                chunk = max(1, math.ceil(CHUNK_S * probed[name] / BATCH))
                rates[name].append(images_per_s_for(run, args.window_s, dev, chunk))
            else:
                rates[name].append(images_per_s(run, iters[name], dev))
            if name == "suite":
                peak = max(peak, peak_mb(dev))
    med = {name: statistics.median(r) for name, r in rates.items()}
    row = {"model": f"{arch}-{depth}", "arch": arch, "depth": depth, "macs": tr.macs, "precision": precision,
           "device": dev.type, "compile": compile, "cuda_graphs": cuda_graphs,
           "suite_images_per_s": round(med["suite"], 1), "iters": iters["suite"],
           "peak_mem_mb": round(peak, 1), "peak_mem_method": method}
    if "bound" in med:
        row |= {"bound_images_per_s": round(med["bound"], 1), "overhead": round(1 - med["suite"] / med["bound"], 3)}
    if "conventional" in med:
        row |= {"conventional_images_per_s": round(med["conventional"], 1),
                "ratio": round(med["suite"] / med["conventional"], 3)}
        conv.close()  # stops the persistent workers before the next row
    del tr, runs
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def parse_model(name: str) -> tuple[str, int]:
    arch, _, depth = name.partition("-")
    if arch not in ("resnet", "plain") or not depth.isdigit():
        raise ValueError(f"model {name!r} is not <resnet|plain>-<depth>, e.g. resnet-56")
    blocks_per_stage(int(depth))  # depth must be 6n+2
    return arch, int(depth)


class Parser(argparse.ArgumentParser):
    """A user's mistake ends as the suite's one line, `error: <what>; <fix>`, exit 2 (not usage plus a line)."""

    def error(self, message):  # argparse's own complaints: an unknown flag, a value that is not a number
        self.fail(f"{message}; see {self.prog} --help")

    def fail(self, message):
        self.exit(2, f"error: {message}\n")


def out_problem(out: Path) -> str | None:
    """Why `out` cannot be written (None: it can), found by trying now, not after minutes of measuring. A
    folder made for the try is removed when the try fails: a refused --out leaves nothing behind."""
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists() and not d.is_symlink()]
    try:
        if out.is_dir():
            return f"--out {out} is a folder; pass --out <file path>.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out.parent).close()
        return None
    except OSError as e:
        for d in made:  # innermost first
            try:
                d.rmdir()
            except OSError:
                pass
        file = next((d for d in out.parents if d.is_file()), None)
        why = f"{file} is a file, not a folder" if file is not None else e.strerror
        return f"cannot write {out} ({why}); pass --out <path in a writable folder>"


def parse_args(argv=None):
    p = Parser(prog="python -m experiments.bench", description=__doc__.split("\n\n")[0])
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--models", type=csv, default=csv("resnet-20,resnet-56,plain-56"))
    p.add_argument("--precisions", type=csv, default=csv("fp32,bf16"))
    p.add_argument("--depths", type=lambda s: [int(x) for x in csv(s)], default=[20, 56, 110],
                   help="resnet depths of the depth-scaling rows (suite loop only); empty to skip")
    p.add_argument("--iters", type=int, default=0, help="timed steps per window; 0: about --window-s per window")
    p.add_argument("--window-s", type=float, default=WINDOW_S, help="seconds per timed window with --iters 0")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per pipeline before timing")
    p.add_argument("--threads", type=int, default=available_cores(), help="compute threads (default: all cores)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    p.add_argument("--num-train", type=int, default=10_000, help=f"fake training images (both pipelines), >= {BATCH}")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--compile", action="store_true", help="trainer.compile=true: torch.compile the model")
    p.add_argument("--cuda-graphs", action="store_true", help="trainer.cuda_graphs=true (CUDA only)")
    p.add_argument("--suite-only", action="store_true", help="time only the suite loop (no conventional, no bound)")
    p.add_argument("--sync-start", type=Path, metavar="DIR",
                   help="start every timed window together with --parties bench processes (a file barrier in "
                        "DIR) and time it by the clock, --window-s long: processes sharing a GPU (needs --suite-only)")
    p.add_argument("--parties", type=int, default=2, help="processes meeting at --sync-start")
    p.add_argument("--out", type=Path, default=Path("results/bench/latest.json"))
    args = p.parse_args(argv)
    try:
        args.models = [parse_model(m) for m in args.models]
        for d in args.depths:
            blocks_per_stage(d)
    except ValueError as e:
        p.fail(str(e))
    if bad := [x for x in args.precisions if x not in ("fp32", "bf16")]:
        p.fail(f"unknown precision {bad[0]!r}; choose fp32 and/or bf16")
    if min(args.repeats, args.warmup, args.threads, args.parties) < 1 or args.iters < 0 or args.workers < 0:
        p.fail("--repeats, --warmup, --threads and --parties must be >= 1; --iters and --workers >= 0")
    if args.num_train < BATCH:  # every pipeline draws whole batches of 128
        p.fail(f"--num-train {args.num_train} is less than one batch of {BATCH} images; use --num-train {BATCH} "
               f"or more (default 10000)")
    if not args.window_s > 0:
        p.fail(f"--window-s {args.window_s} must be a positive number of seconds (default {WINDOW_S})")
    if args.sync_start is not None and not (args.suite_only and args.sync_start.is_dir()):
        p.fail("--sync-start needs --suite-only and an existing folder that the bench processes share")
    try:
        dev = tool_device(args.device)  # auto: as a run's trainer.device=auto picks; cuda with its index
    except ValueError as e:
        p.fail(str(e))
    args.device = str(dev)
    if args.cuda_graphs and dev.type != "cuda":
        p.fail(f"--cuda-graphs needs a CUDA device, and this bench runs on {dev.type}; drop --cuda-graphs")
    if problem := out_problem(args.out):
        p.fail(problem)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    kind = torch.device(args.device).type
    if kind == "cuda":  # cuda:N: this process's "cuda" (the trainer's, CUDA graphs' streams) is that GPU
        torch.cuda.set_device(torch.device(args.device))
    native = native_bf16(torch.device(args.device))
    notes = []
    precisions = args.precisions
    if "bf16" in precisions and not native:
        precisions = [p for p in precisions if p != "bf16"]
        notes.append(f"bf16 rows skipped: no native bf16 on this {kind} (autocast would emulate it, slower)")
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(args.device) if kind == "cuda" else "Apple MPS" if kind == "mps" else cpu_name()
    print(f"bench on {kind} ({name}), {args.threads} threads, native bf16: {native}, torch {torch.__version__}")

    rows = []
    for arch, depth in args.models:
        for precision in precisions:
            rows.append(bench_row(arch, depth, precision, args, ("suite",) if args.suite_only else ALL,
                                  args.compile, args.cuda_graphs))
            r = rows[-1]
            print(f"  {r['model']:>10s} {precision}: suite {r['suite_images_per_s']:7.1f} img/s"
                  + ("" if args.suite_only else f", conventional {r['conventional_images_per_s']:7.1f}, "
                                                f"bound {r['bound_images_per_s']:7.1f}"), flush=True)
    for r in rows:  # the usual recipe trains in fp32: what switching to the suite in bf16 buys over it
        fp32 = next((f for f in rows if f["model"] == r["model"] and f["precision"] == "fp32"), None)
        if fp32 is not None and "conventional_images_per_s" in fp32:
            r["ratio_vs_conventional_fp32"] = round(r["suite_images_per_s"] / fp32["conventional_images_per_s"], 3)
    scale_precision = "bf16" if native else "fp32"
    scaling = []
    for depth in args.depths:  # reuse a row's suite number when it measured the same thing
        r = next((r for r in rows if (r["arch"], r["depth"], r["precision"]) == ("resnet", depth, scale_precision)),
                 None)
        if r is None:
            r = bench_row("resnet", depth, scale_precision, args, ("suite",), args.compile, args.cuda_graphs)
            print(f"  {r['model']:>10s} {scale_precision}: suite {r['suite_images_per_s']:7.1f} img/s", flush=True)
        scaling.append({k: r[k] for k in ("model", "depth", "macs", "precision", "suite_images_per_s")})

    print(f"\n{'model':>10s} {'prec':>5s} {'MMAC':>6s} {'suite':>8s} {'conv.':>8s} {'bound':>8s} "
          f"{'ratio':>6s} {'vs fp32':>7s} {'overhead':>8s} {'peak MB':>8s}   (images/s, batch {BATCH}, median of "
          f"{args.repeats}; ratio: suite / conventional at the same precision; vs fp32: suite / conventional fp32)")
    nan = float("nan")
    for r in rows:
        print(f"{r['model']:>10s} {r['precision']:>5s} {r['macs'] / 1e6:6.1f} {r['suite_images_per_s']:8.1f} "
              f"{r.get('conventional_images_per_s', nan):8.1f} {r.get('bound_images_per_s', nan):8.1f} "
              f"{r.get('ratio', nan):6.2f} {r.get('ratio_vs_conventional_fp32', nan):7.2f} "
              f"{r.get('overhead', nan):8.1%} {r['peak_mem_mb']:8.0f}")
    if scaling:  # linear cost in depth: images/s x depth and time per MAC stay about constant
        print(f"\ndepth scaling (resnet, suite loop, {scale_precision}; a training step costs ~3 forward passes):")
        for s in scaling:
            print(f"  depth {s['depth']:4d}: {s['suite_images_per_s']:8.1f} img/s, img/s x depth "
                  f"{s['suite_images_per_s'] * s['depth']:9.0f}, {1e12 / (s['suite_images_per_s'] * s['macs']):6.1f} "
                  f"ps per forward MAC")
    for n in notes:
        print(f"note: {n}")

    result = {"device": kind, "device_name": name, "torch_version": torch.__version__, "threads": args.threads,
              "git_commit": git_commit(), "batch_size": BATCH, "native_bf16": native,
              "compile": args.compile, "cuda_graphs": args.cuda_graphs,
              "workers": args.workers, "num_train": args.num_train, "repeats": args.repeats, "notes": notes,
              "rows": rows, "depth_scaling": scaling}
    if kind == "cpu":  # the planner matches benchmarks to CPUs by kind, not name alone (sweep/status.py, this_device)
        result["cpu_capability"] = cpu_kind()["cpu_capability"]
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}; total wall time {time.perf_counter() - start:.0f} s")
    return result


if __name__ == "__main__":
    main()
