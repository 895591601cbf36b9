"""Races between the writer's ping lane and express lane, on a real shard database.

A test that needs a transaction to stay in flight holds a row lock on one check from a
second connection. The writer's UPDATE of that check then waits in PostgreSQL until the
test releases the lock, so each interleaving is reached without sleeping.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import psycopg

from serverlord.shardproc.writer import FlipRow
from tests.shardharness import Harness, harness, iso, run

# Bound on each wait, so that a writer that stalls fails the test instead of hanging it.
GIVE_UP = 20.0
# Polls of pg_stat_activity before a test gives up waiting for a blocked statement.
LOCK_POLLS = 500
# Seeds of the randomized interleaving test, each one bounded run of STEPS_PER_SEED steps.
SEEDS = tuple(range(1, 25))
STEPS_PER_SEED = 120


def ping_args(check_id: str, signal: str = "success") -> dict[str, object]:
    return {"id": check_id, "signal": signal, "method": "GET"}


@asynccontextmanager
async def row_locked(dsn: str, check_id: str) -> AsyncIterator[None]:
    """Hold a lock on the check's row, so any write of its state waits until exit."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("SELECT 1 FROM checks WHERE id = %s FOR UPDATE", (check_id,))
        yield
        await conn.rollback()


async def wait_for_lock_wait(dsn: str) -> None:
    """Wait until a statement of the writer waits for a row lock in this database."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(LOCK_POLLS):
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("no writer statement started waiting for the row lock")


async def fetch_one(dsn: str, query: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(query, params)
        row = await cursor.fetchone()
    assert row is not None
    return tuple(row)


async def stored_flips(dsn: str, check_id: str) -> int:
    row = await fetch_one(dsn, "SELECT count(*) FROM flips WHERE check_id = %s", (check_id,))
    return int(row[0])


async def stored_status(dsn: str, check_id: str) -> str:
    row = await fetch_one(dsn, "SELECT status FROM checks WHERE id = %s", (check_id,))
    return str(row[0])


async def yield_turns(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def test_barrier_waits_for_express_in_flight(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn) as h:
            blocked = await h.create(timeout_s=60, grace_s=60)
            other = await h.create(timeout_s=60, grace_s=60)
            start = h.clock.time()
            await h.ping(blocked)
            await h.ping(other, at=start + 30)

            lock_held = True
            async with row_locked(shard_dsn, blocked):
                h.at(start + 120)  # the flip of `blocked` goes in flight and waits
                await wait_for_lock_wait(shard_dsn)
                h.at(start + 150)  # the flip of `other` waits in the express queue
                barrier = h.service.writer.barrier()
                resolved_under_lock: list[bool] = []
                barrier.add_done_callback(lambda _: resolved_under_lock.append(lock_held))
                # A ping of `other` makes the ping lane take over its queued flip.
                status, _ = await asyncio.wait_for(
                    h.service.handle("ping", ping_args(other, "log")), GIVE_UP
                )
                assert status == 200
                await yield_turns()
                lock_held = False
            await asyncio.wait_for(barrier, GIVE_UP)

            assert resolved_under_lock == [False]
            assert await stored_status(shard_dsn, blocked) == "down"

    run(body())


def test_delete_during_express_flip_leaves_no_flips(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn) as h:
            blocked = await h.create(timeout_s=60, grace_s=60)
            doomed = await h.create(timeout_s=60, grace_s=60)
            start = h.clock.time()
            await h.ping(blocked)
            await h.ping(doomed, at=start + 30)

            async with row_locked(shard_dsn, blocked):
                h.at(start + 120)
                await wait_for_lock_wait(shard_dsn)
                h.at(start + 150)  # the flip of `doomed` waits in the express queue
                status, _ = await asyncio.wait_for(h.op("delete", doomed), GIVE_UP)
                assert status == 200
            await asyncio.wait_for(h.settle(), GIVE_UP)

            assert await stored_flips(shard_dsn, doomed) == 0
            assert await stored_flips(shard_dsn, blocked) == 2

    run(body())


def test_flips_fenced_after_takeover(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn) as h:
            check = await h.create(timeout_s=60, grace_s=60)
            await h.ping(check)
            async with await psycopg.AsyncConnection.connect(shard_dsn, autocommit=True) as conn:
                await conn.execute("UPDATE shard_owner SET token = gen_random_uuid()")
            h.at(h.clock.time() + 120)
            await asyncio.wait_for(asyncio.gather(h.settle(), return_exceptions=True), GIVE_UP)

            assert h.service.writer.ownership_lost.is_set()
            assert await stored_status(shard_dsn, check) == "up"
            assert await stored_flips(shard_dsn, check) == 1
            status, _ = await asyncio.wait_for(h.service.handle("ping", ping_args(check)), GIVE_UP)
            assert status == 503

    run(body())


def test_timeout_flip_with_full_queue_stored(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn) as h:
            busy = await h.create()
            silent = await h.create(timeout_s=60, grace_s=60)
            await h.ping(silent)
            max_pending = 20_000  # the default of Writer(max_pending=...)

            async with row_locked(shard_dsn, busy):
                first = asyncio.ensure_future(h.service.handle("ping", ping_args(busy)))
                await wait_for_lock_wait(shard_dsn)
                queued = [
                    asyncio.ensure_future(h.service.handle("ping", ping_args(busy)))
                    for _ in range(max_pending + 1)
                ]
                await yield_turns()
                # The queue is full, so the deadline engine fires a flip into it now.
                h.at(h.clock.time() + 120)
                fired_down = h.status(silent)
            results = await asyncio.wait_for(asyncio.gather(first, *queued), GIVE_UP * 3)
            await asyncio.wait_for(h.settle(), GIVE_UP)

            assert fired_down == "down"
            assert results[-1][0] == 503
            assert await stored_status(shard_dsn, silent) == "down"
            assert await stored_flips(shard_dsn, silent) == 2

    run(body())


def test_close_with_both_lanes_busy_settles(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn) as h:
            busy = await h.create()
            silent = [await h.create(timeout_s=60, grace_s=60) for _ in range(5)]
            for check in silent:
                await h.ping(check)
            pings = [
                asyncio.ensure_future(h.service.handle("ping", ping_args(busy))) for _ in range(50)
            ]
            await asyncio.sleep(0)
            h.at(h.clock.time() + 120)
            settled = h.service.writer.barrier()
            await h.service.writer.close()
            # A deadline that fires after close gets a failed future, not an exception.
            late = h.service.writer.flip(FlipRow(silent[0], h.clock.time(), "down", "down", "x"))
            results = await asyncio.wait_for(asyncio.gather(*pings), GIVE_UP)
            late_error = await asyncio.wait_for(
                asyncio.gather(late, return_exceptions=True), GIVE_UP
            )
            await asyncio.wait_for(settled, GIVE_UP)

            assert all(status == 200 for status, _ in results)
            assert isinstance(late_error[0], Exception)
            for check in silent:
                assert await stored_status(shard_dsn, check) == "down"

    run(body())


def test_raising_commit_hook_keeps_writer(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn) as h:
            check = await h.create()
            hook_calls: list[BaseException | None] = []

            def broken_hook(batch: object, started: float, error: BaseException | None) -> None:
                hook_calls.append(error)
                raise RuntimeError("telemetry failed")

            h.service.writer.on_commit = broken_hook
            first, _ = await asyncio.wait_for(h.service.handle("ping", ping_args(check)), GIVE_UP)
            second, _ = await asyncio.wait_for(h.service.handle("ping", ping_args(check)), GIVE_UP)

            assert first == 200
            assert second == 200
            assert hook_calls == [None, None]

    run(body())


def test_mass_timeout_with_pings_matches_memory(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn) as h:
            checks = [await h.create(timeout_s=60, grace_s=60) for _ in range(200)]
            start = h.clock.time()
            for check in checks:
                await h.ping(check)
            early, late = checks[0::4], checks[2::4]

            # The early pings run before the deadline engine fires and the late pings
            # after it, while the flips of the other checks are queued or in flight.
            h.at(start + 60)
            early_pings = [
                asyncio.ensure_future(h.service.handle("ping", ping_args(check))) for check in early
            ]
            await yield_turns(1)
            h.at(start + 120)
            late_pings = [
                asyncio.ensure_future(h.service.handle("ping", ping_args(check))) for check in late
            ]
            results = await asyncio.wait_for(asyncio.gather(*early_pings, *late_pings), GIVE_UP)
            await asyncio.wait_for(h.settle(), GIVE_UP)

            assert all(status == 200 for status, _ in results)
            stored = await stored_checks(shard_dsn)
            timeout_flip = (iso(start + 120), "up", "down", "timeout")
            for check in checks:
                memory = h.service.checks[check]
                assert stored[check][0] == memory.status, check
                assert stored[check][1] == memory.n_pings, check
                downs = [flip for flip in await h.flips(check) if flip[2] == "down"]
                if check in early:
                    assert downs == [], check
                else:
                    assert downs == [timeout_flip], check
            for check in late:
                assert h.service.checks[check].status == "up", check
            assert await flip_chain_breaks(shard_dsn) == 0

    run(body())


# -- randomized interleavings -----------------------------------------------------------


Pending = list[asyncio.Future[tuple[int, Any]]]


class RowLocker:
    """Hold a lock on one check's row for a number of random steps, then release it.

    While the lock is held, a transaction of either lane that writes the check stays in
    flight, so later changes queue behind it or race beside it.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.steps_left = 0

    async def lock(self, check_id: str, steps: int) -> None:
        await self.release()
        await self.conn.execute("SELECT 1 FROM checks WHERE id = %s FOR UPDATE", (check_id,))
        self.steps_left = steps

    async def release(self) -> None:
        self.steps_left = 0
        await self.conn.rollback()

    async def count_down(self) -> None:
        if self.steps_left > 0:
            self.steps_left -= 1
            if self.steps_left == 0:
                await self.release()


