"""Compare TimerWheel with two other deadline queues on the deadline engine's work.

Usage: .venv/bin/python perf/bench_wheel.py [--sizes 10000 100000 1000000] [--repeat 3]

The contenders share the TimerWheel interface:

- TimerWheel (serverlord/shardproc/wheel.py): far buckets of about 5.5 minutes in
  front of a heapq for the current bucket.
- LazyHeap: one heapq of (deadline, sequence, key) with lazy deletion.
- HierarchicalWheel: a classic hierarchical timing wheel, 64 slots per level, sets as
  slots, cascading as time approaches, with a cached earliest deadline.

For each size n, all three get the same string keys and deadlines spread uniformly
over one day. The steps are:

- schedule: insert n deadlines into an empty structure.
- reschedule: the ping path. Move min(n, 200000) random deadlines 1 to 60 minutes later.
- ping in deadline order: move the earliest deadline one day later, then call
  next_deadline, min(n, 50000) times. Pings arrive in about the order of the
  deadlines, and this is the worst case for a cached earliest deadline.
- cancel: remove min(n, 200000) random deadlines.
- drain a day: advance the time in 1 s steps until every entry has fired, calling
  next_deadline after each expire as the engine does. The figure is per fired
  entry, so the cost of the 86,400 steps weighs most at small n.
- steady state: for one day and 10 minutes of 1 s steps, expire, call next_deadline
  and schedule each fired key again up to one day ahead. This reports the mean and
  the maximum CPU time of one step, because one long step stalls the shard's loop.
  Each step includes one read of the CPU clock, about 0.6 µs. Garbage collection
  is off during this run.
- full collection: the CPU time that the filled structure adds to one
  gc.collect(), which a running shard pays at each full collection.
- memory: bytes traced by tracemalloc per entry after the inserts and again after
  moving every entry 10 minutes later. Deadline floats count, keys do not.

Times are CPU time (time.process_time), so that other tenants of a shared machine
add less noise, and the best of --repeat runs, except the steady state, which runs
once. Garbage collection stays enabled except in the steady state, and each timed
run starts with gc.collect(). Every loop is bounded by n or by the number of steps.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import itertools
import math
import platform
import random
import sys
import time
import tracemalloc
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass
from operator import itemgetter
from typing import Generic, Protocol, TypeVar

from serverlord.shardproc.wheel import TimerWheel

K = TypeVar("K", bound=Hashable)

START = 1_800_000_000.0
DAY = 86400.0
MAX_OPERATIONS = 200_000
MAX_PINGS_IN_ORDER = 50_000
EXPIRE_STEP = 1.0
STEADY_STEPS = int(DAY) + 600


class LazyHeap(Generic[K]):
    """A heapq of (deadline, sequence, key) with lazy deletion.

    Moving or cancelling a deadline leaves the old heap entry in place, and it is
    skipped when it reaches the top. The heap is rebuilt once stale entries
    outnumber live ones. The sequence number keeps keys, which need not be
    orderable, out of comparisons.
    """

    def __init__(self, now: float, tick: float = 0.005) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._deadlines: dict[K, float] = {}
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._deadlines)

    def schedule(self, key: K, when: float) -> None:
        self._deadlines[key] = when
        heapq.heappush(self._heap, (when, next(self._sequence), key))
        if len(self._heap) > 2 * len(self._deadlines) + 64:
            self._rebuild()

    def cancel(self, key: K) -> bool:
        return self._deadlines.pop(key, None) is not None

    def expire(self, now: float) -> list[tuple[K, float]]:
        heap = self._heap
        deadlines = self._deadlines
        fired = []
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            if deadlines.get(key) == when:
                del deadlines[key]
                fired.append((key, when))
        return fired

    def next_deadline(self) -> float | None:
        heap = self._heap
        deadlines = self._deadlines
        while heap and deadlines.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _rebuild(self) -> None:
        self._heap = [(when, next(self._sequence), key) for key, when in self._deadlines.items()]
        heapq.heapify(self._heap)


SLOT_BITS = 6
SLOTS = 1 << SLOT_BITS
_SLOT_MASK = SLOTS - 1
_by_deadline = itemgetter(1)


class HierarchicalWheel(Generic[K]):
    """A 64-slot hierarchical timing wheel with sets as slots and a cached earliest deadline."""

    def __init__(self, now: float, tick: float = 0.005) -> None:
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite number of seconds, got {now!r}")
        if not (math.isfinite(tick) and tick > 0):
            raise ValueError(f"tick must be a positive number of seconds, got {tick!r}")

        self._origin = now
        self._tick = tick
        # Tick of the latest expire(now), counted from `now` at construction.
        self._cursor = 0
        self._deadlines: dict[K, float] = {}
        # Entries whose tick is at or before the cursor. Only those in the cursor's
        # own tick can still be later than the last `now`.
        self._due: set[K] = set()
        self._levels: list[list[set[K]]] = []

        # The earliest deadline and how many entries have it, so that rescheduling
        # one of several equal deadlines needs no rescan. Not valid while
        # _earliest_known is False.
        self._earliest: float | None = None
        self._earliest_count = 0
        self._earliest_known = True

    def __len__(self) -> int:
        return len(self._deadlines)

    def schedule(self, key: K, when: float) -> None:
        """Set the deadline of `key` to `when`, replacing any deadline it had."""
        if not math.isfinite(when):
            raise ValueError(f"deadline of {key!r} must be a finite number, got {when!r}")

        deadlines = self._deadlines
        old = deadlines.get(key)
        if old is not None:
            self._slot(self._tick_of(old)).discard(key)
            self._forget_earliest(old)

        deadlines[key] = when
        self._slot(self._tick_of(when)).add(key)
        self._note_earliest(when)

    def cancel(self, key: K) -> bool:
        """Remove the deadline of `key`. Return True if it had one."""
        old = self._deadlines.pop(key, None)
        if old is None:
            return False

        self._slot(self._tick_of(old)).discard(key)
        self._forget_earliest(old)
        return True

    def expire(self, now: float) -> list[tuple[K, float]]:
        """Remove and return every entry with a deadline <= now, ordered by deadline.

        The cursor moves to the tick of `now`. A `now` before an earlier one fires
        what is due but leaves the cursor where it is.
        """
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite number of seconds, got {now!r}")

        target = self._tick_of(now)
        if target > self._cursor:
            self._advance(target)

        due = self._due
        if not due:
            return []

        deadlines = self._deadlines
        ready = [key for key in due if deadlines[key] <= now]
        if not ready:
            return []

        if len(ready) == len(due):
            # A fresh set gives back the memory of a large batch.
            self._due = set()
        else:
            due.difference_update(ready)
        fired = [(key, deadlines.pop(key)) for key in ready]
        fired.sort(key=_by_deadline)
        self._earliest_known = False
        return fired

    def next_deadline(self) -> float | None:
        """Return the earliest pending deadline, or None if the wheel is empty.

        The value is exact. It is cached, and finding it again after the earliest
        entry leaves (it fired, moved or was cancelled) scans only the first
        non-empty slot.
        """
        if not self._earliest_known:
            self._earliest, self._earliest_count = self._find_earliest()
            self._earliest_known = True
        return self._earliest

    def _tick_of(self, when: float) -> int:
        # int() truncates towards zero, so deadlines up to one tick before the
        # origin get tick 0. That is harmless because every tick at or before the
        # cursor (which starts at 0) lands in _due.
        return int((when - self._origin) / self._tick)

    def _slot(self, tick: int) -> set[K]:
        """Return the set that contains entries with this tick, given the current cursor."""
        cursor = self._cursor
        if tick <= cursor:
            return self._due

        level = ((tick ^ cursor).bit_length() - 1) // SLOT_BITS
        levels = self._levels
        while level >= len(levels):
            levels.append([set() for _ in range(SLOTS)])
        return levels[level][(tick >> (level * SLOT_BITS)) & _SLOT_MASK]

    def _advance(self, target: int) -> None:
        """Move the cursor to `target` and place again the entries of every slot it entered."""
        cursor = self._cursor
        moving: list[set[K]] = []
        for level, slots in enumerate(self._levels):
            shift = level * SLOT_BITS
            first = ((cursor >> shift) & _SLOT_MASK) + 1
            if (target >> (shift + SLOT_BITS)) > (cursor >> (shift + SLOT_BITS)):
                # The cursor leaves this level's current round, so it passes every
                # slot after its own.
                last = _SLOT_MASK
            else:
                last = (target >> shift) & _SLOT_MASK
            for index in range(first, last + 1):
                if slots[index]:
                    moving.append(slots[index])
                    slots[index] = set()

        self._cursor = target
        deadlines = self._deadlines
        for keys in moving:
            for key in keys:
                self._slot(self._tick_of(deadlines[key])).add(key)

    def _find_earliest(self) -> tuple[float | None, int]:
        if self._due:
            return self._min_and_count(self._due)

        cursor = self._cursor
        for level, slots in enumerate(self._levels):
            own = (cursor >> (level * SLOT_BITS)) & _SLOT_MASK
            # Slots up to the cursor's own digit are empty at every level, and the
            # lowest non-empty level contains the earliest ticks.
            for index in range(own + 1, SLOTS):
                if slots[index]:
                    return self._min_and_count(slots[index])
        return None, 0

    def _min_and_count(self, keys: Collection[K]) -> tuple[float, int]:
        deadlines = self._deadlines
        earliest = min(deadlines[key] for key in keys)
        count = sum(1 for key in keys if deadlines[key] == earliest)
        return earliest, count

    def _note_earliest(self, when: float) -> None:
        if not self._earliest_known:
            return
        if self._earliest is None or when < self._earliest:
            self._earliest = when
            self._earliest_count = 1
        elif when == self._earliest:
            self._earliest_count += 1

    def _forget_earliest(self, when: float) -> None:
        if self._earliest_known and when == self._earliest:
            self._earliest_count -= 1
            if self._earliest_count == 0:
                self._earliest_known = False


class Timers(Protocol):
    def __len__(self) -> int: ...
    def schedule(self, key: str, when: float) -> None: ...
    def cancel(self, key: str) -> bool: ...
    def expire(self, now: float) -> list[tuple[str, float]]: ...
    def next_deadline(self) -> float | None: ...


Factory = Callable[[float], Timers]
IMPLEMENTATIONS: dict[str, Factory] = {
    "TimerWheel": TimerWheel[str],
    "LazyHeap": LazyHeap[str],
    "HierarchicalWheel": HierarchicalWheel[str],
}


@dataclass
class Workload:
    """Keys, initial deadline offsets and the random choices shared by all contenders."""

    keys: list[str]
    offsets: list[float]
    moved: list[int]
    delays: list[float]
    cancelled: list[int]
    seed: int


def make_workload(size: int, seed: int) -> Workload:
    rng = random.Random(seed)
    keys = [f"check-{rng.getrandbits(64):016x}" for _ in range(size)]
    for key in keys:
        hash(key)  # str caches its hash, so compute it outside the timed code
    operations = min(size, MAX_OPERATIONS)
    return Workload(
        keys=keys,
        offsets=[rng.uniform(1.0, DAY) for _ in range(size)],
        moved=[rng.randrange(size) for _ in range(operations)],
        delays=[rng.uniform(60.0, 3600.0) for _ in range(operations)],
        cancelled=rng.sample(range(size), operations),
        seed=seed,
    )


def filled(factory: Factory, work: Workload) -> Timers:
    timers = factory(START)
    for key, offset in zip(work.keys, work.offsets, strict=True):
        timers.schedule(key, START + offset)
    return timers


def settled(factory: Factory, work: Workload) -> Timers:
    """Return a filled structure, with it and the workload in the oldest GC generation.

    Without this, the first young collections of a timed run traverse the
    workload's lists of n items and add about 50 ms to whichever step they hit.
    In a running shard, long-lived data sits in the oldest generation too.
    """
    timers = filled(factory, work)
    gc.collect()
    return timers


def time_schedule(factory: Factory, work: Workload) -> float:
    gc.collect()
    begin = time.process_time()
    filled(factory, work)
    return (time.process_time() - begin) / len(work.keys)


def time_reschedule(factory: Factory, work: Workload) -> float:
    timers = settled(factory, work)
    keys = work.keys
    deadlines = [START + offset for offset in work.offsets]
    begin = time.process_time()
    for index, delay in zip(work.moved, work.delays, strict=True):
        deadlines[index] += delay
        timers.schedule(keys[index], deadlines[index])
    return (time.process_time() - begin) / len(work.moved)


def time_pings_in_order(factory: Factory, work: Workload) -> float:
    timers = settled(factory, work)
    count = min(len(work.keys), MAX_PINGS_IN_ORDER)
    order = sorted(range(len(work.keys)), key=work.offsets.__getitem__)[:count]
    begin = time.process_time()
    for index in order:
        timers.schedule(work.keys[index], START + DAY + work.offsets[index])
        timers.next_deadline()
    return (time.process_time() - begin) / count


def time_cancel(factory: Factory, work: Workload) -> float:
    timers = settled(factory, work)
    keys = work.keys
    begin = time.process_time()
    for index in work.cancelled:
        timers.cancel(keys[index])
    return (time.process_time() - begin) / len(work.cancelled)


def time_drain(factory: Factory, work: Workload) -> float:
    """Return CPU seconds per fired entry for expire and next_deadline in 1 s steps."""
    timers = settled(factory, work)
    steps = int(DAY / EXPIRE_STEP) + 2
    fired = 0
    begin = time.process_time()
    for step in range(1, steps + 1):
        fired += len(timers.expire(START + step * EXPIRE_STEP))
        timers.next_deadline()
    spent = time.process_time() - begin
    if fired != len(work.keys) or len(timers) != 0:
        raise AssertionError(f"fired {fired} of {len(work.keys)} entries")
    return spent / fired


def time_steady_state(factory: Factory, work: Workload) -> tuple[float, float]:
    """Return the mean and the maximum CPU seconds of one step of the engine's loop."""
    timers = settled(factory, work)
    rng = random.Random(work.seed)
    longest = 0.0
    # How often the collector runs depends on every object in the process, so it
    # is off here and the cost of a full collection is measured on its own.
    gc.disable()
    try:
        begin = previous = time.process_time()
        for step in range(1, STEADY_STEPS + 1):
            now = START + step * EXPIRE_STEP
            fired = timers.expire(now)
            timers.next_deadline()
            for key, _ in fired:
                timers.schedule(key, now + rng.uniform(1.0, DAY))
            current = time.process_time()
            longest = max(longest, current - previous)
            previous = current
    finally:
        gc.enable()
    return (previous - begin) / STEADY_STEPS, longest


