"""A receiver that never responds occupies one send slot and delays no other notification.

Claims queued behind busy slots are released when the deliverer stops.
"""

from __future__ import annotations

import asyncio

from serverlord.alerting.deliverer import Deliverer
from serverlord.clock import FakeClock
from tests.receivers import (
    ALLOW_LOOPBACK,
    ChannelBook,
    HttpReceiver,
    enqueue_event,
    eventually,
    fetch_notification,
    open_pool,
)


def test_hanging_channel_does_not_block_others(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with (
            HttpReceiver("hang") as hanging,
            HttpReceiver() as healthy,
            open_pool(shard_dsn) as pool,
        ):
            stuck = book.add("webhook", {"down": {"url": hanging.url()}, "up": None})
            fine = book.add("webhook", {"down": {"url": healthy.url()}, "up": None})
            stuck_rows = await enqueue_event(pool, [stuck], clock.time(), check_id=_check(0))
            fine_rows = []
            for index in range(1, 6):
                fine_rows += await enqueue_event(pool, [fine], clock.time(), check_id=_check(index))

            # Two slots: the hanging send occupies one, and everything else must use the other.
            deliverer = Deliverer(
                pool, clock, book, settings=ALLOW_LOOPBACK, concurrency=2, timeout=60.0
            )
            runner = asyncio.create_task(deliverer.run())
            await hanging.wait_for_requests(1)
            await healthy.wait_for_requests(5)

            async def all_fine_sent() -> bool:
                rows = [await fetch_notification(pool, row.id) for row in fine_rows]
                return all(row["status"] == "sent" for row in rows)

            await eventually(all_fine_sent, "every notification to the healthy receiver is sent")
            stuck_row = await fetch_notification(pool, stuck_rows[0].id)
            await deliverer.close()
            await runner

            assert stuck_row["status"] == "pending"
            assert stuck_row["claim_token"] is not None
            assert stuck_row["attempts"] == 1
            assert len(hanging.requests) == 1
            assert len(healthy.requests) == 5

    asyncio.run(scenario())


def test_queued_claim_released_on_close(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver("hang") as hanging, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": hanging.url()}, "up": None})
            # Due first, so it is claimed first and takes the only slot.
            sending = await enqueue_event(pool, [channel], clock.time() - 10, check_id=_check(0))
            queued = await enqueue_event(pool, [channel], clock.time(), check_id=_check(1))
            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK, concurrency=1)
            runner = asyncio.create_task(deliverer.run())
            await hanging.wait_for_requests(1)

            async def both_claimed() -> bool:
                row = await fetch_notification(pool, queued[0].id)
                return row["claim_token"] is not None

            await eventually(both_claimed, "the second notification is claimed too")
            await deliverer.close()
            await runner

            sending_row = await fetch_notification(pool, sending[0].id)
            queued_row = await fetch_notification(pool, queued[0].id)
            # The cancelled send keeps its claim until the lease expires, because the
            # receiver may have the request. The queued one was never sent.
            assert sending_row["claim_token"] is not None
            assert sending_row["attempts"] == 1
            assert queued_row["claim_token"] is None
            assert queued_row["lease_expires"] is None
            assert queued_row["attempts"] == 0
            assert len(hanging.requests) == 1

    asyncio.run(scenario())


def _check(index: int) -> str:
    return f"00000000-0000-4000-8000-{index:012d}"
