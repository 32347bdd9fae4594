"""One look for every figure: colours per depth, data-source labels, byte-stable files.

Determinism matters because a committed report must regenerate byte for byte (apart from
its timestamp line): so no dates or software versions in the files, a fixed SVG hash salt,
and colours that depend only on which depths exist, never on plotting order.
"""
from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, and the same pixels everywhere
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from experiments.contract import atomic_write  # noqa: E402

# One visual language for every figure: colour means depth, line style and marker mean the
# architecture, never the other way round. Depths the suite and the paper use have a fixed
# colour, so a depth looks the same in every figure of every report; hues are chosen apart
# (no two oranges: 56 is the only vermillion; every pair is > 40 apart in CIELAB, ΔE76), from
# the Okabe-Ito and Tol colour-blind-safe sets.
DEPTH_COLOURS = {8: "#999933", 14: "#777777", 20: "#0072b2", 32: "#009e73", 44: "#cc79a7",
                 56: "#d55e00", 110: "#6a3d9a", 1202: "#000000"}
# Other depths take these in depth order (then evenly spaced hues, should there be more).
SPARE_COLOURS = ("#e6ab02", "#88ccee", "#882255", "#44aa99", "#332288", "#a6761d", "#66a61e")
NEUTRAL = "#444444"  # lines whose colour means nothing (a style key, a line across depths)
ARCH_LINESTYLES = {"plain": "--", "resnet": "-", "preact": "-."}
SHORTCUT_MARKERS = {"none": "s", "A": "o", "B": "D", "C": "^"}  # none: plain
SHORTCUT_HATCHES = {"none": "", "A": "///", "B": "...", "C": "xxx"}  # the same, for bars
ARCH_NAMES = {"plain": "plain", "resnet": "ResNet", "preact": "pre-act ResNet"}  # He et al. 2016b


def arch_style(arch: str, shortcut: str) -> dict:
    """Line style per architecture and marker per shortcut option, as matplotlib kwargs."""
    shortcut = "none" if arch == "plain" else shortcut
    return {"ls": ARCH_LINESTYLES.get(arch, ":"), "marker": SHORTCUT_MARKERS.get(shortcut, "v")}


def net_label(arch: str, shortcut: str, depth: int) -> str:
    """'plain-20', 'ResNet-56 (A)', 'pre-act ResNet-110 (A)': one network in a legend."""
    name = ARCH_NAMES.get(arch, arch)
    return f"{name}-{depth}" + ("" if arch == "plain" else f" ({shortcut})")


LINESTYLE_WORDS = {"--": "dashed", "-": "solid", "-.": "dash-dot", ":": "dotted"}
MARKER_WORDS = {"s": "squares", "o": "circles", "D": "diamonds", "^": "triangles",
                "v": "triangles down"}


def style_key(families) -> str:
    """'dashed with squares: plain; solid with circles: ResNet (option A)': the captions' key to
    the line styles and markers of the (arch, shortcut) families drawn."""
    parts = []
    for arch, shortcut in sorted(set(families), key=lambda f: (f[0] != "plain", f)):
        kw = arch_style(arch, shortcut)
        parts.append(f"{LINESTYLE_WORDS[kw['ls']]} with {MARKER_WORDS[kw['marker']]}: "
                     f"{family_label(arch, shortcut)}")
    return "; ".join(parts)


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
    """A colour per depth: the fixed one where the depth has one, else a spare colour given
    in depth order, so the mapping depends only on which depths exist, never on plot order."""
    colours = {int(d): c for d, c in DEPTH_COLOURS.items()}
    others = sorted({int(d) for d in depths} - set(colours))
    more = max(0, len(others) - len(SPARE_COLOURS))  # many odd depths: still distinct
    spare = list(SPARE_COLOURS) + sns.color_palette("husl", more).as_hex()
    colours.update(dict(zip(others, spare)))
    return colours


def depth_gid(depth: int) -> str:
    """The id a depth-coloured artist carries (in the SVG too), so tests can check colours."""
    return f"depth-{int(depth)}"


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


def title(fig, text: str, runs: pd.DataFrame, narrow: bool = False) -> None:
    """A suptitle naming the data (on a line of its own in a narrow figure, which it must not
    widen); fake data is said loudly so no one mistakes it."""
    label = data_label(runs)
    fake = is_fake(runs)
    fig.suptitle(f"{text}\n{label}" if narrow else f"{text} — {label}",
                 color="#c00000" if fake else "black",
                 fontweight="bold" if fake else "normal", fontsize=11)


def _atomic_save(fig, path: Path, **kwargs) -> None:
    """A reader never sees half a figure."""
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:], **kwargs))


def png_bytes(fig, dpi: int = 150) -> bytes:
    """The figure as a compact PNG in memory (the phone layout lives only in the HTML): sharp
    on a phone's dense screen, yet reduced to 256 colours, a third of the bytes, since it is
    embedded in every report. Median cut without dithering is deterministic: byte-stable."""
    from PIL import Image  # matplotlib's own dependency

    buffer = io.BytesIO()
    with style():
        fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None},
                    bbox_inches="tight")
    plt.close(fig)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(
        colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


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
