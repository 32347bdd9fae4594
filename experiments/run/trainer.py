"""The training loop of one run: model, data, optimiser, and `Trainer.fit`, a loop of labelled steps
(train step, warm-up check, divergence check and progress, evaluation point, checkpoint, hand-off).

`make bench` and `make gpu-check` drive the same trainer through `step_on`, `train_iteration` and
`first_nonfinite`; experiments/train.py owns the run folder around it.
"""
from __future__ import annotations

import copy
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from experiments.contract import COMPLETED, DIVERGED, FORMAT_VERSION, jsonl_line, read_metrics
from experiments.data import DEFAULT_AUGMENT, DeviceBatches, load_data
from experiments.device import RunDevice, pick_device
from experiments.faults import fault_point
from experiments.models import build_from_config, count_macs, count_params, response_layers
from experiments.run.checks import ConfigError
from experiments.run.graphs import GraphedStep
from experiments.run.probes import evaluate, gradient_norms
from experiments.run.progress import Progress
from experiments.run.resume_guard import result_config
from experiments.run.schedule import RUNNING_ERR_CHECK_EVERY, LrSchedule, RunningError
from experiments.run.stopping import StopSignals, budget_spent
from experiments.runfiles import UnsafeCheckpoint, append_metrics, atomic_torch_save, atomic_write_text, load_checkpoint

# Iterations between the loop's planned host syncs (divergence check and progress); steps in between
# queue on the device without waiting for the host.
SYNC_EVERY = 50


@dataclass
class StepSums:
    """Sums over the training steps since the last evaluation point, kept on the device (no host sync per
    step) and turned into that point's train_loss / train_err / images/s. Saved in last.pt under "acc"."""
    loss: torch.Tensor | float = 0.0    # summed over images
    wrong: torch.Tensor | int = 0       # misclassified images
    seen: int = 0                       # images
    warmup: bool = False                # some step ran at the warm-up lr
    since_s: float = 0.0                # the run's training seconds when these sums began

    def add(self, loss: torch.Tensor, wrong: torch.Tensor, images: int, warming: bool) -> None:
        self.loss = self.loss + loss * images
        self.wrong = self.wrong + wrong
        self.seen += images
        self.warmup |= warming

    def train_err(self) -> float:
        """Percent of the images seen so far that were misclassified (a host sync)."""
        return 100.0 * float(self.wrong) / max(self.seen, 1)

    def row(self, elapsed_s: float) -> dict:
        seen = max(self.seen, 1)
        return {"warmup": bool(self.warmup), "train_loss": float(self.loss) / seen, "train_err": self.train_err(),
                "elapsed_s": round(elapsed_s, 3),
                "images_per_s": round(seen / max(elapsed_s - self.since_s, 1e-9), 1)}

    def state(self) -> dict:
        # The checkpoint's layout since before this type existed: old last.pt files resume unchanged.
        return {"loss": self.loss, "wrong": self.wrong, "seen": self.seen, "warmup": self.warmup, "t": self.since_s}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> "StepSums":
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        return cls(moved["loss"], moved["wrong"], moved["seen"], moved["warmup"], since_s=moved["t"])


