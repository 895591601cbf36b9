"""TimerWheel: exact deadlines across tiers, compared with a plain sorted reference."""

from __future__ import annotations

import math
import random

import pytest

from serverlord.shardproc.wheel import BUCKET_TICKS, TimerWheel

START = 1_800_000_000.0
YEAR = 365 * 86400.0


class SortedReference:
    """The obvious implementation: a dict, sorted on every expire."""

    def __init__(self) -> None:
        self.deadlines: dict[int, float] = {}

    def schedule(self, key: int, when: float) -> None:
        self.deadlines[key] = when

    def cancel(self, key: int) -> bool:
        return self.deadlines.pop(key, None) is not None

    def expire(self, now: float) -> list[tuple[int, float]]:
        due = sorted((when, key) for key, when in self.deadlines.items() if when <= now)
        for _, key in due:
            del self.deadlines[key]
        return [(key, when) for when, key in due]

    def next_deadline(self) -> float | None:
        return min(self.deadlines.values(), default=None)


def random_deadline(rng: random.Random, now: float, wheel: TimerWheel[int]) -> float:
    kind = rng.random()
    if kind < 0.1:
        return now - rng.uniform(0, 3600)  # in the past
    if kind < 0.15:
        return now + rng.uniform(0, 20 * YEAR)  # far away
    if kind < 0.3:
        return now + rng.choice([0.0, 0.001, 0.0025, 1.0, 60.0])  # about now
    if kind < 0.4 and len(wheel) > 0:
        return rng.choice(list(wheel._deadlines.values()))  # equal to another one
    return now + rng.uniform(0, 3 * 86400)


def random_step(rng: random.Random) -> float:
    return rng.choice([0.0, 0.001, 0.005, 0.3, 20.0, 3600.0, 5 * 3600.0, -1.0])


def run_against_reference(seed: int, tick: float, operations: int = 4000) -> None:
    rng = random.Random(seed)
    now = START + rng.random()
    wheel = TimerWheel[int](now, tick=tick)
    reference = SortedReference()

    for step in range(operations):
        key = rng.randrange(200)
        choice = rng.random()
        if choice < 0.45:
            when = random_deadline(rng, now, wheel)
            wheel.schedule(key, when)
            reference.schedule(key, when)
        elif choice < 0.55:
            assert wheel.cancel(key) == reference.cancel(key), (seed, step)
        elif choice < 0.9:
            now += random_step(rng)
            fired = wheel.expire(now)
            expected = reference.expire(now)
            assert [when for _, when in fired] == [when for _, when in expected], (seed, step)
            assert sorted(fired) == sorted(expected), (seed, step)
        else:
            assert wheel.next_deadline() == reference.next_deadline(), (seed, step)

        assert len(wheel) == len(reference.deadlines), (seed, step)

    for key in range(200):
        assert wheel.deadline_of(key) == reference.deadlines.get(key), (seed, key)


@pytest.mark.parametrize("seed", range(8))
def test_wheel_matches_sorted_reference(seed: int) -> None:
    run_against_reference(seed, tick=0.005)


@pytest.mark.parametrize("seed", range(4))
def test_wheel_matches_reference_short_buckets(seed: int) -> None:
    # Buckets of 0.65 s make most steps cross several of them.
    run_against_reference(100 + seed, tick=0.00001)


@pytest.mark.parametrize("seed", range(2))
def test_wheel_matches_reference_long_buckets(seed: int) -> None:
    # Buckets of 18 hours keep most deadlines in the near heap.
    run_against_reference(200 + seed, tick=1.0)


def test_expired_entries_ordered_by_deadline() -> None:
    wheel = TimerWheel[str](START)
    wheel.schedule("c", START + 30)
    wheel.schedule("a", START + 10)
    wheel.schedule("b", START + 20)

    assert wheel.expire(START + 60) == [("a", START + 10), ("b", START + 20), ("c", START + 30)]


def test_deadline_never_fires_early() -> None:
    wheel = TimerWheel[str](START)
    wheel.schedule("check", START + 1.0021)

    assert wheel.expire(START + 1.002) == []
    assert wheel.expire(START + 1.0021) == [("check", START + 1.0021)]


def test_past_deadline_fires_on_next_expire() -> None:
    wheel = TimerWheel[str](START)
    wheel.expire(START + 100)
    wheel.schedule("late", START - 3600)

    assert wheel.next_deadline() == START - 3600
    assert wheel.expire(START + 100) == [("late", START - 3600)]


def test_far_deadline_fires_after_years() -> None:
    wheel = TimerWheel[str](START)
    far = START + 7 * YEAR + 0.25
    wheel.schedule("far", far)

    assert wheel.expire(far - 0.001) == []
    assert wheel.next_deadline() == far
    assert wheel.expire(far) == [("far", far)]


def test_expire_jump_of_hours() -> None:
    wheel = TimerWheel[int](START)
    for minute in range(600):
        wheel.schedule(minute, START + 60.0 * minute)

    fired = wheel.expire(START + 5 * 3600)

    assert [key for key, _ in fired] == list(range(301))
    assert len(wheel) == 299
    assert wheel.next_deadline() == START + 60.0 * 301


def test_reschedule_replaces_deadline() -> None:
    wheel = TimerWheel[str](START)
    wheel.schedule("check", START + 60)
    wheel.schedule("check", START + 3600)

    assert len(wheel) == 1
    assert wheel.deadline_of("check") == START + 3600
    assert wheel.expire(START + 600) == []
    assert wheel.expire(START + 3600) == [("check", START + 3600)]


