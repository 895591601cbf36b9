"""Start-up loading: a check read from its row equals the check that was stored.

The loader converts ids, run ids and times in SQL and builds checks from tuples, while
a reload after a failed commit builds them with `check_from_row` from dict rows of
`SELECT *`. Both must give the same check, the same alert policy state and the same
armed deadlines.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from serverlord.alerting.policy import DEFAULT_POLICY
from serverlord.schedules import parse_schedule
from serverlord.shardproc import alerts
from serverlord.shardproc.checks import Check, check_from_row
from serverlord.shardproc.loader import _NextFireMemo
from serverlord.shardproc.service import ShardService
from tests.shardharness import Harness, harness, run

START = datetime(2024, 1, 1, tzinfo=UTC)

# A stored row for each kind, with microseconds in every time, an open run, a custom
# alert policy and the optional columns set.
STORED: dict[str, dict[str, Any]] = {
    "simple": {
        "kind": "simple",
        "schedule": "* * * * *",
        "tz": "UTC",
        "status": "up",
        "timeout_s": 900,
        "grace_s": 120,
        "last_ping": START - timedelta(seconds=100, microseconds=123_457),
        "last_start": START - timedelta(seconds=40, microseconds=999_999),
        "last_start_rid": uuid.UUID("8d9f4a53-2c3b-4bd1-9f34-7a1c2e0b5d11"),
        "last_duration_s": 12.345678,
        "alert_after": 2,
        "late_notice": True,
    },
    "cron": {
        "kind": "cron",
        "schedule": "*/15 9-17 * * 1-5",
        "tz": "America/New_York",
        "status": "down",
        "last_ping": START - timedelta(hours=30, microseconds=1),
        "recover_after": 3,
        "reminder_s": 3600,
        "max_runtime_s": 600,
    },
    "oncalendar": {
        "kind": "oncalendar",
        "schedule": "Mon *-*-* 08:30:00",
        "tz": "Europe/Riga",
        "status": "paused",
        "last_ping": START - timedelta(days=3, microseconds=500_001),
        "manual_resume": True,
        "methods": "POST",
        "slug": "weekly-report",
        "project_id": 7,
    },
}


def insert_check(dsn: str, **fields: Any) -> str:
    check_id = str(uuid.uuid4())
    row = {"id": check_id, "name": "stored", "n_pings": 41, **fields}
    columns = ", ".join(row)
    placeholders = ", ".join(["%s"] * len(row))
    with psycopg.connect(dsn) as conn:
        conn.execute(f"INSERT INTO checks ({columns}) VALUES ({placeholders})", list(row.values()))
    return check_id


def stored_row(dsn: str, check_id: str) -> dict[str, Any]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        row = conn.execute("SELECT * FROM checks WHERE id = %s", (check_id,)).fetchone()
    assert row is not None
    return row


def reloaded_check(row: dict[str, Any], booted_at: float) -> Check:
    """Build the check as a reload after a failed commit does."""
    check = check_from_row(row)
    assert check is not None
    alerts.set_config(check, alerts.policy_config(row))
    alerts.restore(check, booted_at)
    return check


def check_fields(check: Check) -> dict[str, Any]:
    fields = {name: getattr(check, name) for name in Check.__slots__ if name != "alerting"}
    slot = alerts.slot_of(check)
    fields["alerting"] = None if slot is None else (slot.config, slot.miss_at)
    fields["alerted"] = None if slot is None or slot.state is None else slot.state.alerted
    fields["streak"] = None if slot is None or slot.state is None else slot.state.streak
    return fields


def loaded(dsn: str) -> ShardService:
    services: list[ShardService] = []

    async def keep(h: Harness) -> None:
        services.append(h.service)

    async def body() -> None:
        async with harness(dsn) as h:
            await keep(h)

    run(body())
    return services[0]


@pytest.mark.parametrize("kind", ["simple", "cron", "oncalendar"])
def test_loaded_check_equals_stored_row(shard_dsn: str, kind: str) -> None:
    fields = STORED[kind]
    check_id = insert_check(shard_dsn, **fields)

    check = loaded(shard_dsn).checks[check_id]

    assert check.kind == kind
    assert check.status == fields["status"]
    assert check.last_ping == fields["last_ping"].timestamp()
    last_start = fields.get("last_start")
    assert check.last_start == (None if last_start is None else last_start.timestamp())
    rid = fields.get("last_start_rid")
    assert check.last_start_rid == (None if rid is None else str(rid))
    assert check.last_duration == fields.get("last_duration_s")
    assert check.n_pings == 41
    assert check.id == check_id
    assert check.slug == fields.get("slug", "")
    assert check.project_id == fields.get("project_id")
    assert check.methods_post == (fields.get("methods") == "POST")
    assert check.manual_resume == fields.get("manual_resume", False)
    max_runtime = fields.get("max_runtime_s")
    assert check.max_runtime == (None if max_runtime is None else float(max_runtime))
    if kind == "simple":
        assert check.schedule is None
        assert check.timeout == 900.0
        assert check.grace == 120.0
    else:
        assert check.schedule is parse_schedule(fields["schedule"], fields["tz"])


@pytest.mark.parametrize("kind", ["simple", "cron", "oncalendar"])
def test_loaded_check_equals_reloaded_check(shard_dsn: str, kind: str) -> None:
    check_id = insert_check(shard_dsn, **STORED[kind])

    service = loaded(shard_dsn)
    expected = reloaded_check(stored_row(shard_dsn, check_id), service.booted_at)

    assert check_fields(service.checks[check_id]) == check_fields(expected)


def test_loaded_policy_state_is_restored(shard_dsn: str) -> None:
    down_custom = insert_check(shard_dsn, **STORED["cron"])
    down_default = insert_check(shard_dsn, status="down", last_ping=START)
    up_default = insert_check(shard_dsn, status="up", last_ping=START)

    checks = loaded(shard_dsn).checks

    custom_slot = alerts.slot_of(checks[down_custom])
    assert custom_slot is not None
    assert custom_slot.config.recover_after == 3
    assert custom_slot.config.reminder_every == 3600.0
    assert custom_slot.state is not None
    assert custom_slot.state.alerted == "down"
    assert custom_slot.state.streak == -1
    default_slot = alerts.slot_of(checks[down_default])
    assert default_slot is not None
    assert default_slot.config is DEFAULT_POLICY
    assert default_slot.state is not None
    assert default_slot.state.alerted == "down"
    assert checks[up_default].alerting is None


def test_loaded_deadlines_and_timers_armed(shard_dsn: str) -> None:
    ids = [insert_check(shard_dsn, **fields) for fields in STORED.values()]
    ids.append(insert_check(shard_dsn, status="new"))
    ids.append(insert_check(shard_dsn, status="up", last_ping=START, late_notice=True))

    service = loaded(shard_dsn)

    for check_id in ids:
        check = service.checks[check_id]
        assert service.engine.deadline_of(check_id) == check.deadline(), check_id
        for suffix, when in service.alerts.timers(check).items():
            assert service.engine.deadline_of(check_id + suffix) == when, check_id + suffix


def test_load_matches_reload_for_mixed_rows(shard_dsn: str) -> None:
    rng = random.Random(5)
    schedules = [
        ("simple", "* * * * *", "UTC"),
        ("cron", "*/5 * * * *", "UTC"),
        ("cron", "0 3 * * *", "Asia/Tokyo"),
        ("oncalendar", "daily", "Europe/Riga"),
    ]
    ids = []
    for _ in range(200):
        kind, schedule, tz = rng.choice(schedules)
        running = rng.random() < 0.3
        fields = {
            "kind": kind,
            "schedule": schedule,
            "tz": tz,
            "status": rng.choice(["new", "up", "up", "down", "paused"]),
            "timeout_s": rng.choice([60, 3600]),
            "last_ping": START - timedelta(microseconds=rng.randrange(10**11)),
            "last_start": START - timedelta(microseconds=rng.randrange(10**9)) if running else None,
            "last_start_rid": uuid.uuid4() if running else None,
            "alert_after": rng.choice([1, 1, 2]),
            "late_notice": rng.random() < 0.2,
        }
        ids.append(insert_check(shard_dsn, **fields))

    service = loaded(shard_dsn)

    assert len(service.checks) == len(ids)
    for check_id in ids:
        expected = reloaded_check(stored_row(shard_dsn, check_id), service.booted_at)
        assert check_fields(service.checks[check_id]) == check_fields(expected), check_id
        assert service.engine.deadline_of(check_id) == expected.deadline(), check_id


def test_next_fire_memo_matches_schedule() -> None:
    rng = random.Random(9)
    start = START.timestamp()
    for expression, tz in [("*/15 9-17 * * 1-5", "America/New_York"), ("daily", "Europe/Riga")]:
        schedule = parse_schedule(expression, tz)
        memo = _NextFireMemo(schedule)
        for _ in range(2000):
            epoch = start - rng.random() * 7 * 86400
            assert memo.next_after(epoch) == schedule.next_after(epoch), (expression, epoch)
