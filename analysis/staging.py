"""All-or-nothing output for the report: every file is written into one hidden staging folder inside the
experiment folder and moved into place only when all are complete, so a full or read-only disk leaves the
previous report, tables and figures exactly as they were."""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

from experiments.contract import PLAIN_MODE, atomic_write

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
        """Every staged file into place and every `stale` file gone, all or none (ReportWriteError says
        which). First each file is moved beside its target under a hidden name (copied where that folder
        is on another file system), touching nothing old; then, with SIGINT and SIGTERM held back, each
        old file is renamed aside and the new one over it, within one folder; a failure puts every old
        file back."""
        placed, made = [], []
        try:
            for relative in self.files:
                self.current = self.root / relative
                made += _folder(self.current.parent)
                placed.append((_beside(self.dir / relative, self.current), self.current))
        except BaseException as e:  # nothing old was touched: remove what this commit added
            _undo(placed, made)
            if isinstance(e, OSError):
                raise write_failed(self.current, e) from None
            raise
        with _signals_held():
            self._switch(placed, made, stale)

    def _switch(self, placed: list[tuple[Path, Path]], made: list[Path], stale: list[Path]) -> None:
        done = []  # (target, its old file's hidden name or None, whether a new file is in place)
        try:
            for new, target in [*placed, *((None, path) for path in stale)]:
                self.current = target
                old = _aside(target)
                done.append((target, old, False))
                if new is not None:
                    os.replace(new, target)
                    done[-1] = (target, old, True)
        except BaseException as e:  # any failure, a KeyboardInterrupt raised just before the hold included
            restored = _roll_back(done)
            _undo(placed, made)
            if isinstance(e, OSError):
                raise write_failed(self.current, e, unchanged=restored) from None
            raise
        for _, old, _ in done:
            if old is not None:
                with suppress(OSError):  # a leftover is hidden, and the next report removes it
                    old.unlink()

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _folder(folder: Path) -> list[Path]:
    """[folder] when this call made it, [] when it was there. A file, a dangling link or a loop of links
    in its place is the OSError that names it, raised before anything moved."""
    if folder.is_dir():
        return []
    if os.path.lexists(folder):
        os.stat(folder)  # a link: ELOOP for a loop, ENOENT for one that points nowhere
        raise NotADirectoryError(errno.ENOTDIR, "a file is where this folder belongs", str(folder))
    folder.mkdir()
    return [folder]


def _hidden(target: Path) -> Path:
    """A fresh hidden name beside `target`, of the form remove_leftovers removes."""
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


def _beside(staged: Path, target: Path) -> Path:
    """`staged` moved to a hidden name in `target`'s folder, so that the switch is a rename there."""
    if target.is_dir() and not target.is_symlink():
        raise IsADirectoryError(errno.EISDIR, "a folder is where this file belongs", str(target))
    hidden = _hidden(target)
    try:
        os.rename(staged, hidden)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        try:  # a folder on another file system (a mount, or a link to one): a copy, on disk before the switch
            shutil.copyfile(staged, hidden)
            os.chmod(hidden, PLAIN_MODE)
            with open(hidden, "rb+") as f:
                os.fsync(f.fileno())
        except BaseException:
            hidden.unlink(missing_ok=True)
            raise
    return hidden


def _aside(target: Path) -> Path | None:
    """The old file renamed to a hidden name beside it (None: there was none)."""
    if not os.path.lexists(target):
        return None
    old = _hidden(target)
    os.rename(target, old)
    return old


def _roll_back(done: list[tuple[Path, Path | None, bool]]) -> bool:
    """Every old file back where it was, newest change first; False when one could not be."""
    ok = True
    for target, old, replaced in reversed(done):
        try:
            if replaced:
                target.unlink()
            if old is not None:
                os.rename(old, target)
        except OSError:
            ok = False
    return ok


def _undo(placed: list[tuple[Path, Path]], made: list[Path]) -> None:
    """Remove the hidden new files and the folders this commit made."""
    for hidden, _ in placed:
        with suppress(OSError):
            hidden.unlink()
    for folder in reversed(made):
        with suppress(OSError):
            folder.rmdir()


@contextmanager
def _signals_held():
    """SIGINT, SIGTERM and SIGHUP wait while the old files are switched for the new: a stop then comes
    before or after the switch, never half-way through it."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


# What to do about a failed write, by its errno (the text names the fix, not a guess).
FIXES = {errno.ENOSPC: "free disk space or make the folder writable",
         errno.EDQUOT: "free disk space or make the folder writable",
         errno.EFBIG: "free disk space or make the folder writable",
         errno.EACCES: "make the folder writable", errno.EPERM: "make the folder writable",
         errno.EROFS: "the disk is mounted read-only: write the report elsewhere (RESULTS=...)",
         errno.ELOOP: "a symbolic link on this path points back into itself: remove or fix it",
         errno.ENOENT: "a folder on this path is missing, or a symbolic link points nowhere: fix the path",
         errno.ENOTDIR: "a file is where a folder of this path belongs: move it away",
         errno.EEXIST: "a file is where a folder of this path belongs: move it away",
         errno.EISDIR: "a folder is where this file belongs: move it away",
         errno.EXDEV: "a folder of this path is on another file system and moving there failed: "
                      "make it a plain folder of the experiment",
         errno.ENAMETOOLONG: "the path is too long: use a shorter RESULTS folder"}


def write_failed(path: Path, e: OSError, unchanged: bool = True) -> ReportWriteError:
    code = errno.errorcode.get(e.errno, "") if e.errno else ""
    fix = FIXES.get(e.errno, "check the disk and the path")
    state = ("the previous report is unchanged" if unchanged else
             "some old files could not be put back, so the report may mix old and new files: rerun it")
    return ReportWriteError(f"cannot write {path} ({code + ': ' if code else ''}{e.strerror or e}); {fix}, "
                            f"then rerun; {state}")


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
