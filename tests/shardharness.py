"""A shard service on a real database, driven by a fake clock, for deadline tests.

Time moves only when a test says so: `at(...)` sets the clock and fires every deadline
that is due, exactly as the engine's loop would, and `settle()` waits for the commits.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from serverlord.clock import FakeClock
from serverlord.shardproc.service import ShardService


def ts(text: str) -> float:
    """Parse an ISO 8601 instant such as 2024-06-03T05:10Z into epoch seconds."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


# The fields of a new check that the tests do not set.
CHECK_DEFAULTS: dict[str, Any] = {
    "project_id": None,
    "name": "job",
    "slug": "",
    "tags": "",
    "description": "",
    "kind": "simple",
    "timeout_s": 3600,
    "grace_s": 300,
    "schedule": "* * * * *",
    "tz": "UTC",
    "max_runtime_s": None,
    "manual_resume": False,
    "methods": "",
}


class Harness:
    def __init__(self, service: ShardService, clock: FakeClock, dsn: str) -> None:
        self.service = service
        self.clock = clock
        self.dsn = dsn

    def at(self, when: str | float) -> None:
        """Move the clock to `when` and fire what is due, as the engine loop would."""
        target = ts(when) if isinstance(when, str) else when
        if target > self.clock.time():
            self.clock.set(target)
        self.service.engine.fire_due(self.clock.time())

    async def settle(self) -> None:
        await self.service.writer.barrier()

    async def create(self, **fields: Any) -> str:
        check_id = str(uuid.uuid4())
        status, body = await self.service.handle(
            "create", {"id": check_id, "fields": {**CHECK_DEFAULTS, **fields}}
        )
        assert status == 201, body
        return check_id

    async def ping(
        self,
        check_id: str,
        signal: str = "success",
        at: str | float | None = None,
        rid: str | None = None,
        method: str = "GET",
        exitstatus: int | None = None,
    ) -> dict[str, Any]:
        if at is not None:
            self.at(at)
        status, body = await self.service.handle(
            "ping",
            {
                "id": check_id,
                "signal": signal,
                "rid": rid,
                "method": method,
                "exitstatus": exitstatus,
            },
        )
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    async def op(self, op: str, check_id: str, **args: Any) -> tuple[int, Any]:
        return await self.service.handle(op, {"id": check_id, **args})

    def status(self, check_id: str) -> str:
        return self.service.checks[check_id].status_at(self.clock.time())

    def deadline(self, check_id: str) -> float | None:
        return self.service.checks[check_id].deadline()

    async def flips(self, check_id: str) -> list[tuple[str, str, str, str]]:
        """Return the stored flips of a check as (time, old, new, reason), oldest first."""
        await self.settle()
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            cursor = await conn.execute(
                "SELECT created, old_status, new_status, reason FROM flips"
                " WHERE check_id = %s ORDER BY created, id",
                (check_id,),
            )
            rows = await cursor.fetchall()
        return [(iso(row[0].timestamp()) or "", row[1], row[2], row[3]) for row in rows]

    async def held_flips(self, check_id: str) -> list[tuple[str, str | None]]:
        await self.settle()
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            cursor = await conn.execute(
                "SELECT created, hold_until FROM flips WHERE check_id = %s AND new_status = 'down'"
                " ORDER BY created",
                (check_id,),
            )
            rows = await cursor.fetchall()
        return [
            (iso(row[0].timestamp()) or "", None if row[1] is None else iso(row[1].timestamp()))
            for row in rows
        ]


@asynccontextmanager
async def harness(
    dsn: str,
    start: str = "2024-01-01T00:00Z",
    quiet_period: float | None = None,
    commit_linger: float = 0.0,
) -> AsyncIterator[Harness]:
    token = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO shard_owner (id, token, pid, host) VALUES (1, %s, 0, 'test')"
            " ON CONFLICT (id) DO UPDATE SET token = excluded.token",
            (token,),
        )
    clock = FakeClock(ts(start))
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(dsn, min_size=1, max_size=3, open=False)
    await pool.open(wait=True)
    service = ShardService(
        0, pool, clock, 2, token, quiet_period=quiet_period, commit_linger=commit_linger
    )
    await service.load()
    writer = asyncio.create_task(service.writer.run())
    try:
        yield Harness(service, clock, dsn)
    finally:
        await service.writer.close()
        await asyncio.wait_for(writer, 10)
        await pool.close()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
