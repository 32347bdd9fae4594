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
One visual language (style.py): colour is depth and only depth, the same in every figure (each
depth-coloured artist carries the gid "depth-<d>"); line style and marker are the architecture.
No axis limit crops a plotted point. Every builder also draws a narrow variant (narrow=True:
panels stacked, a phone's width) that the HTML report shows on small screens.
One file on purpose (~360 lines): the six figures share that language and its helpers (_grid,
_panels, _markevery, _error_ylim); split, a change to the language would touch every part.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis import style
from analysis.collect import COMPLETED, INCOMPLETE, Results
from analysis.tables import abc, degradation, main_shortcut

TRAIN_NOTE = "training error of the batches as trained on (train mode, augmented; the paper's)"


PHONE_WIDTH = 4.4  # inches: a narrow figure, shown about 400 px wide, keeps ~9 px legend text


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


def _grid(n: int, panel: tuple[float, float], narrow: bool, phone_height: float = 0, **kw):
    """n panels in a row, or stacked in a column of a phone's width when narrow (each
    phone_height inches tall, else as tall as the wide panel's proportions give)."""
    if narrow:
        w, h = panel
        h = phone_height or h * PHONE_WIDTH / w
        fig, axes = plt.subplots(n, 1, figsize=(PHONE_WIDTH, n * h + 0.5), squeeze=False, **kw)
        return fig, list(axes[:, 0])
    fig, axes = plt.subplots(1, n, figsize=(panel[0] * n, panel[1]), squeeze=False, **kw)
    return fig, list(axes[0])


def _legend_size(narrow: bool) -> int:
    return 8 if narrow else 7




def _markevery(n_points: int, every: int = 0, of: int = 1):
    """Markers on about 8 points of a line; `every`/`of` shift them so that lines drawn on
    top of each other still show each one's markers."""
    step = max(of, -(-n_points // 8))
    return (every * step // of, step)


def _error_ylim(values, pad: float = 0.05) -> tuple[float, float]:
    """Y-limits for errors that hold every value, markers included: from 0 (a little below
    when a point sits at 0, so its marker is whole) to just above the highest."""
    finite = [float(v) for v in values if np.isfinite(v)]
    high = max(finite, default=1.0)
    span = max(high, 1.0)
    low = -0.03 * span if min(finite, default=1.0) < 0.03 * span else 0.0
    return low, high + pad * span


def curves(results: Results, colours: dict, narrow: bool = False) -> Plot:
    """Paper Fig. 6: training (dashed) and test (solid) error against iterations."""
    panels, metrics, test = _panels(results), results.metrics, style.eval_name(results.runs)
    # The report's lead figure: on a phone both panels must fit under the headline.
    fig, axes = _grid(len(panels), (5.2, 4.2), narrow, phone_height=2.4, sharey=True,
                      layout="constrained")
    milestones = {m for ms in results.runs["milestones"] if isinstance(ms, list) for m in ms}
    drawn = []  # every plotted error value, so the y-limit can hold them all
    for ax, (arch, shortcut) in zip(axes, panels):
        family = _family(metrics, arch, shortcut)
        marker = style.arch_style(arch, shortcut)["marker"]
        healthy = family[family["status"].isin([COMPLETED, INCOMPLETE])]
        for depth, group in healthy.groupby("depth"):
            stats = group.groupby("iter")[["train_err", "test_err"]].agg(["mean", "min", "max"])
            for column, dash in (("train_err", "--"), ("test_err", "-")):
                ax.plot(stats.index, stats[column]["mean"], dash, color=colours[depth], lw=1.6,
                        marker=marker, markersize=3.5, markevery=_markevery(len(stats)),
                        gid=style.depth_gid(depth), label=f"{arch}-{depth} {column}")
                drawn += list(stats[column]["max"])
                if group["seed"].nunique() > 1:  # band: min-max over seeds
                    ax.fill_between(stats.index, stats[column]["min"], stats[column]["max"],
                                    color=colours[depth], alpha=0.15, lw=0,
                                    gid=style.depth_gid(depth))
        for run_id, group in family[~family.index.isin(healthy.index)].groupby("run_id"):
            depth, status = group["depth"].iloc[0], group["status"].iloc[0]
            for column, dash in (("train_err", "--"), ("test_err", "-")):
                ax.plot(group["iter"], group[column], dash, color=colours[depth], lw=0.8,
                        alpha=0.6, marker="x", markevery=[-1], gid=style.depth_gid(depth),
                        label=f"{run_id} {status} {column}")
                drawn += list(group[column])
        for m in sorted(milestones):
            ax.axvline(m, color="#999999", lw=0.7, ls=":")
        ax.set(title=style.family_label(arch, shortcut), xlabel="iterations",
               ylabel="error (%)" if ax is axes[0] or narrow else "")
    axes[0].set_ylim(*_error_ylim(drawn))  # every point shown, early high errors included
    # One key under the panels, where it hides no curve: colour is depth, dash is the split.
    depths = sorted(set().union(*(_family(metrics, a, s)["depth"] for a, s in panels)))
    handles = [Line2D([], [], color=colours[d], lw=2, label=f"depth {d}") for d in depths] + [
        Line2D([], [], color=style.NEUTRAL, ls="--", label="train"),
        Line2D([], [], color=style.NEUTRAL, ls="-", label=test)]
    fig.legend(handles=handles, loc="outside lower center", fontsize=_legend_size(narrow) + 1,
               ncol=min(len(handles), 4 if narrow else 8), frameon=False)
    style.title(fig, "Training (dashed) and test (solid) error", results.runs, narrow)
    return Plot("curves", "Error during training (paper Fig. 6)",
                f"Colour: depth. Dashed: {TRAIN_NOTE}. Solid: {test} error. Lines are the mean "
                "over seeds, bands the min-max range; diverged or failed runs are drawn alone, "
                "thin, ending in x. Dotted verticals: learning-rate drops.", fig)


def error_vs_depth(results: Results, colours: dict, narrow: bool = False) -> Plot:
    """The degradation in one picture: final training and test error against depth."""
    table, test = degradation(results), style.eval_name(results.runs)
    if not (table["plain_n"].sum() or table["resnet_n"].sum()):
        return Plot("error_vs_depth", "Final error against depth",
                    "Skipped: no completed plain or residual run yet.")
    shortcut = main_shortcut(results.runs)
    fig, axes = _grid(2, (4.5, 3.8), narrow, sharex=True)
    drawn = []
    for ax, kind, label in ((axes[0], "train", "final training error"),
                            (axes[1], "test", f"final {test} error")):
        for arch in ("plain", "resnet"):
            rows = table[table[f"{arch}_n"] > 0]
            if rows.empty:
                continue
            kw = style.arch_style(arch, shortcut)
            mean, std = rows[f"{arch}_{kind}_err_mean"], rows[f"{arch}_{kind}_err_std"].fillna(0)
            # The line joins depths, so it is neutral; each point wears its depth's colour.
            ax.errorbar(rows["depth"], mean, yerr=std, capsize=3, color=style.NEUTRAL,
                        ls=kw["ls"], lw=1.2, label=f"{arch} {kind}")
            for depth, y in zip(rows["depth"], mean):
                ax.plot([depth], [y], kw["marker"], color=colours[depth], markersize=7,
                        markeredgecolor=style.NEUTRAL, gid=style.depth_gid(depth),
                        label="_point")
            drawn += list(mean + std)
        depths = sorted(table["depth"])
        if depths and depths[-1] / depths[0] > 10:
            ax.set_xscale("log")
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.set(title=label, xlabel="depth (layers)", ylabel="error (%)")
        key = [Line2D([], [], color=style.NEUTRAL, markerfacecolor="white",
                      label=style.family_label(a, shortcut), **style.arch_style(a, shortcut))
               for a in ("plain", "resnet") if (table[f"{a}_n"] > 0).any()]
        ax.legend(handles=key, fontsize=_legend_size(narrow) + 1)
    for ax in axes:
        ax.set_ylim(*_error_ylim(drawn))  # one scale for train and test, nothing cropped
    style.title(fig, "Final error against depth", results.runs, narrow)
    fig.tight_layout()
    return Plot("error_vs_depth", "Final error against depth",
                f"Completed runs only; points are the mean over seeds (coloured by depth), bars "
                f"one std (none for a single seed); "
                f"{style.style_key([('plain', 'none'), ('resnet', shortcut)])}. Degradation "
                f"shows as the plain training-error line rising with depth.", fig)


def shortcut_options(results: Results, colours: dict, narrow: bool = False) -> Plot:
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
    width_in = PHONE_WIDTH if narrow else max(5, 1.6 * len(depths) + 2)
    fig, ax = plt.subplots(figsize=(width_in, 3.8))
    ticks, tick_labels = [], []
    for i, option in enumerate(order):
        rows = table[table["option"] == option].set_index("depth").reindex(depths)
        x = np.arange(len(depths)) + (i - (len(order) - 1) / 2) * width
        # Colour is the depth (as everywhere); the hatch and the label under the bar, the option.
        bars = ax.bar(x, rows["final_test_err_mean"], width * 0.95,
                      yerr=rows["final_test_err_std"].fillna(0), capsize=2,
                      color=[colours[d] for d in depths], edgecolor="white", lw=0,
                      hatch=style.SHORTCUT_HATCHES.get(option.replace("plain", "none"), ""),
                      label=option)
        for bar, depth in zip(bars, depths):
            bar.set_gid(style.depth_gid(depth))
        ticks += list(x)
        tick_labels += [option] * len(depths)
        for bar, params, std in zip(bars, rows["params"], rows["final_test_err_std"].fillna(0)):
            if np.isfinite(bar.get_height()) and pd.notna(params):  # label above the whisker
                ax.annotate(f"{params / 1e6:.2f}M", (bar.get_x() + bar.get_width() / 2,
                            bar.get_height() + std), ha="center", va="bottom", fontsize=6,
                            xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(ticks, tick_labels, fontsize=7)
    groups = ax.secondary_xaxis("bottom")  # the depth under each group of bars
    groups.set_xticks(np.arange(len(depths)), [f"depth {d}" for d in depths])
    groups.tick_params(length=0, pad=16)
    groups.spines["bottom"].set_visible(False)
    ax.xaxis.grid(False)  # a grid line through every bar is noise
    high = table["final_test_err_mean"] + table["final_test_err_std"].fillna(0)
    ax.set_ylim(0, _error_ylim(high, pad=0.15)[1])  # bars from 0; room for the labels
    ax.set(ylabel=f"final {style.eval_name(results.runs)} error (%)")
    style.title(fig, "Shortcut options", results.runs, narrow)
    fig.tight_layout()
    return Plot("shortcut_options", "Shortcut options A/B/C",
                "Completed runs; bars are the mean over seeds (coloured by depth, hatched by "
                "option), whiskers one std; labels give the parameter count. A: zero-padded "
                "identity, B: projection where the shape changes, C: projection on every "
                "shortcut. The paper compares these on ImageNet only (Table 3).", fig)


def _probe_means(results: Results, probe: str, completed_only: bool) -> pd.DataFrame:
    probes = results.probes[results.probes["probe"] == probe]
    if completed_only:
        probes = probes[probes["status"] == COMPLETED]
    keep = pd.concat([_family(probes, a, s) for a, s in _panels(results)])
    return keep.groupby(["arch", "shortcut", "depth", "layer"], as_index=False).agg(
        value=("value", "mean"), seeds=("seed", "nunique"), iter=("iter", "max"))


def responses(results: Results, colours: dict, narrow: bool = False) -> Plot:
    """Paper Fig. 7: std of each 3x3 layer's response, in layer order and sorted."""
    means = _probe_means(results, "response_std", completed_only=True)
    if means.empty:
        return Plot("responses", "Layer responses (paper Fig. 7)",
                    "Skipped: no completed run recorded response_std.")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(PHONE_WIDTH if narrow else 7.5, 6.4))
    families = set()
    for (arch, shortcut, depth), group in means.groupby(["arch", "shortcut", "depth"]):
        families.add((arch, shortcut))
        kw = dict(color=colours[depth], lw=1.2, markersize=3, gid=style.depth_gid(depth),
                  label=style.net_label(arch, shortcut, depth), **style.arch_style(arch, shortcut))
        top.plot(group["layer"], group["value"], **kw)
        bottom.plot(np.arange(1, len(group) + 1), np.sort(group["value"].to_numpy())[::-1], **kw)
    for ax in (top, bottom):
        # Log: a plain net's few huge early responses must not flatten every other line;
        # ticks at 1-2-5 steps read as numbers, not powers of ten.
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    top.set(title="layer index (original order)", xlabel="layer index", ylabel="std (log)")
    bottom.set(title="sorted by magnitude", xlabel="layer index (sorted)", ylabel="std (log)")
    top.legend(fontsize=_legend_size(narrow), ncol=2)
    style.title(fig, "Std of 3x3 layer responses", results.runs, narrow)
    fig.tight_layout()
    iters = ", ".join(str(i) for i in sorted(set(means["iter"])))
    split = style.eval_name(results.runs)
    return Plot("responses", "Layer responses (paper Fig. 7)",
                "Std of each 3x3 layer's BN output (before the ReLU / addition), pooled over "
                f"every image, channel and position of the {split} set (the paper's measure), "
                f"at the last probe point (iteration {iters}), mean over seeds of completed "
                f"runs; log scale. Colour: depth; {style.style_key(families)}"
                + ("; a pre-activation ResNet's response is the 3x3 conv's own output (no BN "
                   "follows a conv there)" if (means["arch"] == "preact").any() else "")
                + ".", fig)


def gradient_flow(results: Results, colours: dict, narrow: bool = False) -> Plot:
    """Per-layer gradient norms at the first probe point: do gradients reach early layers?"""
    means = _probe_means(results, "grad_norm", completed_only=False)
    if means.empty:
        return Plot("gradient_flow", "Gradient flow", "Skipped: no run recorded grad_norm.")
    families = sorted(set(zip(means["arch"], means["shortcut"])))
    fig, axes = _grid(len(families), (5, 3.6), narrow, sharey=True)
    for ax, (arch, shortcut) in zip(axes, families):
        mine = means[(means["arch"] == arch) & (means["shortcut"] == shortcut)]
        for depth, group in mine.groupby("depth"):
            ax.plot(group["layer"], group["value"], color=colours[depth], lw=1.2, markersize=2.5,
                    gid=style.depth_gid(depth), label=style.net_label(arch, shortcut, depth),
                    **style.arch_style(arch, shortcut))
        ax.set_yscale("log")
        ax.set(title=style.family_label(arch, shortcut),
               xlabel="3x3 layer index (input side first)", ylabel="gradient L2 norm")
        ax.legend(fontsize=_legend_size(narrow))
    style.title(fig, "Gradient norm per layer", results.runs, narrow)
    fig.tight_layout()
    iters = ", ".join(str(i) for i in sorted(set(means["iter"])))
    return Plot("gradient_flow", "Gradient flow at the first probe point",
                "L2 norm of the gradient of each 3x3 conv weight on one fixed training batch, "
                f"at the first probe point (iteration {iters}), mean over seeds; log scale. "
                f"Colour: depth; {style.style_key(families)}.", fig)


def lr_schedule(results: Results, colours: dict, narrow: bool = False) -> Plot:
    """The learning rate each run actually used, so warm-up and drops can be checked."""
    metrics = results.metrics.dropna(subset=["lr"])
    if metrics.empty:
        return Plot("lr_schedule", "Learning-rate schedule", "Skipped: no lr recorded.")
    fig, ax = plt.subplots(figsize=(PHONE_WIDTH, 4.4) if narrow else (6.4, 3.2))
    nets = list(metrics.groupby(["arch", "shortcut", "depth"]))
    handles = []
    for k, ((arch, shortcut, depth), net) in enumerate(nets):
        kw = style.arch_style(arch, shortcut)
        for run_id, group in net.groupby("run_id"):
            # Runs on the same schedule draw the same line: shifted markers keep each visible.
            ax.plot(group["iter"], group["lr"], drawstyle="steps-pre", color=colours[depth],
                    lw=1.2, alpha=0.85, markersize=4, gid=style.depth_gid(depth), label=run_id,
                    markevery=_markevery(len(group), k, len(nets)), **kw)
        seeds = net["seed"].nunique()
        handles.append(Line2D([], [], color=colours[depth], lw=1.2, markersize=4, **kw,
                              label=f"{style.net_label(arch, shortcut, depth)}"
                                    f" ({seeds} seed{'s' if seeds > 1 else ''})"))
    ax.set_yscale("log")
    ax.set(xlabel="iterations", ylabel="learning rate")
    where = (dict(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2) if narrow else
             dict(loc="upper left", bbox_to_anchor=(1.01, 1)))  # beside, or below on a phone
    ax.legend(handles=handles, fontsize=_legend_size(narrow), borderaxespad=0,
              title="one line per run", title_fontsize=_legend_size(narrow), **where)
    style.title(fig, "Learning rate as recorded", results.runs, narrow)
    fig.tight_layout()
    families = {(a, s) for (a, s, _), _ in nets}
    return Plot("lr_schedule", "Learning-rate schedule as recorded",
                "The lr of the last iteration before each evaluation point (held back to the "
                "previous point), one line per run; runs on the same schedule coincide, so "
                f"each net's markers sit on different points. Colour: depth; "
                f"{style.style_key(families)}. A warm-up shows as a step up from 0.01.", fig)


def build_all(results: Results, narrow: bool = False) -> list[Plot]:
    """Every figure, in report order, with colours shared across all of them; narrow: the
    phone layout of each."""
    colours = style.depth_colours(results.runs["depth"])
    with style.style():
        return [builder(results, colours, narrow) for builder in
                (curves, error_vs_depth, shortcut_options, responses, gradient_flow,
                 lr_schedule)]
