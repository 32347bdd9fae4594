"""The report's figures. Each builder returns a Plot holding the matplotlib Figure (so tests
can count its series before it is saved) and a caption computed from the data.

Which runs a figure uses, and why:
- curves (Fig. 6 style, lr schedule) show every run that has points, running ones included,
  since a curve is honest at any stage; diverged/failed runs are drawn alone, thin, never
  averaged into the healthy seeds;
- final numbers (error vs depth, A/B/C, Fig. 7 responses at the end of training) use
  completed runs only, like the tables;
- gradient norms at the first probe point use every run that has one.
Data series carry labels; helper artists (bands, milestones, error-bar caps) do not.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from analysis import style
from analysis.collect import COMPLETED, INCOMPLETE, Results
from analysis.tables import abc, degradation, main_shortcut

TRAIN_NOTE = "training error of the batches as trained on (train mode, augmented; the paper's)"


@dataclass
class Plot:
    name: str            # file stem under figures/
    title: str
    caption: str
    figure: object = None  # None: skipped, and `caption` says why


def _panels(results: Results) -> list[tuple[str, str]]:
    """(arch, shortcut) families to compare: plain, and option A resnets (every option,
    one panel each, only when a sweep has no option A); pre-activation resnets the same way."""
    runs = results.runs
    panels = [("plain", "none")] if (runs["arch"] == "plain").any() else []
    for arch in ("resnet", "preact"):
        options = sorted(set(runs.loc[runs["arch"] == arch, "shortcut"]))
        panels += [(arch, s) for s in (["A"] if "A" in options else options)]
    return panels


def _family(df: pd.DataFrame, arch: str, shortcut: str) -> pd.DataFrame:
    return df[(df["arch"] == arch) & ((arch == "plain") | (df["shortcut"] == shortcut))]


def _depth_legend(ax, colours, depths, extra=()) -> None:
    handles = [Line2D([], [], color=colours[d], lw=2, label=f"depth {d}") for d in depths]
    ax.legend(handles=handles + list(extra), fontsize=7, loc="upper right")


def curves(results: Results, colours: dict) -> Plot:
    """Paper Fig. 6: training (dashed) and test (solid) error against iterations."""
    panels, metrics, test = _panels(results), results.metrics, style.eval_name(results.runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), sharey=True,
                             squeeze=False)
    finals = results.completed["final_test_err"].astype(float)
    milestones = {m for ms in results.runs["milestones"] if isinstance(ms, list) for m in ms}
    for ax, (arch, shortcut) in zip(axes[0], panels):
        family = _family(metrics, arch, shortcut)
        healthy = family[family["status"].isin([COMPLETED, INCOMPLETE])]
        for depth, group in healthy.groupby("depth"):
            stats = group.groupby("iter")[["train_err", "test_err"]].agg(["mean", "min", "max"])
            for column, dash in (("train_err", "--"), ("test_err", "-")):
                ax.plot(stats.index, stats[column]["mean"], dash, color=colours[depth], lw=1.6,
                        label=f"{arch}-{depth} {column}")
                if group["seed"].nunique() > 1:  # band: min-max over seeds
                    ax.fill_between(stats.index, stats[column]["min"], stats[column]["max"],
                                    color=colours[depth], alpha=0.15, lw=0)
        for run_id, group in family[~family.index.isin(healthy.index)].groupby("run_id"):
            depth, status = group["depth"].iloc[0], group["status"].iloc[0]
            for column, dash in (("train_err", "--"), ("test_err", "-")):
                ax.plot(group["iter"], group[column], dash, color=colours[depth], lw=0.8,
                        alpha=0.6, marker="x", markevery=[-1], label=f"{run_id} {status} {column}")
        for m in sorted(milestones):
            ax.axvline(m, color="#999999", lw=0.7, ls=":")
        ax.set(title=style.family_label(arch, shortcut), xlabel="iterations",
               ylabel="error (%)" if ax is axes[0][0] else "")
        _depth_legend(ax, colours, sorted(set(family["depth"])), [
            Line2D([], [], color="k", ls="--", label="train"),
            Line2D([], [], color="k", ls="-", label=test)])
    if finals.notna().any():  # the paper's view: the interesting part is the low-error end
        axes[0][0].set_ylim(0, min(100.0, 2.5 * finals.max() + 5))
    style.title(fig, "Training (dashed) and test (solid) error", results.runs)
    fig.tight_layout()
    return Plot("curves", "Error during training (paper Fig. 6)",
                f"Dashed: {TRAIN_NOTE}. Solid: {test} error. Lines are the mean over seeds, "
                "bands the min-max range; diverged or failed runs are drawn alone, thin, ending "
                "in x. Dotted verticals: learning-rate drops.", fig)


def error_vs_depth(results: Results, colours: dict) -> Plot:
    """The degradation in one picture: final training and test error against depth."""
    table, test = degradation(results), style.eval_name(results.runs)
    if not (table["plain_n"].sum() or table["resnet_n"].sum()):
        return Plot("error_vs_depth", "Final error against depth",
                    "Skipped: no completed plain or residual run yet.")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharex=True)
    for ax, kind, label in ((axes[0], "train", "final training error"),
                            (axes[1], "test", f"final {test} error")):
        for arch in ("plain", "resnet"):
            rows = table[table[f"{arch}_n"] > 0]
            if rows.empty:
                continue
            ax.errorbar(rows["depth"], rows[f"{arch}_{kind}_err_mean"],
                        yerr=rows[f"{arch}_{kind}_err_std"].fillna(0), capsize=3,
                        color=style.ARCH_COLOURS[arch], marker=style.ARCH_MARKERS[arch],
                        ls=style.ARCH_LINESTYLES[arch], label=f"{arch} {kind}")
        depths = sorted(table["depth"])
        if depths and depths[-1] / depths[0] > 10:
            ax.set_xscale("log")
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.set(title=label, xlabel="depth (layers)", ylabel="error (%)")
        ax.legend(fontsize=8)
    style.title(fig, "Final error against depth", results.runs)
    fig.tight_layout()
    shortcut = main_shortcut(results.runs)
    return Plot("error_vs_depth", "Final error against depth",
                f"Completed runs only; points are the mean over seeds, bars one std (none for "
                f"a single seed). ResNet: option {shortcut}. Degradation shows as the plain "
                f"training-error line rising with depth.", fig)


def shortcut_options(results: Results, colours: dict) -> Plot:
    """Options A/B/C (plain as baseline) per depth: grouped bars with parameter counts."""
    options = sorted(set(results.runs.loc[results.runs["arch"] == "resnet", "shortcut"]))
    if len(options) < 2:
        return Plot("shortcut_options", "Shortcut options A/B/C",
                    f"Skipped: only option {', '.join(options) or '(none)'} present; the "
                    "ablation needs two or more shortcut options.")
    table = abc(results)
    table = table[(table["n"] > 0) & table["arch"].isin(["plain", "resnet"])]  # ResNet's options, plain beside
    table = table.assign(option=table["option"].where(table["arch"] != "plain", "plain"))
    if table.empty:
        return Plot("shortcut_options", "Shortcut options A/B/C",
                    "Skipped: no completed run of any shortcut option yet.")
    order = [o for o in ("plain", "A", "B", "C") if o in set(table["option"])]
    order += sorted(set(table["option"]) - set(order))
    depths = sorted(set(table["depth"]))
    width = 0.8 / len(order)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(depths) + 2), 3.8))
    for i, option in enumerate(order):
        rows = table[table["option"] == option].set_index("depth").reindex(depths)
        x = np.arange(len(depths)) + (i - (len(order) - 1) / 2) * width
        bars = ax.bar(x, rows["final_test_err_mean"], width * 0.95,
                      yerr=rows["final_test_err_std"].fillna(0), capsize=2,
                      color=style.OPTION_COLOURS.get(option, "#999999"), label=option)
        for bar, params, std in zip(bars, rows["params"], rows["final_test_err_std"].fillna(0)):
            if np.isfinite(bar.get_height()) and pd.notna(params):  # label above the whisker
                ax.annotate(f"{params / 1e6:.2f}M", (bar.get_x() + bar.get_width() / 2,
                            bar.get_height() + std), ha="center", va="bottom", fontsize=6,
                            xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(np.arange(len(depths)), [str(d) for d in depths])
    ax.set(xlabel="depth (layers)", ylabel=f"final {style.eval_name(results.runs)} error (%)")
    ax.legend(title="shortcut", fontsize=8)
    style.title(fig, "Shortcut options", results.runs)
    fig.tight_layout()
    return Plot("shortcut_options", "Shortcut options A/B/C",
                "Completed runs; bars are the mean over seeds, whiskers one std; labels give "
                "the parameter count. A: zero-padded identity, B: projection where the shape "
                "changes, C: projection on every shortcut. The paper compares these on "
                "ImageNet only (Table 3).", fig)


def _probe_means(results: Results, probe: str, completed_only: bool) -> pd.DataFrame:
    probes = results.probes[results.probes["probe"] == probe]
    if completed_only:
        probes = probes[probes["status"] == COMPLETED]
    keep = pd.concat([_family(probes, a, s) for a, s in _panels(results)])
    return keep.groupby(["arch", "shortcut", "depth", "layer"], as_index=False).agg(
        value=("value", "mean"), seeds=("seed", "nunique"), iter=("iter", "max"))


def responses(results: Results, colours: dict) -> Plot:
    """Paper Fig. 7: std of each 3x3 layer's response, in layer order and sorted."""
    means = _probe_means(results, "response_std", completed_only=True)
    if means.empty:
        return Plot("responses", "Layer responses (paper Fig. 7)",
                    "Skipped: no completed run recorded response_std.")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6))
    for (arch, shortcut, depth), group in means.groupby(["arch", "shortcut", "depth"]):
        label = f"{arch}-{depth}" + (f"-{shortcut}" if arch != "plain" else "")
        kw = dict(color=colours[depth], ls=style.ARCH_LINESTYLES[arch], lw=1.2,
                  marker=style.ARCH_MARKERS[arch], markersize=2.5)
        top.plot(group["layer"], group["value"], label=label, **kw)
        bottom.plot(np.arange(1, len(group) + 1), np.sort(group["value"].to_numpy())[::-1],
                    label=label, **kw)
    top.set(title="layer index (original order)", xlabel="layer index", ylabel="std")
    bottom.set(title="sorted by magnitude", xlabel="layer index (sorted)", ylabel="std")
    top.legend(fontsize=7, ncol=2)
    style.title(fig, "Std of 3x3 layer responses", results.runs)
    fig.tight_layout()
    iters = ", ".join(str(i) for i in sorted(set(means["iter"])))
    return Plot("responses", "Layer responses (paper Fig. 7)",
                "Std of each 3x3 layer's BN output (before the ReLU / addition) on the "
                f"evaluation split, at the last probe point (iteration {iters}), mean over "
                "seeds of completed runs. Dashed squares: plain; solid circles: ResNet"
                + ("; dash-dot triangles: pre-activation ResNet, whose response is the 3x3 conv's "
                   "own output (no BN follows a conv there)" if (means["arch"] == "preact").any() else "")
                + ".", fig)


