"""Read an experiment's results folder into pandas tables.

The folder layout and file formats are the contract documented in README.md:
    <results>/runs/<arch>-<depth>-<shortcut>/seed=<k>/{config.yaml, metrics.jsonl, summary.json}
experiments/contract.py owns it (names, statuses, format version, the JSONL reader); this module
reads files only and imports nothing else of the training side.

Robust to partial sweeps, because a report is often made while a sweep still runs:
- a corrupt metrics.jsonl line is skipped with a warning naming file and line;
- a run without summary.json is "running/incomplete": its curves are shown, its numbers
  are not used (a run half-way through would bias the final-error tables);
- an unreadable summary.json makes the run "corrupt", listed but excluded;
- a "completed" run whose curve is gone (metrics.jsonl deleted, emptied or cut before its last
  iteration) or whose final errors are not finite is "damaged", listed but excluded;
- so is any run whose folder name its own summary.json or config.yaml contradicts (a copied or
  renamed folder), or whose metrics.jsonl repeats an iteration or steps back; curves are read in
  iteration order whatever the file (analysis/integrity.py);
- a run trained with another recipe than the experiment's, or another model than its net's other
  seeds, is "other recipe": listed, never pooled;
- a summary.json or config.yaml of another shape (a list, `data: 5`) is a warning, not a crash;
- a run folder of a kind this analysis does not know (runs/vgg-16-none/) is a warning, not a crash;
- plan.json (written by `make sweep`) names every planned run: one that never started is listed;
- a format_version newer than ours stops everything with a clear error, since guessing
  the meaning of a future format would silently produce wrong numbers.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import pandas as pd
import yaml

# The statuses are the contract's; the other analysis modules take them from here, beside Results.
from experiments.contract import (
    COMPLETED, CORRUPT, DAMAGED, DIVERGED, FORMAT_VERSION, KINDS, MISSING, FormatError, check_version, is_known,
    leaves, lost_curve, parse_run_name, parse_run_path, parse_seed_name, read_metrics,
)
from analysis.integrity import curve_disorder, identity_mismatch, recipe_outliers

# What the analysis calls a run beside the contract's statuses: begun and not finished (or killed),
# and planned by the sweep (plan.json) without a folder yet.
INCOMPLETE, NOT_STARTED = "running/incomplete", "not started"
# A run trained with another recipe than the experiment's (or another model than its net's other seeds):
# listed, never pooled (analysis/integrity.py).
OTHER_RECIPE = "other recipe"
METRIC_FIELDS = ("epoch", "lr", "warmup", "train_loss", "train_err", "test_loss", "test_err",
                 "elapsed_s", "images_per_s")
# summary.json fields copied verbatim into the runs table (README lists them all).
SUMMARY_FIELDS = ("params", "macs", "iterations", "iterations_done", "final_train_err",
                  "final_test_err", "final_train_loss", "final_test_loss", "best_test_err",
                  "best_test_iter", "wall_time_s", "images_per_s", "warmup_end_iter", "warmup_max_iters",
                  "diverged_at", "data_source", "data_split", "eval_split", "train_size",
                  "eval_size", "batch_size", "lr", "milestones", "gamma", "weight_decay",
                  "momentum", "device", "device_name", "precision", "channels_last",
                  "torch_version", "git_commit", "error")
IDENTITY = ["arch", "depth", "shortcut", "seed"]
CONFIG_GROUPS = ("model", "data", "optim", "schedule", "trainer")  # each a mapping in every config.yaml


class ResultsError(Exception):
    """A problem the user must fix; the message is the single line printed for it."""


@dataclass
class Results:
    root: Path
    runs: pd.DataFrame        # one row per run folder: identity, status, summary fields
    metrics: pd.DataFrame     # one row per (run, evaluation point)
    probes: pd.DataFrame      # one row per (run, probe, layer): response_std and grad_norm
    configs: dict[str, dict]  # run_id -> resolved config.yaml
    missing: pd.DataFrame     # (arch, depth, shortcut, seed, status, note) with no run folder at all
    warnings: list[str] = field(default_factory=list)

    @property
    def completed(self) -> pd.DataFrame:
        """The runs whose numbers enter the tables: only finished ones."""
        return self.runs[self.runs["status"] == COMPLETED]


def experiment_name(root: Path) -> str:
    """The EXP= value that `make` maps to this folder: the path below the last `results`."""
    parts = Path(root).parts
    if "results" in parts:
        below = parts[len(parts) - parts[::-1].index("results"):]
        if below:
            return "/".join(below)
    return Path(root).name


def _number(value):
    """A JSON value as float, None/non-numbers as NaN (NaN and inf survive json.loads)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def read_summary(path: Path, warnings: list[str]) -> dict | None:
    """summary.json as a dict, or None when it is unreadable (the run is then 'corrupt')."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.append(f"{path}: unreadable ({exc}); run listed as corrupt")
        return None
    if not isinstance(summary, dict):
        warnings.append(f"{path}: not a JSON object; run listed as corrupt")
        return None
    check_version(summary.get("format_version"), path)
    if summary.get("format_version") != FORMAT_VERSION or not isinstance(summary.get("status"), str):
        warnings.append(f"{path}: format_version {summary.get('format_version')!r} or status "
                        f"{summary.get('status')!r} invalid; run listed as corrupt")
        return None
    wrong = [key for key in (*IDENTITY, *SUMMARY_FIELDS) if not _plain_value(key, summary.get(key))]
    if wrong:  # valid JSON of another shape: not written by this suite, and no table can hold it
        warnings.append(f"{path}: {', '.join(f'{k} is a {type(summary[k]).__name__}' for k in wrong)}, "
                        f"not a number or text; run listed as corrupt")
        return None
    return summary


def _plain_value(key: str, value) -> bool:
    """Whether a summary.json field has the shape the suite writes: a number, text, true/false or null;
    milestones a list of numbers."""
    if key == "milestones" and isinstance(value, list):
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def read_config(path: Path, warnings: list[str]) -> dict:
    if not path.exists():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        warnings.append(f"{path}: unreadable config ({str(exc).splitlines()[0]}); ignored")
        return {}
    if not isinstance(config, dict):
        warnings.append(f"{path}: not a mapping of config groups; ignored")
        return {}
    wrong = [group for group in CONFIG_GROUPS if group in config and not isinstance(config[group], dict)]
    if wrong:  # e.g. `data: 5`: valid YAML, but no run wrote it
        warnings.append(f"{path}: {', '.join(f'{g!r} is {config[g]!r}' for g in wrong)}, not a group of "
                        f"keys; ignored")
        return {}
    return config


def _identity(run_dir: Path, config: dict, summary: dict | None) -> dict | None:
    """arch/depth/shortcut/seed from the folder names (the contract), else from the files."""
    named = parse_run_name(run_dir.parent.name)
    model = config.get("model") or {}  # a dict: read_config checked the groups
    summary = summary or {}
    arch, depth, shortcut = named or (summary.get(key, model.get(key)) for key in ("arch", "depth", "shortcut"))
    ident = {"arch": arch, "depth": depth, "shortcut": shortcut, "seed": parse_seed_name(run_dir.name)}
    if ident["arch"] is None or not isinstance(ident["depth"], int):
        return None
    ident["shortcut"] = str(ident["shortcut"])
    return ident


def _read_run(run_dir: Path, root: Path, warnings: list[str]):
    config = read_config(run_dir / "config.yaml", warnings)
    records = read_metrics(run_dir / "metrics.jsonl", warnings)
    summary_path = run_dir / "summary.json"
    summary = read_summary(summary_path, warnings) if summary_path.exists() else None
    ident = _identity(run_dir, config, summary)
    if ident is None:
        warnings.append(f"{run_dir}: cannot tell arch/depth from folder or files; skipped")
        return None
    if not is_known(ident["arch"], ident["shortcut"]):
        known = "; ".join(f"{k}-<depth>-{'|'.join(v)}" for k, v in KINDS.items())
        warnings.append(f"{run_dir}: a run of a kind this analysis does not know "
                        f"({ident['arch']}, shortcut {ident['shortcut']}; it knows {known}); not analysed")
        return None
    run_id = run_dir.relative_to(root / "runs").as_posix()
    status = summary["status"] if summary else (CORRUPT if summary_path.exists() else INCOMPLETE)
    data = config.get("data") or {}
    disorder = curve_disorder(records)
    records = sorted(records, key=lambda r: r["iter"])  # the figures' first and last points, whatever the file
    row = {"run_id": run_id, "run": run_dir.parent.name, **ident, "status": status,
           "n_points": len(records), "data_root": data.get("root"),
           "checkpoint": (run_dir / "last.pt").is_file()}  # an unfinished run the sweep resumes from there
    for key in SUMMARY_FIELDS:
        row[key] = (summary or {}).get(key)
    # Fill in from config and metrics what a run without a usable summary still tells us.
    if row["iterations"] is None:
        row["iterations"] = (config.get("schedule") or {}).get("iterations")
    if row["data_source"] is None:
        row["data_source"] = data.get("source")
    last = records[-1] if records else {}
    if row["iterations_done"] is None:
        row["iterations_done"] = last.get("iter", 0)
    row["last_iter"] = last.get("iter")
    row["last_train_err"] = _number(last.get("train_err"))
    row["last_test_err"] = _number(last.get("test_err"))
    if status == COMPLETED:
        # A completed summary should carry its final numbers; the last point is the fallback.
        for name in ("train_err", "test_err"):
            if row[f"final_{name}"] is None:
                row[f"final_{name}"] = row[f"last_{name}"]
        damage = _damage(row, records)
        if damage:
            row["status"], row["error"] = DAMAGED, damage
    # Whatever its status: a run that is not the folder's, or whose curve is out of order, is damaged.
    named = parse_run_name(run_dir.parent.name) is not None  # else the identity came from these very files
    damage = (identity_mismatch(ident, config, summary) if named else None) or disorder
    if damage:
        row["status"], row["error"] = DAMAGED, damage
    layers = (summary or {}).get("response_layers")
    return run_id, row, config, records, layers if isinstance(layers, list) else None, summary


def _damage(row: dict, records: list[dict]) -> str | None:
    """Why a run that says "completed" is not a clean result, or None."""
    lost = lost_curve(records, row["iterations_done"])
    if lost:
        return lost
    bad = [n for n in ("final_train_err", "final_test_err") if not math.isfinite(_number(row[n]))]
    if bad:
        return f"{' and '.join(bad)} not a finite number ({', '.join(repr(row[n]) for n in bad)})"
    return None


def _metric_rows(run_id: str, ident: dict, records: list[dict]) -> list[dict]:
    rows = []
    for record in records:
        row = {"run_id": run_id, **ident, "iter": record["iter"]}
        for name in METRIC_FIELDS:
            row[name] = (bool(record.get(name)) if name == "warmup"
                         else _number(record.get(name)))
        rows.append(row)
    return rows


def _probe_rows(run_id: str, ident: dict, records: list[dict], layers: list | None) -> list[dict]:
    """Layer responses at the LAST point that has them (end of training, paper Fig. 7) and
    gradient norms at the FIRST point that has them (how gradients flow at initialisation)."""
    rows = []
    for probe, pick in (("response_std", -1), ("grad_norm", 0)):
        points = [r for r in records if isinstance(r.get(probe), list) and r[probe]]
        if not points:
            continue
        point = points[pick]
        values = point[probe]
        names = layers if layers and len(layers) == len(values) else None
        for i, value in enumerate(values):
            rows.append({"run_id": run_id, **ident, "probe": probe, "iter": point["iter"],
                         "layer": i + 1, "layer_name": names[i] if names else f"layer {i + 1}",
                         "value": _number(value)})
    return rows


def read_plan(root: Path, warnings: list[str]) -> list[dict]:
    """The runs `make sweep` planned (plan.json) as identities; [] without a readable plan."""
    path = root / "plan.json"
    if not path.exists():
        return []
    try:
        plan = json.loads(path.read_text())
        names = plan["runs"]
        check_version(plan.get("format_version"), path)
        if not isinstance(names, list):
            raise TypeError("'runs' is not a list")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        warnings.append(f"{path}: unreadable ({exc}); planned runs that never started cannot be listed")
        return []
    planned = []
    for name in names:
        run = parse_run_path(str(name))
        if run is None:
            warnings.append(f"{path}: planned run {name!r} is not runs/<arch>-<depth>-<shortcut>/seed=<k>; ignored")
            continue
        planned.append(run._asdict())
    return planned


def _missing(runs: pd.DataFrame, planned: list[dict]) -> pd.DataFrame:
    """Runs with no folder: planned by the sweep but not started yet (or never launched), and
    configurations lacking a seed that other configurations have. Said out loud, never dropped."""
    present = set(map(tuple, runs[IDENTITY].itertuples(index=False)))
    rows = {}
    for ident in planned:
        key = tuple(ident[k] for k in IDENTITY)
        if key not in present:
            rows[key] = {**ident, "status": NOT_STARTED,
                         "note": "not started: planned by the sweep (plan.json), no run folder yet"}
    nets = sorted(set(map(tuple, runs[["arch", "depth", "shortcut"]].itertuples(index=False))))
    for net, seed in product(nets, sorted(set(runs["seed"]))):
        if (*net, seed) not in present and (*net, seed) not in rows:
            rows[(*net, seed)] = {**dict(zip(IDENTITY, (*net, seed))), "status": MISSING,
                                  "note": "missing: no run folder (other networks have this seed)"}
    return pd.DataFrame(list(rows.values()), columns=[*IDENTITY, "status", "note"])


def _mark_other_recipes(reads: list[tuple]) -> None:
    """Runs whose recipe or model differs from the rest get OTHER_RECIPE (damaged ones do not vote): the
    completed ones, whose numbers would be pooled, and the running ones, whose curves would be drawn;
    a failed, diverged or corrupt run is out of every number already and keeps its status."""
    runs = [{"run_id": run_id, "net": (row["arch"], row["depth"], row["shortcut"]),
             "counted": row["status"] == COMPLETED, "config": leaves(config), "summary": summary}
            for run_id, row, config, _, _, summary in reads if row["status"] != DAMAGED]
    outliers = recipe_outliers(runs)
    for run_id, row, *_ in reads:
        if run_id in outliers and row["status"] in (COMPLETED, INCOMPLETE):
            row["status"], row["error"] = OTHER_RECIPE, outliers[run_id]


def collect(root: Path | str) -> Results:
    """Everything under <root>/runs, or ResultsError when there is nothing to analyse or a file is
    in a newer format than this suite reads."""
    try:
        return _collect(Path(root))
    except FormatError as exc:
        raise ResultsError(str(exc)) from None


def _collect(root: Path) -> Results:
    run_dirs = sorted(d for d in (root / "runs").glob("*/seed=*")
                      if d.is_dir() and parse_seed_name(d.name) is not None)
    if not run_dirs:
        raise ResultsError(f"no runs under {root / 'runs'}; run `make sweep "
                           f"EXP={experiment_name(root)}` first")
    warnings = [f"{d}: not a seed=<k> folder; ignored" for d in sorted((root / "runs").glob("*/*"))
                if d.is_dir() and parse_seed_name(d.name) is None]
    reads = [read for read in (_read_run(d, root, warnings) for d in run_dirs) if read is not None]
    _mark_other_recipes(reads)
    rows, metric_rows, probe_rows, configs = [], [], [], {}
    for run_id, row, config, records, layers, _ in reads:
        ident = {k: row[k] for k in (*IDENTITY, "status")}
        rows.append(row)
        configs[run_id] = config
        metric_rows += _metric_rows(run_id, ident, records)
        probe_rows += _probe_rows(run_id, ident, records, layers)
    if not rows:
        raise ResultsError(f"no readable runs under {root / 'runs'}; see the warnings above")
    runs = pd.DataFrame(rows).sort_values(["arch", "shortcut", "depth", "seed"], ignore_index=True)
    metrics = pd.DataFrame(metric_rows, columns=["run_id", *IDENTITY, "status", "iter",
                                                 *METRIC_FIELDS])
    probes = pd.DataFrame(probe_rows, columns=["run_id", *IDENTITY, "status", "probe", "iter",
                                               "layer", "layer_name", "value"])
    return Results(root=root, runs=runs,
                   metrics=metrics.sort_values(["run_id", "iter"], ignore_index=True),
                   probes=probes.sort_values(["run_id", "probe", "layer"], ignore_index=True),
                   configs=configs, missing=_missing(runs, read_plan(root, warnings)), warnings=warnings)
