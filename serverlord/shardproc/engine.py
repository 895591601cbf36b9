"""The deadline engine: a timer wheel of every check's deadline, fired from the loop.

No database polling: each state change re-arms its check in the wheel, and one task sleeps
until the earliest deadline, flips what is due in memory and queues the flips for the
writer. A flip is stamped with the deadline itself, so a late wake-up (a busy loop, a
restart) never shifts recorded history.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from serverlord.clock import Clock
from serverlord.shardproc.checks import Check
from serverlord.shardproc.wheel import TimerWheel

log = logging.getLogger(__name__)

# An upper bound on one sleep, so that a wall-clock step (NTP) is noticed within a second
# even when the next deadline is far away.
MAX_SLEEP = 1.0

# Deadlines fired before the loop yields. A burst of thousands of checks due at once then
# commits in several transactions, the first within milliseconds, instead of in one
# transaction that every flip of the burst waits for.
FIRE_CHUNK = 500

TimeoutHandler = Callable[[Check, float], None]
TimerHandler = Callable[[Check, str, float], None]


class DeadlineEngine:
    def __init__(
        self,
        clock: Clock,
        lookup: Callable[[str], Check | None],
        on_timeout: TimeoutHandler,
        tick: float = 0.005,
        on_timer: TimerHandler | None = None,
    ) -> None:
        self._clock = clock
        self._lookup = lookup
        self._on_timeout = on_timeout
        self._on_timer = on_timer
        self._wheel: TimerWheel[str] = TimerWheel(clock.time(), tick=tick)
        self._waiter: asyncio.Future[None] | None = None
        self._sleep_until: float | None = None
        self.fired = 0

    def __len__(self) -> int:
        return len(self._wheel)

    def rearm(self, check: Check) -> None:
        """Put the check's current deadline in the wheel, or take it out if it has none."""
        deadline = check.deadline()
        if deadline is None:
            self._wheel.cancel(check.id)
            return
        self._wheel.schedule(check.id, deadline)
        if self._sleep_until is None or deadline < self._sleep_until:
            self._wake()

    def arm_loaded(self, deadlines: list[tuple[str, float]]) -> None:
        """Put the deadlines of freshly loaded checks, as (check id, deadline), in the wheel."""
        if not deadlines:
            return
        self._wheel.schedule_many(deadlines)
        self._wake()

    def forget(self, check_id: str) -> None:
        self._wheel.cancel(check_id)

    def set_timer(self, check_id: str, suffix: str, when: float | None) -> None:
        """Arm or cancel a secondary timer of a check, such as its late notice."""
        key = check_id + suffix
        if when is None:
            self._wheel.cancel(key)
            return
        self._wheel.schedule(key, when)
        if self._sleep_until is None or when < self._sleep_until:
            self._wake()

    def deadline_of(self, check_id: str) -> float | None:
        return self._wheel.deadline_of(check_id)

    def fire_due(self, now: float) -> int:
        """Flip every check whose deadline is at or before `now`; return how many."""
        return self._fire(self._wheel.expire(now), now)

    def _fire(self, entries: list[tuple[str, float]], now: float) -> int:
        fired = 0
        for key, when in entries:
            check_id, hash_sign, suffix = key.partition("#")
            check = self._lookup(check_id)
            if check is None:
                continue
            if hash_sign:
                if self._on_timer is not None:
                    self._on_timer(check, hash_sign + suffix, when)
                continue
            # The wheel entry is only a reminder; the check itself decides. A deadline that
            # moved without a re-arm would otherwise flip a healthy check.
            current = check.deadline()
            if current is None:
                continue
            if current > now:
                self._wheel.schedule(check_id, current)
                continue
            self._on_timeout(check, current)
            fired += 1
        self.fired += fired
        return fired

    async def run(self) -> None:
        """Sleep until the next deadline, fire what is due, repeat; cancelled on shutdown."""
        while True:
            now = self._clock.time()
            due = self._wheel.expire(now)
            for start in range(0, len(due), FIRE_CHUNK):
                if start:
                    # Let the writer start committing the flips queued so far.
                    await asyncio.sleep(0)
                self._fire(due[start : start + FIRE_CHUNK], now)
            next_deadline = self._wheel.next_deadline()
            delay = MAX_SLEEP if next_deadline is None else min(MAX_SLEEP, next_deadline - now)
            self._sleep_until = now + max(delay, 0.0)
            if delay > 0:
                await self._sleep(delay)
            self._sleep_until = None

    async def _sleep(self, delay: float) -> None:
        # A bare future and a timer wake the loop in one step, where wait_for on an event
        # wraps the wait in a task and takes an extra turn of a busy loop to return.
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(delay, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
