"""Paired-seed comparisons: the difference between two networks, seed by seed, with its spread.

Two runs with the same seed see the same batches in the same order with the same augmentation
(experiments/data/batches.py draws them from the seed and the iteration), so the difference of their
final errors is a paired measurement: seed-to-seed noise that hits both nets alike cancels.
The 95 % interval is Student's t on the paired differences; with 2 or 3 seeds it is wide, and
the report says so instead of hiding it. A pair whose two runs computed in different precisions
(bf16 on one machine, fp32 on another: `trainer.precision=fast` resolves per machine) differs in
more than the network; every difference that pair enters says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats as sps

from analysis.collect import COMPLETED

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Paired:
    """b − a over the seeds both completed: mean, sample std, n, 95 % t interval; `mixed`: the
    seeds whose two runs computed in different precisions, as (seed, a's precision, b's)."""
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    mixed: tuple[tuple[int, str, str], ...] = ()

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return sum(self.diffs) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        return pd.Series(self.diffs, dtype=float).std(ddof=1) if self.n > 1 else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        if self.n < 2:
            return math.nan, math.nan
        half = sps.t.ppf(0.5 + CONFIDENCE / 2, self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def resolved(self) -> bool:
        """The interval excludes zero: the seeds tell the sign of the difference at 95 %."""
        low, high = self.interval
        return bool(low > 0 or high < 0)

    def agreeing(self, sign: int) -> int:
        """How many seeds show a difference of this sign (+1: b above a, −1: b below a)."""
        return sum(1 for d in self.diffs if d * sign > 0)


def final_errors(runs: pd.DataFrame, arch: str, shortcut: str, depth: int, metric: str) -> dict[int, float]:
    """seed -> final error of one network's completed runs with a finite value."""
    mine = runs[(runs["arch"] == arch) & (runs["shortcut"] == shortcut) & (runs["depth"] == depth)
                & (runs["status"] == COMPLETED)]
    values = {int(s): float(v) for s, v in zip(mine["seed"], pd.to_numeric(mine[metric], errors="coerce"))}
    return {s: v for s, v in values.items() if math.isfinite(v)}


def precisions(runs: pd.DataFrame, arch: str, shortcut: str, depth: int) -> dict[int, str]:
    """seed -> the precision one network's completed runs computed in (as recorded in summary.json)."""
    mine = runs[(runs["arch"] == arch) & (runs["shortcut"] == shortcut) & (runs["depth"] == depth)
                & (runs["status"] == COMPLETED)]
    return {int(s): str(p) for s, p in zip(mine["seed"], mine["precision"]) if isinstance(p, str)}


def paired(runs: pd.DataFrame, a: tuple[str, str, int], b: tuple[str, str, int], metric: str) -> Paired:
    """Network b minus network a (each (arch, shortcut, depth)), paired by seed."""
    ea, eb = final_errors(runs, *a, metric), final_errors(runs, *b, metric)
    seeds = tuple(sorted(set(ea) & set(eb)))
    pa, pb = precisions(runs, *a), precisions(runs, *b)
    mixed = tuple((s, pa[s], pb[s]) for s in seeds if s in pa and s in pb and pa[s] != pb[s])
    return Paired(seeds, tuple(eb[s] - ea[s] for s in seeds), mixed)


def mixed_text(p: Paired) -> str:
    """"seed 0's pair mixes precisions (fp32 − bf16)", in the difference's order (b − a); '' when
    every pair shares its precision."""
    return "; ".join(f"seed {s}'s pair mixes precisions ({y} − {x})" for s, x, y in p.mixed)


def mixed_seeds(p: Paired) -> str:
    """The tables' column: '0 (fp32 − bf16)' per mixed seed, in the difference's order; '' when none."""
    return " ".join(f"{s} ({y} − {x})" for s, x, y in p.mixed)


# Every paired difference the report prints, in sentences and tables alike, goes through these two.
def ci_text(low: float, high: float, n: int) -> str:
    """'[+0.40, +2.06]'; '—' where fewer than two seeds give no interval."""
    return f"[{low:+.2f}, {high:+.2f}]" if n > 1 else "—"


def interval_text(p: Paired) -> str:
    """'+1.23 ± 0.40 points, 95 % CI [+0.40, +2.06], n=3' (no interval from a single seed), and
    which seeds pair runs of different precisions."""
    if p.n == 0:
        return "no paired seeds"
    mixed = f"; {mixed_text(p)}" if p.mixed else ""
    if p.n == 1:
        return f"{p.mean:+.2f} points, n=1 (one seed: spread unknown{mixed})"
    return f"{p.mean:+.2f} ± {p.std:.2f} points, 95 % CI {ci_text(*p.interval, p.n)}, n={p.n}{mixed}"
