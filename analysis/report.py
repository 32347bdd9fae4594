"""Figures, tables and the report of one experiment, from its results folder.

    python -m analysis.report --results results/<exp> [--figures-only]

Writes <results>/figures/*.png|svg, and unless --figures-only, <results>/tables/*.csv,
report.md and report.html. Everything is read before anything is written, so a problem the
user must fix (no runs, a newer file format) ends with one line on stderr, exit status 2,
and no file touched. Every output is staged and moved into place together (analysis/staging.py),
so a full or read-only disk ends with one line naming the file, exit 1, and the previous report,
tables and figures exactly as they were. Output is deterministic given the same files, apart from
the single "Generated ..." line (which honours SOURCE_DATE_EPOCH).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from filelock import FileLock, Timeout

from analysis import figures, findings, nets, nets_figures, paper, render, stats, tables
from analysis.collect import COMPLETED, Results, ResultsError, collect, experiment_name
from analysis.staging import ReportWriteError, Staging, remove_leftovers, write_failed, write_text
from analysis.style import data_label, is_fake, png_bytes, save


def _ms(mean, std, n, signed: bool = False) -> str:
    """'8.50 ± 0.50 (n=3)'; a single seed has no std, and no seed has no number. signed: a difference,
    so '+4.44' reads as such beside '-1.76'."""
    if not n or not math.isfinite(mean):
        return "—"
    return f"{mean:{'+' if signed else ''}.2f}" + (f" ± {std:.2f}" if math.isfinite(std) else "") + f" (n={int(n)})"


def _num(x, fmt="{:.2f}") -> str:
    return "" if x is None or pd.isna(x) else fmt.format(x)


def _count(x) -> str:
    return _num(x, "{:,.0f}")


def _mega(x) -> str:
    return _num(x / 1e6 if x is not None and pd.notna(x) else None, "{:.2f}M")


def _duration(seconds) -> str:
    """'23.6 min' under an hour, '2:05 h' (h:mm) from an hour on, as the README quotes times."""
    if seconds is None or pd.isna(seconds):
        return ""
    minutes = float(seconds) / 60
    if round(minutes, 1) < 60:
        return f"{minutes:.1f} min"
    hours, rest = divmod(round(minutes), 60)
    return f"{hours}:{rest:02d} h"


def _net(arch, shortcut, depth) -> str:
    return f"plain-{depth}" if arch == "plain" else f"ResNet-{depth} ({shortcut})"


def degradation_view(t: pd.DataFrame, shortcut) -> pd.DataFrame:
    cols = {"depth": t["depth"]}
    for arch, name in (("plain", "plain"), ("resnet", f"ResNet ({shortcut})")):
        for kind in ("train", "test"):
            cols[f"{name} {kind} err %"] = [
                _ms(m, s, n) for m, s, n in zip(t[f"{arch}_{kind}_err_mean"],
                                                t[f"{arch}_{kind}_err_std"], t[f"{arch}_n"])]
    return pd.DataFrame(cols)


def pairs_view(p: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "arch": p["arch"], "depths": [f"{a} → {b}" for a, b in zip(p["shallower"], p["deeper"])],
        "train err %": [f"{a:.2f} → {b:.2f}" for a, b in zip(p["train_err_shallower"],
                                                              p["train_err_deeper"])],
        "change": [f"{x:+.2f} points" for x in p["penalty_points"]],
        "deeper worse": ["yes" if w else "no" for w in p["deeper_worse"]],
        "seeds": [f"{a} / {b}" for a, b in zip(p["n_shallower"], p["n_deeper"])]})


def table6_view(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "net": [_net(a, s, d) for a, s, d in zip(t["arch"], t["shortcut"], t["depth"])],
        "final test err %": [_ms(m, s, n) for m, s, n in
                             zip(t["final_test_err_mean"], t["final_test_err_std"], t["n"])],
        "final train err %": [_ms(m, s, n) for m, s, n in
                              zip(t["final_train_err_mean"], t["final_train_err_std"], t["n"])],
        "best test err over training % (extra)": t["best_over_training_test_err_mean"].map(_num),
        "params": t["params"].map(_count), "paper params": t["paper_params_M"].map(
            lambda x: _num(x, "{:g}M")),
        "paper test err %": t["paper_test_err"].map(_num), "compared to": t["paper_basis"],
        "ours − paper": t["diff_vs_paper"].map(lambda x: _num(x, "{:+.2f}")),
        "not counted": t["not_counted"]})


def abc_view(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "depth": t["depth"], "net": [_net(a, o, d) for a, o, d in zip(t["arch"], t["option"], t["depth"])],
        "final train err %": [_ms(m, s, n) for m, s, n in
                              zip(t["final_train_err_mean"], t["final_train_err_std"], t["n"])],
        "final test err %": [_ms(m, s, n) for m, s, n in
                             zip(t["final_test_err_mean"], t["final_test_err_std"], t["n"])],
        "params": t["params"].map(_count), "MACs": t["macs"].map(_mega),
        "not counted": t["not_counted"]})


def abc_pairs_view(t: pd.DataFrame) -> pd.DataFrame:
    view = pd.DataFrame({
        "net": [f"{'ResNet' if a == 'resnet' else a}-{d}" for a, d in zip(t["arch"], t["depth"])],
        "difference": [f"{o} − A, final {m.replace('final_', '').replace('_err', '')} err"
                       for o, m in zip(t["option"], t["metric"])],
        "mean ± std (points)": [
            _ms(m, s, n, signed=True) for m, s, n in zip(t["mean_diff"], t["std_diff"], t["n_pairs"])],
        "95 % CI": [stats.ci_text(lo, hi, n) for lo, hi, n in zip(t["ci95_low"], t["ci95_high"], t["n_pairs"])],
        "seeds resolve it": ["yes" if r else "no" for r in t["resolved"]]})
    return _with_mixed_precision(view, t)


def verdicts_view(t: pd.DataFrame) -> pd.DataFrame:
    view = pd.DataFrame({
        "claim": t["claim"], "depths": [f"{a} → {b}" for a, b in zip(t["shallower"], t["deeper"])],
        "deeper − shallower, final train err (points)": [
            _ms(m, s, n, signed=True) for m, s, n in zip(t["mean_diff"], t["std_diff"], t["n_pairs"])],
        "95 % CI": [stats.ci_text(lo, hi, n) for lo, hi, n in zip(t["ci95_low"], t["ci95_high"], t["n_pairs"])],
        "seeds agreeing": [f"{a} of {n}" for a, n in zip(t["seeds_agreeing"], t["n_pairs"])],
        "verdict": t["state"]})
    return _with_mixed_precision(view, t)


def _with_mixed_precision(view: pd.DataFrame, t: pd.DataFrame) -> pd.DataFrame:
    """A column naming the seeds whose pair mixes precisions, only where one does (a rare case
    that must not pass unseen, and no column of blanks where it cannot arise)."""
    if t["mixed_precision_seeds"].fillna("").astype(bool).any():
        view["seeds mixing precisions"] = t["mixed_precision_seeds"].fillna("").to_numpy()
    return view


def inventory_view(t: pd.DataFrame) -> pd.DataFrame:
    best = [f"{_num(e)} (iter {_count(i)})" if pd.notna(e) else ""
            for e, i in zip(t["best_over_training_test_err"], t["best_over_training_iter"])]
    return pd.DataFrame({
        "run": t["run"], "seed": t["seed"], "status": t["status"],
        "params": t["params"].map(_count), "MACs": t["macs"].map(_mega),
        "iterations": [f"{_count(d)} / {_count(p)}" if pd.notna(p) else "" for d, p in
                       zip(t["iterations_done"], t["iterations_planned"])],
        "final train err %": t["final_train_err"].map(_num),
        "final test err %": t["final_test_err"].map(_num),
        "best test err over training % (extra)": best,
        "wall time": t["wall_time_s"].map(_duration), "note": t["note"]})


def problems(results: Results, inventory: pd.DataFrame) -> list[str]:
    """Every run left out of the numbers, and every warning, paths relative to the folder."""
    out = [f"{r.run}/seed={r.seed}: {r.note or r.status}"
           for r in inventory[inventory["status"] != COMPLETED].itertuples()]
    prefix = f"{results.root}/"
    return out + [f"warning: {w.replace(prefix, '')}" for w in results.warnings]


def build_blocks(results: Results, all_tables: dict, v: dict, plots, pngs: dict, stamp: str) -> list:
    exp, shortcut = experiment_name(results.root), tables.main_shortcut(results.runs)
    has_abc = not all_tables["abc_pairs"].empty
    blocks = [("title", f"Plain vs residual networks: {exp}")]
    if is_fake(results.runs):
        blocks.append(("banner", "FAKE DATA (tests only): these numbers say nothing about "
                                 "CIFAR-10."))
    blocks += [("stamp", stamp), ("p", f"Data: {data_label(results.runs)}."),
               ("callout", findings.headline(results, v, all_tables["abc_pairs"]))]
    lead = next((p for p in plots if p.figure is not None), None)  # the figure that shows the verdict
    if lead is not None:
        blocks.append(("figure", lead.title, lead.caption, f"figures/{lead.name}.png",
                       *pngs[lead.name]))
    blocks += [("h2", "Findings"), *[("p", s) for s in findings.findings(results, all_tables, v)],
               ("h2", "What degradation is"), ("p", findings.EXPLANATION), ("h2", "Figures")]
    for plot in plots:
        if plot is lead or plot.name in nets_figures.NAMES:  # those have a section of their own
            continue
        if plot.figure is None:
            blocks.append(("p", f"{plot.title}: {plot.caption}"))
        else:
            blocks.append(("figure", plot.title, plot.caption, f"figures/{plot.name}.png",
                           *pngs[plot.name]))
    blocks += nets.section(results, plots, pngs)  # Why residual nets train: lesion study, loss landscape
    blocks += [
        ("h2", "Tables"),
        ("table", verdicts_view(all_tables["verdicts"]),
         "The two halves of Fig. 6, paired by seed (tables/verdicts.csv)."),
        ("table", degradation_view(all_tables["degradation"], shortcut),
         "Degradation: final errors per depth, mean ± std over completed seeds "
         "(tables/degradation.csv)."),
        ("table", pairs_view(all_tables["degradation_pairs"]),
         "Consecutive depths: is the deeper net worse on final training error? "
         "(tables/degradation_pairs.csv)")]
    if has_abc:
        blocks += [("table", abc_view(all_tables["abc"]),
                    "Shortcut options per depth, the plain net of the depth where one ran (tables/abc.csv)."),
                   ("table", abc_pairs_view(all_tables["abc_pairs"]),
                    "Each option against option A of the same depth, paired by seed (tables/abc_pairs.csv).")]
    else:
        blocks.append(("p", "Shortcut options: not part of this experiment (one option per architecture; "
                            "tables/abc.csv)."))
    blocks += [("table", inventory_view(all_tables["inventory"]),
                "Every run, including the missing and unfinished (tables/inventory.csv).")]
    blocks += [
        ("h2", "Comparison with the paper"),  # the budget caveat is said once, in Findings
        ("table", table6_view(all_tables["table6"]),
         f"Paper: {paper.CITATION}, {paper.TABLE6_SOURCE}; ResNet-110 is compared with the "
         "paper's mean of 5 runs (tables/table6.csv)."),
        *([("p", f"{paper.TABLE3_SOURCE}, for the shortcut options: " + ", ".join(
            f"{k} {v:.2f}" for k, v in paper.TABLE3_TOP1_ERR.items()) + ".")] if has_abc else []),
        ("h2", "Recipe used"), ("kv", findings.recipe(results)),
        ("h2", "Data"), ("kv", findings.data_source(results)),
        ("h2", "Software and device"), ("kv", findings.software(results)),
        ("h2", "Problems"), ("list", problems(results, all_tables["inventory"]) or ["none"])]
    return blocks


def generation_time() -> datetime:
    """Now, or SOURCE_DATE_EPOCH where it is set (reproducible builds: the report's one "Generated" line);
    ResultsError when it is not a whole number of seconds since 1970."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return datetime.now(timezone.utc)
    try:
        return datetime.fromtimestamp(int(epoch), timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise ResultsError(f"SOURCE_DATE_EPOCH={epoch!r} is not a time in whole seconds since 1970 (e.g. "
                           f"1700000000); set it to one, or unset it") from None


def write_report(results: Results, figures_only: bool = False,
                 now: datetime | None = None) -> tuple[list[Path], str | None]:
    """Write everything, or (ReportWriteError) nothing: the files already there stay as they were.
    Returns the files written and the degradation verdict (None for figures only)."""
    root, now = results.root, now or generation_time()
    try:
        lock = FileLock(root / ".report.lock")
        with lock.acquire(timeout=0):  # two reports of one folder at once would undo each other
            remove_leftovers(root)
            stage = Staging(root)
            try:
                stale, status = _stage_report(results, stage, figures_only, now)
                stage.commit(stale)
            except OSError as e:
                raise write_failed(stage.current, e) from None
            finally:
                stage.discard()
    except Timeout:
        raise ReportWriteError(f"another report of {root} is being written right now; wait for it to finish, "
                               f"then rerun") from None
    except OSError as e:  # the lock file: a read-only or full experiment folder
        raise write_failed(root / ".report.lock", e) from None
    return [root / relative for relative in stage.files if relative.endswith((".png", ".csv", ".md", ".html"))], status


def _stage_report(results: Results, stage: Staging, figures_only: bool,
                  now: datetime) -> tuple[list[Path], str | None]:
    """Every output into `stage`; returns the old files to delete (figures skipped this time) and
    the degradation verdict."""
    plots, pngs, stale = figures.build_all(results) + nets_figures.build_all(results), {}, []
    phone = not figures_only  # the phone layouts are for the HTML only
    narrow = {p.name: p for p in figures.build_all(results, narrow=True)
              + nets_figures.build_all(results, narrow=True)} if phone else {}
    for plot in plots:
        if plot.figure is None:
            stale += [results.root / "figures" / f"{plot.name}.{ext}" for ext in ("png", "svg")]
        else:
            png = stage.path(f"figures/{plot.name}.png")
            pngs[plot.name] = (save(plot.figure, png.parent, plot.name).read_bytes(),
                               png_bytes(narrow[plot.name].figure) if phone else None)
            stage.files.append(f"figures/{plot.name}.svg")  # written beside the .png by save()
    if figures_only:
        return stale, None
    all_tables, v = tables.all_tables(results)
    for name, frame in all_tables.items():
        write_text(stage.path(f"tables/{name}.csv"),
                    frame.to_csv(index=False, lineterminator="\n", float_format="%.10g"))
    stamp = f"Generated {now:%Y-%m-%d %H:%M:%S} UTC by python -m analysis.report"
    blocks = build_blocks(results, all_tables, v, plots, pngs, stamp)
    title = f"Plain vs residual networks: {experiment_name(results.root)}"
    for name, text in (("report.md", render.to_markdown(blocks)),
                       ("report.html", render.to_html(blocks, title))):
        write_text(stage.path(name), text)
    return stale, v["status"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, type=Path,
                        help="an experiment folder, e.g. results/quick or results/reference/quick")
    parser.add_argument("--figures-only", action="store_true",
                        help="write figures/ only (make plots)")
    args = parser.parse_args(argv)
    try:  # every mistake the user must fix is found before anything is written
        now = generation_time()
        results = collect(args.results)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in results.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        written, status = write_report(results, figures_only=args.figures_only, now=now)
    except ReportWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    if status is not None:
        print(f"degradation: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
