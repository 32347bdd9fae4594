"""One look for every figure: colours per depth, data-source labels, byte-stable files.

Determinism matters because a committed report must regenerate byte for byte (apart from
its timestamp line): so no dates or software versions in the files, a fixed SVG hash salt,
and colours that depend only on which depths exist, never on plotting order.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, and the same pixels everywhere
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

# The paper's depths keep the same colour in every report; other depths take the rest.
PALETTE = sns.color_palette("colorblind", 10).as_hex()
PAPER_DEPTHS = (20, 32, 44, 56, 110, 1202)
ARCH_COLOURS = {"plain": "#555555", "resnet": "#d55e00", "preact": "#56b4e9"}
OPTION_COLOURS = {"plain": "#555555", "A": "#0173b2", "B": "#029e73", "C": "#cc78bc"}
ARCH_MARKERS = {"plain": "s", "resnet": "o", "preact": "^"}
ARCH_LINESTYLES = {"plain": "--", "resnet": "-", "preact": "-."}
ARCH_NAMES = {"plain": "plain", "resnet": "ResNet", "preact": "pre-act ResNet"}  # He et al. 2016b


def family_label(arch: str, shortcut: str) -> str:
    """'plain', 'ResNet (option A)', 'pre-act ResNet (option A)': a panel or legend title."""
    return "plain" if arch == "plain" else f"{ARCH_NAMES.get(arch, arch)} (option {shortcut})"

SOURCE_LABELS = {"cifar10": "CIFAR-10",
                 # An image-folder copy may be any re-encoding (PNG, JPEG): say no more than that.
                 "cifar10_folder": "CIFAR-10 (image-folder copy)",
                 "fake": "FAKE DATA (tests only)"}

RC = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
      "svg.hashsalt": "degradation-suite",  # stable ids inside the SVG
      "svg.fonttype": "path",                # text as paths: no font lookups in viewers
      "figure.dpi": 100, "savefig.dpi": 110, "axes.titleweight": "bold"}


@contextmanager
def style():
    with plt.rc_context(RC):
        yield


def depth_colours(depths) -> dict[int, str]:
    """A colour per depth, the same in every figure of a report."""
    others = sorted(d for d in set(depths) if d not in PAPER_DEPTHS)
    # Spare colours skip the colorblind grey ("plain" elsewhere) and its pale yellow.
    spare = [PALETTE[i] for i in (6, 9)] + sns.color_palette("dark", 10).as_hex()
    colours = {d: PALETTE[i] for i, d in enumerate(PAPER_DEPTHS)}
    colours.update({d: spare[i % len(spare)] for i, d in enumerate(others)})
    return colours


def data_label(runs: pd.DataFrame) -> str:
    """What the networks were trained on, in words, for titles and the report."""
    sources = sorted({str(s) for s in runs["data_source"].dropna()}) or ["not recorded"]
    return " + ".join(_folder_label(runs) if s == "cifar10_folder" else SOURCE_LABELS.get(s, s) for s in sources)


def _folder_label(runs: pd.DataFrame) -> str:
    """A JPEG re-encoding is lossy and must be named as such (shared/data/README.md); the recorded
    data root is the only provenance a run folder holds, so a root named *jpeg*/*jpg* says it."""
    roots = runs["data_root"].dropna() if "data_root" in runs else []
    names = {Path(str(r)).name.lower() for r in roots}
    if names and all("jpeg" in n or "jpg" in n for n in names):
        return "CIFAR-10 (JPEG copy)"
    return SOURCE_LABELS["cifar10_folder"]


def is_fake(runs: pd.DataFrame) -> bool:
    return "fake" in set(runs["data_source"].dropna())


def eval_name(runs: pd.DataFrame) -> str:
    """'test' or 'validation': the split the evaluation error was measured on."""
    splits = set(runs["eval_split"].dropna())
    return {frozenset({"val"}): "validation"}.get(frozenset(splits), "test")


def title(fig, text: str, runs: pd.DataFrame) -> None:
    """A suptitle naming the data; fake data is said loudly so no one mistakes it."""
    label = data_label(runs)
    fake = is_fake(runs)
    fig.suptitle(f"{text} — {label}", color="#c00000" if fake else "black",
                 fontweight="bold" if fake else "normal", fontsize=11)


def default_mode() -> int:
    """The permissions a plain open() would give (mkstemp's 0600 would hide reports)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write) -> None:
    """`write(tmp_path)` fills a temp file beside `path`, which then replaces `path` at once:
    a reader never sees half a report or figure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, default_mode())
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_save(fig, path: Path, **kwargs) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:], **kwargs))


def save(fig, folder: Path, name: str) -> Path:
    """<folder>/<name>.png and .svg, with no date or version inside (byte-stable)."""
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{name}.png"
    with style():
        _atomic_save(fig, png, metadata={"Software": None}, bbox_inches="tight")
        _atomic_save(fig, folder / f"{name}.svg", metadata={"Date": None, "Creator": None},
                     bbox_inches="tight")
    plt.close(fig)
    return png
