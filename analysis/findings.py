"""The report's words, computed from the data: findings, recipe, data source, software.

Nothing here states a result that was not computed from the files; the only fixed text
explains what the reader is looking at.
"""
from __future__ import annotations

import math

import pandas as pd

from analysis import paper, style
from analysis.collect import COMPLETED, Results
from analysis.tables import main_shortcut

EXPLANATION = (
    "Degradation (He et al. 2016, Sec. 4.2 and Fig. 6) is the observation that a deeper plain "
    "network, made by stacking more layers, ends with a HIGHER training error than a shallower "
    "one. That is not overfitting: overfitting would lower the training error and raise the "
    "test error. A deeper net could copy the shallower one and set its extra layers to the "
    "identity, so its higher training error means the optimiser fails to find such solutions. "
    "Residual networks add a shortcut around every pair of layers, so the layers only learn a "
    "correction to the identity; the paper shows that deeper residual nets then train to lower "
    "error, not higher. The figures and tables below test this on the runs of this experiment. "
    "Training error here is that of the training batches as trained on (augmented, train "
    "mode), as in the paper; headline errors are those at the final iteration, never the best "
    "point over training (that would be model selection on the test set).")


def pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}%"


def points(x: float) -> str:
    return f"{x:+.2f} points"


def net_name(arch: str, depth: int) -> str:
    return f"{'plain' if arch == 'plain' else 'ResNet'}-{depth}"


def degradation_sentences(v: dict, shortcut: str | None) -> list[str]:
    """The verdict in plain words, both directions, from tables.verdict()."""
    if v["status"] == "undetermined":
        return [f"Degradation: undetermined; {v['reason']}."]
    s, d = v["shallow"], v["deep"]

    def said(arch: str) -> str:
        n = v[f"{arch}_n"]
        return (f"{net_name(arch, d)} ended at {pct(v[f'{arch}_deep'])} training error vs "
                f"{pct(v[f'{arch}_shallow'])} for {net_name(arch, s)} "
                f"({points(v[f'{arch}_penalty'])}; {n[1]} and {n[0]} seeds)")

    p, r = v["plain_penalty"], v["resnet_penalty"]
    plain = ("Plain nets got worse with depth: " if p > 0 else
             "Plain nets did not get worse with depth: ") + said("plain") + "."
    resnet_kind = f"Residual nets (option {shortcut})"
    if r <= 0:
        resnet = f"{resnet_kind} did not: " + said("resnet") + "."
    elif r < p:
        resnet = f"{resnet_kind} got worse too, but by less: " + said("resnet") + "."
    else:
        resnet = f"{resnet_kind} got worse as much or more: " + said("resnet") + "."
    if v["status"] == "reproduced":
        end = (f"Degradation reproduced: the plain penalty ({points(p)}) is positive and larger "
               f"than the residual one ({points(r)}).")
    elif p <= 0:
        end = f"Degradation not reproduced: the plain penalty ({points(p)}) is not positive."
    else:
        end = (f"Degradation not reproduced: the residual penalty ({points(r)}) is not smaller "
               f"than the plain one ({points(p)}).")
    if min(*v["plain_n"], *v["resnet_n"]) == 1:
        end += " Some of these nets have a single seed, so the spread between seeds is unknown."
    return [plain, resnet, end]


def status_sentence(results: Results, inventory: pd.DataFrame) -> str:
    counts = inventory["status"].value_counts()
    total = len(inventory)
    rest = [f"{counts[s]} {s}" for s in sorted(counts.index) if s != COMPLETED]
    return (f"{counts.get(COMPLETED, 0)} of {total} runs completed"
            + (f"; {', '.join(rest)} (listed under Problems, left out of every number)."
               if rest else "."))


def budget_sentence(results: Results) -> str:
    planned = results.runs["iterations"].dropna().astype(float)
    if planned.empty:
        return "The planned number of iterations is not recorded."
    low, high = planned.min(), planned.max()
    span = f"{int(low):,}" if low == high else f"{int(low):,} to {int(high):,}"
    fraction = paper.budget_fraction(high)
    share = f"{fraction:.0%}" if fraction >= 0.1 else f"{100 * fraction:.2g}%"
    text = (f"Runs planned {span} iterations, {share} of the paper's "
            f"{paper.PAPER_ITERATIONS:,}")
    if fraction < 0.5:
        return text + ": far below the paper's budget, so the comparison with the paper's " \
                      "numbers is indicative only."
    return text + "."


def paper_sentence(table6: pd.DataFrame) -> str | None:
    rows = table6[table6["paper_compared_to"].notna() & (table6["n"] > 0)]
    if rows.empty:
        return None
    parts = [f"{net_name('resnet', r.depth)} {pct(r.final_test_err_mean)} vs "
             f"{r.paper_compared_to:.2f}% ({points(r.diff_vs_paper)})"
             for r in rows.itertuples()]
    return "Final test error against the paper's Table 6: " + "; ".join(parts) + "."


