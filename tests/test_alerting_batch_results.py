"""Results of many sends are stored in one statement, each only while its claim holds."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from serverlord.alerting.notifications import Notification
from serverlord.alerting.outbox import (
    AttemptRecord,
    NotificationUpdate,
    UpdateStatus,
    claim,
    store_results,
)
from serverlord.alerting.transports import AttemptResult, Outcome
from tests.receivers import (
    ChannelBook,
    enqueue_event,
    fetch_attempts,
    fetch_notification,
    open_pool,
)

T0 = 1_700_000_000.0
LEASE = 70.0


async def claim_all(pool: AsyncConnectionPool[Any], token: uuid.UUID) -> list[Notification]:
    async with pool.connection() as conn, conn.transaction():
        claimed = await claim(conn, token, T0, LEASE, 100)
    return sorted(claimed, key=lambda notification: str(notification.check_id))


def update(
    notification: Notification,
    token: uuid.UUID,
    status: UpdateStatus,
    at: float,
    outcome: Outcome,
    error: str | None = None,
) -> NotificationUpdate:
    result = AttemptResult(outcome, 200 if outcome is Outcome.SENT else 500, error)
    record = AttemptRecord(notification.id, notification.attempts, T0, 0.01, result)
    return NotificationUpdate(
        notification.id, notification.channel_id, token, status, at, error, record
    )


async def store(pool: AsyncConnectionPool[Any], updates: list[NotificationUpdate]) -> set[Any]:
    async with pool.connection() as conn, conn.transaction():
        return await store_results(conn, updates)


def test_batch_stores_each_result(shard_dsn: str) -> None:
    async def scenario() -> None:
        book = ChannelBook()
        channel = book.add("webhook", {"down": {"url": "https://example.com/"}, "up": None})
        async with open_pool(shard_dsn) as pool:
            for index in range(4):
                await enqueue_event(pool, [channel], T0, check_id=_check(index))
            token = uuid.uuid4()
            sent, retried, failed, lost = await claim_all(pool, token)

            stored_ids = await store(
                pool,
                [
                    update(sent, token, "sent", T0 + 1, Outcome.SENT),
                    update(retried, token, "pending", T0 + 60, Outcome.FAILED, "answered 503"),
                    update(failed, token, "failed", T0 + 2, Outcome.FAILED, "answered 500"),
                    update(lost, uuid.uuid4(), "sent", T0 + 3, Outcome.SENT),
                ],
            )

            assert stored_ids == {sent.id, retried.id, failed.id}
            rows = {
                n.id: await fetch_notification(pool, n.id) for n in (sent, retried, failed, lost)
            }
            assert rows[sent.id]["status"] == "sent"
            assert rows[sent.id]["finished"].timestamp() == T0 + 1
            assert rows[sent.id]["claim_token"] is None
            assert rows[retried.id]["status"] == "pending"
            assert rows[retried.id]["due"].timestamp() == T0 + 60
            assert rows[retried.id]["finished"] is None
            assert rows[retried.id]["last_error"] == "answered 503"
            assert rows[retried.id]["claim_token"] is None
            assert rows[failed.id]["status"] == "failed"
            assert rows[failed.id]["last_error"] == "answered 500"
            # A result under a token that no longer matches changes nothing.
            assert rows[lost.id]["status"] == "pending"
            assert rows[lost.id]["claim_token"] == token
            assert await fetch_attempts(pool, lost.id) == []
            sent_attempts = await fetch_attempts(pool, sent.id)
            assert [(a["attempt"], a["outcome"], a["status_code"]) for a in sent_attempts] == [
                (1, "sent", 200)
            ]
            retried_attempts = await fetch_attempts(pool, retried.id)
            assert [a["error"] for a in retried_attempts] == ["answered 503"]

    asyncio.run(scenario())


def test_failures_counted_per_channel(shard_dsn: str) -> None:
    async def scenario() -> None:
        book = ChannelBook()
        first = book.add("webhook", {"down": {"url": "https://a.example.com/"}, "up": None})
        second = book.add("webhook", {"down": {"url": "https://b.example.com/"}, "up": None})
        async with open_pool(shard_dsn) as pool:
            for index, channel in enumerate((first, first, second)):
                await enqueue_event(pool, [channel], T0, check_id=_check(index))
            token = uuid.uuid4()
            earlier, later, other = await claim_all(pool, token)

            await store(
                pool,
                [
                    update(later, token, "failed", T0 + 5, Outcome.FAILED, "later error"),
                    update(earlier, token, "failed", T0 + 1, Outcome.FAILED, "earlier error"),
                    update(other, token, "failed", T0 + 2, Outcome.FAILED, "other error"),
                ],
            )

            async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
                await cursor.execute("SELECT * FROM channel_failures")
                failures = {row["channel_id"]: row for row in await cursor.fetchall()}
            assert failures[first.id]["failures"] == 2
            assert failures[first.id]["last_error"] == "later error"
            assert failures[first.id]["last_notification_id"] == later.id
            assert failures[first.id]["last_failed"].timestamp() == T0 + 5
            assert failures[second.id]["failures"] == 1
            assert failures[second.id]["last_notification_id"] == other.id

    asyncio.run(scenario())


def _check(index: int) -> str:
    return f"00000000-0000-4000-8000-{index:012d}"
