"""Apprise delivery end to end, using apprise's json:// service against a loopback receiver."""

from __future__ import annotations

import asyncio
import json

from serverlord.alerting.deliverer import Deliverer
from serverlord.alerting.settings import AlertSettings
from serverlord.clock import FakeClock
from tests.receivers import (
    ALLOW_LOOPBACK,
    ChannelBook,
    HttpReceiver,
    enqueue_event,
    fetch_notification,
    open_pool,
)


def test_apprise_json_service_gets_alert(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver() as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("apprise", {"urls": [f"json://127.0.0.1:{receiver.port}/alerts"]})
            rows = await enqueue_event(pool, [channel], clock.time())
            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK)

            await deliverer.deliver_due()
            await deliverer.close()

            assert (await fetch_notification(pool, rows[0].id))["status"] == "sent"
            assert len(receiver.requests) == 1
            sent = json.loads(receiver.requests[0].body)
            assert receiver.requests[0].target == "/alerts"
            assert sent["title"] == "DOWN | nightly backup"
            assert sent["type"] == "failure"
            assert "rsync: connection refused" in sent["message"]

    asyncio.run(scenario())


def test_apprise_failure_is_retried(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver("error") as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("apprise", {"urls": [f"json://127.0.0.1:{receiver.port}/alerts"]})
            rows = await enqueue_event(pool, [channel], clock.time())
            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK)

            await deliverer.deliver_due()
            await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            assert stored["status"] == "pending"
            assert stored["attempts"] == 1
            assert "apprise could not send to JSON" in stored["last_error"]

    asyncio.run(scenario())


def test_apprise_private_host_is_refused(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver() as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("apprise", {"urls": [f"json://127.0.0.1:{receiver.port}/alerts"]})
            rows = await enqueue_event(pool, [channel], clock.time())
            deliverer = Deliverer(pool, clock, book, settings=AlertSettings())

            await deliverer.deliver_due()
            await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            assert stored["status"] == "failed"
            assert "WEBHOOK_ALLOWED_NETWORKS" in stored["last_error"]
            assert receiver.requests == []

    asyncio.run(scenario())
