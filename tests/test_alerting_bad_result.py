"""A result that the database rejects is dropped alone, and the other results are stored."""

from __future__ import annotations

import asyncio

from serverlord.alerting.channels import Channel
from serverlord.alerting.deliverer import Deliverer
from serverlord.alerting.notifications import Notification
from serverlord.alerting.transports import AttemptResult, Outcome
from serverlord.clock import FakeClock
from tests.receivers import (
    ChannelBook,
    enqueue_event,
    fetch_attempts,
    fetch_notification,
    open_pool,
)


class ScriptedTransport:
    """Returns, for each channel name, a fixed result without sending anything."""

    def __init__(self, results: dict[str, AttemptResult]) -> None:
        self.results = results

    async def send(self, channel: Channel, notification: Notification) -> AttemptResult:
        return self.results[channel.name]

    async def close(self) -> None:
        return None


def test_bad_result_does_not_block_others(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        good = book.add("webhook", {"down": {"url": "https://a.example.com/"}, "up": None}, "good")
        bad = book.add("webhook", {"down": {"url": "https://b.example.com/"}, "up": None}, "bad")
        # A status code outside PostgreSQL's integer range fails the whole statement.
        transport = ScriptedTransport(
            {
                "good": AttemptResult(Outcome.SENT, 200),
                "bad": AttemptResult(Outcome.SENT, 2**40),
            }
        )
        async with open_pool(shard_dsn) as pool:
            rows = await enqueue_event(pool, [good, bad], clock.time())
            deliverer = Deliverer(pool, clock, book, transports={"webhook": transport})

            assert await deliverer.deliver_due() == 2
            await deliverer.close()

            by_channel = {row.channel_id: row.id for row in rows}
            stored_good = await fetch_notification(pool, by_channel[good.id])
            stored_bad = await fetch_notification(pool, by_channel[bad.id])
            assert stored_good["status"] == "sent"
            assert len(await fetch_attempts(pool, by_channel[good.id])) == 1
            # The bad row keeps its claim, so it is sent again once the lease expires.
            assert stored_bad["status"] == "pending"
            assert stored_bad["claim_token"] is not None
            assert deliverer.sent == 1

    asyncio.run(scenario())


def test_nul_in_error_is_replaced(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        channel = book.add("webhook", {"down": {"url": "https://a.example.com/"}, "up": None})
        transport = ScriptedTransport(
            {"ops": AttemptResult(Outcome.REJECTED, 400, "the receiver answered 400: a\x00b")}
        )
        async with open_pool(shard_dsn) as pool:
            rows = await enqueue_event(pool, [channel], clock.time())
            deliverer = Deliverer(pool, clock, book, transports={"webhook": transport})

            await deliverer.deliver_due()
            await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            assert stored["status"] == "failed"
            assert stored["last_error"] == "the receiver answered 400: a\ufffdb"

    asyncio.run(scenario())
