"""Stopping a run cleanly: a scheduler's SIGTERM, a Ctrl-C, or SLURM's warning before a time limit or
preemption (SIGUSR2, handled by submitit under LAUNCHER=slurm) is only noted; the training loop
checkpoints at the end of its step and stops, and rerunning the same command resumes from last.pt."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import NoReturn

_SIGUSR2 = getattr(signal, "SIGUSR2", None)  # absent on Windows


class Interrupted(Exception):
    """A signal stopped the run after it checkpointed; rerunning resumes it."""

    def __init__(self, sig: signal.Signals, iteration: int, checkpoint: Path):
        super().__init__(f"stopped by {sig.name} at iteration {iteration}; rerun the same command to resume "
                         f"from {checkpoint}")
        self.signal, self.iteration, self.checkpoint = sig, iteration, checkpoint

    def __reduce__(self):  # picklable (launchers move exceptions between processes) despite the custom __init__
        return type(self), (self.signal, self.iteration, self.checkpoint)

    @property
    def exit_status(self) -> int:
        return 128 + self.signal  # the shell's status of a process ended by the signal: 143 SIGTERM, 130 SIGINT


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
        and exits (the requeued job resumes from the checkpoint); otherwise raise Interrupted."""
        submitit = self._previous.get(_SIGUSR2)
        if self.received == _SIGUSR2 and callable(submitit):
            submitit(self.received, None)
        raise Interrupted(self.received, iteration, checkpoint)
