"""Time, read in one place so tests and simulations can move it.

Two clocks, never mixed: the *wall* clock (epoch seconds, UTC) labels events
and expiries that must survive a restart; the *monotonic* clock measures
durations, so a wall-clock step (NTP, an operator) cannot change what a
meeting is billed.
"""

from __future__ import annotations

import time

__all__ = ["Clock"]


class Clock:
    """Reads both clocks. ``offset`` shifts the wall clock only (for tests)."""

    __slots__ = ("offset",)

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def wall(self) -> float:
        """Seconds since the epoch, UTC."""
        return time.time() + self.offset

    def mono(self) -> float:
        """Seconds on a clock that never goes backwards."""
        return time.monotonic()