class Trainer:
    """One run's model, data, optimiser and loop; `fit` is the run."""

    def __init__(self, cfg: DictConfig, folder: Path, dev: RunDevice | None = None):
        self.cfg, self.folder = cfg, folder
        self.dev: RunDevice = dev or pick_device(cfg.trainer)
        if self.dev.note:
            print(f"note: {self.dev.note}", flush=True)
        torch.manual_seed(cfg.seed)  # initialisation; data order and augmentation are seeded in DeviceBatches
        m = cfg.model
        self.model = build_from_config(m)
        self.params, self.macs = count_params(self.model), count_macs(self.model)
        self.model.to(self.dev.device, memory_format=self.dev.memory_format)
        self.data = load_data(cfg.data)
        self.batches = DeviceBatches(self.data, self.dev.device, cfg.optim.batch_size, cfg.seed,
                                     augment=cfg.data.get("augment", DEFAULT_AUGMENT),
                                     channels_last=self.dev.channels_last)
        self.schedule = LrSchedule.from_config(cfg.optim, cfg.schedule, m.depth)
        # Weight decay on every parameter (BN affine and biases too): the paper says only "weight decay of
        # 0.0001"; decaying all parameters is what the Torch/Caffe ResNet code of its time did (fb.resnet.torch).
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.schedule.lr_at(0), momentum=cfg.optim.momentum,
                                   weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov,
                                   **self.dev.sgd_kwargs)
        self.lr = self.schedule.lr_at(0)  # host copy: under CUDA graphs the optimizer's lr is a device tensor
        # torch.compile the model, not the step: a compiled step breaks at backward and recompiles the optimizer.
        # Dynamo is reset first: a process that trains several nets (the basic launcher's sweep, a reused joblib
        # worker) would otherwise reach its recompile limit and fall back to eager without a word.
        self._graphs_before = dynamo_graphs() if self.dev.compile else 0
        if self.dev.compile:
            torch._dynamo.reset()
        self.model_fn = torch.compile(self.model) if self.dev.compile else self.model
        # CUDA graphs: the whole step, captured at its first call (after any resume); graphs.py.
        self.graphed = GraphedStep(self._step, self.model, self.opt, capture=self.dev.device.type == "cuda") \
            if self.dev.cuda_graphs else None
        self.total = cfg.schedule.iterations
        self.iteration, self.elapsed, self.warmup_end = 0, 0.0, None
        self.running_err = RunningError()  # the warm-up's window of recent batches
        self.sums = StepSums()
        self.signals = StopSignals()  # received: the signal that asked the run to stop
        self.deadline: float | None = None  # Unix time when the wall-clock budget is spent (stopping.run_deadline)
        self._over_budget = False  # asked once per step: time.time() is cheap, but not free on every call
        # The iteration whose loss first was not finite, as a device tensor (-1: none yet): read by
        # first_nonfinite() at the planned syncs, never once per step.
        self._first_nonfinite = torch.tensor(-1, device=self.dev.device)
        self._clock_start = 0.0

    # -- one optimisation step ------------------------------------------------------------
    def _step(self, x, y):
        with self.dev.autocast():
            logits = self.model_fn(x)
            loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach(), (logits.argmax(1) != y).sum()

    def step_on(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on the batch (x, y), at the current lr: (loss, wrong count), on the device."""
        return self.graphed(x, y) if self.graphed is not None else self._step(x, y)

    def set_lr(self, lr: float) -> None:
        if self.graphed is not None:
            self.graphed.set_lr(lr)
        else:
            for g in self.opt.param_groups:
                g["lr"] = lr
        self.lr = lr

    def first_nonfinite(self) -> int | None:
        """The iteration whose loss first was not finite, or None; a host sync (fit does it every SYNC_EVERY steps)."""
        at = int(self._first_nonfinite)
        return at if at >= 0 else None

    def train_iteration(self, warming: bool) -> tuple[float, torch.Tensor]:
        """One iteration of the loop (also what `make bench` times): the scheduled lr, the run's
        batch, the step, and on-device sums with no host sync. Returns the lr and the wrong count."""
        it = self.iteration
        lr = self.schedule.lr_at(it, warming)
        if self.lr != lr:
            self.set_lr(lr)
        x, y = self.batches.train_batch(it)
        loss, wrong = self.step_on(x, y)
        self._first_nonfinite = torch.where((self._first_nonfinite < 0) & ~torch.isfinite(loss), it + 1,
                                            self._first_nonfinite)
        self.sums.add(loss, wrong, len(y), warming)
        self.iteration = it + 1
        return lr, wrong

    # -- the loop -----------------------------------------------------------------------------
    @property
    def warming(self) -> bool:
        return self.schedule.warmup and self.warmup_end is None

    def fit(self) -> dict:
        """Resume, then train to the last iteration or the first non-finite loss; returns the run's
        results for summary.json. A signal checkpoints and raises stopping.Interrupted."""
        rows = self._resume()
        probes = self._probe_plan()
        progress = Progress(self.cfg.trainer.progress, self.total, self.iteration, self.folder,
                            self.cfg.optim.batch_size)
        nonfinite_at = None
        with self.signals, progress:
            self._clock_start = time.perf_counter()
            while self.iteration < self.total:
                lr, wrong = self.train_iteration(self.warming)
                self._over_budget = budget_spent(self.deadline)
                self._check_warmup(wrong)
                if self._sync_due():
                    nonfinite_at = self.first_nonfinite()
                    if nonfinite_at is not None:
                        break  # diverged: a result of the run, recorded as such
                    progress.update(self.iteration, lr, self.sums.train_err())
                if self._evaluation_due():
                    rows.append(self._evaluation_point(lr, probes, progress))
                if self._checkpoint_due():
                    self._checkpoint()
                if self._stopping and self.iteration < self.total:  # at the last step, finishing is quicker
                    self.signals.stop(self.iteration, self.folder / "last.pt")  # hands off or raises
        return self._results(rows, nonfinite_at)

    @property
    def _stopping(self) -> bool:
        """A signal came (even during this step's evaluation) or the budget is spent: checkpoint, then stop."""
        return self.signals.received is not None or self._over_budget

    def _evaluation_due(self) -> bool:
        return self.iteration % self.cfg.trainer.eval_every == 0 or self.iteration == self.total

    def _sync_due(self) -> bool:
        """The loop's planned host syncs: evaluation points, every SYNC_EVERY steps, and before stopping."""
        return self._evaluation_due() or self.iteration % SYNC_EVERY == 0 or self._stopping

    def _checkpoint_due(self) -> bool:
        return self.iteration % self.cfg.trainer.ckpt_every == 0 or self.iteration == self.total or self._stopping

    def _resume(self) -> list[dict]:
        """Continue from last.pt if there is one; returns the curve so far. Lines past the checkpoint
        (written after it, before a kill) are recomputed, not duplicated."""
        path = self.folder / "metrics.jsonl"
        rows = read_metrics(path, up_to_iter=self.iteration if self.load() else -1)
        atomic_write_text(path, "".join(jsonl_line(r) for r in rows))
        return rows

    def _check_warmup(self, wrong: torch.Tensor) -> None:
        """While warming up, track the running training error; warm-up ends once the schedule says so
        (looked at every RUNNING_ERR_CHECK_EVERY iterations: a host sync)."""
        if not self.warming:
            return
        self.running_err.add(wrong, self.cfg.optim.batch_size)
        if self.iteration % RUNNING_ERR_CHECK_EVERY == 0 and \
                self.schedule.warmup_should_end(self.iteration, self.running_err.percent()):
            self.warmup_end = self.iteration

    @contextmanager
    def _clock_paused(self):
        """Evaluation and checkpoints are not training: elapsed (and images/s) count the steps only."""
        self.elapsed += time.perf_counter() - self._clock_start
        try:
            yield
        finally:
            self._clock_start = time.perf_counter()

    def _evaluation_point(self, lr: float, probes, progress: Progress) -> dict:
        """One row of metrics.jsonl: the training sums since the last point, the evaluation, and at probe
        points the layer responses and gradient norms; the sums start over."""
        points, probe_batch = probes
        it, probe = self.iteration, self.iteration in points
        with self._clock_paused():
            row = {"format_version": FORMAT_VERSION, "iter": it,
                   "epoch": it * self.cfg.optim.batch_size / self.batches.train_size, "lr": lr,
                   **self.sums.row(self.elapsed)}
            row |= evaluate(self.model, self.batches, self.dev.autocast, self.cfg.trainer.eval_batch_size, probe)
            if probe:
                row["grad_norm"] = gradient_norms(self.model, *probe_batch, self.dev.autocast)
            self.sums = StepSums(since_s=self.elapsed)
            append_metrics(self.folder / "metrics.jsonl", row)
            progress.point(row)
        return row

    def _probe_plan(self) -> tuple[set[int], tuple | None]:
        """(probe points, fixed batch): the first and last evaluation points and the first at or after each
        lr drop; none when trainer.probes is off."""
        if not self.cfg.trainer.probes:
            return set(), None
        every, total = self.cfg.trainer.eval_every, self.total
        points = sorted({min(i, total) for i in range(every, total + every, every)})
        chosen = {points[0], points[-1]}
        for m in self.schedule.milestones:
            after = [p for p in points if p >= m]
            if after:
                chosen.add(after[0])
        return chosen, self.batches.fixed_train_batch(self.cfg.trainer.probe_batch)

    def _checkpoint(self) -> None:
        with self._clock_paused():
            self.save()
            fault_point("after:checkpoint")

    def _results(self, rows: list[dict], nonfinite_at: int | None) -> dict:
        cfg, last = self.cfg, rows[-1] if rows else {}
        scored = [r for r in rows if "test_err" in r]
        best = min(scored, key=lambda r: r["test_err"]) if scored else {}
        return {
            "status": DIVERGED if nonfinite_at is not None else COMPLETED, "diverged_at": nonfinite_at,
            "data_source": self.data.source, "augment": self.batches.augment, "data_split": self.data.split,
            "eval_split": self.data.split,  # what the run evaluates on: the split it held out
            "train_size": self.batches.train_size, "eval_size": len(self.data.eval_labels),
            "params": self.params, "macs": self.macs, "batch_size": cfg.optim.batch_size, "lr": cfg.optim.lr,
            "milestones": list(self.schedule.milestones), "gamma": self.schedule.gamma,
            "weight_decay": cfg.optim.weight_decay, "momentum": cfg.optim.momentum,
            "warmup": self.schedule.warmup, "warmup_end_iter": self.warmup_end,
            "warmup_max_iters": self.schedule.warmup_max_iters if self.schedule.warmup else None,
            "iterations": cfg.schedule.iterations, "iterations_done": self.iteration,
            "final_train_err": last.get("train_err"), "final_test_err": last.get("test_err"),
            "final_train_loss": last.get("train_loss"), "final_test_loss": last.get("test_loss"),
            "best_test_err": best.get("test_err"), "best_test_iter": best.get("iter"),
            "wall_time_s": round(self.elapsed, 2),
            "images_per_s": round(self.iteration * cfg.optim.batch_size / max(self.elapsed, 1e-9), 1),
            "response_layers": [n for n, _ in response_layers(self.model)],
        } | self.dev.describe() | {"compiled": self.compiled_ran()}

    def compiled_ran(self) -> bool:
        """Whether torch.compile made graphs for this run, not only whether it was asked (a fallback to eager
        is recorded as what it is)."""
        return bool(self.dev.compile) and dynamo_graphs() > self._graphs_before

    # -- checkpoint -------------------------------------------------------------------------
    def save(self):
        opt = self.opt.state_dict()
        for g in opt["param_groups"]:  # a float, not the CUDA graph's device tensor: portable across devices
            g["lr"] = self.lr
        atomic_torch_save(self.folder / "last.pt", {
            "format_version": FORMAT_VERSION, "iteration": self.iteration, "elapsed": self.elapsed,
            "result_config": result_config(self.cfg),  # lets a resume refuse a changed config on its own
            "warmup_end": self.warmup_end, "warmup_window": self.running_err.state(), "acc": self.sums.state(),
            "model": self.model.state_dict(), "opt": opt, "torch_rng": torch.get_rng_state(),
            # The run's own GPU only: a run resumed where fewer GPUs are visible must not need the others'.
            "cuda_rng": torch.cuda.get_rng_state(self.dev.device) if self.dev.device.type == "cuda" else None,
        })

    def load(self) -> bool:
        """Resume from last.pt. Everything is read onto the CPU (the RNG states must stay there:
        `set_rng_state` takes only a CPU ByteTensor); `load_state_dict` copies weights and momentum onto
        the run's device. Any failure leaves the fresh model and optimiser as they were and retrains."""
        path = self.folder / "last.pt"
        if not (self.cfg.trainer.resume and path.exists()):
            return False
        fresh = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.opt.state_dict()), torch.get_rng_state())
        try:
            state = load_checkpoint(path)
            gap = self._metrics_gap(state["iteration"])
            if gap:  # the curve before the checkpoint is damaged: only a fresh run can redo it exactly
                print(f"warning: {gap}; training this run from the start", file=sys.stderr)
                path.unlink(missing_ok=True)
                return False
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            for g in self.opt.param_groups:  # this device's SGD kernel, whichever device saved the checkpoint
                g.update(self.dev.sgd_kwargs)
            match_parameter_layout(self.opt)
            torch.set_rng_state(state["torch_rng"])
            restore_cuda_rng(state.get("cuda_rng"), self.dev.device)
            sums = StepSums.from_state(state["acc"], self.dev.device)
            iteration, elapsed, warmup_end = state["iteration"], state["elapsed"], state["warmup_end"]
            window = list(state.get("warmup_window", []))
        except UnsafeCheckpoint as e:  # never loaded, never deleted: the user decides (one line, exit 2)
            raise ConfigError(str(e)) from None
        except Exception as e:  # a truncated or corrupt checkpoint: retrain rather than crash
            print(f"warning: {path} is unreadable ({type(e).__name__}); training this run from the start",
                  file=sys.stderr)
            self.model.load_state_dict(fresh[0])
            self.opt.load_state_dict(fresh[1])
            torch.set_rng_state(fresh[2])
            path.unlink(missing_ok=True)
            return False
        self.iteration, self.elapsed, self.warmup_end, self.sums = iteration, elapsed, warmup_end, sums
        self.running_err.batches = window
        self.lr = float(self.opt.param_groups[0]["lr"])
        print(f"{self.folder}: resuming from last.pt at iteration {self.iteration}", flush=True)
        return True

    def _metrics_gap(self, upto: int) -> str | None:
        """Why metrics.jsonl cannot be continued from a checkpoint at `upto`, or None when it can."""
        path, every, total = self.folder / "metrics.jsonl", self.cfg.trainer.eval_every, self.cfg.schedule.iterations
        want = list(range(every, upto + 1, every)) + ([upto] if upto == total and total % every else [])
        have = [r["iter"] for r in read_metrics(path, up_to_iter=upto)]
        if have == want:
            return None
        return (f"{path} is truncated or corrupt: {len(have)} readable evaluation points up to the checkpoint "
                f"at iteration {upto}, expected {len(want)}")