def time_full_collection(factory: Factory, work: Workload) -> float:
    """Return the CPU seconds that a filled structure adds to one full collection."""
    gc.collect()
    begin = time.process_time()
    gc.collect()
    baseline = time.process_time() - begin

    timers = settled(factory, work)
    begin = time.process_time()
    gc.collect()
    spent = time.process_time() - begin
    del timers
    return spent - baseline


def measure_memory(factory: Factory, work: Workload) -> tuple[float, float]:
    """Return traced bytes per entry after the inserts and after moving every entry once."""
    gc.collect()
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    timers = filled(factory, work)
    after_insert = tracemalloc.get_traced_memory()[0] - baseline
    for key, offset in zip(work.keys, work.offsets, strict=True):
        timers.schedule(key, START + offset + 600.0)
    after_moves = tracemalloc.get_traced_memory()[0] - baseline
    tracemalloc.stop()
    size = len(work.keys)
    return after_insert / size, after_moves / size


def best_of(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def bench_one(factory: Factory, work: Workload, repeat: int) -> dict[str, float]:
    steady_mean, steady_max = time_steady_state(factory, work)
    insert_bytes, moved_bytes = measure_memory(factory, work)
    return {
        "schedule": best_of(repeat, lambda: time_schedule(factory, work)),
        "reschedule": best_of(repeat, lambda: time_reschedule(factory, work)),
        "ping in deadline order": best_of(repeat, lambda: time_pings_in_order(factory, work)),
        "cancel": best_of(repeat, lambda: time_cancel(factory, work)),
        "drain a day, per fired entry": best_of(repeat, lambda: time_drain(factory, work)),
        "steady state, mean step": steady_mean,
        "steady state, longest step": steady_max,
        "full collection, added time": best_of(repeat, lambda: time_full_collection(factory, work)),
        "bytes per entry": insert_bytes,
        "bytes per entry after moves": moved_bytes,
    }


def print_table(size: int, results: dict[str, dict[str, float]]) -> None:
    names = list(results)
    wheel = results["TimerWheel"]
    print(f"\n### {size:,} entries\n")
    headers = ["measure", *names, *(f"{name} / TimerWheel" for name in names[1:])]
    print("| " + " | ".join(headers) + " |")
    print("|---|" + "---:|" * (len(headers) - 1))
    for measure, base in wheel.items():
        values = [results[name][measure] for name in names]
        if measure.startswith("bytes"):
            cells = [f"{value:.0f} B" for value in values]
        elif measure in ("steady state, longest step", "full collection, added time"):
            cells = [f"{value * 1e3:.1f} ms" for value in values]
        else:
            cells = [f"{value * 1e6:.2f} µs" for value in values]
        ratios = [f"{value / base:.2f}" for value in values[1:]]
        print(f"| {measure} | " + " | ".join(cells + ratios) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10_000, 100_000, 1_000_000],
        help="numbers of entries to test",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per time measurement")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random workload")
    args = parser.parse_args()

    print(f"python {platform.python_version()}, {platform.machine()}, repeat {args.repeat}")
    for size in args.sizes:
        work = make_workload(size, args.seed)
        results = {}
        for name, factory in IMPLEMENTATIONS.items():
            results[name] = bench_one(factory, work, args.repeat)
            print(f"# done: {name} at {size}", file=sys.stderr, flush=True)
        print_table(size, results)


if __name__ == "__main__":
    main()
