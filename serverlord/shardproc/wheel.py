"""The deadline queue of a shard: a calendar wheel of coarse buckets in front of a heap.

Time is cut into buckets of BUCKET_TICKS ticks (about 5.5 minutes with the default
5 ms tick), numbered from the `now` given at construction. A deadline in a bucket
after the cursor's bucket waits in that bucket, an unordered list of keys. The
cursor's bucket and every earlier one are drained into one heapq ordered by
deadline, the near heap. When the cursor enters a bucket, its keys move to the near
heap, so each deadline is touched once on the way in and far deadlines are never
scanned before their bucket comes up. When the near heap is empty, next_deadline
drains the first far bucket early, so that it can return an exact deadline.

Deadlines come out exactly: the near heap orders them by their float value, and
ticks only set the bucket width.

Both tiers delete lazily. Moving or cancelling a deadline updates the key's entry in
`_deadlines` and leaves the old copy where it was. A copy is live only while it
matches that entry, so stale copies are skipped when they come up and dropped by a
rebuild once they outnumber live ones.

perf/bench_wheel.py compares this design with a plain heapq and with a 64-slot
hierarchical wheel. docs/bench-wheel.md has the figures and the reasons for the choice.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

BUCKET_TICKS = 1 << 16

# A far bucket or the near heap is rebuilt once its stale copies outnumber its live
# ones by more than this, so that small lists are not rebuilt on every change.
_REBUILD_SLACK = 64


class _Bucket(list[K]):
    """Keys of the deadlines in one far bucket, stale copies included."""

    __slots__ = ("live",)

    def __init__(self) -> None:
        super().__init__()
        # How many keys have their current deadline in this bucket.
        self.live = 0


class TimerWheel(Generic[K]):
    """Deadlines keyed by K, at most one per key, in float seconds on any clock.

    `schedule` and `cancel` take amortized constant time, plus O(log m) to push a
    deadline into a near heap of m entries. A deadline in the past comes out of the
    next `expire`. Entries never fire early: `expire(now)` returns only deadlines
    <= now.
    """

    def __init__(self, now: float, tick: float = 0.005) -> None:
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite number of seconds, got {now!r}")
        if not (math.isfinite(tick) and tick > 0):
            raise ValueError(f"tick must be a positive number of seconds, got {tick!r}")

        self._origin = now
        self._bucket_seconds = tick * BUCKET_TICKS
        self._deadlines: dict[K, float] = {}

        # The bucket of the latest expire(now). It and every earlier bucket are in
        # the near heap.
        self._cursor = 0
        # Buckets after the cursor that next_deadline drained early. Deadlines in
        # them go to the near heap until the cursor passes them.
        self._ahead: set[int] = set()
        self._far: dict[int, _Bucket[K]] = {}
        # Numbers of the buckets in _far, as a heap. It may also contain numbers of
        # buckets that were emptied and deleted.
        self._far_order: list[int] = []

        # (deadline, sequence, key). The sequence number breaks ties, so keys
        # never need to be orderable.
        self._near: list[tuple[float, int, K]] = []
        self._near_live = 0
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    def __repr__(self) -> str:
        return (
            f"<TimerWheel entries={len(self._deadlines)} near={self._near_live} "
            f"far_buckets={len(self._far)}>"
        )

    def deadline_of(self, key: K) -> float | None:
        return self._deadlines.get(key)

    def schedule(self, key: K, when: float) -> None:
        """Set the deadline of `key` to `when`, replacing any deadline it had."""
        if not math.isfinite(when):
            raise ValueError(f"deadline of {key!r} must be a finite number, got {when!r}")

        deadlines = self._deadlines
        old = deadlines.get(key)
        deadlines[key] = when
        # _bucket_of, inlined because this is the ping path.
        origin = self._origin
        width = self._bucket_seconds
        number = int((when - origin) / width)
        if old is not None:
            old_number = int((old - origin) / width)
            if old_number == number and not self._is_near(number):
                # Nothing to move, because a far copy is live for as long as its
                # key's deadline stays in the same bucket.
                return
            self._unlink(old_number)
        self._link(key, when, number)

    def schedule_many(self, entries: Iterable[tuple[K, float]]) -> None:
        """Set the deadline of each (key, when) in `entries`, as `schedule` would.

        This is the bulk path for filling the wheel at start-up. A key without a
        deadline goes straight into its bucket, and new near entries are pushed into
        the near heap together, with one heapify when they outnumber it.
        """
        deadlines = self._deadlines
        far = self._far
        origin = self._origin
        width = self._bucket_seconds
        sequence = self._sequence
        # schedule() moves neither of these, so they stay valid through the loop.
        cursor = self._cursor
        ahead = self._ahead
        near: list[tuple[float, int, K]] = []
        for key, when in entries:
            if key in deadlines or not math.isfinite(when):
                # Moves and invalid deadlines take the general path, which also raises.
                self.schedule(key, when)
                continue

            number = int((when - origin) / width)
            deadlines[key] = when
            if number <= cursor or number in ahead:
                near.append((when, next(sequence), key))
                continue
            bucket = far.get(number)
            if bucket is None:
                bucket = far[number] = _Bucket()
                self._push_far_order(number)
            bucket.append(key)
            bucket.live += 1

        self._push_near(near)

    def cancel(self, key: K) -> bool:
        """Remove the deadline of `key`. Return True if it had one."""
        old = self._deadlines.pop(key, None)
        if old is None:
            return False

        self._unlink(self._bucket_of(old))
        return True

    def expire(self, now: float) -> list[tuple[K, float]]:
        """Remove and return every entry with a deadline <= now, ordered by deadline.

        The cursor moves to the bucket of `now`. A `now` before an earlier one fires
        what is due but leaves the cursor where it is.
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite number of seconds, got {now!r}")

        number = self._bucket_of(now)
        if number > self._cursor:
            self._advance(number)

        near = self._near
        deadlines = self._deadlines
        fired = []
        while near and near[0][0] <= now:
            when, _, key = heapq.heappop(near)
            # A key can have two live-looking copies, so the first one removes it.
            if deadlines.get(key) == when:
                del deadlines[key]
                fired.append((key, when))
        self._near_live -= len(fired)
        return fired

    def next_deadline(self) -> float | None:
        """Return the earliest pending deadline (exact), or None if the wheel is empty.

        When the near heap is empty, this drains the first non-empty far bucket into
        it, work that expire would do later anyway.
        """
        near = self._near
        deadlines = self._deadlines
        while True:
            while near and deadlines.get(near[0][2]) != near[0][0]:
                heapq.heappop(near)
            number = self._first_far_bucket()

            # A far bucket can precede the near heap's top after an earlier look ahead.
            if number is None or (near and self._bucket_of(near[0][0]) < number):
                return near[0][0] if near else None

            heapq.heappop(self._far_order)
            self._ahead.add(number)
            self._move_near([(number, self._far.pop(number))])

    def _bucket_of(self, when: float) -> int:
        # int() truncates towards zero, so deadlines up to one bucket before the
        # origin get bucket 0. That is harmless because every bucket at or before
        # the cursor (which starts at 0) drains into the near heap.
        return int((when - self._origin) / self._bucket_seconds)

    def _is_near(self, number: int) -> bool:
        """Return True if deadlines in bucket `number` belong in the near heap."""
        return number <= self._cursor or number in self._ahead

    def _link(self, key: K, when: float, number: int) -> None:
        """Add a live copy of `key`, whose current deadline `when` is in bucket `number`."""
        if self._is_near(number):
            heapq.heappush(self._near, (when, next(self._sequence), key))
            self._near_live += 1
            return

        bucket = self._far.get(number)
        if bucket is None:
            bucket = self._far[number] = _Bucket()
            self._push_far_order(number)
        bucket.append(key)
        bucket.live += 1
        if len(bucket) > 2 * bucket.live + _REBUILD_SLACK:
            bucket[:] = [entry[2] for entry in self._live_entries(number, bucket)]

    def _unlink(self, number: int) -> None:
        """Count one live copy in bucket `number` as stale, after its key moved or left."""
        if self._is_near(number):
            self._near_live -= 1
            if len(self._near) > 2 * self._near_live + _REBUILD_SLACK:
                self._rebuild_near()
            return

        bucket = self._far[number]
        bucket.live -= 1
        if bucket.live == 0:
            # Only stale copies are left. The number stays in _far_order and is
            # skipped when it comes up.
            del self._far[number]

    def _advance(self, number: int) -> None:
        """Move the cursor to bucket `number`, draining every far bucket up to it."""
        self._cursor = number
        if self._ahead:
            self._ahead = {ahead for ahead in self._ahead if ahead > number}

        far = self._far
        order = self._far_order
        drained = []
        while order and order[0] <= number:
            earlier = heapq.heappop(order)
            bucket = far.pop(earlier, None)
            if bucket is not None:
                drained.append((earlier, bucket))
        self._move_near(drained)

    def _move_near(self, drained: list[tuple[int, _Bucket[K]]]) -> None:
        """Push the live keys of far buckets, given with their numbers, into the near heap."""
        moved = []
        for number, bucket in drained:
            moved.extend(self._live_entries(number, bucket))
        if not moved:
            return

        self._push_near(moved)

    def _push_near(self, entries: list[tuple[float, int, K]]) -> None:
        """Add live entries to the near heap, heapifying once when they outnumber it."""
        self._near_live += len(entries)
        near = self._near
        if len(entries) > len(near):
            near.extend(entries)
            heapq.heapify(near)
        else:
            for entry in entries:
                heapq.heappush(near, entry)

    def _live_entries(self, number: int, bucket: _Bucket[K]) -> list[tuple[float, int, K]]:
        """Return a near heap entry for each key whose deadline is in bucket `number`.

        Each key comes once, even if the bucket has several copies of it. This is
        the costly part of a drain, so it reads each deadline once.
        """
        deadlines = self._deadlines
        origin = self._origin
        width = self._bucket_seconds
        sequence = self._sequence
        live = []
        for key in dict.fromkeys(bucket):
            when = deadlines.get(key)
            if when is not None and int((when - origin) / width) == number:
                live.append((when, next(sequence), key))
        return live

    def _rebuild_near(self) -> None:
        deadlines = self._deadlines
        seen: set[K] = set()
        entries = []
        for entry in self._near:
            when, _, key = entry
            if deadlines.get(key) == when and key not in seen:
                seen.add(key)
                entries.append(entry)
        heapq.heapify(entries)
        self._near = entries

    def _first_far_bucket(self) -> int | None:
        order = self._far_order
        while order and order[0] not in self._far:
            heapq.heappop(order)
        return order[0] if order else None

    def _push_far_order(self, number: int) -> None:
        order = self._far_order
        heapq.heappush(order, number)
        if len(order) > 2 * len(self._far) + _REBUILD_SLACK:
            self._far_order = list(self._far)
            heapq.heapify(self._far_order)
