"""`python -m experiments.lesion RUN_DIR`: the lesion study of Veit, Wilber and Belongie 2016 ("Residual
Networks Behave Like Ensembles of Relatively Shallow Networks", arXiv:1605.06431, Sec. 4) on a completed
run's trained net; writes lesion.json beside its weights.

Every block is removed in turn and the evaluation split tested (their Fig. 3):
- a residual block loses its residual branch and keeps its shortcut: relu(shortcut(x)) for the
  post-activation nets (the block's final ReLU stays; with an identity shortcut that is x itself, as x
  is a ReLU's output), shortcut(x) for a pre-activation block (its BN-ReLU stays where a projection
  reads it);
- a plain block (the pair of 3x3 layers at the same position) becomes the identity where its input
  and output shapes match; where they do not (the first block of a stage that subsamples and widens)
  no identity exists, so it becomes option A's parameter-free map (stride-2 subsampling, zero-padded
  channels): exactly what a lesioned option-A ResNet keeps there. lesion.json marks those blocks.
For residual nets also k random blocks at once (their Fig. 5a): k = 1 .. max_k, a few seeded draws each,
drawn from all blocks. The net itself is not edited: a lesioned block's forward is replaced on the
instance for the duration of one evaluation (models.py stays as it is).
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from experiments.models import BasicBlock, Bottleneck, PreActBlock, ZeroPadShortcut
from experiments.run.probes import evaluate
from experiments.tools.trained_run import (USER_ERRORS, TrainedRun, check_positive, common_options,
                                           read_result, run_tool, up_to_date, write_result)

LESION = "lesion.json"
BLOCKS = (BasicBlock, Bottleneck, PreActBlock)
DRAWS = 3  # random draws per k: enough to see the spread, few enough for a CPU


def _shortcut_only(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A residual block without its residual branch."""
    if isinstance(block, PreActBlock):
        return block.shortcut(F.relu(block.bn1(x)) if block.projects else x)
    return F.relu(block.shortcut(x))


def _replacement(x: torch.Tensor, pad: torch.nn.Module | None) -> torch.Tensor:
    """A plain block removed: the identity, or option A's map where the shape changes."""
    return x if pad is None else pad(x)


