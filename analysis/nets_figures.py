"""The figures of "Why residual nets train" (analysis/nets.py reads the files): the lesion study (Veit et
al. 2016, Figs. 3 and 5a) and the loss landscape (Li et al. 2018, Figs. 1 and 5), in the report's visual
language (analysis/style.py): colour is depth, line style and marker the architecture; in the contour
plots colour is the loss, on one scale for both nets. Each builder returns a figures.Plot (figure None:
skipped, the caption says why) and draws a narrow variant for phones.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from analysis import style
from analysis.collect import Results
from analysis.figures import PHONE_WIDTH, Plot
from analysis.nets import Nets, by_net, contour_pair, read_nets
from analysis.style import net_label


def _row(n: int, panel: tuple[float, float], narrow: bool, **kw):
    """n panels in a row, or stacked at a phone's width."""
    w, h = panel
    if narrow:
        fig, axes = plt.subplots(n, 1, figsize=(PHONE_WIDTH, n * h * PHONE_WIDTH / w + 0.5), squeeze=False, **kw)
        return fig, list(axes[:, 0])
    fig, axes = plt.subplots(1, n, figsize=(w * n, h), squeeze=False, **kw)
    return fig, list(axes[0])


def _chance(ax, nets: Nets) -> None:
    ax.axhline(nets.intact["chance_err"].max(), color="#999999", lw=0.8, ls=":", label="_chance")


def lesion_blocks(results: Results, nets: Nets, colours: dict, narrow: bool = False) -> Plot:
    """Test error against the removed block, plain and residual of a depth on one panel (Veit Fig. 3)."""
    title = "Lesion study: one block removed"
    if nets.blocks.empty:
        return Plot("lesion_blocks", title, "Skipped: no lesion.json (make analyse-nets).")
    depths = sorted(set(nets.blocks["depth"]))
    fig, axes = _row(len(depths), (4.4, 3.6), narrow, sharey=True)
    for ax, depth in zip(axes, depths):
        for arch, shortcut, _, rows in by_net(nets.blocks[nets.blocks["depth"] == depth]):
            kw = style.arch_style(arch, shortcut)
            per_block = rows.groupby("index").agg(err=("err", "mean"), reshapes=("reshapes", "any"))
            seeds = rows["seed"].nunique()
            label = net_label(arch, shortcut, depth) + f" ({seeds} seed{'s' if seeds > 1 else ''})"
            ax.plot(per_block.index, per_block["err"], color=colours[depth], lw=1.3, markersize=4,
                    gid=style.depth_gid(depth), label=label, **kw)
            intact = nets.intact[(nets.intact["arch"] == arch) & (nets.intact["shortcut"] == shortcut)
                                 & (nets.intact["depth"] == depth)]["err"].mean()
            ax.axhline(intact, color=colours[depth], ls=kw["ls"], lw=0.9, alpha=0.7, gid=style.depth_gid(depth),
                       label="_intact")
            for index in per_block.index[per_block["reshapes"]]:
                ax.axvline(index, color="#bbbbbb", lw=0.7, ls="-.", label="_downsampling")
        _chance(ax, nets)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # blocks are counted
        ax.set(title=f"depth {depth}", xlabel="removed block (input side first)", ylabel=f"{style.eval_name(results.runs)} error (%)",
               ylim=(0, 100))
        ax.legend(fontsize=7, loc="center right")
    style.title(fig, title, results.runs, narrow)
    fig.tight_layout()
    return Plot("lesion_blocks", title,
                f"{style.eval_name(results.runs).capitalize()} error of the trained net with one block removed "
                "(mean over seeds); thin horizontal lines: the intact nets' errors, dotted: chance, dash-dot "
                "verticals: blocks that subsample. A residual block loses its residual branch and keeps its "
                "shortcut; a plain block becomes the identity, or subsampling with zero-padded channels where "
                f"the shape changes. Colour: depth; {style.style_key(_keys(nets.blocks))}.", fig)


def _keys(frame) -> set:
    return set(zip(frame["arch"], frame["shortcut"]))


def lesion_k(results: Results, nets: Nets, colours: dict, narrow: bool = False) -> Plot:
    """Test error against the number of random blocks removed at once (Veit Fig. 5a)."""
    title = "Lesion study: k random blocks removed"
    if nets.random.empty:
        return Plot("lesion_k", title, "Skipped: no residual net's lesion.json (make analyse-nets).")
    fig, ax = plt.subplots(figsize=(PHONE_WIDTH, 3.6) if narrow else (6.0, 3.8))
    for arch, shortcut, depth, rows in by_net(nets.random):
        intact = nets.intact[(nets.intact["arch"] == arch) & (nets.intact["shortcut"] == shortcut)
                             & (nets.intact["depth"] == depth)]["err"].mean()
        stats = rows.groupby("k")["err"].agg(["mean", "min", "max"])
        ks = np.concatenate([[0], stats.index.to_numpy()])
        ax.plot(ks, np.concatenate([[intact], stats["mean"]]), color=colours[depth], lw=1.3, markersize=4,
                gid=style.depth_gid(depth), label=net_label(arch, shortcut, depth), **style.arch_style(arch, shortcut))
        ax.fill_between(stats.index, stats["min"], stats["max"], color=colours[depth], alpha=0.15, lw=0,
                        gid=style.depth_gid(depth))
    _chance(ax, nets)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="blocks removed at once (k; 0: intact)", ylabel=f"{style.eval_name(results.runs)} error (%)", ylim=(0, 100))
    ax.legend(fontsize=7)
    style.title(fig, title, results.runs, narrow)
    fig.tight_layout()
    return Plot("lesion_k", title,
                "Mean over the seeded random draws of k blocks (band: min to max over draws and seeds); k = 0 is "
                f"the intact net; dotted: chance. Colour: depth; {style.style_key(_keys(nets.random))}.", fig)


