"""Deterministic fault injection for the reliability tests: SUITE_FAULT=<point>:<n> kills this
process with SIGKILL the n-th time execution reaches <point> (1-based). Unset, it costs nothing."""
from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("SUITE_FAULT", "")
_COUNTS: dict[str, int] = {}


def fault_point(point: str) -> None:
    if not _SPEC:
        return
    name, _, n = _SPEC.rpartition(":")
    if name != point:
        return
    _COUNTS[point] = _COUNTS.get(point, 0) + 1
    if _COUNTS[point] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
