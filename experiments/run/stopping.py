"""Stopping a run cleanly: a scheduler's SIGTERM, a Ctrl-C, SLURM's warning before a time limit or
preemption (SIGUSR2, handled by submitit under LAUNCHER=slurm), or a spent wall-clock budget
(`make sweep TIME_LIMIT=2h30m`, `trainer.time_limit`) is only noted; the training loop checkpoints at
the end of its step and stops, and rerunning the same command resumes from last.pt."""
from __future__ import annotations

import math
import os
import re
import signal
import time
from pathlib import Path
from typing import NoReturn

_SIGUSR2 = getattr(signal, "SIGUSR2", None)  # absent on Windows

# The exit status of a run or sweep the budget stopped: EX_TEMPFAIL ("try again later"), distinct from
# success (0), a failure (1), a user error (2) and a signal (128 + its number).
BUDGET_EXIT = 75
# The deadline (Unix time) a sweep hands its runs: one budget for the whole invocation, however its
# launcher spreads the runs over processes.
DEADLINE_ENV = "SUITE_DEADLINE"
_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"{_NUMBER}|(?:{_NUMBER}d)?(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?")


def parse_duration(text) -> float:
    """Seconds in a wall-clock budget written as 2h30m, 90m, 45s, 1.5h, 1d2h or a plain number of seconds;
    ValueError (one line with the accepted forms) for anything else, a negative one included."""
    spec = str(text).strip().lower()
    match = _DURATION.fullmatch(spec) if spec else None
    if not match or not any(match.groups()):
        raise ValueError(f"time limit {text!r} is not a duration; write it as 2h30m, 90m, 45s or seconds "
                         f"(e.g. TIME_LIMIT=2h30m)")
    plain, d, h, m, s = (float(g or 0) for g in match.groups())
    seconds = plain + ((d * 24 + h) * 60 + m) * 60 + s
    if not math.isfinite(seconds):
        raise ValueError(f"time limit {text!r} is too large; write it as 2h30m, 90m, 45s or seconds")
    return seconds


def run_deadline(time_limit, started: float) -> float | None:
    """When this run must stop (Unix time): the sooner of `time_limit` (trainer.time_limit) counted
    from `started` and the deadline of the sweep that launched it; None when neither is set."""
    limits = [started + parse_duration(time_limit)] if time_limit not in (None, "") else []
    inherited = os.environ.get(DEADLINE_ENV)
    if inherited:
        limits.append(float(inherited))
    return min(limits) if limits else None


def budget_spent(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


class Interrupted(Exception):
    """A signal (or, with `signal` None, the time budget) stopped the run after it checkpointed;
    rerunning resumes it. A budget spent before the run began stops it at iteration None, untouched."""

    def __init__(self, sig: signal.Signals | None, iteration: int | None, checkpoint: Path):
        why = sig.name if sig is not None else "the time budget"
        where = f"at iteration {iteration}" if iteration is not None else "before it started"
        super().__init__(f"stopped by {why} {where}; rerun the same command to "
                         f"{'resume from ' + str(checkpoint) if iteration is not None else 'train it'}")
        self.signal, self.iteration, self.checkpoint = sig, iteration, checkpoint

    def __reduce__(self):  # picklable (launchers move exceptions between processes) despite the custom __init__
        return type(self), (self.signal, self.iteration, self.checkpoint)

    @property
    def exit_status(self) -> int:
        # the shell's status of a process ended by the signal: 143 SIGTERM, 130 SIGINT; the budget's own
        return BUDGET_EXIT if self.signal is None else 128 + self.signal


class StopSignals:
    """Within `with`: SIGTERM, SIGINT and (where submitit handles it) SIGUSR2 only set `received`; the
    handlers from before come back on exit. Outside the main thread (some launchers) signals are left alone."""

    def __init__(self):
        self.received: signal.Signals | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        trapped = [signal.SIGTERM, signal.SIGINT]
        if _SIGUSR2 is not None and callable(signal.getsignal(_SIGUSR2)):
            trapped.append(_SIGUSR2)
        try:
            self._previous = {s: signal.signal(s, self._note) for s in trapped}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *_exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def _note(self, signum, _frame) -> None:
        self.received = signal.Signals(signum)

    def stop(self, iteration: int, checkpoint: Path) -> NoReturn:
        """Call once the checkpoint is saved: SLURM's warning goes on to submitit, which requeues the job
        and exits (the requeued job resumes from the checkpoint); otherwise raise Interrupted (with no
        signal received: the budget stopped it)."""
        submitit = self._previous.get(_SIGUSR2)
        if self.received == _SIGUSR2 and callable(submitit):
            submitit(self.received, None)
        raise Interrupted(self.received, iteration, checkpoint)
