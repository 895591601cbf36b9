"""Flapping: a check flipping all day is rate-limited, and its final state is delivered."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from serverlord.alerting.deliverer import Deliverer
from serverlord.alerting.notifications import build_payload, notification_rows
from serverlord.alerting.outbox import enqueue, ts
from serverlord.alerting.policy import (
    DEFAULT_POLICY,
    Event,
    NotificationKind,
    PolicyConfig,
    PolicyState,
    decide,
    next_wakeup,
)
from serverlord.clock import FakeClock
from tests.receivers import ALLOW_LOOPBACK, ChannelBook, HttpReceiver, open_pool

T0 = 1_700_000_000.0
DAY = 86400.0
CHECK_ID = "6f1b7a52-3c1e-4f0e-9a57-1b2f7e0d9c11"


def flapping_day() -> list[tuple[float, Event]]:
    """1,440 down/up cycles in 24 hours: a failure at each minute, a success 30 s later."""
    events: list[tuple[float, Event]] = []
    for minute in range(1440):
        events.append((T0 + minute * 60, "fail"))
        events.append((T0 + minute * 60 + 30, "success"))
    return events


def test_flapping_day_sends_one_flapping_notice() -> None:
    config = DEFAULT_POLICY
    state: PolicyState | None = None
    sent: list[NotificationKind] = []
    for when, event in flapping_day():
        state, kinds = decide(state, config, event, when)
        sent += kinds

    threshold = config.flap_threshold
    assert threshold is not None
    assert sent.count("flapping") == 1
    assert len(sent) == threshold + 1
    assert sent[-1] == "flapping"

    settle_at = next_wakeup(state, config)
    assert settle_at == T0 + 1439 * 60 + 30 + config.flap_settle
    state, kinds = decide(state, config, "tick", settle_at)
    assert kinds == ["up"]


def test_flapping_final_down_is_delivered() -> None:
    config = PolicyConfig(flap_threshold=3, flap_settle=600)
    state: PolicyState | None = None
    sent: list[NotificationKind] = []
    for offset in range(11):  # fail, success, fail ... fail
        event: Event = "fail" if offset % 2 == 0 else "success"
        state, kinds = decide(state, config, event, T0 + offset * 10)
        sent += kinds
    assert sent == ["down", "up", "down", "flapping"]

    _, kinds = decide(state, config, "tick", T0 + 10 * 10 + 600)
    assert kinds == ["down"]


def test_flapping_holds_changes_until_settled() -> None:
    config = PolicyConfig(flap_threshold=2, flap_settle=600)
    events: list[tuple[float, Event]] = [
        (T0, "fail"),
        (T0 + 10, "success"),
        (T0 + 20, "fail"),  # third flip: flapping starts
        (T0 + 620, "tick"),  # settled down
        (T0 + 700, "success"),  # still flapping: held back
        (T0 + 1300, "tick"),  # settled up
    ]
    state: PolicyState | None = None
    sent = []
    for when, event in events:
        state, kinds = decide(state, config, event, when)
        sent.append(kinds)
    assert sent == [["down"], ["up"], ["flapping"], ["down"], [], ["up"]]


def test_flapping_ends_when_flips_slow_down() -> None:
    config = PolicyConfig(flap_threshold=2, flap_settle=600)
    state: PolicyState | None = None
    events: list[tuple[float, Event]] = [(T0, "fail"), (T0 + 10, "success"), (T0 + 20, "fail")]
    for when, event in events:
        state, _ = decide(state, config, event, when)
    state, kinds = decide(state, config, "tick", T0 + 620)
    assert kinds == ["down"]

    # Two days later the count has decayed, so the next flip is sent at once.
    state, kinds = decide(state, config, "success", T0 + 2 * DAY + 620)
    assert kinds == ["up"]
    assert state is not None
    assert not state.flapping


def test_flapping_check_keeps_every_flip(shard_dsn: str) -> None:
    """Every flip is stored with its notifications, and the deliveries stay few."""

    async def scenario() -> None:
        clock = FakeClock(T0)
        book = ChannelBook()
        async with HttpReceiver() as receiver, open_pool(shard_dsn) as pool:
            channel = book.add(
                "webhook", {"down": {"url": receiver.url()}, "up": {"url": receiver.url()}}
            )
            state: PolicyState | None = None
            events = flapping_day()
            # One transaction per hour of events, as the writer's group commit would batch them.
            for start in range(0, len(events), 120):
                async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                    for when, event in events[start : start + 120]:
                        state = await store_event(cur, state, event, when, channel.id)

            settle_at = next_wakeup(state, DEFAULT_POLICY)
            assert settle_at is not None
            clock.set(settle_at)
            async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                state = await store_event(cur, state, "tick", settle_at, channel.id)

            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK)
            delivered = await deliverer.deliver_due()
            await deliverer.close()

            async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
                await cursor.execute("SELECT count(*) AS n FROM flips")
                flips = await cursor.fetchone()
                await cursor.execute(
                    "SELECT id, kind, status FROM notifications ORDER BY event_time DESC"
                )
                notifications = await cursor.fetchall()

            assert flips == {"n": 2880}
            assert delivered == len(notifications)
            assert len(notifications) == (DEFAULT_POLICY.flap_threshold or 0) + 2
            assert [n["kind"] for n in notifications].count("flapping") == 1
            final = notifications[0]
            assert final["kind"] == "up"
            assert final["status"] == "sent"
            keys = {request.headers["idempotency-key"] for request in receiver.requests}
            assert str(final["id"]) in keys

    asyncio.run(scenario())


async def store_event(
    cursor: psycopg.AsyncCursor[Any],
    state: PolicyState | None,
    event: Event,
    when: float,
    channel_id: uuid.UUID,
) -> PolicyState | None:
    """Write the flip an event causes and its notifications with one cursor."""
    if event in ("fail", "success"):
        old, new = ("up", "down") if event == "fail" else ("down", "up")
        await cursor.execute(
            "INSERT INTO flips (check_id, created, old_status, new_status, reason)"
            " VALUES (%s, %s, %s, %s, %s)",
            (CHECK_ID, ts(when), old, new, event),
        )
    state, kinds = decide(state, DEFAULT_POLICY, event, when)
    for kind in kinds:
        status = {"down": "down", "up": "up"}.get(kind, "down" if event == "fail" else "up")
        payload = build_payload(
            check_id=CHECK_ID, name="flaky job", status=status, event_time=when, reason=event
        )
        await enqueue(cursor, notification_rows(CHECK_ID, when, kind, [channel_id], payload, when))
    return state
