"""Notifications as the shard process writes them and as the deliverer reads them back.

A notification is one message of one kind about one check to one channel. Its payload is
a JSON snapshot taken when the event happened (check name, status, last ping ...), so a
delivery an hour later, or after a restart, still reports what was true at the event.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from serverlord.alerting.policy import NotificationKind

# The ping body excerpt kept in a payload. healthchecks stores 10,000 bytes of a ping
# body by default, so the excerpt shows a healthchecks user as much as they are used to.
BODY_EXCERPT_LIMIT = 10_000

# Namespace of the event ids: uuid5 of (check, event time, kind, channel) in it gives the
# same id when the same event is enqueued twice, so the second insert is a no-op.
_EVENT_NAMESPACE = uuid.UUID("0b5f1a1e-5c2d-4c43-9a43-7f6f4d3b2e10")


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """A notification to insert in the outbox, in the transaction of its event."""

    id: uuid.UUID
    check_id: str
    event_time: float
    channel_id: uuid.UUID
    kind: NotificationKind
    payload: dict[str, Any]
    created: float
    due: float


@dataclass(frozen=True, slots=True)
class Notification:
    """A claimed notification, as the deliverer sends it."""

    id: uuid.UUID
    check_id: uuid.UUID
    channel_id: uuid.UUID
    kind: NotificationKind
    payload: dict[str, Any]
    created: float
    attempts: int
    """Attempts so far, counting the one this claim starts."""


def event_id(check_id: str, event_time: float, kind: str, channel_id: uuid.UUID) -> uuid.UUID:
    """Return the stable id of one event's notification to one channel."""
    return uuid.uuid5(_EVENT_NAMESPACE, f"{check_id.lower()}/{event_time!r}/{kind}/{channel_id}")


def notification_rows(
    check_id: str,
    event_time: float,
    kind: NotificationKind,
    channel_ids: Iterable[uuid.UUID],
    payload: dict[str, Any],
    now: float,
    delay: float = 0.0,
) -> list[NotificationRow]:
    """Return one row per channel for an event at `event_time`, due `delay` after `now`."""
    return [
        NotificationRow(
            id=event_id(check_id, event_time, kind, channel_id),
            check_id=check_id,
            event_time=event_time,
            channel_id=channel_id,
            kind=kind,
            payload=payload,
            created=now,
            due=now + delay,
        )
        for channel_id in channel_ids
    ]


def build_payload(
    *,
    check_id: str,
    name: str,
    status: str,
    event_time: float,
    slug: str = "",
    tags: str = "",
    description: str = "",
    reason: str = "",
    last_ping: float | None = None,
    body: bytes | str | None = None,
    exitstatus: int | None = None,
) -> dict[str, Any]:
    """Return the JSON snapshot that a notification's messages are made from.

    `status` is the check's status after the event (down, up or grace). `reason` is the
    flip's reason (fail, timeout, run-timeout, success). The ping body is decoded as
    UTF-8 with invalid bytes replaced, and cut to BODY_EXCERPT_LIMIT characters.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    truncated = text is not None and len(text) > BODY_EXCERPT_LIMIT
    return {
        "check_id": check_id,
        "name": name,
        "slug": slug,
        "tags": tags,
        "desc": description,
        "status": status,
        "reason": reason,
        "event_time": iso_time(event_time),
        "last_ping": None if last_ping is None else iso_time(last_ping),
        "body": None if text is None else text[:BODY_EXCERPT_LIMIT],
        "body_truncated": truncated,
        "exitstatus": exitstatus,
    }


def iso_time(epoch: float) -> str:
    """Format epoch seconds as ISO 8601 UTC with second precision."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
