"""How the training side writes a run's files, on top of the results contract (experiments/contract.py):
failures as one-line WriteErrors, checkpoints by torch.save, metric lines appended; and quoting for Hydra."""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
from pathlib import Path

import torch

from experiments.contract import atomic_write, jsonl_line
from experiments.faults import fault_point


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


def _atomic(path: Path, write) -> None:
    """contract.atomic_write, with an OSError behind a failure (torch.save wraps them) as a WriteError."""
    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as e:
        error = _write_error(path, e)
        if error is e:
            raise
        raise error from e


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_torch_save(path: Path, obj: dict) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


class UnsafeCheckpoint(Exception):
    """A checkpoint that holds more than data (its unpickling would call code): never loaded."""


def load_checkpoint(path: Path) -> dict:
    """A last.pt read as data only: tensors, numbers, strings and containers, as the suite writes it
    (torch.load with weights_only=True never calls code while unpickling). A file that asks for anything
    else raises UnsafeCheckpoint naming it; a truncated or corrupt one raises whatever torch raises."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise  # a damaged file, not a dangerous one
        offender = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "global" in line),
                        "a global the suite never writes")
        raise UnsafeCheckpoint(f"{path} holds more than data ({offender[:120]}), so it was not loaded: "
                               f"delete it to retrain the run from the start, or restore the checkpoint from "
                               f"a trusted copy") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint")
    return state


def append_metrics(path: Path, row: dict) -> None:
    try:
        with open(path, "a") as f:
            line = jsonl_line(row)
            f.write(line[: len(line) // 2])
            f.flush()
            fault_point("append:metrics")  # killed here: a half line, which readers must drop
            f.write(line[len(line) // 2:])
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a disk that filled mid-line leaves a half line, dropped like a killed one
        raise _write_error(path, e) from e
