"""SIGTERM/SIGINT during training: noted, acted on at the end of a step (a checkpoint, then ``Stopped``)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def stop_signals(on_signal: Callable[[int, Any], None]) -> Iterator[None]:
    """``on_signal`` handles SIGTERM/SIGINT inside the block; the previous handlers come back after it.

    The handler only records the signal: stopping mid-step would leave a half-updated state, so
    the loop checks the record at step boundaries.
    """
    old = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


__all__ = ["STOP_SIGNALS", "Stopped", "stop_signals"]