def match_parameter_layout(opt: torch.optim.Optimizer) -> None:
    """Give each loaded momentum buffer its parameter's strides: a checkpoint written with contiguous
    parameters (MPS, trainer.channels_last=false) resumed with channels_last would otherwise keep the
    saved strides, and fused/foreach SGD requires the buffers to match the parameters' layout."""
    for group in opt.param_groups:
        for p in group["params"]:
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if isinstance(buf, torch.Tensor) and (buf.stride() != p.stride() or buf.device != p.device):
                opt.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buf)


def restore_cuda_rng(saved, device: torch.device) -> None:
    """The run's GPU generator as saved: one state (this suite now), or a list of every visible GPU's
    (checkpoints written before), of which only the run's own GPU counts. Where it cannot be restored
    (a CPU resume, a list without this index) the run goes on: nothing in a run draws from the global
    CUDA generator (batches and augmentation use their own generators), so it never makes a checkpoint
    unusable."""
    if saved is None or device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    if isinstance(saved, (list, tuple)):
        saved = saved[index] if index < len(saved) else None
    try:
        if isinstance(saved, torch.Tensor):
            torch.cuda.set_rng_state(saved, index)
    except (RuntimeError, ValueError, TypeError) as e:
        print(f"note: the checkpoint's CUDA generator state was not restored ({type(e).__name__}); "
              f"nothing in the run draws from it", file=sys.stderr)


def dynamo_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far (its counters survive torch._dynamo.reset)."""
    from torch._dynamo.utils import counters  # imported on use: importing Dynamo costs seconds
    return int(counters["stats"]["unique_graphs"])