def gradient_flow(results: Results, colours: dict) -> Plot:
    """Per-layer gradient norms at the first probe point: do gradients reach early layers?"""
    means = _probe_means(results, "grad_norm", completed_only=False)
    if means.empty:
        return Plot("gradient_flow", "Gradient flow", "Skipped: no run recorded grad_norm.")
    families = sorted(set(zip(means["arch"], means["shortcut"])))
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 3.6), sharey=True,
                             squeeze=False)
    for ax, (arch, shortcut) in zip(axes[0], families):
        mine = means[(means["arch"] == arch) & (means["shortcut"] == shortcut)]
        for depth, group in mine.groupby("depth"):
            ax.plot(group["layer"], group["value"], color=colours[depth], lw=1.2,
                    marker=style.ARCH_MARKERS[arch], markersize=2.5, label=f"{arch}-{depth}")
        ax.set_yscale("log")
        ax.set(title=style.family_label(arch, shortcut),
               xlabel="3x3 layer index (input side first)", ylabel="gradient L2 norm")
        ax.legend(fontsize=7)
    style.title(fig, "Gradient norm per layer", results.runs)
    fig.tight_layout()
    iters = ", ".join(str(i) for i in sorted(set(means["iter"])))
    return Plot("gradient_flow", "Gradient flow at the first probe point",
                "L2 norm of the gradient of each 3x3 conv weight on one fixed training batch, "
                f"at the first probe point (iteration {iters}), mean over seeds; log scale.", fig)


