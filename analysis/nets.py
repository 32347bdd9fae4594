"""The trained nets as the measuring tools saw them: lesion.json and landscape.json beside a completed
run's weights.safetensors (experiments/tools/lesion.py, experiments/tools/landscape.py, `make analyse-nets`), read
into tables, and the report's section "Why residual nets train" (figures: analysis/nets_figures.py).

Read like every other run file: a missing file is "not measured yet", an unreadable or malformed one is
named and left out, and one computed for other weights than the run's (its recorded hash differs: the
net was retrained since) is named and left out too, so no figure mixes a net with another's numbers.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.collect import COMPLETED, Results, experiment_name
from analysis.style import net_label
from experiments.contract import FORMAT_VERSION, read_json

# What experiments/ writes beside a completed run (README, "Results on disk").
WEIGHTS, LESION, LANDSCAPE = "weights.safetensors", "lesion.json", "landscape.json"
SECTION = "Why residual nets train"
IDENT = ["run_id", "arch", "shortcut", "depth", "seed"]


@dataclass
class Nets:
    completed: pd.DataFrame                 # the completed runs (IDENT)
    without_weights: list[str]              # run ids
    unmeasured: list[str]                   # with weights, but no lesion.json or landscape.json yet
    intact: pd.DataFrame                    # IDENT + err, chance_err, eval_images, eval_split
    blocks: pd.DataFrame                    # IDENT + index, err, reshapes
    random: pd.DataFrame                    # IDENT + k, draw, err
    landscapes: dict[str, dict] = field(default_factory=dict)  # run id -> landscape.json
    notes: list[str] = field(default_factory=list)             # files left out, and why

    @property
    def measured(self) -> bool:
        return not self.intact.empty or bool(self.landscapes)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _lesion_ok(d: dict) -> bool:
    return (_number((d.get("intact") or {}).get("err")) and _number(d.get("chance_err"))
            and isinstance(d.get("blocks"), list) and d["blocks"]
            and all(isinstance(b, dict) and isinstance(b.get("index"), int) and _number(b.get("err"))
                    for b in d["blocks"])
            and isinstance(d.get("random"), list)
            and all(isinstance(r, dict) and isinstance(r.get("k"), int) and _number(r.get("err")) for r in d["random"]))


def _losses_ok(values, n: int) -> bool:
    return isinstance(values, list) and len(values) == n and all(v is None or _number(v) for v in values)


def _landscape_ok(d: dict) -> bool:
    one, two, settings = d.get("one_d"), d.get("two_d"), d.get("settings") or {}
    if not (_number(settings.get("span")) and isinstance(settings.get("direction_seed"), int)
            and isinstance(d.get("subset_images"), int) and isinstance(d.get("computed_with"), dict)):
        return False
    if not (isinstance(one, dict) and isinstance(one.get("alpha"), list) and len(one["alpha"]) >= 3
            and _losses_ok(one.get("loss"), len(one["alpha"])) and _losses_ok(one.get("err"), len(one["alpha"]))):
        return False
    return two is None or (isinstance(two, dict) and isinstance(two.get("alpha"), list)
                           and isinstance(two.get("grid"), int) and _number(two.get("elapsed_s"))
                           and isinstance(two.get("loss"), list) and len(two["loss"]) == len(two.get("beta") or [])
                           and all(_losses_ok(row, len(two["alpha"])) for row in two["loss"]))


def _read(path: Path, valid, sha: str, notes: list[str], root: Path) -> dict | None:
    """The file if it is whole and belongs to these weights; else None, with the reason in `notes`."""
    where = path.relative_to(root).as_posix()
    found = read_json(path)
    version = found.get("format_version") if isinstance(found, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        notes.append(f"{where}: format_version {version}, newer than this suite reads; update the suite")
    elif not isinstance(found, dict) or version != FORMAT_VERSION or not valid(found):
        notes.append(f"{where}: unreadable or malformed; left out (make analyse-nets ARGS=--force rewrites it)")
    elif (found.get("settings") or {}).get("weights_sha256") != sha:
        notes.append(f"{where}: computed for other weights than the run's (retrained since); left out "
                     f"(make analyse-nets recomputes it)")
    else:
        return found
    return None


def read_nets(results: Results) -> Nets:
    """Every completed run's weights, lesion.json and landscape.json, checked."""
    completed = results.runs[results.runs["status"] == COMPLETED][IDENT].reset_index(drop=True)
    without, unmeasured, intact, blocks, random, landscapes, notes = [], [], [], [], [], {}, []
    for run in completed.itertuples(index=False):
        folder, ident = results.root / "runs" / run.run_id, dict(zip(IDENT, run))
        if not (folder / WEIGHTS).is_file():
            without.append(run.run_id)
            continue
        if not (folder / LESION).is_file() or not (folder / LANDSCAPE).is_file():
            unmeasured.append(run.run_id)
        sha = _sha256(folder / WEIGHTS)
        lesion = _read(folder / LESION, _lesion_ok, sha, notes, results.root) if (folder / LESION).is_file() else None
        if lesion is not None:
            intact.append({**ident, "err": lesion["intact"]["err"], "chance_err": lesion["chance_err"],
                           "eval_images": lesion.get("eval_images"), "eval_split": lesion.get("eval_split", "test")})
            blocks += [{**ident, "index": b["index"], "err": b["err"], "reshapes": bool(b.get("reshapes"))}
                       for b in lesion["blocks"]]
            random += [{**ident, "k": r["k"], "draw": r.get("draw"), "err": r["err"]} for r in lesion["random"]]
        if (folder / LANDSCAPE).is_file():
            found = _read(folder / LANDSCAPE, _landscape_ok, sha, notes, results.root)
            if found is not None:
                landscapes[run.run_id] = {**found, **ident}
    return Nets(completed, without, unmeasured,
                _frame(intact, ["err", "chance_err", "eval_images", "eval_split"]),
                _frame(blocks, ["index", "err", "reshapes"]), _frame(random, ["k", "draw", "err"]), landscapes, notes)


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Named columns even when empty, so a figure can ask an empty table for them."""
    return pd.DataFrame(rows, columns=IDENT + columns)


# -- the words: one short line per figure, computed from the files ---------------------------------------
def by_net(frame: pd.DataFrame):
    """(arch, shortcut, depth, rows) per net, plain first, then by depth."""
    for (arch, shortcut, depth), rows in sorted(frame.groupby(["arch", "shortcut", "depth"]),
                                                key=lambda g: (g[0][2], g[0][0] != "plain", g[0][1])):
        yield arch, shortcut, int(depth), rows


def lesion_line(nets: Nets) -> str:
    parts = []
    for arch, shortcut, depth, rows in by_net(nets.blocks):
        per_block = rows.groupby("index").agg(err=("err", "mean"), reshapes=("reshapes", "any"))
        intact = nets.intact[(nets.intact["arch"] == arch) & (nets.intact["shortcut"] == shortcut)
                             & (nets.intact["depth"] == depth)]["err"].mean()
        worst = per_block["err"].idxmax()
        parts.append(f"{net_label(arch, shortcut, depth)} {intact:.1f} % intact, median "
                     f"{per_block['err'].median():.1f} % with one block removed (worst {per_block['err'].max():.1f} "
                     f"%, block {worst}{', a downsampling block' if per_block.loc[worst, 'reshapes'] else ''})")
    chance = nets.intact["chance_err"].max()
    return f"Test error when one block is removed: {'; '.join(parts)}; chance is {chance:.0f} %."


def k_line(nets: Nets) -> str:
    parts = []
    for arch, shortcut, depth, rows in by_net(nets.random):
        mean = rows.groupby("k")["err"].mean()
        draws = rows.groupby(["k", "seed"]).size().max()
        parts.append(f"{net_label(arch, shortcut, depth)} {mean.iloc[0]:.1f} % at k={mean.index[0]} to "
                     f"{mean.iloc[-1]:.1f} % at k={mean.index[-1]} ({draws} draws per k)")
    return "Test error with k random blocks removed at once, mean over draws: " + "; ".join(parts) + "."


def _ends(one: dict) -> float:
    """The mean loss at the two ends of a 1D curve (inf where one overflowed)."""
    ends = [one["loss"][0], one["loss"][-1]]
    return math.inf if None in ends else float(np.mean(ends))


def landscape_line(nets: Nets) -> str:
    parts = []
    for run_id, d in sorted(nets.landscapes.items(), key=lambda kv: (kv[1]["depth"], kv[1]["arch"] != "plain", kv[0])):
        one = d["one_d"]
        centre = one["loss"][len(one["loss"]) // 2]
        parts.append(f"{net_label(d['arch'], d['shortcut'], d['depth'])} (seed {d['seed']}) "
                     f"{centre:.3g} → {_ends(one):.3g}")
    spans = "/".join(f"{s:g}" for s in sorted({d["settings"].get("span") for d in nets.landscapes.values()}))
    return (f"Training loss at the trained weights → mean of the two ends (±{spans} filter-normalised steps): "
            + "; ".join(parts) + ".")


def local_minima(loss: np.ndarray) -> int:
    """Grid points lower than all their (up to 8) neighbours: one for a convex bowl, more for a chaotic surface."""
    padded = np.pad(np.where(np.isfinite(loss), loss, np.inf), 1, constant_values=np.inf)
    centre = padded[1:-1, 1:-1]
    lower = np.ones_like(centre, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                lower &= centre < padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
    return int(lower.sum())


def surface_line(pair: list[dict]) -> str:
    words = []
    for d in pair:
        loss = np.array([[np.nan if v is None else v for v in row] for row in d["two_d"]["loss"]], dtype=float)
        minima = local_minima(loss)
        words.append(f"{net_label(d['arch'], d['shortcut'], d['depth'])} loss {np.nanmin(loss):.3g} to "
                     f"{np.nanmax(loss):.3g}, {minima} local minim{'um' if minima == 1 else 'a'} "
                     f"among the grid points, computed in {d['two_d']['elapsed_s'] / 60:.1f} min "
                     f"({d['computed_with']['device_name']}, {d['computed_with']['precision']})")
    grid, s = pair[0]["two_d"]["grid"], pair[0]["settings"]
    return (f"On the {grid}×{grid} grid over [-{s['span']:g}, {s['span']:g}]² ({pair[0]['subset_images']} training "
            f"images, direction seed {s['direction_seed']}): " + "; ".join(words) + ".")


def contour_pair(nets: Nets) -> list[dict]:
    """The deepest plain and residual nets whose 2D grids share grid, span, subset and direction seed."""
    two = [d for d in nets.landscapes.values() if d.get("two_d")]
    key = lambda d: (d["two_d"]["grid"], d["settings"].get("span"), d["settings"].get("subset"),  # noqa: E731
                     d["settings"].get("direction_seed"))
    for depth in sorted({d["depth"] for d in two}, reverse=True):
        plain = sorted((d for d in two if d["depth"] == depth and d["arch"] == "plain"), key=lambda d: d["seed"])
        res = sorted((d for d in two if d["depth"] == depth and d["arch"] != "plain"),
                     key=lambda d: (d["arch"] != "resnet", d["shortcut"], d["seed"]))
        for p in plain:
            match = next((r for r in res if key(r) == key(p)), None)
            if match:
                return [p, match]
    return []


def _surface_words(nets: Nets) -> str:
    pair = contour_pair(nets)
    return surface_line(pair) if pair else ""


# The figures of the section in report order (drawn by analysis/nets_figures.py), each with its line.
LINES = {"lesion_blocks": lesion_line, "lesion_k": k_line, "landscape_1d": landscape_line,
         "landscape_2d": _surface_words}


def section(results: Results, plots, pngs: dict) -> list[tuple]:
    """The report's blocks for "Why residual nets train": [] without completed runs; one line when no run
    kept its weights; else each drawn figure with its line, then what is missing."""
    nets = read_nets(results)
    if nets.completed.empty:
        return []
    blocks = [("h2", SECTION)]
    exp = experiment_name(results.root)
    if nets.without_weights:
        blocks.append(("p", f"No weights.safetensors, so these nets cannot be measured (a run that completed "
                            f"before the suite kept weights has none): {', '.join(nets.without_weights)}."))
    if len(nets.without_weights) == len(nets.completed):
        return blocks
    drawn = {p.name: p for p in plots if p.figure is not None}
    for name, line in LINES.items():
        if name in drawn:
            plot = drawn[name]
            blocks += [("figure", plot.title, plot.caption, f"figures/{name}.png", *pngs[name]), ("p", line(nets))]
    if not nets.measured:
        blocks.append(("p", f"Lesion study and loss landscape: not computed yet; run `make analyse-nets EXP={exp}`."))
    elif nets.unmeasured:
        blocks.append(("p", f"Not measured yet (make analyse-nets EXP={exp}): {', '.join(nets.unmeasured)}."))
    blocks += [("p", note) for note in nets.notes]
    return blocks
