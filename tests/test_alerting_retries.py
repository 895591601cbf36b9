"""Retries: a failing receiver gets a few quick retries with backoff, then a recorded failure."""

from __future__ import annotations

import asyncio
import random

from psycopg.rows import dict_row

from serverlord.alerting.deliverer import Deliverer, retry_delay
from serverlord.clock import FakeClock
from tests.receivers import (
    ALLOW_LOOPBACK,
    ChannelBook,
    HttpReceiver,
    enqueue_event,
    fetch_attempts,
    fetch_notification,
    open_pool,
)

CHECK_ID = "6f1b7a52-3c1e-4f0e-9a57-1b2f7e0d9c11"


def test_failing_webhook_retries_then_fails(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver("error") as receiver, open_pool(shard_dsn) as pool:
            async with pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO checks (id, status) VALUES (%s, 'down')", (CHECK_ID,)
                )
            channel = book.add("webhook", {"down": {"url": receiver.url()}, "up": None})
            rows = await enqueue_event(pool, [channel], clock.time(), check_id=CHECK_ID)
            deliverer = Deliverer(
                pool, clock, book, settings=ALLOW_LOOPBACK, max_attempts=4, backoff=2.0
            )

            delays = []
            for _ in range(4):
                before = clock.time()
                assert await deliverer.deliver_due() == 1
                stored = await fetch_notification(pool, rows[0].id)
                delays.append(stored["due"].timestamp() - before)
                clock.set(stored["due"].timestamp())

            # Nothing is left to claim, however long the clock runs.
            clock.advance(30 * 86400)
            assert await deliverer.deliver_due() == 0
            await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            attempts = await fetch_attempts(pool, rows[0].id)
            assert stored["status"] == "failed"
            assert stored["attempts"] == 4
            assert "the receiver answered 500" in stored["last_error"]
            assert [a["status_code"] for a in attempts] == [500, 500, 500, 500]
            assert [a["outcome"] for a in attempts] == ["failed"] * 4
            assert len(receiver.requests) == 4
            keys = {request.headers["idempotency-key"] for request in receiver.requests}
            assert keys == {str(rows[0].id)}
            # Backoff doubles from 2 s, each delay scaled by a jitter factor of 0.5 to 1.
            assert 1.0 <= delays[0] <= 2.0
            assert 2.0 <= delays[1] <= 4.0
            assert 4.0 <= delays[2] <= 8.0

            async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
                await cursor.execute("SELECT * FROM channel_failures")
                failures = await cursor.fetchall()
                await cursor.execute("SELECT status FROM checks WHERE id = %s", (CHECK_ID,))
                check = await cursor.fetchone()
            assert len(failures) == 1
            assert failures[0]["channel_id"] == channel.id
            assert failures[0]["failures"] == 1
            assert failures[0]["last_notification_id"] == rows[0].id
            assert check == {"status": "down"}

    asyncio.run(scenario())


def test_client_error_fails_without_retry(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver("status", status=404) as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": receiver.url()}, "up": None})
            rows = await enqueue_event(pool, [channel], clock.time())
            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK)

            await deliverer.deliver_due()
            clock.advance(3600)
            assert await deliverer.deliver_due() == 0
            await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            assert stored["status"] == "failed"
            assert stored["attempts"] == 1
            assert len(receiver.requests) == 1

    asyncio.run(scenario())


def test_retry_after_lengthens_backoff(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        receiver = HttpReceiver("status", status=429, response_headers={"Retry-After": "120"})
        async with receiver, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": receiver.url()}, "up": None})
            rows = await enqueue_event(pool, [channel], clock.time())
            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK)

            await deliverer.deliver_due()
            await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            assert stored["status"] == "pending"
            assert stored["due"].timestamp() - clock.time() == 120.0

    asyncio.run(scenario())


def test_retry_delay_is_capped() -> None:
    rng = random.Random(7)
    delays = [retry_delay(attempt, 2.0, 60.0, rng) for attempt in range(1, 12)]
    assert max(delays) <= 60.0
    assert delays[10] >= 30.0
    assert retry_delay(1, 2.0, 60.0, rng, retry_after=10_000.0) == 60.0