def lr_schedule(results: Results, colours: dict) -> Plot:
    """The learning rate each run actually used, so warm-up and drops can be checked."""
    metrics = results.metrics.dropna(subset=["lr"])
    if metrics.empty:
        return Plot("lr_schedule", "Learning-rate schedule", "Skipped: no lr recorded.")
    fig, ax = plt.subplots(figsize=(6, 2.8))
    for run_id, group in metrics.groupby("run_id"):
        arch, depth = group["arch"].iloc[0], group["depth"].iloc[0]
        ax.plot(group["iter"], group["lr"], drawstyle="steps-pre", color=colours[depth],
                ls=style.ARCH_LINESTYLES[arch], lw=1, alpha=0.8, label=run_id)
    ax.set_yscale("log")
    ax.set(xlabel="iterations", ylabel="learning rate")
    _depth_legend(ax, colours, sorted(set(metrics["depth"])))
    style.title(fig, "Learning rate as recorded", results.runs)
    fig.tight_layout()
    return Plot("lr_schedule", "Learning-rate schedule as recorded",
                "The lr of the last iteration before each evaluation point (held back to the "
                "previous point), one line per run "
                "(dashed: plain, solid: ResNet); a warm-up shows as a step up from 0.01.", fig)


def build_all(results: Results) -> list[Plot]:
    """Every figure, in report order, with colours shared across all of them."""
    colours = style.depth_colours(results.runs["depth"])
    with style.style():
        return [builder(results, colours) for builder in
                (curves, error_vs_depth, shortcut_options, responses, gradient_flow,
                 lr_schedule)]