def abc_sentence(abc: pd.DataFrame) -> str | None:
    done = abc[abc["n"] > 0]
    if done.loc[done["option"] != "plain", "option"].nunique() < 2:
        return None
    parts = []
    for depth, group in done.groupby("depth"):
        opts = ", ".join(f"{o} {pct(e)}" for o, e in zip(group["option"],
                                                          group["final_test_err_mean"]))
        parts.append(f"depth {depth}: {opts}")
    return "Shortcut options, final test error: " + "; ".join(parts) + "."


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _text(v) -> str:
    """50000, not 50000.0: pandas turns integer columns with gaps into floats."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _distinct(values) -> str:
    """One value, or each distinct value with how many runs used it (sorted, so stable).
    Runs that did not record the item (no summary yet) are left out unless all are."""
    text = [_text(v) for v in values if not _missing(v)]
    if not text:
        return "not recorded"
    counts = pd.Series(text, dtype=object).value_counts()
    if len(counts) == 1:
        return counts.index[0]
    return "; ".join(f"{v} ({counts[v]} run{'s' if counts[v] > 1 else ''})"
                     for v in sorted(counts.index))


def _config(results: Results, dotted: str, run_ids) -> list:
    out = []
    for run_id in run_ids:
        node = results.configs.get(run_id, {})
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        out.append(node)
    return out


def _augmentation(results: Results, run_ids) -> str:
    """Whatever the configs record about augmentation (any key naming it), else say so."""
    found = []
    for run_id in run_ids:
        stack = [("", results.configs.get(run_id, {}))]
        while stack:
            prefix, node = stack.pop()
            for key, value in sorted(node.items()) if isinstance(node, dict) else []:
                if "augment" in str(key).lower() or str(key) in ("crop", "flip", "pad"):
                    found.append(f"{prefix}{key}={value}")
                elif isinstance(value, dict):
                    stack.append((f"{prefix}{key}.", value))
    return ", ".join(sorted(set(found))) if found else "not recorded in config.yaml"


def recipe(results: Results) -> list[tuple[str, str]]:
    """The recipe the runs actually used, from summary.json, else config.yaml."""
    runs = results.runs
    ids = list(runs["run_id"])

    def pick(summary_key: str | None, config_key: str) -> str:
        from_config = _config(results, config_key, ids)
        if summary_key is None:
            return _distinct(from_config)
        return _distinct([c if _missing(s) else s for s, c in zip(runs[summary_key], from_config)])

    warmed = runs[runs["warmup_end_iter"].notna()]
    warm_ends = ", ".join(f"{r.run}/seed={r.seed} at iter {int(r.warmup_end_iter)}"
                          for r in warmed.itertuples()) or "no run recorded a warm-up"
    warmup = (f"{pick(None, 'schedule.warmup')} (lr {pick(None, 'schedule.warmup_lr')} until "
              f"training error < {pick(None, 'schedule.warmup_until_err')}%, at most "
              f"{pick(None, 'schedule.warmup_max_iters')} iterations); ended: {warm_ends}")
    return [("iterations (planned)", pick("iterations", "schedule.iterations")),
            ("batch size", pick("batch_size", "optim.batch_size")),
            ("learning rate", pick("lr", "optim.lr")),
            ("lr milestones (iterations)", pick("milestones", "schedule.milestones")),
            ("lr factor at each milestone", pick("gamma", "schedule.gamma")),
            ("weight decay", pick("weight_decay", "optim.weight_decay")),
            ("momentum", pick("momentum", "optim.momentum")),
            ("nesterov", pick(None, "optim.nesterov")),
            ("warm-up", warmup),
            ("precision", pick("precision", "trainer.precision")),
            ("augmentation", _augmentation(results, ids)),
            ("input normalisation", pick(None, "data.normalize")),
            ("evaluation every (iterations)", pick(None, "trainer.eval_every"))]


def data_source(results: Results) -> list[tuple[str, str]]:
    runs, ids = results.runs, list(results.runs["run_id"])
    label = style.data_label(runs)
    # null in config.yaml means "no root" (fake data) and "no subset": say that, not "missing".
    roots = ["none" if _missing(r) else r for r in runs["data_root"]]
    subsets = ["none (all training images)" if _missing(s) else s
               for s in _config(results, "data.train_subset", ids)]
    return [("source", f"{label} ({_distinct(runs['data_source'])})"),
            ("data root (config.yaml data.root)", _distinct(roots)),
            ("split", _distinct([s if isinstance(s, str) else c for s, c in
                                 zip(runs["data_split"], _config(results, "data.split", ids))])),
            ("evaluation split", _distinct(runs["eval_split"])),
            ("training images", _distinct(runs["train_size"])),
            ("evaluation images", _distinct(runs["eval_size"])),
            ("training subset", _distinct(subsets))]


def software(results: Results) -> list[tuple[str, str]]:
    runs = results.completed if len(results.completed) else results.runs
    return [(label, _distinct(runs[key])) for label, key in
            (("torch", "torch_version"), ("device", "device"), ("device name", "device_name"),
             ("channels_last", "channels_last"), ("git commit", "git_commit"))]


def findings(results: Results, tables: dict) -> list[str]:
    """The opening paragraph of the report, one sentence group per item."""
    v = tables["verdict"]
    out = [" ".join(degradation_sentences(v, main_shortcut(results.runs)))]
    out += [s for s in (paper_sentence(tables["table6"]), abc_sentence(tables["abc"])) if s]
    out.append(status_sentence(results, tables["inventory"]) + " " + budget_sentence(results))
    if style.is_fake(results.runs):
        out.insert(0, "FAKE DATA: these runs trained on random images for testing the suite; "
                      "no number here says anything about CIFAR-10.")
    return out
