"""Outbox: notifications commit or roll back with their flip, once per event id."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from serverlord.alerting.notifications import build_payload, notification_rows
from serverlord.alerting.outbox import cancel_pending, enqueue, finish, prune, ts
from serverlord.clock import FakeClock
from tests.receivers import ChannelBook, enqueue_event, open_pool

CHECK_ID = "6f1b7a52-3c1e-4f0e-9a57-1b2f7e0d9c11"
T0 = 1_700_000_000.0


class FlipFailed(Exception):
    pass


async def count(pool: AsyncConnectionPool[Any], table: str) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(f"SELECT count(*) FROM {table}")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def test_rolled_back_flip_leaves_no_notification(shard_dsn: str) -> None:
    async def scenario() -> None:
        payload = build_payload(check_id=CHECK_ID, name="job", status="down", event_time=T0)
        rows = notification_rows(CHECK_ID, T0, "down", [uuid.uuid4()], payload, T0)
        async with open_pool(shard_dsn) as pool:
            with pytest.raises(FlipFailed):
                async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                    await cur.execute(
                        "INSERT INTO flips (check_id, created, old_status, new_status, reason)"
                        " VALUES (%s, %s, 'up', 'down', 'fail')",
                        (CHECK_ID, ts(T0)),
                    )
                    await enqueue(cur, rows)
                    raise FlipFailed

            assert await count(pool, "flips") == 0
            assert await count(pool, "notifications") == 0

    asyncio.run(scenario())


def test_same_event_is_enqueued_once(shard_dsn: str) -> None:
    async def scenario() -> None:
        book = ChannelBook()
        channel = book.add("webhook", {"down": {"url": "https://example.com/"}, "up": None})
        async with open_pool(shard_dsn) as pool:
            first = await enqueue_event(pool, [channel], T0)
            again = await enqueue_event(pool, [channel], T0)

            assert first[0].id == again[0].id
            assert await count(pool, "notifications") == 1

    asyncio.run(scenario())


def test_one_row_per_channel(shard_dsn: str) -> None:
    async def scenario() -> None:
        book = ChannelBook()
        channels = [
            book.add("webhook", {"down": {"url": "https://example.com/"}, "up": None}),
            book.add("email", {"to": ["ops@example.com"]}),
        ]
        async with open_pool(shard_dsn) as pool:
            rows = await enqueue_event(pool, channels, T0)

            assert len({row.id for row in rows}) == 2
            assert await count(pool, "notifications") == 2

    asyncio.run(scenario())


def test_prune_keeps_pending_notifications(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock(T0)
        book = ChannelBook()
        channel = book.add("webhook", {"down": {"url": "https://example.com/"}, "up": None})
        async with open_pool(shard_dsn) as pool:
            done = await enqueue_event(pool, [channel], T0, kind="down")
            await enqueue_event(pool, [channel], T0, kind="up")
            token = uuid.uuid4()
            async with pool.connection() as conn:
                await conn.execute(
                    "UPDATE notifications SET claim_token = %s WHERE id = %s",
                    (token, done[0].id),
                )
                assert await finish(conn, done[0].id, token, "sent", T0, None, None)

                clock.advance(31 * 86400)
                deleted = await prune(conn, clock.time() - 30 * 86400)

            assert deleted == 1
            assert await count(pool, "notifications") == 1

    asyncio.run(scenario())


def test_finish_with_lost_claim_changes_nothing(shard_dsn: str) -> None:
    async def scenario() -> None:
        book = ChannelBook()
        channel = book.add("webhook", {"down": {"url": "https://example.com/"}, "up": None})
        async with open_pool(shard_dsn) as pool:
            rows = await enqueue_event(pool, [channel], T0)
            async with pool.connection() as conn:
                await conn.execute(
                    "UPDATE notifications SET claim_token = %s WHERE id = %s",
                    (uuid.uuid4(), rows[0].id),
                )
                claim_held = await finish(conn, rows[0].id, uuid.uuid4(), "sent", T0, None, None)
                cursor = await conn.execute(
                    "SELECT status FROM notifications WHERE id = %s", (rows[0].id,)
                )
                row = await cursor.fetchone()

            assert claim_held is False
            assert row == ("pending",)

    asyncio.run(scenario())


def test_cancel_pending_skips_unclaimed_rows(shard_dsn: str) -> None:
    async def scenario() -> None:
        book = ChannelBook()
        channel = book.add("webhook", {"down": {"url": "https://example.com/"}, "up": None})
        async with open_pool(shard_dsn) as pool:
            held = await enqueue_event(pool, [channel], T0, kind="down")
            sending = await enqueue_event(pool, [channel], T0, kind="reminder")
            other = await enqueue_event(pool, [channel], T0, check_id=str(uuid.uuid4()))
            async with pool.connection() as conn:
                await conn.execute(
                    "UPDATE notifications SET claim_token = %s WHERE id = %s",
                    (uuid.uuid4(), sending[0].id),
                )
                async with conn.cursor() as cursor:
                    cancelled = await cancel_pending(cursor, CHECK_ID, T0, "pinged again")
                cursor = await conn.execute(
                    "SELECT id, status FROM notifications ORDER BY kind, check_id"
                )
                statuses = {row[0]: row[1] for row in await cursor.fetchall()}

            assert cancelled == 1
            assert statuses[held[0].id] == "skipped"
            assert statuses[sending[0].id] == "pending"
            assert statuses[other[0].id] == "pending"

    asyncio.run(scenario())
