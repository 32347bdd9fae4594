"""Whether a run folder's numbers may be pooled with the others, beyond the status it records.

A results folder is shared, copied and merged by hand, so a folder's name and neighbours prove nothing:
- its name (arch, depth, shortcut, seed) must be what its own summary.json and config.yaml say it is,
  else it is a copied or renamed run (`identity_mismatch`);
- its metrics.jsonl must step forward, one point per iteration: the trainer rewrites it on resume and
  never repeats or reorders a point, so a duplicate or backward step is damage, not a rule to resolve
  (`curve_disorder`);
- it must share the experiment's recipe, and its seeds the same model (`recipe_outliers`): a seed added
  with another learning rate, or a run copied from another experiment, is never averaged in.
Each returns the reason as one line, or None; collect.py marks the run and the report lists it.
"""
from __future__ import annotations

import json
from collections import Counter

from experiments.contract import arch_kind, leaves, shortcut_name

IDENTITY = ("arch", "depth", "shortcut", "seed")
# Config leaves that change what every run of an experiment computes, so pooled runs must share them
# (experiments/run/resume_guard.py RESULT_KEYS, without the model, which differs between nets, the seed, and
# trainer.precision, which the report already follows per seed: it names every pair that mixes two).
SHARED_KEYS = ("optim.", "schedule.", "data.source", "data.split", "data.train_subset", "data.num_train",
               "data.num_eval", "data.normalize", "data.augment", "trainer.eval_every", "trainer.probes",
               "trainer.probe_batch")
# Shared keys compared as the run computed them (summary.json), not as config.yaml writes them, as the
# resume guard compares them: milestones null means "scaled to the run's length", and the warm-up settings
# count only where warm-up ran (depth >= 110 with warmup=auto), so they belong to the per-net comparison.
AS_COMPUTED = ("schedule.milestones", "schedule.warmup")
# summary.json fields that restate a shared key: what a run whose config.yaml is gone is compared by.
SUMMARY_KEYS = {"iterations": "schedule.iterations", "lr": "optim.lr", "batch_size": "optim.batch_size",
                "weight_decay": "optim.weight_decay", "momentum": "optim.momentum", "gamma": "schedule.gamma",
                "data_source": "data.source", "data_split": "data.split"}


