"""TimerWheel.schedule_many: the bulk path fills the wheel as one schedule() per key does."""

from __future__ import annotations

import math
import random

import pytest

from serverlord.shardproc.wheel import TimerWheel


def drain(wheel: TimerWheel[str], until: float) -> list[tuple[str, float]]:
    fired = []
    now = 0.0
    while now <= until:
        fired.extend(wheel.expire(now))
        now += 37.0
    return fired


def entries_with_duplicates(seed: int) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    # Deadlines in the past, in the cursor's bucket and in far buckets, some keys twice.
    entries = [(f"c{n}", rng.uniform(-600.0, 86_400.0)) for n in range(5000)]
    entries += [(f"c{n}", rng.uniform(0.0, 3600.0)) for n in range(0, 5000, 7)]
    return entries


def test_schedule_many_equals_schedule() -> None:
    entries = entries_with_duplicates(3)
    bulk: TimerWheel[str] = TimerWheel(0.0)
    single: TimerWheel[str] = TimerWheel(0.0)

    bulk.schedule_many(entries)
    for key, when in entries:
        single.schedule(key, when)

    assert len(bulk) == len(single)
    assert bulk.next_deadline() == single.next_deadline()
    assert drain(bulk, 90_000.0) == drain(single, 90_000.0)
    assert len(bulk) == 0


def test_schedule_many_moves_existing_keys() -> None:
    wheel: TimerWheel[str] = TimerWheel(0.0)
    wheel.schedule("a", 50_000.0)
    wheel.schedule("b", 10.0)

    wheel.schedule_many([("a", 20.0), ("b", 40_000.0), ("c", 30.0)])

    assert wheel.deadline_of("a") == 20.0
    assert wheel.deadline_of("b") == 40_000.0
    assert wheel.expire(35.0) == [("a", 20.0), ("c", 30.0)]
    assert wheel.expire(45_000.0) == [("b", 40_000.0)]


def test_schedule_many_after_expire() -> None:
    wheel: TimerWheel[str] = TimerWheel(0.0)
    wheel.expire(1000.0)

    wheel.schedule_many([("late", 500.0), ("near", 1001.0), ("far", 20_000.0)])

    assert wheel.expire(1001.0) == [("late", 500.0), ("near", 1001.0)]
    assert wheel.next_deadline() == 20_000.0


@pytest.mark.parametrize("when", [math.nan, math.inf])
def test_schedule_many_rejects_nonfinite_deadline(when: float) -> None:
    wheel: TimerWheel[str] = TimerWheel(0.0)

    with pytest.raises(ValueError, match="must be a finite number"):
        wheel.schedule_many([("ok", 1.0), ("bad", when)])
