"""Notifications left by a stopped deliverer are sent by the next one, under the same id."""

from __future__ import annotations

import asyncio

from serverlord.alerting.deliverer import Deliverer
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

LEASE = 70.0


def test_claimed_notification_is_resent_after_restart(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver("hang") as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": receiver.url()}, "up": None})
            rows = await enqueue_event(pool, [channel], clock.time())

            first = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK, lease=LEASE)
            runner = asyncio.create_task(first.run())
            await receiver.wait_for_requests(1)
            runner.cancel()  # the process dies in the middle of the send
            await asyncio.gather(runner, return_exceptions=True)
            await first.close()

            receiver.mode = "ok"
            second = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK, lease=LEASE)
            assert await second.deliver_due() == 0  # the dead claim's lease still runs
            clock.advance(LEASE)
            assert await second.deliver_due() == 1
            await second.close()

            stored = await fetch_notification(pool, rows[0].id)
            assert stored["status"] == "sent"
            assert stored["attempts"] == 2
            keys = [request.headers["idempotency-key"] for request in receiver.requests]
            assert keys == [str(rows[0].id), str(rows[0].id)]
            assert [a["attempt"] for a in await fetch_attempts(pool, rows[0].id)] == [2]

    asyncio.run(scenario())


def test_pending_notification_is_sent_after_restart(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver() as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": receiver.url()}, "up": None})
            first = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK)
            await first.close()  # stopped before it claimed anything
            rows = await enqueue_event(pool, [channel], clock.time())

            second = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK)
            assert await second.deliver_due() == 1
            await second.close()

            assert (await fetch_notification(pool, rows[0].id))["status"] == "sent"
            assert receiver.requests[0].headers["idempotency-key"] == str(rows[0].id)

    asyncio.run(scenario())


def test_interrupted_last_attempt_is_failed(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver("hang") as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": receiver.url()}, "up": None})
            rows = await enqueue_event(pool, [channel], clock.time())
            first = Deliverer(
                pool, clock, book, settings=ALLOW_LOOPBACK, lease=LEASE, max_attempts=1
            )
            runner = asyncio.create_task(first.run())
            await receiver.wait_for_requests(1)
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await first.close()

            clock.advance(LEASE)
            second = Deliverer(
                pool, clock, book, settings=ALLOW_LOOPBACK, lease=LEASE, max_attempts=1
            )
            await second.deliver_due()
            await second.close()

            stored = await fetch_notification(pool, rows[0].id)
            assert stored["status"] == "failed"
            assert "interrupted" in stored["last_error"]
            assert len(receiver.requests) == 1

    asyncio.run(scenario())
