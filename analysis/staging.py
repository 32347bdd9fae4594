"""All-or-nothing output for the report: every file is written into one hidden staging folder inside the
experiment folder and moved into place only when all are complete, so a full or read-only disk leaves the
previous report, tables and figures exactly as they were."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import suppress
from pathlib import Path

from experiments.contract import atomic_write

STAGE_PREFIX = ".report-staging-"  # a `make report` killed mid-write leaves one; the next one removes it
OUTPUT_FOLDERS = ("figures", "tables")


class ReportWriteError(Exception):
    """An output could not be written; str(e) is the one line printed for it."""


class Staging:
    """The report's files, written into a hidden folder inside the experiment folder (same disk, so
    moving them is a rename) and moved into place together once every one of them is complete."""

    def __init__(self, root: Path):
        self.root, self.files, self.current = root, [], root
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=root))
        except OSError as e:
            raise write_failed(root, e) from None

    def path(self, relative: str) -> Path:
        """Where to write the output `relative` (e.g. tables/inventory.csv) for now."""
        self.current = self.root / relative
        staged = self.dir / relative
        staged.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(relative)
        return staged

    def commit(self, stale: list[Path]) -> None:
        for relative in self.files:  # folders first: a file in the way fails before anything moved
            self.current = self.root / relative
            self.current.parent.mkdir(parents=True, exist_ok=True)
        for relative in self.files:  # renames within one disk: no space needed, each one atomic
            self.current = self.root / relative
            os.replace(self.dir / relative, self.current)
        for path in stale:  # a figure skipped now must not linger from an older run
            self.current = path
            path.unlink(missing_ok=True)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def write_failed(path: Path, e: OSError) -> ReportWriteError:
    code = errno.errorcode.get(e.errno, "") if e.errno else ""
    return ReportWriteError(f"cannot write {path} ({code + ': ' if code else ''}{e.strerror or e}); free disk "
                            f"space or make the folder writable, then rerun; the previous report is unchanged")


def remove_leftovers(root: Path) -> None:
    """Hidden files a killed report left: staging folders, and the temp files of older versions."""
    for stage in root.glob(f"{STAGE_PREFIX}*"):
        shutil.rmtree(stage, ignore_errors=True)
    olds = [*root.glob(".report.md.*"), *root.glob(".report.html.*"),  # atomic_write's temp names
            *(p for ext in ("png", "svg", "csv") for folder in OUTPUT_FOLDERS
              for p in (root / folder).glob(f".*.{ext}.*"))]
    for tmp in olds:
        with suppress(OSError):  # cleaning up is best effort; the writes that follow say what fails
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