async def random_step(
    h: Harness, rng: random.Random, checks: list[str], pending: Pending, locker: RowLocker
) -> None:
    """Start one random operation, adding it to `pending` instead of awaiting its commit."""
    check = rng.choice(checks)
    choice = rng.random()
    if choice < 0.3:
        signal = rng.choice(["success", "success", "start", "log", "fail"])
        pending.append(asyncio.ensure_future(h.service.handle("ping", ping_args(check, signal))))
    elif choice < 0.55:
        h.at(h.clock.time() + rng.choice([5, 30, 61, 125, 200]))
    elif choice < 0.62:
        pending.append(asyncio.ensure_future(h.op("pause", check)))
    elif choice < 0.69:
        pending.append(asyncio.ensure_future(h.op("resume", check)))
    elif choice < 0.76:
        fields = {"timeout_s": rng.choice([30, 60, 120]), "grace_s": rng.choice([10, 60])}
        pending.append(asyncio.ensure_future(h.op("update", check, fields=fields)))
    elif choice < 0.86:
        await locker.lock(check, rng.randint(2, 12))
    elif choice < 0.9:
        # settle() and create() wait for commits, which the held lock may block.
        await locker.release()
        await asyncio.wait_for(h.settle(), GIVE_UP)
    else:
        pending.append(asyncio.ensure_future(h.op("delete", check)))
        checks.remove(check)
        await locker.release()
        checks.append(await asyncio.wait_for(h.create(timeout_s=60, grace_s=60), GIVE_UP))
    await locker.count_down()
    for _ in range(rng.randint(0, 3)):
        await asyncio.sleep(0)


