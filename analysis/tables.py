"""The numbers of the report, as DataFrames (written as CSV under <results>/tables/).

Headline errors are FINAL-iteration errors of completed runs: choosing the best point on
the test set would be model selection on the test set (SCIENCE.md). Best-over-training
appears only in columns named so. Every mean comes with its std over seeds and n; the std
of a single seed is NaN (unknown), never 0.
"""
from __future__ import annotations

import itertools
import math

import pandas as pd

from analysis import paper, stats
from analysis.collect import COMPLETED, CORRUPT, DAMAGED, DIVERGED, INCOMPLETE, OTHER_RECIPE, Results

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


def evaluated_on(completed: pd.DataFrame, net: tuple) -> str:
    """'test', 'val', or both, as the completed runs of one network recorded it ('' if none)."""
    arch, shortcut, depth = net
    mine = completed[(completed["arch"] == arch) & (completed["shortcut"] == shortcut) & (completed["depth"] == depth)]
    return "+".join(sorted({str(x) for x in mine["eval_split"].dropna()}))


def table6(results: Results) -> pd.DataFrame:
    """Paper Table 6: residual nets (main option) with plain nets alongside, and the paper's
    number and our difference where the paper reports one."""
    nets = per_net(results)
    keep = (nets["arch"] == "plain") | ((nets["arch"] == "resnet")
                                        & (nets["shortcut"] == main_shortcut(results.runs)))
    table = nets[keep].copy()
    table["evaluated_on"] = [evaluated_on(results.completed, net) for net in table[NET].itertuples(index=False)]
    refs = [paper.table6_reference(a, s, d) for a, s, d in table[NET].itertuples(index=False)]
    # Table 6 is test-set error: a net evaluated on the validation split is labelled so and not compared.
    refs = [r if r and where == "test" else None for r, where in zip(refs, table["evaluated_on"])]
    table["paper_test_err"] = [r["printed"] if r else math.nan for r in refs]
    table["paper_compared_to"] = [r["compare_to"] if r else math.nan for r in refs]
    table["paper_basis"] = [r["basis"] if r else ("not compared: validation split" if where == "val" else "")
                            for r, where in zip(refs, table["evaluated_on"])]
    table["diff_vs_paper"] = table["final_test_err_mean"] - table["paper_compared_to"]
    table["paper_params_M"] = [paper.TABLE6_PARAMS_M.get(d, math.nan) if r else math.nan
                               for d, r in zip(table["depth"], refs)]
    columns = ["arch", "shortcut", "depth", "n", "evaluated_on", "final_test_err_mean", "final_test_err_std",
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


# The two halves of paper Fig. 6, each a claim about final TRAINING error (the degradation
# symptom), checked between the shallowest and deepest depth both architectures completed.
CLAIMS = {"plain": ("deeper plain nets train worse", +1),
          "resnet": ("deeper residual nets train better", -1)}


def claim_state(p: stats.Paired, sign: int) -> str:
    """shown (every seed agrees, 95 % interval excludes 0) / consistent (every seed agrees, the
    interval does not exclude 0) / one seed / mixed (seeds disagree) / not shown / no data."""
    if p.n == 0:
        return "no data"
    if p.mean * sign <= 0:
        return "not shown"
    if p.agreeing(sign) < p.n:
        return "mixed"
    if p.n == 1:
        return "one seed"
    return "shown" if p.resolved else "consistent"


HOLDS = ("shown", "consistent")


def verdict(results: Results, table: pd.DataFrame | None = None) -> dict:
    """Both halves of Fig. 6 from paired seeds. "reproduced" only when both hold in every paired
    seed (n >= 2); "half-shown" when only the plain half does. Without two depths common to both
    architectures the status is "undetermined", but each half an architecture's own depths allow is
    still computed (a partial sweep's report says what its finished runs show). `table`:
    degradation(results), when the caller has it already."""
    table = degradation(results) if table is None else table
    both = table[(table["plain_n"] > 0) & (table["resnet_n"] > 0)]
    common = len(both) >= 2
    shortcut = main_shortcut(results.runs)
    out, by_depth = {"shortcut": shortcut}, table.set_index("depth")
    for arch, (claim, sign) in CLAIMS.items():
        measured = both if common else table[table[f"{arch}_n"] > 0]
        if len(measured) < 2:
            continue
        shallow, deep = int(measured["depth"].iloc[0]), int(measured["depth"].iloc[-1])
        option = "none" if arch == "plain" else shortcut
        p = stats.paired(results.runs, (arch, option, shallow), (arch, option, deep), "final_train_err")
        out[arch] = {"claim": claim, "sign": sign, "paired": p, "state": claim_state(p, sign),
                     "shallow": shallow, "deep": deep,
                     "shallow_err": by_depth.at[shallow, f"{arch}_train_err_mean"],
                     "deep_err": by_depth.at[deep, f"{arch}_train_err_mean"]}
    if not common:
        out["status"], out["reason"] = ("undetermined",
                                        "needs completed plain and residual runs at two or more common depths")
        return out
    out["shallow"], out["deep"] = out["plain"]["shallow"], out["plain"]["deep"]
    plain, resnet = out["plain"]["state"], out["resnet"]["state"]
    if "no data" in (plain, resnet):
        out["status"], out["reason"] = "undetermined", "no seed completed both depths of one architecture"
    elif plain in HOLDS and resnet in HOLDS:
        out["status"] = "reproduced"
    elif plain in HOLDS:
        out["status"] = "half-shown"
    elif "one seed" in (plain, resnet) and not {plain, resnet} & {"not shown", "mixed"}:
        out["status"] = "suggested by one seed"
    else:
        out["status"] = "not reproduced"
    return out


def verdict_table(v: dict) -> pd.DataFrame:
    """tables/verdicts.csv: one row per claim, the paired difference deep − shallow."""
    rows = []
    for arch in (a for a in CLAIMS if a in v):
        c, p = v[arch], v[arch]["paired"]
        low, high = p.interval
        rows.append({"claim": c["claim"], "arch": arch, "shortcut": "none" if arch == "plain" else v["shortcut"],
                     "shallower": c["shallow"], "deeper": c["deep"], "metric": "final_train_err",
                     "n_pairs": p.n, "seeds": " ".join(map(str, p.seeds)), "mean_diff": p.mean,
                     "std_diff": p.std, "ci95_low": low, "ci95_high": high,
                     "seeds_agreeing": p.agreeing(c["sign"]), "state": c["state"],
                     "mixed_precision_seeds": stats.mixed_seeds(p)})
    return pd.DataFrame(rows, columns=["claim", "arch", "shortcut", "shallower", "deeper", "metric", "n_pairs",
                                       "seeds", "mean_diff", "std_diff", "ci95_low", "ci95_high",
                                       "seeds_agreeing", "state", "mixed_precision_seeds"])


def abc(results: Results) -> pd.DataFrame:
    """Shortcut options A/B/C per residual architecture and depth, the plain net of the same
    depth as the baseline (a CIFAR-10 ablation the paper only ran on ImageNet, Table 3).
    Labelled by architecture: a pre-activation net is its own family, never "plain"."""
    nets = per_net(results)
    depths = set(nets.loc[nets["arch"] != "plain", "depth"])
    table = nets[nets["depth"].isin(depths)].copy()
    table["option"] = table["shortcut"]
    table["is_residual"] = table["arch"] != "plain"
    table = table.sort_values(["depth", "is_residual", "arch", "option"], ignore_index=True)
    return table[["depth", "arch", "option", "n", "final_test_err_mean", "final_test_err_std",
                  "final_train_err_mean", "final_train_err_std", "params", "macs", "seeds", "not_counted"]]


def abc_options(results: Results) -> dict[str, list[str]]:
    """Residual architecture -> its shortcut options present; an ablation needs two or more."""
    runs = results.runs[results.runs["arch"] != "plain"]
    return {arch: sorted(set(group["shortcut"])) for arch, group in runs.groupby("arch")}


def abc_pairs(results: Results) -> pd.DataFrame:
    """Each option against option A of the same architecture and depth, paired by seed, for
    final test and final training error: tables/abc_pairs.csv."""
    rows = []
    for arch, options in abc_options(results).items():
        if "A" not in options or len(options) < 2:
            continue
        mine = results.runs[results.runs["arch"] == arch]
        present = set(zip(mine["depth"], mine["shortcut"]))
        for depth, option, metric in itertools.product(sorted(set(mine["depth"])), [o for o in options if o != "A"],
                                                       ("final_test_err", "final_train_err")):
            if not {(depth, "A"), (depth, option)} <= present:  # this option did not run at this depth
                continue
            p = stats.paired(results.runs, (arch, "A", depth), (arch, option, depth), metric)
            low, high = p.interval
            rows.append({"arch": arch, "depth": depth, "option": option, "baseline": "A", "metric": metric,
                         "n_pairs": p.n, "seeds": " ".join(map(str, p.seeds)), "mean_diff": p.mean,
                         "std_diff": p.std, "ci95_low": low, "ci95_high": high, "resolved": p.resolved,
                         "mixed_precision_seeds": stats.mixed_seeds(p)})
    return pd.DataFrame(rows, columns=["arch", "depth", "option", "baseline", "metric", "n_pairs", "seeds",
                                       "mean_diff", "std_diff", "ci95_low", "ci95_high", "resolved",
                                       "mixed_precision_seeds"])


def inventory(results: Results) -> pd.DataFrame:
    """Every run with its status, including the ones missing altogether."""
    runs = results.runs
    notes = []
    for run in runs.itertuples():
        if run.status == COMPLETED:
            notes.append("")
        elif run.status == DIVERGED:
            at = f" at iter {int(run.diverged_at)}" if pd.notna(run.diverged_at) else ""
            notes.append(f"diverged{at}; not counted")
        elif run.status == CORRUPT:
            notes.append("corrupt: summary.json unreadable; not counted")
        elif run.status in (DAMAGED, OTHER_RECIPE):
            notes.append(f"{run.status}: {run.error}; not counted")
        else:  # running/incomplete, failed, or a status this analysis does not know
            seen = ("no evaluation point yet" if pd.isna(run.last_iter) else
                    f"last point iter {int(run.last_iter)}, train err {run.last_train_err:.2f}%, "
                    f"test err {run.last_test_err:.2f}%")
            error = f" ({run.error})" if isinstance(run.error, str) else ""
            resumes = "; partial: its checkpoint (last.pt) resumes with the sweep's command" \
                if run.status == INCOMPLETE and getattr(run, "checkpoint", False) is True else ""
            notes.append(f"{run.status}: {seen}{resumes}; not counted{error}")
    table = pd.DataFrame({
        "run": runs["run"], "seed": runs["seed"], "status": runs["status"], "arch": runs["arch"],
        "depth": runs["depth"], "shortcut": runs["shortcut"], "params": integers(runs["params"]),
        "macs": integers(runs["macs"]), "iterations_done": integers(runs["iterations_done"]),
        "iterations_planned": integers(runs["iterations"]), "final_train_err": runs["final_train_err"],
        "final_test_err": runs["final_test_err"],
        "best_over_training_test_err": runs["best_test_err"],
        "best_over_training_iter": integers(runs["best_test_iter"]), "wall_time_s": runs["wall_time_s"],
        "note": notes})
    missing = results.missing.assign(  # status and note say why: not started (plan.json) or missing
        run=lambda m: m["arch"] + "-" + m["depth"].astype(str) + "-" + m["shortcut"])
    table = pd.concat([table, missing], ignore_index=True) if len(missing) else table
    return table.sort_values(["arch", "shortcut", "depth", "seed"], ignore_index=True)


def curves(results: Results) -> pd.DataFrame:
    """Every run's curve in one tidy table, one row per (run, evaluation point), every status included:
    `pd.read_csv("tables/curves.csv")` is all a plot of any run needs."""
    return results.metrics.rename(columns={"run_id": "run"})


def all_tables(results: Results) -> tuple[dict[str, pd.DataFrame], dict]:
    """Every table by the file name it is written under, and the verdict they were computed with."""
    deg = degradation(results)
    v = verdict(results, deg)
    return {"inventory": inventory(results), "table6": table6(results), "degradation": deg,
            "degradation_pairs": depth_pairs(deg), "verdicts": verdict_table(v),
            "abc": abc(results), "abc_pairs": abc_pairs(results), "curves": curves(results)}, v