def block_table(run: TrainedRun) -> list[dict]:
    """Every block in forward order with its input and output shapes (one image through the net), and
    what removing it leaves: the block's module name, stage, and the lesion applied."""
    model, residual = run.model, run.identity()["shortcut"] != "none"
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, BLOCKS)]
    shapes = {}

    def record(name):
        return lambda _m, inp, out: shapes.__setitem__(name, (inp[0].shape, out.shape))

    hooks = [m.register_forward_hook(record(name)) for name, m in named]
    try:
        with torch.no_grad(), run.dev.autocast():
            model(next(run.batches.eval_batches(1))[0])
    finally:
        for h in hooks:
            h.remove()
    table = []
    for i, (name, block) in enumerate(named, start=1):
        (_, c_in, h_in, _), (_, c_out, h_out, _) = shapes[name]
        reshapes = (c_in, h_in) != (c_out, h_out)
        if residual:
            lesion, forward = "residual branch dropped, shortcut kept", partial(_shortcut_only, block)
        elif not reshapes:
            lesion, forward = "identity", partial(_replacement, pad=None)
        else:
            pad = ZeroPadShortcut(c_in, c_out, -(-h_in // h_out)).to(run.dev.device)  # stride: ceil, as a conv's
            lesion = "subsampled and zero-padded (no identity: the shape changes)"
            forward = partial(_replacement, pad=pad)
        table.append({"index": i, "name": name, "stage": name.split(".")[0], "reshapes": reshapes,
                      "in_shape": [c_in, h_in], "out_shape": [c_out, h_out], "lesion": lesion,
                      "_module": block, "_forward": forward})  # "_": kept out of lesion.json
    return table


@contextmanager
def lesioned(table: list[dict], indices):
    """The net with the blocks of `indices` (1-based) removed; restored on exit, whatever happens."""
    replaced = []
    try:
        for row in table:
            if row["index"] in indices:
                row["_module"].forward = row["_forward"]  # an instance attribute shadows the class's forward
                replaced.append(row["_module"])
        yield
    finally:
        for module in replaced:
            del module.forward


def draws_of(n_blocks: int, max_k: int, draws: int, seed: int) -> list[tuple[int, int, list[int]]]:
    """(k, draw, sorted 1-based block indices) for k = 1 .. max_k: a pure function of (seed, k, draw)."""
    out = []
    for k in range(1, max_k + 1):
        rng = np.random.default_rng([seed, k])
        for d in range(draws):
            out.append((k, d, sorted(int(i) + 1 for i in rng.choice(n_blocks, size=k, replace=False))))
    return out


def default_max_k(n_blocks: int) -> int:
    """A third of the blocks (Veit et al. go to about 20 of ResNet-110's 54), at least 1."""
    return max(1, n_blocks // 3)


def settings_of(run: TrainedRun, eval_images: int | None, max_k: int | None, draws: int, seed: int) -> dict:
    """What the numbers depend on: the file is recomputed when any of it changes."""
    return {"weights_sha256": run.weights_sha256, "eval_images": eval_images or "all",
            "eval_batch_size": int(run.cfg.trainer.eval_batch_size), "precision": run.dev.precision,
            "max_k": max_k or "default", "draws": draws, "draw_seed": seed}


def lesion_study(run: TrainedRun, eval_images: int | None = None, max_k: int | None = None, draws: int = DRAWS,
                 seed: int = 0, progress: bool | None = None) -> dict:
    """lesion.json's content: the intact error, every single-block lesion, and k random lesions."""
    t0 = time.perf_counter()
    table = block_table(run)
    residual = run.identity()["shortcut"] != "none"
    k_max = min(max_k or default_max_k(len(table)), len(table)) if residual else 0
    random_draws = draws_of(len(table), k_max, draws, seed) if residual else []
    wanted = [()] + [(row["index"],) for row in table] + [tuple(ix) for _, _, ix in random_draws]
    todo = list(dict.fromkeys(wanted))  # each distinct lesion once: k=1 draws repeat single lesions
    measured, batches = {}, run.batches
    full = batches.eval_images, batches.eval_labels
    try:
        if eval_images:  # the first N: the same images for every lesion
            batches.eval_images, batches.eval_labels = full[0][:eval_images], full[1][:eval_images]
        n_images = len(batches.eval_labels)
        # disable=None: a bar on a terminal, silence in a log
        for removed in tqdm(todo, desc=f"lesion {run.name}", unit="eval", file=sys.stderr,
                            disable=None if progress is None else not progress):
            with lesioned(table, set(removed)):
                row = evaluate(run.model, batches, run.dev.autocast, run.cfg.trainer.eval_batch_size)
            measured[removed] = {"err": row["test_err"], "loss": row["test_loss"]}
    finally:
        batches.eval_images, batches.eval_labels = full
    chance = 100.0 * (1 - 1 / run.model.fc.out_features)
    blocks = [{**{k: v for k, v in row.items() if not k.startswith("_")}, **measured[(row["index"],)]}
              for row in table]
    return {**run.identity(), "eval_images": n_images, "chance_err": chance,
            "intact": measured[()], "blocks": blocks,
            "random": [{"k": k, "draw": d, "blocks": ix, **measured[tuple(ix)]} for k, d, ix in random_draws],
            "evaluations": len(todo), "elapsed_s": round(time.perf_counter() - t0, 1),
            "computed_with": run.computed_with()}


def measure(run: TrainedRun, eval_images: int | None = None, max_k: int | None = None, draws: int = DRAWS,
            seed: int = 0, force: bool = False, progress: bool | None = None) -> tuple[dict, bool]:
    """(lesion.json's content, whether it was computed now): an up-to-date file is kept as it is."""
    path = run.run_dir / LESION
    settings = settings_of(run, eval_images, max_k, draws, seed)
    found = read_result(path)
    if not force and up_to_date(found, settings):
        return found, False
    result = {"tool": "lesion", "settings": settings,
              **lesion_study(run, eval_images, max_k, draws, seed, progress)}
    write_result(path, result)
    return result, True


def describe(result: dict) -> str:
    """One line for the terminal."""
    errs = [b["err"] for b in result["blocks"]]
    line = (f"intact {result['intact']['err']:.2f}% on {result['eval_images']} images; one block removed: "
            f"{min(errs):.2f}% to {max(errs):.2f}% (median {float(np.median(errs)):.2f}%)")
    if result["random"]:
        top = max(r["k"] for r in result["random"])
        worst = np.mean([r["err"] for r in result["random"] if r["k"] == top])
        line += f"; {top} random blocks removed: mean {worst:.2f}%"
    return line


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-images", type=int, help="the first N images of the evaluation split (default: all of "
                   "it, so the intact error is the run's recorded final error)")
    p.add_argument("--max-k", type=int, help="remove up to K random blocks at once (default: a third of them)")
    p.add_argument("--draws", type=int, default=DRAWS, help=f"random draws per k (default {DRAWS})")
    p.add_argument("--lesion-seed", type=int, default=0, help="seed of the random draws (default 0)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.lesion", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a completed run's folder (results/<exp>/runs/<net>/seed=<k>)")
    add_options(p)
    common_options(p)
    args = p.parse_args(argv)
    try:
        check_positive(args, "eval_images", "max_k", "draws")
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_tool(args, lambda run: measure(run, args.eval_images, args.max_k, args.draws, args.lesion_seed,
                                              args.force), args.run_dir / LESION, describe)


if __name__ == "__main__":
    sys.exit(main())
