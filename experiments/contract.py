"""The results contract (README, "Results on disk"): what experiments/ writes and analysis/ reads.

    <results_dir>/<experiment>/runs/<kind>-<depth>-<shortcut>/seed=<k>/
        config.yaml, metrics.jsonl (one JSON object per evaluation point), summary.json, last.pt

This module is its one owner: the format version, the status names, how a run folder is named and
read back, atomic writes and the tolerant JSONL reader. Standard library only (no torch, no pandas):
analysis/ imports this module and nothing else from experiments/, so it runs where torch is absent.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, NamedTuple

from experiments.faults import fault_point

FORMAT_VERSION = 1

# The status a run writes into summary.json. A finished run is done: asking for it again returns it.
COMPLETED, DIVERGED, FAILED = "completed", "diverged", "failed"
FINISHED = (COMPLETED, DIVERGED)
# The status a reader gives a run folder from what it finds there (the sweep and the report alike).
CORRUPT = "corrupt"  # summary.json unreadable
DAMAGED = "damaged"  # summary.json says completed, but metrics.jsonl no longer holds the curve
MISSING = "missing"  # no run folder at all

# -- run naming ------------------------------------------------------------------------------------
SHORTCUTS = ("A", "B", "C")  # He et al. 2016, Sec. 3.3
NO_SHORTCUT = "none"         # what a plain net's folder name and summary carry as its shortcut
# The family kinds (run-name prefixes) and the shortcuts their names carry: what the report knows.
KINDS = {"plain": (NO_SHORTCUT,), "resnet": SHORTCUTS, "preact": SHORTCUTS}
# The ImageNet-style nets are named <kind><depth> (resnet34, plain50); the CIFAR family by its kind alone.
_ZOO_ARCH = re.compile(r"(?P<kind>plain|resnet)\d+")
_RUN_NAME = re.compile(r"(?P<arch>[A-Za-z]+)-(?P<depth>\d+)-(?P<shortcut>\w+)")
_SEED_NAME = re.compile(r"seed=(?P<seed>\d+)")


class RunId(NamedTuple):
    """What a run folder's path names: runs/<arch>-<depth>-<shortcut>/seed=<seed>."""
    arch: str
    depth: int
    shortcut: str
    seed: int


def arch_kind(arch: str) -> str:
    """The family a net belongs to, which names its run folder: 'plain', 'resnet' or 'preact'
    (resnet34 -> 'resnet', plain50 -> 'plain'); a name of no family is returned unchanged."""
    zoo = _ZOO_ARCH.fullmatch(arch)
    return zoo["kind"] if zoo else arch


def shortcut_name(arch: str, shortcut: str) -> str:
    """How a run records its shortcut: the option for residual nets, 'none' for plain nets."""
    return NO_SHORTCUT if arch_kind(arch) == "plain" else shortcut


def run_name(arch: str, depth: int, shortcut: str) -> str:
    """<kind>-<depth>-<shortcut>: resnet34 -> resnet-34-B, plain34 -> plain-34-none, preact ->
    preact-110-A. A CIFAR resnet and resnet50/152 of the same depth and option share a name: keep
    them in different experiments (a resume with a different model is refused)."""
    return f"{arch_kind(arch)}-{depth}-{shortcut_name(arch, shortcut)}"


def seed_name(seed: int) -> str:
    return f"seed={seed}"


def run_dir(results_dir: str | Path, experiment: str, arch: str, depth: int, shortcut: str, seed: int) -> Path:
    """A pure function of the config: asking twice for the same run finds the same folder."""
    return Path(results_dir) / experiment / "runs" / run_name(arch, depth, shortcut) / seed_name(seed)


def parse_run_name(name: str) -> tuple[str, int, str] | None:
    """(arch, depth, shortcut) from a folder name of the form <letters>-<digits>-<word>, or None.
    A well-formed name of a kind no one knows (vgg-16-none) parses: `is_known` says what to do with it."""
    named = _RUN_NAME.fullmatch(name)
    return (named["arch"], int(named["depth"]), named["shortcut"]) if named else None


def parse_seed_name(name: str) -> int | None:
    """k from 'seed=<k>', or None."""
    named = _SEED_NAME.fullmatch(name)
    return int(named["seed"]) if named else None


