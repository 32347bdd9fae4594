"""The numbers of the report, as DataFrames (written as CSV under <results>/tables/).

Headline errors are FINAL-iteration errors of completed runs: choosing the best point on
the test set would be model selection on the test set (SCIENCE.md). Best-over-training
appears only in columns named so. Every mean comes with its std over seeds and n; the std
of a single seed is NaN (unknown), never 0.
"""
from __future__ import annotations

import math

import pandas as pd

from analysis import paper
from analysis.collect import COMPLETED, Results

NET = ["arch", "shortcut", "depth"]


def main_shortcut(runs: pd.DataFrame) -> str | None:
    """The residual family set against plain nets: option A (the paper's CIFAR choice),
    or the first option present when a sweep has no option A."""
    options = sorted(set(runs.loc[runs["arch"] == "resnet", "shortcut"]))
    return "A" if "A" in options else (options[0] if options else None)


def _not_counted(statuses: pd.Series, missing: int = 0) -> str:
    """'1 running/incomplete, 1 diverged': the runs of a group left out of its numbers."""
    counts = statuses[statuses != COMPLETED].value_counts()
    parts = [f"{counts[s]} {s}" for s in sorted(counts.index)]
    return ", ".join(parts + ([f"{missing} missing"] if missing else []))


def integers(values) -> pd.Series:
    """Counts (params, MACs, iterations) as nullable integers: 269722, not 269722.0."""
    return pd.to_numeric(values, errors="coerce").round().astype("Int64")


def _stats(values: pd.Series) -> tuple[float, float]:
    values = values.astype(float).dropna()
    mean = values.mean() if len(values) else math.nan
    return mean, values.std(ddof=1) if len(values) > 1 else math.nan


def per_net(results: Results) -> pd.DataFrame:
    """One row per network (arch, shortcut, depth): final errors over completed seeds."""
    runs, rows = results.runs, []
    for (arch, shortcut, depth), group in runs.groupby(NET, sort=True):
        done = group[group["status"] == COMPLETED]
        missing = results.missing
        n_missing = len(missing[(missing["arch"] == arch) & (missing["shortcut"] == shortcut)
                                & (missing["depth"] == depth)])
        row = {"arch": arch, "shortcut": shortcut, "depth": depth, "n": len(done),
               "seeds": " ".join(str(s) for s in sorted(done["seed"]))}
        for name in ("final_test_err", "final_train_err", "best_test_err"):
            row[f"{name}_mean"], row[f"{name}_std"] = _stats(done[name])
        for name in ("params", "macs"):
            known = group[name].dropna()
            row[name] = known.iloc[0] if len(known) else math.nan
        row["not_counted"] = _not_counted(group["status"], n_missing)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["params"], table["macs"] = integers(table["params"]), integers(table["macs"])
    return table.rename(columns={"best_test_err_mean": "best_over_training_test_err_mean",
                                 "best_test_err_std": "best_over_training_test_err_std"})


def table6(results: Results) -> pd.DataFrame:
    """Paper Table 6: residual nets (main option) with plain nets alongside, and the paper's
    number and our difference where the paper reports one."""
    nets = per_net(results)
    keep = (nets["arch"] == "plain") | ((nets["arch"] == "resnet")
                                        & (nets["shortcut"] == main_shortcut(results.runs)))
    table = nets[keep].copy()
    refs = [paper.table6_reference(a, s, d) for a, s, d in table[NET].itertuples(index=False)]
    table["paper_test_err"] = [r["printed"] if r else math.nan for r in refs]
    table["paper_compared_to"] = [r["compare_to"] if r else math.nan for r in refs]
    table["paper_basis"] = [r["basis"] if r else "" for r in refs]
    table["diff_vs_paper"] = table["final_test_err_mean"] - table["paper_compared_to"]
    table["paper_params_M"] = [paper.TABLE6_PARAMS_M.get(d, math.nan) if r else math.nan
                               for d, r in zip(table["depth"], refs)]
    columns = ["arch", "shortcut", "depth", "n", "final_test_err_mean", "final_test_err_std",
               "final_train_err_mean", "final_train_err_std", "best_over_training_test_err_mean",
               "params", "paper_params_M", "paper_test_err", "paper_compared_to", "paper_basis",
               "diff_vs_paper", "seeds", "not_counted"]
    return table[columns].sort_values(["arch", "depth"], ignore_index=True)


def degradation(results: Results) -> pd.DataFrame:
    """Per depth, plain vs residual: final training and test error (mean, std, n)."""
    nets = per_net(results)
    shortcut = main_shortcut(results.runs)
    table = pd.DataFrame({"depth": sorted(set(nets["depth"]))})
    for arch, option in (("plain", "none"), ("resnet", shortcut)):
        mine = nets[(nets["arch"] == arch) & ((arch == "plain") | (nets["shortcut"] == option))]
        mine = mine.set_index("depth")
        for source, name in (("n", "n"), ("final_train_err_mean", "train_err_mean"),
                             ("final_train_err_std", "train_err_std"),
                             ("final_test_err_mean", "test_err_mean"),
                             ("final_test_err_std", "test_err_std")):
            table[f"{arch}_{name}"] = table["depth"].map(mine[source]) if len(mine) else math.nan
        table[f"{arch}_n"] = table[f"{arch}_n"].fillna(0).astype(int)
    return table