async def stored_checks(dsn: str) -> dict[str, tuple[str, int, datetime | None]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute("SELECT id, status, n_pings, last_ping FROM checks")
        rows = await cursor.fetchall()
    return {str(row[0]): (str(row[1]), int(row[2]), row[3]) for row in rows}


async def orphan_rows(dsn: str) -> int:
    row = await fetch_one(
        dsn,
        "SELECT (SELECT count(*) FROM flips f WHERE NOT EXISTS"
        " (SELECT 1 FROM checks c WHERE c.id = f.check_id))"
        " + (SELECT count(*) FROM pings p WHERE NOT EXISTS"
        " (SELECT 1 FROM checks c WHERE c.id = p.check_id))",
        (),
    )
    return int(row[0])


async def flip_chain_breaks(dsn: str) -> int:
    """Count flips whose old status differs from the new status of the flip before."""
    row = await fetch_one(
        dsn,
        "SELECT count(*) FROM (SELECT old_status, lag(new_status) OVER"
        " (PARTITION BY check_id ORDER BY created, id) AS previous FROM flips) AS chain"
        " WHERE previous IS NOT NULL AND previous <> old_status",
        (),
    )
    return int(row[0])


def test_random_interleavings_match_memory(shard_dsn: str) -> None:
    async def body() -> None:
        async with (
            harness(shard_dsn) as h,
            await psycopg.AsyncConnection.connect(shard_dsn) as lock_conn,
        ):
            locker = RowLocker(lock_conn)
            for seed in SEEDS:
                rng = random.Random(seed)
                checks = [await h.create(timeout_s=60, grace_s=60) for _ in range(4)]
                for check in checks:
                    await h.ping(check)
                pending: Pending = []
                for _ in range(STEPS_PER_SEED):
                    await random_step(h, rng, checks, pending, locker)
                await locker.release()
                results = await asyncio.wait_for(asyncio.gather(*pending), GIVE_UP)
                await asyncio.wait_for(h.settle(), GIVE_UP)
                await asyncio.wait_for(h.settle(), GIVE_UP)

                stored = await stored_checks(shard_dsn)
                # A 409 is a resume of a check that is not paused, and a 404 an operation
                # queued before the check's delete. A 503 would be a failed commit.
                assert {status for status, _ in results} <= {200, 404, 409}, seed
                for check_id, memory in h.service.checks.items():
                    status, n_pings, last_ping = stored[check_id]
                    assert status == memory.status, (seed, check_id)
                    assert n_pings == memory.n_pings, (seed, check_id)
                    stored_last_ping = None if last_ping is None else last_ping.timestamp()
                    assert stored_last_ping == memory.last_ping, (seed, check_id)
                assert set(stored) == set(h.service.checks), seed
                assert await orphan_rows(shard_dsn) == 0, seed
                assert await flip_chain_breaks(shard_dsn) == 0, seed

    run(body())