def landscape_1d(results: Results, nets: Nets, colours: dict, narrow: bool = False) -> Plot:
    """Training loss and error along one filter-normalised direction, every net (Li et al. Fig. 1 style)."""
    title = "Loss landscape along one direction"
    if not nets.landscapes:
        return Plot("landscape_1d", title, "Skipped: no landscape.json (make analyse-nets).")
    fig, (loss_ax, err_ax) = _row(2, (4.6, 3.6), narrow, sharex=True)
    labelled, families = set(), set()
    for run_id, d in sorted(nets.landscapes.items(), key=lambda kv: (kv[1]["depth"], kv[1]["arch"], kv[0])):
        one, depth = d["one_d"], d["depth"]
        kw = dict(color=colours[depth], lw=1.2, markersize=3, gid=style.depth_gid(depth),
                  **style.arch_style(d["arch"], d["shortcut"]))
        label = net_label(d["arch"], d["shortcut"], depth)
        loss = [np.nan if v is None else v for v in one["loss"]]  # an overflow is a gap
        loss_ax.plot(one["alpha"], loss, label=label if label not in labelled else "_seed", **kw)
        err_ax.plot(one["alpha"], one["err"], label="_err", **kw)
        labelled.add(label)
        families.add((d["arch"], d["shortcut"]))
    loss_ax.set_yscale("log")  # a plain net's loss can grow by orders of magnitude; ticks read as numbers
    loss_ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    loss_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    loss_ax.yaxis.set_minor_formatter(NullFormatter())
    loss_ax.set(title="training loss (log)", xlabel="step along d (filter-normalised)", ylabel="cross-entropy")
    err_ax.set(title="training error", xlabel="step along d (filter-normalised)", ylabel="error (%)", ylim=(0, 100))
    loss_ax.legend(fontsize=7)
    style.title(fig, title, results.runs, narrow)
    fig.tight_layout()
    sizes = sorted({d["subset_images"] for d in nets.landscapes.values()})
    return Plot("landscape_1d", title,
                f"Loss and error at theta + a·d on {'/'.join(map(str, sizes))} fixed training images (un-augmented, "
                "BatchNorm in eval mode with the trained running statistics); d is Gaussian with each filter scaled "
                "to the trained filter's norm, biases and BatchNorm parameters not moved (Li et al. 2018). One line "
                f"per run. Colour: depth; {style.style_key(families)}.", fig)


def landscape_2d(results: Results, nets: Nets, colours: dict, narrow: bool = False) -> Plot:
    """Contours of the training loss around the deepest plain and residual nets, one colour scale (Li Fig. 5)."""
    title = "Loss landscape in two directions"
    pair = contour_pair(nets)
    if not pair:
        return Plot("landscape_2d", title, "Skipped: no plain and residual net of one depth have a 2D landscape "
                                           "with the same grid and directions' seed (make analyse-nets).")
    grids = [np.array([[np.nan if v is None else v for v in row] for row in d["two_d"]["loss"]]) for d in pair]
    low = max(min(np.nanmin(g) for g in grids), 1e-4)
    high = max(max(np.nanmax(g) for g in grids), low * 10)
    levels = np.geomspace(low, high, 16)  # one scale for both: the same colour is the same loss
    fig, axes = _row(2, (4.2, 3.8), narrow, layout="constrained")
    for ax, d, loss in zip(axes, pair, grids):
        filled = ax.contourf(d["two_d"]["alpha"], d["two_d"]["beta"], np.clip(loss, low, high), levels=levels,
                             norm=LogNorm(low, high), cmap="viridis")
        ax.contour(d["two_d"]["alpha"], d["two_d"]["beta"], np.clip(loss, low, high), levels=levels,
                   colors="white", linewidths=0.4)
        ax.plot([0], [0], "x", color="red", markersize=6, label="trained weights")
        ax.set(title=f"{net_label(d['arch'], d['shortcut'], d['depth'])}, seed {d['seed']}", xlabel="a (along d1)",
               ylabel="b (along d2)", aspect="equal")
    axes[0].legend(handles=[Line2D([], [], ls="", marker="x", color="red", label="trained weights")], fontsize=7,
                   loc="lower left")
    fig.colorbar(filled, ax=axes, label="training loss (log scale)", format="%.3g",
                 location="bottom" if narrow else "right", shrink=0.9)
    style.title(fig, title, results.runs, narrow)
    return Plot("landscape_2d", title,
                f"Training loss at theta + a·d1 + b·d2 on {pair[0]['subset_images']} fixed training images, the same "
                f"directions' seed ({pair[0]['settings']['direction_seed']}) and one logarithmic colour scale for both "
                "nets; directions and BatchNorm as in the 1D figure.", fig)


NAMES = ("lesion_blocks", "lesion_k", "landscape_1d", "landscape_2d")


def build_all(results: Results, narrow: bool = False) -> list[Plot]:
    """The section's figures in report order (skipped ones with figure None); none without completed runs."""
    nets = read_nets(results)
    colours = style.depth_colours(results.runs["depth"])
    with style.style():
        return [builder(results, nets, colours, narrow)
                for builder in (lesion_blocks, lesion_k, landscape_1d, landscape_2d)]
