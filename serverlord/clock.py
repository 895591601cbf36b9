"""Time sources behind one interface, so deadline tests can jump instead of sleeping.

Wall-clock time stamps records and defines check deadlines (a cron job is due at a
calendar instant). Monotonic time measures waits and timeouts, which must not move when
the system clock is stepped.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Return wall-clock time in seconds since the Unix epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Return a monotonic reading in seconds, for measuring intervals."""
        ...


class SystemClock:
    """The real clocks of the machine."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when a test calls `advance` or `set`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a fake clock cannot go back: advance({seconds})")
        self._wall += seconds
        self._mono += seconds

    def set(self, wall: float) -> None:
        """Move wall time forward to `wall`, carrying the monotonic reading along."""
        self.advance(wall - self._wall)