def test_reschedule_earlier_fires_earlier() -> None:
    wheel = TimerWheel[str](START)
    wheel.schedule("check", START + 86400)
    wheel.schedule("check", START + 5)

    assert wheel.next_deadline() == START + 5
    assert wheel.expire(START + 5) == [("check", START + 5)]


def test_moved_back_and_forth_fires_once() -> None:
    # The same key gets copies in both tiers. Only one may fire.
    wheel = TimerWheel[str](START)
    for _ in range(100):
        wheel.schedule("check", START + 10)
        wheel.schedule("check", START + 86400)
    wheel.schedule("check", START + 10)

    assert wheel.expire(START + 2 * 86400) == [("check", START + 10)]
    assert len(wheel) == 0


def test_cancel_removes_deadline() -> None:
    wheel = TimerWheel[str](START)
    wheel.schedule("near", START + 1)
    wheel.schedule("far", START + 86400)

    assert wheel.cancel("near") is True
    assert wheel.cancel("far") is True
    assert wheel.cancel("far") is False
    assert len(wheel) == 0
    assert wheel.next_deadline() is None
    assert wheel.expire(START + 2 * 86400) == []


def test_cancel_unknown_key_returns_false() -> None:
    assert TimerWheel[str](START).cancel("missing") is False


def test_equal_deadlines_all_fire() -> None:
    wheel = TimerWheel[int](START)
    for key in range(1000):
        wheel.schedule(key, START + 3600)

    assert wheel.next_deadline() == START + 3600
    fired = wheel.expire(START + 3600)
    assert sorted(key for key, _ in fired) == list(range(1000))
    assert {when for _, when in fired} == {START + 3600}


def test_unorderable_keys_with_equal_deadlines() -> None:
    wheel = TimerWheel[frozenset[int]](START)
    wheel.schedule(frozenset({1}), START + 1)
    wheel.schedule(frozenset({2}), START + 1)

    assert len(wheel.expire(START + 1)) == 2


def test_next_deadline_after_earliest_moves() -> None:
    wheel = TimerWheel[int](START)
    for key in range(50):
        wheel.schedule(key, START + 100.0 + key)

    for key in range(50):
        assert wheel.next_deadline() == START + 100.0 + key
        wheel.schedule(key, START + 86400.0 + key)

    assert wheel.next_deadline() == START + 86400.0


def test_earlier_deadline_after_next_deadline() -> None:
    # next_deadline drains the far bucket of the first deadline ahead of time; a
    # deadline scheduled before it afterwards must still come first.
    wheel = TimerWheel[str](START)
    wheel.schedule("tomorrow", START + 86400)

    assert wheel.next_deadline() == START + 86400
    wheel.schedule("soon", START + 60)
    assert wheel.next_deadline() == START + 60
    assert wheel.expire(START + 60) == [("soon", START + 60)]


def test_far_deadline_scheduled_after_look_ahead() -> None:
    # next_deadline drained tomorrow's bucket early. A deadline in a bucket between
    # now and tomorrow stays in a far bucket and still counts as the earliest.
    wheel = TimerWheel[str](START)
    wheel.schedule("tomorrow", START + 86400)
    wheel.next_deadline()
    wheel.schedule("evening", START + 6 * 3600)

    assert wheel.next_deadline() == START + 6 * 3600
    assert wheel.expire(START + 86400) == [
        ("evening", START + 6 * 3600),
        ("tomorrow", START + 86400),
    ]


def test_expire_backwards_fires_what_is_due() -> None:
    wheel = TimerWheel[str](START)
    wheel.expire(START + 3600)
    wheel.schedule("check", START + 10)

    assert wheel.expire(START + 20) == [("check", START + 10)]


def test_empty_wheel_has_no_deadline() -> None:
    wheel = TimerWheel[str](START)

    assert wheel.next_deadline() is None
    assert wheel.expire(START + YEAR) == []


def test_membership_and_length() -> None:
    wheel = TimerWheel[str](START)
    wheel.schedule("check", START + 60)

    assert "check" in wheel
    assert "other" not in wheel
    assert len(wheel) == 1
    assert wheel.deadline_of("other") is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_deadline_rejected(bad: float) -> None:
    wheel = TimerWheel[str](START)

    with pytest.raises(ValueError, match="must be a finite number"):
        wheel.schedule("check", bad)
    with pytest.raises(ValueError, match="must be a finite number"):
        wheel.expire(bad)
    assert len(wheel) == 0


@pytest.mark.parametrize("tick", [0.0, -1.0, math.nan])
def test_bad_tick_rejected(tick: float) -> None:
    with pytest.raises(ValueError, match="tick must be a positive number"):
        TimerWheel[str](START, tick=tick)


def test_stale_copies_stay_bounded() -> None:
    # A key moved back and forth between two far buckets leaves a stale copy each
    # time. Rebuilds keep the number of copies in proportion to the live keys.
    wheel = TimerWheel[int](START)
    bucket_seconds = 0.005 * BUCKET_TICKS
    for key in range(10):
        wheel.schedule(key, START + 3 * bucket_seconds)
    for _ in range(10_000):
        wheel.schedule(0, START + 5 * bucket_seconds)
        wheel.schedule(0, START + 3 * bucket_seconds)

    copies = sum(len(bucket) for bucket in wheel._far.values())
    assert copies < 200
    assert len(wheel._far_order) < 200
