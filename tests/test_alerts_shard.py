"""Notifications queued by the shard in the same transaction as their flips, on a fake clock.

The deliverer is not running here: the tests read the outbox rows the shard wrote.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import psycopg

from serverlord.alerting.notifications import BODY_EXCERPT_LIMIT
from tests.shardharness import Harness, harness, run, ts

CHANNEL = uuid.UUID("00000000-0000-4000-8000-00000000c0de")


async def with_channel(h: Harness, **fields: Any) -> str:
    check = await h.create(**fields)
    await h.settle()
    with psycopg.connect(h.dsn) as conn:
        conn.execute("UPDATE checks SET channels = %s WHERE id = %s", ([CHANNEL], check))
    return check


async def outbox(h: Harness, check: str) -> list[tuple[str, str, str]]:
    """Return (kind, status, payload status) of the check's notifications, oldest first."""
    await h.settle()
    with psycopg.connect(h.dsn) as conn:
        rows = conn.execute(
            "SELECT kind, status, payload->>'status' FROM notifications"
            " WHERE check_id = %s ORDER BY event_time, created",
            (check,),
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def play(dsn: str, scenario: Any, **options: Any) -> None:
    async def body() -> None:
        async with harness(dsn, **options) as h:
            await scenario(h)

    run(body())


def test_down_and_up_are_queued(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await with_channel(h, timeout_s=900, grace_s=300, name="backup")
        await h.ping(check, at="2024-01-01T10:00:00Z")
        assert await outbox(h, check) == []  # new -> up is silent
        h.at("2024-01-01T10:20:00Z")
        await h.ping(check, at="2024-01-01T10:30:00Z")
        assert await outbox(h, check) == [("down", "pending", "down"), ("up", "pending", "up")]
        with psycopg.connect(h.dsn) as conn:
            payload = conn.execute(
                "SELECT payload FROM notifications WHERE check_id = %s AND kind = 'down'",
                (check,),
            ).fetchone()
        assert payload is not None
        assert payload[0]["name"] == "backup"
        assert payload[0]["reason"] == "timeout"
        assert payload[0]["event_time"] == "2024-01-01T10:20:00+00:00"

    play(shard_dsn, scenario)


def test_fail_ping_queues_down_with_body(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await with_channel(h, timeout_s=900, grace_s=300)
        await h.ping(check, at="2024-01-01T10:00:00Z")
        status, _ = await h.service.handle(
            "ping",
            {"id": check, "signal": "fail", "exitstatus": 3, "body": "ZXJyb3I="},
        )
        assert status == 200
        with psycopg.connect(h.dsn) as conn:
            row = conn.execute(
                "SELECT payload FROM notifications WHERE check_id = %s", (check,)
            ).fetchone()
        assert row is not None
        assert row[0]["body"] == "error"
        assert row[0]["exitstatus"] == 3
        assert row[0]["reason"] == "fail"

    play(shard_dsn, scenario)


def test_paused_success_silent_fail_alerts(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await with_channel(h, timeout_s=3600, grace_s=600)
        await h.ping(check, at="2024-01-01T01:00:00Z")
        await h.op("pause", check)
        await h.ping(check, at="2024-01-01T02:00:00Z")
        assert await outbox(h, check) == []
        await h.op("pause", check)
        await h.ping(check, "fail", at="2024-01-01T03:00:00Z")
        assert await outbox(h, check) == [("down", "pending", "down")]

    play(shard_dsn, scenario)


def test_alert_after_two_misses(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await with_channel(h, timeout_s=600, grace_s=60, alert_after=2)
        await h.ping(check, at="2024-01-01T10:00:00Z")
        h.at("2024-01-01T10:11:00Z")
        assert h.status(check) == "down"
        assert await outbox(h, check) == []  # one miss is not enough
        h.at("2024-01-01T10:21:00Z")
        assert await outbox(h, check) == [("down", "pending", "down")]

    play(shard_dsn, scenario)


def test_late_notice_at_grace_start(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await with_channel(h, timeout_s=600, grace_s=300, late_notice=True)
        await h.ping(check, at="2024-01-01T10:00:00Z")
        h.at(ts("2024-01-01T10:09:59Z"))
        assert await outbox(h, check) == []
        h.at("2024-01-01T10:10:00Z")
        assert await outbox(h, check) == [("late", "pending", "grace")]
        h.at("2024-01-01T10:15:00Z")
        assert [row[0] for row in await outbox(h, check)] == ["late", "down"]

    play(shard_dsn, scenario)


def test_reminders_while_down(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await with_channel(h, timeout_s=600, grace_s=60, reminder_s=3600)
        await h.ping(check, at="2024-01-01T10:00:00Z")
        h.at("2024-01-01T10:11:00Z")
        h.at("2024-01-01T11:11:00Z")
        h.at("2024-01-01T12:11:00Z")
        kinds = [row[0] for row in await outbox(h, check)]
        assert kinds == ["down", "reminder", "reminder"]
        await h.ping(check, at="2024-01-01T12:30:00Z")
        h.at("2024-01-01T12:40:30Z")
        kinds = [row[0] for row in await outbox(h, check)]
        assert kinds == ["down", "reminder", "reminder", "up"]

    play(shard_dsn, scenario)


def test_quiet_period_drops_outage_alerts(shard_dsn: str) -> None:
    ids: dict[str, Any] = {}

    async def before(h: Harness) -> None:
        ids["quiet"] = [await with_channel(h, timeout_s=300, grace_s=300) for _ in range(50)]
        ids["down"] = await with_channel(h, timeout_s=300, grace_s=300)
        await h.ping(ids["down"], at="2024-01-01T09:00:00Z")
        h.at("2024-01-01T09:10:00Z")
        for check in ids["quiet"]:
            await h.ping(check, at="2024-01-01T09:59:00Z")
        await h.settle()
        assert [row[0] for row in await outbox(h, ids["down"])] == ["down"]

    async def after(h: Harness) -> None:
        h.at("2024-01-01T12:00:00Z")
        for index, check in enumerate(ids["quiet"]):
            await h.ping(check, at=ts("2024-01-01T12:00:00Z") + index * 5)
        await h.ping(ids["down"])
        for check in ids["quiet"]:
            rows = await outbox(h, check)
            assert [row for row in rows if row[1] == "pending"] == []
        assert [row[0] for row in await outbox(h, ids["down"])] == ["down", "up"]

    play(shard_dsn, before, start="2024-01-01T08:00Z")
    play(shard_dsn, after, start="2024-01-01T12:00Z")


def test_outage_alert_sent_when_still_silent(shard_dsn: str) -> None:
    ids: dict[str, str] = {}

    async def before(h: Harness) -> None:
        ids["check"] = await with_channel(h, timeout_s=300, grace_s=300)
        await h.ping(ids["check"], at="2024-01-01T09:59:00Z")
        await h.settle()

    async def after(h: Harness) -> None:
        h.at("2024-01-01T12:00:00Z")
        await h.settle()
        with psycopg.connect(h.dsn) as conn:
            row = conn.execute(
                "SELECT kind, status, due FROM notifications WHERE check_id = %s",
                (ids["check"],),
            ).fetchone()
        assert row is not None
        assert row[0] == "down"
        assert row[1] == "pending"
        assert row[2].timestamp() == ts("2024-01-01T12:05:00Z")

    play(shard_dsn, before, start="2024-01-01T08:00Z")
    play(shard_dsn, after, start="2024-01-01T12:00Z")


def test_flapping_check_rate_limited(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await with_channel(h, timeout_s=3600, grace_s=600)
        start = ts("2024-01-01T00:00:00Z")
        for minute in range(1440):
            signal = "fail" if minute % 2 == 0 else "success"
            await h.ping(check, signal, at=start + minute * 60)
        h.at(start + 1440 * 60 + 3600)
        flips = await h.flips(check)
        assert len(flips) == 1440
        kinds = [row[0] for row in await outbox(h, check)]
        assert kinds.count("flapping") == 1
        assert len(kinds) < 200
        assert kinds[-1] == "up"  # the final state is delivered

    play(shard_dsn, scenario)


def test_alert_document_keeps_every_field(shard_dsn: str) -> None:
    """A fail ping's notification keeps its times, cut body and exit status exactly."""
    body = ("\u00e9" * 5 + "\x00" + "x" * 20000).encode()

    async def scenario(h: Harness) -> None:
        check = await with_channel(h, timeout_s=900, grace_s=300, name='nightly "db"')
        await h.ping(check, at="2024-01-01T10:00:00Z")
        h.at("2024-01-01T10:05:00.123456Z")
        status, _ = await h.service.handle(
            "ping",
            {
                "id": check,
                "signal": "fail",
                "exitstatus": 255,
                "body": base64.b64encode(body).decode(),
            },
        )
        assert status == 200

        with psycopg.connect(h.dsn) as conn:
            row = conn.execute(
                "SELECT payload, extract(epoch FROM event_time)::float8, kind, channel_id"
                " FROM notifications WHERE check_id = %s",
                (check,),
            ).fetchone()
        assert row is not None
        payload, event_time, kind, channel = row

        assert abs(event_time - ts("2024-01-01T10:05:00.123456Z")) < 1e-5
        assert kind == "down"
        assert channel == CHANNEL
        assert payload["name"] == 'nightly "db"'
        assert payload["last_ping"] == "2024-01-01T10:05:00+00:00"
        assert payload["exitstatus"] == 255
        assert payload["body_truncated"] is True
        assert payload["body"].startswith("\u00e9" * 5 + "\ufffd" + "x")
        assert len(payload["body"]) == BODY_EXCERPT_LIMIT

    play(shard_dsn, scenario)