def parse_run_path(relative: str | Path) -> RunId | None:
    """The run a path runs/<arch>-<depth>-<shortcut>/seed=<k> (relative to the experiment) names, or None."""
    parts = Path(relative).parts
    if len(parts) != 3 or parts[0] != "runs":
        return None
    net, seed = parse_run_name(parts[1]), parse_seed_name(parts[2])
    return RunId(*net, seed) if net and seed is not None else None


def is_known(arch: str, shortcut: str) -> bool:
    """Whether a parsed name is one of the kinds and options the suite trains and reports."""
    return shortcut in KINDS.get(arch, ())


# -- writing ---------------------------------------------------------------------------------------
def _plain_mode() -> int:
    """The permissions a plain open() gives under the umask. Read once, at import: reading the umask
    means setting it, which would race with a thread creating a file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


PLAIN_MODE = _plain_mode()


def atomic_write(path: Path, write, mode: int | None = None) -> None:
    """`write(f)` fills a binary temp file beside `path` (same folder, so same disk), which is
    flushed to disk and then renamed over `path`: a reader, or a crash, sees the old file or the new
    one, never half of one. `mode` defaults to a plain open()'s (mkstemp's 0600 would hide results
    from others on a shared folder). Errors propagate as raised, with the temp file removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, PLAIN_MODE if mode is None else mode)
        fault_point(f"write:{path.name}")  # killed here: the temp file exists, the target is untouched
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def leaves(tree: dict, prefix: str = "") -> dict:
    """{"a.b.c": value} for every leaf of a nested dict: how a run's config is compared key by key, by the
    resume guard and by the report alike."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def jsonl_line(row: dict) -> str:
    """One line of metrics.jsonl."""
    return json.dumps(row, sort_keys=True) + "\n"


# -- reading ---------------------------------------------------------------------------------------
class FormatError(Exception):
    """A file in a newer format than this suite reads: guessing its meaning would give wrong numbers."""


def check_version(version, path: Path, where: str = "") -> None:
    """FormatError when `version` (a file's format_version) is newer than ours."""
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise FormatError(f"{path}{where} has format_version {version}, newer than this suite reads "
                          f"({FORMAT_VERSION}); update the suite to read it")


def read_json(path: Path):
    """The parsed file, or None when it is missing or unreadable (a crash mid-write of a
    non-atomic copy, a disk error): the caller treats that as 'not done'."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path, warnings: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every line of a JSONL file that holds a JSON object, in file order.
    Any other line (cut short by a kill, garbled by a disk) is skipped and, given `warnings`, named
    there as it is reached. A missing file reads as empty."""
    path = Path(path)
    if not path.exists():
        return
    for lineno, text in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            _warn(warnings, f"{path}: line {lineno}: not valid JSON ({exc.msg}); line skipped")
            continue
        if not isinstance(record, dict):
            _warn(warnings, f"{path}: line {lineno}: not a JSON object; line skipped")
            continue
        yield lineno, record


def read_metrics(path: Path, warnings: list[str] | None = None, up_to_iter: int | None = None) -> list[dict]:
    """The evaluation points of a metrics.jsonl: objects of our format_version with an integer
    'iter'; optionally only those at or before `up_to_iter` (the checkpoint a resumed run continues
    from). Any other line is skipped (and named in `warnings`); a newer format raises FormatError."""
    points = []
    for lineno, record in read_jsonl(path, warnings):
        version = record.get("format_version")
        check_version(version, path, f": line {lineno}")
        if version != FORMAT_VERSION:
            _warn(warnings, f"{path}: line {lineno}: format_version {version!r}, expected {FORMAT_VERSION}; "
                            f"line skipped")
        elif isinstance(record.get("iter"), bool) or not isinstance(record.get("iter"), int):
            _warn(warnings, f"{path}: line {lineno}: no integer 'iter'; line skipped")
        elif up_to_iter is None or record["iter"] <= up_to_iter:
            points.append(record)
    return points


def lost_curve(points: list[dict], iterations_done) -> str | None:
    """Why the curve of a run whose summary says completed at `iterations_done` is gone from its
    metrics.jsonl `points` (deleted, emptied or cut short), or None when it is all there."""
    if not points:
        return "summary says completed but metrics.jsonl is missing or empty: the curve is lost"
    if isinstance(iterations_done, int) and not any(p["iter"] == iterations_done for p in points):
        return (f"summary says completed at iter {iterations_done} but metrics.jsonl ends at iter "
                f"{points[-1]['iter']}: the curve is cut short")
    return None


def _warn(warnings: list[str] | None, message: str) -> None:
    if warnings is not None:
        warnings.append(message)
