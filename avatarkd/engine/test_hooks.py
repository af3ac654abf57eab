"""Test-only hooks: inert unless a test sets their environment variable.

``AVATARKD_TEST_SIGNAL_AT="STEP:SIGNAL"`` (e.g. ``10:SIGKILL``, ``12:SIGTERM``): the training loop
sends SIGNAL to its own process once STEP steps are done (their checkpoint, if any, written), so
that a test interrupts a run at an exact step instead of racing it with a wall clock.
"""

from __future__ import annotations

import os
import signal

SIGNAL_AT = "AVATARKD_TEST_SIGNAL_AT"


def signal_at(step: int) -> None:
    """Called by the training loop before each step with the number of steps done."""
    spec = os.environ.get(SIGNAL_AT)
    if not spec:
        return
    at, name = spec.split(":")
    if step == int(at):
        os.kill(os.getpid(), signal.Signals[name])


__all__ = ["SIGNAL_AT", "signal_at"]