# -- the folder's name against the run's own files ---------------------------------------------------
def identity_mismatch(named: dict, config: dict, summary: dict | None) -> str | None:
    """Where summary.json or config.yaml name another run than the folder (`named`: arch, depth,
    shortcut, seed from the folder names); a field a file does not record is not compared."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    claims = {"summary.json": {k: (summary or {}).get(k) for k in IDENTITY},
              "config.yaml": {**{k: model.get(k) for k in IDENTITY[:3]}, "seed": config.get("seed")}}
    for source, claim in claims.items():
        differ = [f"{k} {claim[k]!r}" for k in IDENTITY
                  if claim[k] is not None and _normal(k, claim[k], claim["arch"]) != named[k]]
        if differ:
            folder = f"{named['arch']}-{named['depth']}-{named['shortcut']}/seed={named['seed']}"
            return (f"the folder says {folder} but its {source} says {', '.join(differ)}: a run folder copied "
                    f"or renamed; give it back its own name or delete it")
    return None


def _normal(key: str, value, arch):
    """A recorded identity field as the folder name writes it (resnet34 -> resnet; a plain net's
    shortcut -> none); a value of the wrong type stays as it is and compares unequal."""
    if key == "arch" and isinstance(value, str):
        return arch_kind(value)
    if key == "shortcut" and isinstance(value, str) and isinstance(arch, str):
        return shortcut_name(arch, value)
    if key in ("depth", "seed") and isinstance(value, bool):
        return repr(value)  # True == 1 in Python: not a depth
    return value


# -- the curve's order -----------------------------------------------------------------------------
def curve_disorder(records: list[dict]) -> str | None:
    """Why the points of a metrics.jsonl (in file order) are not one per iteration, ascending."""
    seen = set()
    for before, point in zip([None, *records], records):
        if point["iter"] in seen:
            return (f"metrics.jsonl holds iter {point['iter']} twice: lines appended twice or merged from "
                    f"two runs; retrain it (delete the run folder, rerun the sweep)")
        if before is not None and point["iter"] < before["iter"]:
            return (f"metrics.jsonl steps back from iter {before['iter']} to {point['iter']}: lines "
                    f"reordered or merged from two runs; retrain it (delete the run folder, rerun the sweep)")
        seen.add(point["iter"])
    return None


# -- one recipe per experiment, one model per network ------------------------------------------------
def recipe_outliers(runs: list[dict]) -> dict[str, str]:
    """{run_id: why} for the runs that must not be pooled. `runs`: dicts with run_id, net (arch, depth,
    shortcut), counted (a completed run: these set the reference), config (leaves) and summary. The
    reference is the recipe of most runs, a tie going to the first in folder order; a key one run records
    and another does not (a config older than the key) is not compared."""
    shared = {r["run_id"]: _recipe(r) for r in runs}
    out = _outliers(runs, shared, "the experiment's other runs")
    for net in dict.fromkeys(r["net"] for r in runs):
        seeds = [r for r in runs if r["net"] == net and r["run_id"] not in out]
        out |= _outliers(seeds, {r["run_id"]: _net_recipe(r) for r in seeds}, "its other seeds")
    return out


def _recipe(run: dict) -> dict:
    """The shared keys a run records: from config.yaml, else what its summary.json restates."""
    config, summary = run["config"], run["summary"] or {}
    if config:
        out = {k: v for k, v in config.items() if k.startswith(SHARED_KEYS) and not k.startswith(AS_COMPUTED)}
    else:
        out = {key: summary[field] for field, key in SUMMARY_KEYS.items() if summary.get(field) is not None}
    if isinstance(summary.get("milestones"), list):
        out["schedule.milestones"] = summary["milestones"]
    return out


def _net_recipe(run: dict) -> dict:
    """What the seeds of one net must share beyond the recipe: the model, and the warm-up as it ran."""
    config, summary = run["config"], run["summary"] or {}
    out = {k: v for k, v in config.items() if k.startswith("model.")}
    if isinstance(summary.get("warmup"), bool):
        out["schedule.warmup"] = summary["warmup"]
        if summary["warmup"]:
            out |= {k: v for k, v in config.items() if k in ("schedule.warmup_lr", "schedule.warmup_until_err")}
            out["schedule.warmup_max_iters"] = summary.get("warmup_max_iters")
    return out


def _outliers(runs: list[dict], values: dict[str, dict], others: str) -> dict[str, str]:
    voters = [r for r in runs if r["counted"] and r["config"]] or [r for r in runs if r["config"]]
    if not voters:
        return {}
    votes, first = Counter(), {}  # recipe -> how many runs have it, and the first of them
    for i, r in enumerate(voters):
        votes[_frozen(values[r["run_id"]])] += 1
        first.setdefault(_frozen(values[r["run_id"]]), i)
    best = max(votes, key=lambda recipe: (votes[recipe], -first[recipe]))
    reference = values[voters[first[best]]["run_id"]]
    out = {}
    for r in runs:
        mine = values[r["run_id"]]
        differ = [k for k in sorted(mine.keys() & reference.keys()) if mine[k] != reference[k]]
        if differ:
            shown = ", ".join(f"{k}={_text(mine[k])} (not {_text(reference[k])})" for k in differ[:3])
            more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
            out[r["run_id"]] = (f"trained with {shown}{more}, unlike {others}: another recipe, never pooled "
                                f"with them; move it to an experiment of its own, or delete it")
    return out


def _frozen(values: dict) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def _text(value) -> str:
    return json.dumps(value, default=str)
