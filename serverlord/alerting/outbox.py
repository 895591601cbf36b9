"""SQL of the alert outbox: enqueue in the event's transaction, claim, finish, prune.

Every change to a claimed row is one conditional UPDATE on its claim token, so a
deliverer whose lease expired and whose row another deliverer took cannot overwrite the
newer claim's result.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import psycopg
from psycopg.types.json import Jsonb

from serverlord.alerting.notifications import Notification, NotificationRow
from serverlord.alerting.policy import NotificationKind
from serverlord.alerting.transports import AttemptResult

INSERT_SQL = (
    "INSERT INTO notifications"
    " (id, check_id, event_time, channel_id, kind, payload, created, due)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (id) DO NOTHING"
)

_CLAIM_SQL = """
UPDATE notifications AS n
SET claim_token = %(token)s, lease_expires = %(lease_expires)s, attempts = n.attempts + 1
FROM (
    SELECT id FROM notifications
    WHERE status = 'pending' AND due <= %(now)s
      AND (lease_expires IS NULL OR lease_expires <= %(now)s)
    ORDER BY due
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS ready
WHERE n.id = ready.id
RETURNING n.id, n.check_id, n.channel_id, n.kind, n.payload, n.created, n.attempts
"""


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One finished delivery try, as stored in notification_attempts."""

    notification_id: uuid.UUID
    attempt: int
    started: float
    duration: float
    result: AttemptResult


def ts(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def enqueue_params(rows: Sequence[NotificationRow]) -> list[tuple[Any, ...]]:
    """Return the parameters of INSERT_SQL for `rows`, one tuple per row."""
    return [
        (
            row.id,
            row.check_id,
            ts(row.event_time),
            row.channel_id,
            row.kind,
            Jsonb(row.payload, dumps=_dumps),
            ts(row.created),
            ts(row.due),
        )
        for row in rows
    ]


async def enqueue(cursor: psycopg.AsyncCursor[Any], rows: Sequence[NotificationRow]) -> None:
    """Insert `rows` with `cursor`, inside the caller's transaction.

    Call it in the transaction that stores the flip, so that the flip and its
    notifications commit or roll back together. A row whose event id is already stored
    is skipped, which makes a repeated enqueue of one event harmless.
    """
    if rows:
        await cursor.executemany(INSERT_SQL, enqueue_params(rows))


async def claim(
    conn: psycopg.AsyncConnection[Any], token: uuid.UUID, now: float, lease: float, limit: int
) -> list[Notification]:
    """Claim up to `limit` due notifications for `lease` seconds and return them."""
    async with conn.transaction():
        cursor = await conn.execute(
            _CLAIM_SQL,
            {"token": token, "now": ts(now), "lease_expires": ts(now + lease), "limit": limit},
        )
        rows = await cursor.fetchall()
    return [
        Notification(
            id=row[0],
            check_id=row[1],
            channel_id=row[2],
            kind=cast(NotificationKind, row[3]),
            payload=row[4],
            created=row[5].timestamp(),
            attempts=row[6],
        )
        for row in rows
    ]


async def next_due(conn: psycopg.AsyncConnection[Any]) -> float | None:
    """Return when the earliest pending notification may be claimed, or None."""
    cursor = await conn.execute(
        "SELECT min(greatest(due, coalesce(lease_expires, due)))"
        " FROM notifications WHERE status = 'pending'"
    )
    row = await cursor.fetchone()
    return None if row is None or row[0] is None else float(row[0].timestamp())


async def finish(
    conn: psycopg.AsyncConnection[Any],
    notification_id: uuid.UUID,
    token: uuid.UUID,
    status: str,
    now: float,
    error: str | None,
    attempt: AttemptRecord | None,
) -> bool:
    """Mark a claimed notification sent, failed or skipped.

    Returns False, changing nothing, when the claim was lost to another deliverer.
    """
    async with conn.transaction():
        cursor = await conn.execute(
            "UPDATE notifications SET status = %s, finished = %s, last_error = %s,"
            " claim_token = NULL, lease_expires = NULL"
            " WHERE id = %s AND claim_token = %s AND status = 'pending'",
            (status, ts(now), error, notification_id, token),
        )
        if cursor.rowcount != 1:
            return False
        if attempt is not None:
            await _record_attempt(conn, attempt)
    return True


async def reschedule(
    conn: psycopg.AsyncConnection[Any],
    notification_id: uuid.UUID,
    token: uuid.UUID,
    due: float,
    error: str | None,
    attempt: AttemptRecord,
) -> bool:
    """Release a claimed notification for a retry at `due`.

    Returns False, changing nothing, when the claim was lost to another deliverer.
    """
    async with conn.transaction():
        cursor = await conn.execute(
            "UPDATE notifications SET due = %s, last_error = %s,"
            " claim_token = NULL, lease_expires = NULL"
            " WHERE id = %s AND claim_token = %s AND status = 'pending'",
            (ts(due), error, notification_id, token),
        )
        if cursor.rowcount != 1:
            return False
        await _record_attempt(conn, attempt)
    return True


async def record_channel_failure(
    conn: psycopg.AsyncConnection[Any],
    channel_id: uuid.UUID,
    notification_id: uuid.UUID,
    now: float,
    error: str,
) -> None:
    await conn.execute(
        "INSERT INTO channel_failures"
        " (channel_id, failures, last_failed, last_error, last_notification_id)"
        " VALUES (%s, 1, %s, %s, %s)"
        " ON CONFLICT (channel_id) DO UPDATE SET failures = channel_failures.failures + 1,"
        " last_failed = excluded.last_failed, last_error = excluded.last_error,"
        " last_notification_id = excluded.last_notification_id",
        (channel_id, ts(now), error, notification_id),
    )


async def _record_attempt(conn: psycopg.AsyncConnection[Any], attempt: AttemptRecord) -> None:
    result = attempt.result
    await conn.execute(
        "INSERT INTO notification_attempts"
        " (notification_id, attempt, started, duration_s, outcome, status_code, error)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            attempt.notification_id,
            attempt.attempt,
            ts(attempt.started),
            attempt.duration,
            result.outcome.value,
            result.status_code,
            result.error,
        ),
    )


async def prune(conn: psycopg.AsyncConnection[Any], before: float) -> int:
    """Delete finished notifications (and their attempts) older than `before`."""
    cursor = await conn.execute(
        "DELETE FROM notifications WHERE status <> 'pending' AND finished < %s", (ts(before),)
    )
    return cursor.rowcount


async def cancel_pending(
    cursor: psycopg.AsyncCursor[Any], check_id: str, now: float, reason: str
) -> int:
    """Mark the check's pending, unclaimed notifications skipped; return how many.

    Runs inside the caller's transaction, e.g. to drop a down alert that was held for a
    start-up quiet period when the check pings again. A notification already claimed
    is being sent and is left alone.
    """
    await cursor.execute(
        "UPDATE notifications SET status = 'skipped', finished = %s, last_error = %s"
        " WHERE check_id = %s AND status = 'pending' AND claim_token IS NULL",
        (ts(now), reason, check_id),
    )
    return cursor.rowcount


async def delete_for_checks(cursor: psycopg.AsyncCursor[Any], check_ids: Sequence[str]) -> None:
    """Delete every notification of the given checks, inside the caller's transaction."""
    await cursor.execute(
        "DELETE FROM notifications WHERE check_id = ANY(%s::uuid[])", (list(check_ids),)
    )