def depth_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """For each arch, each pair of consecutive measured depths: is the deeper net worse on
    final TRAINING error (the degradation symptom), and by how many points?"""
    rows = []
    for arch in ("plain", "resnet"):
        measured = table[table[f"{arch}_n"] > 0]
        records = measured.to_dict("records")  # keeps ints as ints, unlike iterrows
        for shallow, deep in zip(records, records[1:]):
            penalty = deep[f"{arch}_train_err_mean"] - shallow[f"{arch}_train_err_mean"]
            rows.append({"arch": arch, "shallower": shallow["depth"], "deeper": deep["depth"],
                         "train_err_shallower": shallow[f"{arch}_train_err_mean"],
                         "train_err_deeper": deep[f"{arch}_train_err_mean"],
                         "penalty_points": penalty, "deeper_worse": bool(penalty > 0),
                         "n_shallower": shallow[f"{arch}_n"], "n_deeper": deep[f"{arch}_n"]})
    return pd.DataFrame(rows, columns=["arch", "shallower", "deeper", "train_err_shallower",
                                       "train_err_deeper", "penalty_points", "deeper_worse",
                                       "n_shallower", "n_deeper"])


def verdict(table: pd.DataFrame) -> dict:
    """Degradation is reproduced when, between the shallowest and deepest depths both archs
    completed, plain's training error rises (penalty > 0) and rises more than resnet's."""
    both = table[(table["plain_n"] > 0) & (table["resnet_n"] > 0)]
    if len(both) < 2:
        return {"status": "undetermined",
                "reason": "needs completed plain and residual runs at two or more common depths"}
    shallow, deep = both.iloc[0], both.iloc[-1]
    out = {"shallow": int(shallow["depth"]), "deep": int(deep["depth"])}
    for arch in ("plain", "resnet"):
        out[f"{arch}_shallow"] = shallow[f"{arch}_train_err_mean"]
        out[f"{arch}_deep"] = deep[f"{arch}_train_err_mean"]
        out[f"{arch}_penalty"] = out[f"{arch}_deep"] - out[f"{arch}_shallow"]
        out[f"{arch}_n"] = (int(shallow[f"{arch}_n"]), int(deep[f"{arch}_n"]))
    reproduced = out["plain_penalty"] > 0 and out["plain_penalty"] > out["resnet_penalty"]
    out["status"] = "reproduced" if reproduced else "not reproduced"
    return out


def abc(results: Results) -> pd.DataFrame:
    """Shortcut options A/B/C per depth, plain as the baseline (a CIFAR-10 ablation the paper
    only ran on ImageNet, Table 3)."""
    nets = per_net(results)
    depths = set(nets.loc[nets["arch"] == "resnet", "depth"])
    table = nets[nets["depth"].isin(depths)].copy()
    table["option"] = table["shortcut"].where(table["arch"] == "resnet", "plain")
    table["order"] = table["option"].map(lambda o: (o != "plain", o))
    table = table.sort_values(["depth", "order"], ignore_index=True)
    return table[["depth", "option", "n", "final_test_err_mean", "final_test_err_std",
                  "final_train_err_mean", "params", "macs", "seeds", "not_counted"]]


def inventory(results: Results) -> pd.DataFrame:
    """Every run with its status, including the ones missing altogether."""
    runs = results.runs
    notes = []
    for run in runs.itertuples():
        if run.status == COMPLETED:
            notes.append("")
        elif run.status == "diverged":
            at = f" at iter {int(run.diverged_at)}" if pd.notna(run.diverged_at) else ""
            notes.append(f"diverged{at}; not counted")
        elif run.status == "corrupt":
            notes.append("corrupt: summary.json unreadable; not counted")
        else:  # running/incomplete, failed, or a status this analysis does not know
            seen = ("no evaluation point yet" if pd.isna(run.last_iter) else
                    f"last point iter {int(run.last_iter)}, train err {run.last_train_err:.2f}%, "
                    f"test err {run.last_test_err:.2f}%")
            error = f" ({run.error})" if isinstance(run.error, str) else ""
            notes.append(f"{run.status}: {seen}; not counted{error}")
    table = pd.DataFrame({
        "run": runs["run"], "seed": runs["seed"], "status": runs["status"], "arch": runs["arch"],
        "depth": runs["depth"], "shortcut": runs["shortcut"], "params": integers(runs["params"]),
        "macs": integers(runs["macs"]), "iterations_done": integers(runs["iterations_done"]),
        "iterations_planned": integers(runs["iterations"]), "final_train_err": runs["final_train_err"],
        "final_test_err": runs["final_test_err"],
        "best_over_training_test_err": runs["best_test_err"],
        "best_over_training_iter": integers(runs["best_test_iter"]), "wall_time_s": runs["wall_time_s"],
        "note": notes})
    missing = results.missing.assign(
        run=lambda m: m["arch"] + "-" + m["depth"].astype(str) + "-" + m["shortcut"],
        status="missing", note="missing: no run folder (other networks have this seed)")
    table = pd.concat([table, missing], ignore_index=True) if len(missing) else table
    return table.sort_values(["arch", "shortcut", "depth", "seed"], ignore_index=True)


def all_tables(results: Results) -> dict[str, pd.DataFrame]:
    """Every table by the file name it is written under."""
    deg = degradation(results)
    return {"inventory": inventory(results), "table6": table6(results), "degradation": deg,
            "degradation_pairs": depth_pairs(deg), "abc": abc(results)}
