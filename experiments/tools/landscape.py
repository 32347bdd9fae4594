"""`python -m experiments.landscape RUN_DIR [--two-d]`: the loss landscape of Li, Xu, Taylor, Studer and
Goldstein 2018 ("Visualizing the Loss Landscape of Neural Nets", arXiv:1712.09913) around a completed
run's trained weights; writes landscape.json beside them.

Training loss and error at theta + a*d1 (1D) and theta + a*d1 + b*d2 (2D, --two-d) on a fixed subset of
training images, un-augmented: the first N of a permutation that depends on no seed
(DeviceBatches.fixed_train_batch, the gradient-norm probe's batch). Directions as the paper's code
(tomgoldstein/loss-landscape, dir_type=weights, --xnorm filter --xignore biasbn): a Gaussian with the
shape of every weight, each filter (slice along the first dimension: a conv's output channel, a row of
the FC layer) rescaled to the norm of the trained filter; biases and BatchNorm weights and biases (the
1-D parameters) get direction zero and keep their trained values. BatchNorm runs in eval mode with the
trained net's running statistics at every point (their evaluation does the same): the surface is that
of the network as it is used, and a point is a pure function of the weights. d1 and d2 come from one
CPU generator seeded with --direction-seed (d1 drawn first, so the 1D curve is the 2D plot's b=0 row),
which every net shares: plain and residual nets of a depth see directions drawn the same way.

Default sizes fit 2 CPU cores: a forward of ResNet-56 over 500 images takes about 2.5 s there (fp32,
AVX2: a third of a training step in `make bench`), so 21 points (1D) take about a minute and an 11 x 11
grid (2D) about five; on a GPU ask for the paper's resolution (--points 51 --grid 51 --subset 10000).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from experiments.tools.trained_run import (USER_ERRORS, OptionError, TrainedRun, check_positive,
                                           common_options, read_result, run_tool, up_to_date, write_result)

LANDSCAPE = "landscape.json"
POINTS, GRID, SUBSET, SPAN = 21, 11, 500, 1.0  # why these sizes: the module's docstring
METHOD = {
    "directions": "Gaussian, filter-normalised: each filter of d scaled to the norm of the trained filter",
    "ignored": "biases and BatchNorm weights and biases (1-D parameters): direction zero, as --xignore biasbn",
    "batchnorm": "eval mode: the trained net's running statistics at every point",
    "subset_rule": "the first N training images of a seed-independent permutation, un-augmented",
}


def coordinates(n: int, span: float) -> list[float]:
    """n points on [-span, span]; n odd, so the trained weights (0) are one of them, exactly."""
    return [span * (2 * i / (n - 1) - 1) for i in range(n)]


def filter_normalised(params: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor | None]:
    """One direction: per weight, a Gaussian whose every filter has the trained filter's norm; None
    (zero) for 1-D parameters. Drawn on the CPU in fp32, so the same seed gives the same direction on
    any device."""
    direction = []
    for p in params:
        if p.dim() <= 1:
            direction.append(None)
            continue
        w = p.detach().float().cpu()
        d = torch.randn(w.shape, generator=generator)
        scale = w.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)  # the paper's code's epsilon
        direction.append((d * scale.view(-1, *[1] * (w.dim() - 1))).to(p.device, p.dtype))
    return direction


class Surface:
    """The trained net's loss and error at theta + sum(c_i * d_i) on the subset; the weights come back
    as they were on close()."""

    def __init__(self, run: TrainedRun, subset: int, seed: int, n_directions: int):
        self.run, self.model = run, run.model.eval()
        self.params = list(self.model.parameters())
        self.theta = [p.detach().clone() for p in self.params]
        generator = torch.Generator().manual_seed(seed)
        self.directions = [filter_normalised(self.params, generator) for _ in range(n_directions)]
        self.x, self.y = run.batches.fixed_train_batch(subset)
        self.moved = sum(p.numel() for p, d in zip(self.params, self.directions[0]) if d is not None)

    @torch.no_grad()
    def at(self, *coeffs: float) -> tuple[float | None, float]:
        """(mean cross-entropy, error %) at the point; a loss that overflows is None."""
        for i, p in enumerate(self.params):
            if self.directions[0][i] is None:
                continue
            p.copy_(self.theta[i])
            for c, direction in zip(coeffs, self.directions):
                p.add_(direction[i], alpha=c)
        loss_sum = wrong = 0
        batch = int(self.run.cfg.trainer.eval_batch_size)
        for s in range(0, len(self.y), batch):
            with self.run.dev.autocast():
                logits = self.model(self.x[s:s + batch])
            loss_sum = loss_sum + F.cross_entropy(logits.float(), self.y[s:s + batch], reduction="sum")
            wrong = wrong + (logits.argmax(1) != self.y[s:s + batch]).sum()
        loss = float(loss_sum) / len(self.y)
        return (loss if math.isfinite(loss) else None), 100.0 * float(wrong) / len(self.y)

    @torch.no_grad()
    def close(self) -> None:
        for p, t in zip(self.params, self.theta):
            p.copy_(t)


def _scan(surface: Surface, points: list[tuple], label: str, progress: bool | None) -> tuple[list, list, float]:
    """(losses, errors, seconds) at every point, with a bar on a terminal (silence in a log)."""
    t0, losses, errs = time.perf_counter(), [], []
    for point in tqdm(points, desc=label, unit="pt", file=sys.stderr,
                      disable=None if progress is None else not progress):
        loss, err = surface.at(*point)
        losses.append(loss)
        errs.append(err)
    return losses, errs, round(time.perf_counter() - t0, 1)


def settings_of(run: TrainedRun, subset: int, seed: int, span: float) -> dict:
    """What every value depends on (the 1D and 2D parts add their own size): a change recomputes."""
    return {"weights_sha256": run.weights_sha256, "subset": subset, "direction_seed": seed, "span": span,
            "precision": run.dev.precision, "eval_batch_size": int(run.cfg.trainer.eval_batch_size), **METHOD}


def measure(run: TrainedRun, points: int = POINTS, grid: int | None = None, subset: int = SUBSET, seed: int = 0,
            span: float = SPAN, force: bool = False, progress: bool | None = None) -> tuple[dict, bool]:
    """(landscape.json's content, whether anything was computed now). A part whose settings match the
    file is kept: the 1D curve when `points` matches, the 2D grid when `grid` does (or when no grid is
    asked for: a grid computed before stays)."""
    path, settings = run.run_dir / LANDSCAPE, settings_of(run, subset, seed, span)
    found = read_result(path)
    kept = found if found is not None and not force and up_to_date(found, settings) else {}
    one_d = kept.get("one_d") if (kept.get("one_d") or {}).get("points") == points else None
    two_d = kept.get("two_d") if kept.get("two_d") and (grid is None or kept["two_d"].get("grid") == grid) else None
    if one_d is not None and (two_d is not None or grid is None):
        return found, False
    surface = Surface(run, subset, seed, 2 if grid else 1)
    try:
        if one_d is None:
            alpha = coordinates(points, span)
            loss, err, seconds = _scan(surface, [(a,) for a in alpha], f"1D {run.name}", progress)
            one_d = {"points": points, "alpha": alpha, "loss": loss, "err": err, "elapsed_s": seconds}
        if grid and two_d is None:
            axis = coordinates(grid, span)
            loss, err, seconds = _scan(surface, [(a, b) for b in axis for a in axis], f"2D {run.name}", progress)
            two_d = {"grid": grid, "alpha": axis, "beta": axis, "elapsed_s": seconds,  # rows: beta; columns: alpha
                     "loss": [loss[i:i + grid] for i in range(0, len(loss), grid)],
                     "err": [err[i:i + grid] for i in range(0, len(err), grid)]}
    finally:
        surface.close()
    result = {"tool": "landscape", "settings": settings, **run.identity(), "subset_images": len(surface.y),
              "moved_parameters": surface.moved, "one_d": one_d, "computed_with": run.computed_with()}
    if two_d is not None:
        result["two_d"] = two_d
    write_result(path, result)
    return result, True


def describe(result: dict) -> str:
    """One line for the terminal."""
    one = result["one_d"]
    centre, edges = one["loss"][len(one["loss"]) // 2], (one["loss"][0], one["loss"][-1])
    higher = "overflow" if None in edges else f"{max(edges):.4g}"
    line = (f"loss {centre if centre is not None else float('inf'):.4g} at the trained weights, {higher} at the "
            f"higher end of +-{result['settings']['span']:g} ({one['points']} points, {one['elapsed_s']:.0f} s)")
    if "two_d" in result:
        line += f"; 2D {result['two_d']['grid']}x{result['two_d']['grid']} in {result['two_d']['elapsed_s']:.0f} s"
    return line


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--points", type=int, default=POINTS, help=f"1D points, odd (default {POINTS})")
    p.add_argument("--grid", type=int, default=GRID, help=f"2D points per axis, odd (default {GRID})")
    p.add_argument("--subset", type=int, default=SUBSET, help=f"training images (default {SUBSET})")
    p.add_argument("--span", type=float, default=SPAN, help=f"coordinates from -SPAN to SPAN (default {SPAN:g})")
    p.add_argument("--direction-seed", type=int, default=0, help="seed of the directions (default 0)")


def check_options(args) -> None:
    check_positive(args, "points", "grid", "subset")
    if args.points % 2 == 0 or args.grid % 2 == 0 or args.points < 3 or args.grid < 3:
        raise OptionError(f"--points {args.points} / --grid {args.grid}: use odd numbers of 3 or more, so that "
                          f"the trained weights are a point of the grid (21, 51)")
    if not (math.isfinite(args.span) and args.span > 0):
        raise OptionError(f"--span must be a positive number, got {args.span}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.landscape", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a completed run's folder (results/<exp>/runs/<net>/seed=<k>)")
    p.add_argument("--two-d", action="store_true", help="also the 2D grid (minutes on a CPU: see --grid)")
    add_options(p)
    common_options(p)
    args = p.parse_args(argv)
    try:
        check_options(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_tool(args, lambda run: measure(run, args.points, args.grid if args.two_d else None, args.subset,
                                              args.direction_seed, args.span, args.force),
                    args.run_dir / LANDSCAPE, describe)


if __name__ == "__main__":
    sys.exit(main())
