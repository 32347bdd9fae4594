"""Where a run lives on disk and how its files are written (the results contract, README)."""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path

import torch

from experiments.faults import fault_point
from experiments.models import arch_kind

FORMAT_VERSION = 1


def run_name(arch: str, depth: int, shortcut: str) -> str:
    """<kind>-<depth>-<shortcut>: the family kind (resnet34 -> resnet-34-B, plain34 -> plain-34-none,
    preact -> preact-110-A). A CIFAR resnet and resnet50/152 of the same depth and option share
    a name: keep them in different experiments (a resume with a different model is refused)."""
    kind = arch_kind(arch)
    return f"{kind}-{depth}-{'none' if kind == 'plain' else shortcut}"


def run_dir(results_dir: str | Path, experiment: str, arch: str, depth: int, shortcut: str, seed: int) -> Path:
    """A pure function of the config: asking twice for the same run finds the same folder."""
    return Path(results_dir) / experiment / "runs" / run_name(arch, depth, shortcut) / f"seed={seed}"


# Values Hydra reads as one plain string without quotes: letters, digits and _ . / - (not a leading digit,
# so "1e3" is never a number), except the words Hydra gives a meaning to.
_PLAIN_HYDRA_VALUE = re.compile(r"[A-Za-z_./][A-Za-z0-9_./-]*")
_HYDRA_WORDS = {"true", "false", "null", "nan", "inf"}


def hydra_quote(value: str) -> str:
    """`value` as a Hydra override value that stays one plain string: quoted (a comma would make a
    sweep, non-ASCII letters and most punctuation are outside Hydra's unquoted grammar), backslashes
    before a quote or at the end doubled as Hydra's grammar asks, and `${` escaped so that OmegaConf
    does not read a path as an interpolation."""
    if _PLAIN_HYDRA_VALUE.fullmatch(str(value)) and str(value).lower() not in _HYDRA_WORDS:
        return str(value)  # a plain path stays as written (multirun.yaml reads as the user typed it)
    text = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", str(value).replace("${", "\\${"))
    text = re.sub(r"(\\+)$", lambda m: m[1] * 2, text)
    return f"'{text}'"


class WriteError(OSError):
    """A results file could not be written (disk full, quota, file size limit, read-only disk);
    str(e) is one line naming the file, the reason and the fix."""


def _write_error(path: Path, e: BaseException) -> BaseException:
    """`e` as a WriteError when an OSError is behind it (torch.save wraps them in RuntimeError)."""
    cause = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is None or isinstance(e, WriteError):
        return e
    what = f"{errno.errorcode.get(cause.errno, cause.errno)}: {cause.strerror}" if cause.errno else str(cause)
    return WriteError(f"cannot write {path} ({what}); free disk space or point results_dir at another disk, "
                      f"then rerun the same command to resume")


def _plain_mode() -> int:
    """The permissions a plain open() would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_PLAIN_MODE = _plain_mode()


def _atomic(path: Path, write) -> None:
    """Write to a temp file in the same folder, fsync, then os.replace: readers see the old
    file or the new one, never a half-written one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _PLAIN_MODE)  # mkstemp's 0600 would hide results from others on a shared folder
        fault_point(f"write:{path.name}")  # killed here: the temp file exists, the target is untouched
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        error = _write_error(path, e) if isinstance(e, (OSError, RuntimeError)) else e
        if error is e:
            raise
        raise error from e


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: Path, obj: dict) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def read_json(path: Path) -> dict | None:
    """The parsed file, or None when it is missing or unreadable (a crash mid-write of a
    non-atomic copy, a disk error): the caller treats that as 'not done'."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metrics(path: Path, up_to_iter: int | None = None) -> list[dict]:
    """The valid lines of metrics.jsonl (a line cut short by a kill is dropped), optionally
    only those at or before `up_to_iter` (the checkpoint a resumed run continues from)."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "iter" in row and (up_to_iter is None or row["iter"] <= up_to_iter):
            rows.append(row)
    return rows


def to_jsonl(row: dict) -> str:
    return json.dumps(row, sort_keys=True) + "\n"


def append_metrics(path: Path, row: dict) -> None:
    try:
        with open(path, "a") as f:
            line = to_jsonl(row)
            f.write(line[: len(line) // 2])
            f.flush()
            fault_point("append:metrics")  # killed here: a half line, which readers must drop
            f.write(line[len(line) // 2:])
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a disk that filled mid-line leaves a half line, dropped like a killed one
        raise _write_error(path, e) from e
