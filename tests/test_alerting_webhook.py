"""Webhook delivery end to end: outbox row -> Deliverer -> loopback HTTP receiver."""

from __future__ import annotations

import asyncio
import json

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


def test_down_and_up_webhooks_arrive(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver() as receiver, open_pool(shard_dsn) as pool:
            channel = book.add(
                "webhook",
                {
                    "down": {
                        "url": receiver.url("/down/$CODE"),
                        "body": '{"text": "$NAME is $STATUS", "exit": "$EXITSTATUS"}',
                        "headers": {"Content-Type": "application/json", "X-Token": "t0ken-1"},
                    },
                    "up": {"method": "GET", "url": receiver.url("/up?name=$NAME&tags=$TAGS")},
                },
            )
            down = await enqueue_event(pool, [channel], clock.time(), kind="down")
            clock.advance(60)
            up = await enqueue_event(pool, [channel], clock.time(), kind="up")
            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK)

            assert await deliverer.deliver_due() == 2
            await deliverer.close()

            by_method = {request.method: request for request in receiver.requests}
            down_request, up_request = by_method["POST"], by_method["GET"]
            assert down_request.target == "/down/6f1b7a52-3c1e-4f0e-9a57-1b2f7e0d9c11"
            assert json.loads(down_request.body) == {"text": "nightly backup is down", "exit": "1"}
            assert down_request.headers["content-type"] == "application/json"
            assert down_request.headers["x-token"] == "t0ken-1"
            assert down_request.headers["idempotency-key"] == str(down[0].id)
            assert up_request.target == "/up?name=nightly%20backup&tags=prod%20db"
            assert up_request.body == b""
            assert up_request.headers["idempotency-key"] == str(up[0].id)

            stored = await fetch_notification(pool, down[0].id)
            assert stored["status"] == "sent"
            assert stored["attempts"] == 1
            attempts = await fetch_attempts(pool, down[0].id)
            assert [(a["outcome"], a["status_code"]) for a in attempts] == [("sent", 200)]

    asyncio.run(scenario())


def test_switched_off_event_is_skipped(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver() as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": receiver.url()}, "up": None})
            rows = await enqueue_event(pool, [channel], clock.time(), kind="up")
            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK)

            await deliverer.deliver_due()
            await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            assert stored["status"] == "skipped"
            assert "does not take up notifications" in stored["last_error"]
            assert receiver.requests == []

    asyncio.run(scenario())


def test_redirect_within_host_is_followed(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver() as target, open_pool(shard_dsn) as pool:
            async with HttpReceiver("redirect", location=target.url("/moved")) as redirector:
                channel = book.add("webhook", {"down": {"url": redirector.url()}, "up": None})
                rows = await enqueue_event(pool, [channel], clock.time())
                deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK)

                await deliverer.deliver_due()
                await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            assert stored["status"] == "sent"
            assert [request.target for request in target.requests] == ["/moved"]

    asyncio.run(scenario())


def test_redirect_to_other_host_is_rejected(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver(host="127.0.0.2") as elsewhere, open_pool(shard_dsn) as pool:
            async with HttpReceiver("redirect", location=elsewhere.url("/x")) as redirector:
                channel = book.add("webhook", {"down": {"url": redirector.url()}, "up": None})
                rows = await enqueue_event(pool, [channel], clock.time())
                deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK)

                await deliverer.deliver_due()
                await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            assert stored["status"] == "failed"
            assert "redirected to another host" in stored["last_error"]
            assert elsewhere.requests == []

    asyncio.run(scenario())


def test_slow_receiver_times_out(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver("slow", delay=12.0) as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": receiver.url()}, "up": None})
            rows = await enqueue_event(pool, [channel], clock.time())
            # A short timeout replaces the 10 s default, so the test does not wait 10 s.
            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK, timeout=0.3)

            await deliverer.deliver_due()
            await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            attempts = await fetch_attempts(pool, rows[0].id)
            assert stored["status"] == "pending"
            assert stored["due"].timestamp() > clock.time()
            assert [attempt["outcome"] for attempt in attempts] == ["timeout"]
            assert len(receiver.requests) == 1

    asyncio.run(scenario())
