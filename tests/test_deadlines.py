"""Deadlines and the order of events, on a fake clock and a real shard database.

Reference model: a simple check is late from last_ping + period and down at
last_ping + period + grace (that instant itself is down). A cron check is down at the
first fire strictly after last_ping, in the check's zone, plus grace.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from tests.shardharness import Harness, harness, iso, run, ts

Scenario = Callable[[Harness], Awaitable[None]]


def play(dsn: str, scenario: Scenario, **options: Any) -> None:
    async def body() -> None:
        async with harness(dsn, **options) as h:
            await scenario(h)

    run(body())


def down_flips(flips: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    return [flip for flip in flips if flip[2] == "down"]


def test_simple_check_down_at_deadline_inclusive(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=3600, grace_s=300)
        await h.ping(check, at="2024-01-01T12:00:00Z")
        h.at(ts("2024-01-01T13:04:59.999Z"))
        assert h.status(check) == "grace"
        h.at("2024-01-01T13:05:00Z")
        assert h.status(check) == "down"
        flips = await h.flips(check)
        assert flips[-1] == ("2024-01-01T13:05:00.000+00:00", "up", "down", "timeout")
        assert len(down_flips(flips)) == 1

    play(shard_dsn, scenario)


def test_ping_just_before_deadline_prevents_down(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=3600, grace_s=300)
        await h.ping(check, at="2024-01-01T12:00:00Z")
        await h.ping(check, at=ts("2024-01-01T13:04:59.999Z"))
        h.at("2024-01-01T13:05:00Z")
        assert h.status(check) == "up"
        assert down_flips(await h.flips(check)) == []
        assert iso(h.deadline(check)) == "2024-01-01T14:09:59.999+00:00"

    play(shard_dsn, scenario)


def test_ping_racing_timeout_records_order(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        # The timeout fires first, then the ping of the same instant arrives.
        first = await h.create(timeout_s=3600, grace_s=300)
        await h.ping(first, at="2024-01-01T12:00:00Z")
        h.at("2024-01-01T13:05:00Z")
        await h.ping(first)
        flips = await h.flips(first)
        assert [flip[1:3] for flip in flips] == [("new", "up"), ("up", "down"), ("down", "up")]

        # The ping wins the race: no down flip at all, never one after the ping.
        second = await h.create(timeout_s=3600, grace_s=300)
        await h.ping(second, at="2024-01-01T13:06:00Z")
        await h.ping(second, at="2024-01-01T14:06:00Z")
        h.at("2024-01-01T15:11:00Z")
        await h.ping(second)
        flips = await h.flips(second)
        downs = down_flips(flips)
        assert len(downs) == 1
        assert downs[0][0] == "2024-01-01T15:11:00.000+00:00"

    play(shard_dsn, scenario)


def test_cron_ping_on_the_minute_covers_slot(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        on_time = await h.create(kind="cron", schedule="0 8 * * *", grace_s=600)
        await h.ping(on_time, at="2024-05-01T08:00:00Z")
        assert iso(h.service.checks[on_time].next_expected()) == "2024-05-02T08:00:00.000+00:00"

        early = await h.create(kind="cron", schedule="0 8 * * *", grace_s=600)
        await h.ping(early, at=ts("2024-05-02T07:59:59.999Z"))
        assert iso(h.service.checks[early].next_expected()) == "2024-05-02T08:00:00.000+00:00"

    play(shard_dsn, scenario, start="2024-05-01T07:00Z")


def test_cron_client_clock_fast_uses_server_time(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(kind="cron", schedule="51 22 * * *", grace_s=3600)
        await h.ping(check, at="2024-05-01T22:50:30Z")
        assert iso(h.service.checks[check].next_expected()) == "2024-05-01T22:51:00.000+00:00"
        h.at(ts("2024-05-01T23:50:59.999Z"))
        assert h.status(check) == "grace"
        h.at("2024-05-01T23:51:00Z")
        assert h.status(check) == "down"
        assert down_flips(await h.flips(check))[0][0] == "2024-05-01T23:51:00.000+00:00"

    play(shard_dsn, scenario, start="2024-05-01T20:00Z")


def test_fail_then_success_flips_once_each(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=900, grace_s=300)
        await h.ping(check, at="2024-01-01T10:00:00Z")
        await h.ping(check, "fail", at="2024-01-01T10:15:00Z")
        assert h.status(check) == "down"
        h.at("2024-01-01T10:35:00Z")
        await h.ping(check, at="2024-01-01T11:00:00Z")
        assert h.status(check) == "up"
        flips = await h.flips(check)
        assert flips == [
            ("2024-01-01T10:00:00.000+00:00", "new", "up", "success"),
            ("2024-01-01T10:15:00.000+00:00", "up", "down", "fail"),
            ("2024-01-01T11:00:00.000+00:00", "down", "up", "success"),
        ]
        assert iso(h.deadline(check)) == "2024-01-01T11:20:00.000+00:00"

    play(shard_dsn, scenario)


def test_new_check_never_goes_down(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=3600, grace_s=600)
        h.at("2024-01-01T05:00:00Z")
        assert h.status(check) == "new"
        assert await h.flips(check) == []
        await h.ping(check)
        assert h.status(check) == "up"
        assert await h.flips(check) == [("2024-01-01T05:00:00.000+00:00", "new", "up", "success")]

    play(shard_dsn, scenario)


def test_paused_check_wakes_on_ping(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=3600, grace_s=600)
        await h.ping(check, at="2024-01-01T01:00:00Z")
        assert (await h.op("pause", check))[0] == 200
        h.at("2024-01-01T09:00:00Z")
        assert h.status(check) == "paused"
        await h.ping(check)
        assert h.status(check) == "up"

        await h.op("pause", check)
        await h.ping(check, "fail", at="2024-01-01T09:30:00Z")
        assert h.status(check) == "down"
        flips = await h.flips(check)
        assert [flip[1:3] for flip in flips] == [
            ("new", "up"),
            ("up", "paused"),
            ("paused", "up"),
            ("up", "paused"),
            ("paused", "down"),
        ]

    play(shard_dsn, scenario)


def test_manual_resume_ignores_pings(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=3600, grace_s=600, manual_resume=True)
        await h.ping(check, at="2024-01-01T01:00:00Z")
        await h.op("pause", check)
        assert (await h.op("pause", check))[0] == 200  # a second pause is a no-op

        for signal in ("success", "fail", "start"):
            outcome = await h.ping(check, signal)
            assert outcome["signal"] == "ign"
        assert h.status(check) == "paused"
        assert h.service.checks[check].last_start is None
        assert h.deadline(check) is None

        status, body = await h.op("resume", check)
        assert status == 200
        assert body["status"] == "new"
        assert body["last_ping"] is None
        status, body = await h.op("resume", check)
        assert status == 409
        assert body == {"error": "check is not paused"}
        flips = await h.flips(check)
        assert [flip[1:3] for flip in flips] == [("new", "up"), ("up", "paused"), ("paused", "new")]

    play(shard_dsn, scenario)


def test_run_never_finishing_goes_down(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=86400, grace_s=3600)
        await h.ping(check, at="2024-06-03T05:10:00Z")
        await h.ping(check, "start", at="2024-06-04T05:00:00Z")
        assert h.status(check) == "up"
        h.at(ts("2024-06-04T05:59:59.999Z"))
        assert h.status(check) == "grace"  # the daily ping was due at 05:10
        h.at("2024-06-04T06:00:00Z")
        assert h.status(check) == "down"
        downs = down_flips(await h.flips(check))
        assert downs == [("2024-06-04T06:00:00.000+00:00", "up", "down", "run-timeout")]

    play(shard_dsn, scenario, start="2024-06-03T05:00Z")


def test_early_start_bounds_cron_deadline(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(kind="cron", schedule="0 5 * * *", grace_s=3600)
        await h.ping(check, at="2024-06-03T05:20:00Z")
        await h.ping(check, "start", at="2024-06-04T04:50:00Z")
        h.at("2024-06-04T05:50:00Z")
        assert h.status(check) == "down"
        assert down_flips(await h.flips(check))[0][0] == "2024-06-04T05:50:00.000+00:00"

    play(shard_dsn, scenario, start="2024-06-03T05:00Z")


def test_max_runtime_replaces_grace_for_runs(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=86400, grace_s=3600, max_runtime_s=600)
        await h.ping(check, at="2024-06-03T05:00:00Z")
        await h.ping(check, "start", at="2024-06-03T06:00:00Z")
        h.at("2024-06-03T06:10:00Z")
        assert h.status(check) == "down"
        assert down_flips(await h.flips(check))[0][0] == "2024-06-03T06:10:00.000+00:00"

    play(shard_dsn, scenario, start="2024-06-03T04:00Z")


def test_late_ping_inside_grace_no_flip(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(kind="cron", schedule="0 * * * *", grace_s=7200)
        await h.ping(check, at="2024-01-01T11:00:05Z")
        h.at("2024-01-01T13:09:00Z")
        await h.ping(check, at="2024-01-01T13:10:00Z")
        assert down_flips(await h.flips(check)) == []
        assert iso(h.service.checks[check].next_expected()) == "2024-01-01T14:00:00.000+00:00"

    play(shard_dsn, scenario)


def test_retried_curl_logs_both_pings(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=300, grace_s=60)
        first = await h.ping(check, at="2024-01-01T10:00:00Z")
        second = await h.ping(check, at="2024-01-01T10:00:01Z")
        assert (first["n"], second["n"]) == (1, 2)
        assert h.status(check) == "up"
        assert iso(h.deadline(check)) == "2024-01-01T10:06:01.000+00:00"
        assert down_flips(await h.flips(check)) == []

    play(shard_dsn, scenario)


def test_run_ids_pair_start_and_end(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=3600, grace_s=600)
        run_a, run_b = (
            "11111111-1111-1111-1111-111111111111",
            "22222222-2222-2222-2222-222222222222",
        )
        await h.ping(check, "start", at="2024-01-01T10:00:00Z", rid=run_a)
        await h.ping(check, at="2024-01-01T10:00:30Z", rid=run_b)
        state = h.service.checks[check]
        assert state.last_start is not None  # another run's success leaves it open
        await h.ping(check, at="2024-01-01T10:01:00Z", rid=run_a)
        assert state.last_start is None
        assert state.last_duration == 60.0

        late = await h.ping(check, "start", at="2024-01-01T10:01:01Z", rid=run_a)
        assert late["late_start"] is True
        assert state.last_start is None

        await h.ping(check, "start", at="2024-01-01T10:02:00Z", rid=run_b)
        await h.ping(check, "fail", at="2024-01-01T10:03:00Z", rid=run_a)
        assert state.last_start is None  # a fail closes the run whatever its id

    play(shard_dsn, scenario)


def test_log_signal_changes_nothing(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=3600, grace_s=600)
        await h.ping(check, at="2024-01-01T10:00:00Z")
        deadline = h.deadline(check)
        outcome = await h.ping(check, "log", at="2024-01-01T10:30:00Z")
        assert outcome["n"] == 2
        assert h.deadline(check) == deadline
        assert h.service.checks[check].last_ping == ts("2024-01-01T10:00:00Z")

    play(shard_dsn, scenario)


def test_post_only_check_ignores_get(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(timeout_s=3600, grace_s=600, methods="POST")
        outcome = await h.ping(check, at="2024-01-01T10:00:00Z", method="GET")
        assert outcome["signal"] == "ign"
        assert h.status(check) == "new"
        outcome = await h.ping(check, method="POST")
        assert outcome["signal"] == "success"
        assert h.status(check) == "up"

    play(shard_dsn, scenario)


def test_dst_new_york_quarter_hours(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(
            kind="cron", schedule="*/15 * * * *", tz="America/New_York", grace_s=300
        )
        for moment in ("2023-11-05T05:15:00Z", "2023-11-05T05:30:00Z", "2023-11-05T05:45:00Z"):
            await h.ping(check, at=moment)
        assert iso(h.service.checks[check].next_expected()) == "2023-11-05T06:00:00.000+00:00"
        h.at(ts("2023-11-05T06:04:59.999Z"))
        assert h.status(check) == "grace"
        h.at("2023-11-05T06:05:00Z")
        assert h.status(check) == "down"

    play(shard_dsn, scenario, start="2023-11-05T05:00Z")


def test_amsterdam_night_has_no_alert(shard_dsn: str) -> None:
    async def scenario(h: Harness) -> None:
        check = await h.create(
            kind="cron", schedule="*/5 6-23 * * *", tz="Europe/Amsterdam", grace_s=900
        )
        await h.ping(check, at="2020-02-13T22:55:00Z")
        assert iso(h.service.checks[check].next_expected()) == "2020-02-14T05:00:00.000+00:00"
        h.at("2020-02-14T05:14:59Z")
        assert down_flips(await h.flips(check)) == []
        h.at("2020-02-14T05:15:00Z")
        assert down_flips(await h.flips(check))[0][0] == "2020-02-14T05:15:00.000+00:00"

    play(shard_dsn, scenario, start="2020-02-13T22:00Z")


def test_outage_of_monitor_holds_alerts(shard_dsn: str) -> None:
    ids: dict[str, Any] = {}

    async def before(h: Harness) -> None:
        ids["quiet"] = [await h.create(timeout_s=300, grace_s=300) for _ in range(50)]
        ids["down"] = await h.create(timeout_s=300, grace_s=300)
        await h.ping(ids["down"], at="2024-01-01T09:00:00Z")
        h.at("2024-01-01T09:10:00Z")
        assert h.status(ids["down"]) == "down"
        for check in ids["quiet"]:
            await h.ping(check, at="2024-01-01T09:59:00Z")
        h.at("2024-01-01T09:59:30Z")
        await h.settle()

    async def after(h: Harness) -> None:
        # The monitor was off from 10:00 to 12:00; on start-up the missed deadlines fire.
        h.at("2024-01-01T12:00:00Z")
        for check in ids["quiet"]:
            held = await h.held_flips(check)
            assert held == [("2024-01-01T10:09:00.000+00:00", "2024-01-01T12:05:00.000+00:00")]
        assert len(await h.held_flips(ids["down"])) == 1  # only the flip from before
        for index, check in enumerate(ids["quiet"]):
            await h.ping(check, at=ts("2024-01-01T12:00:00Z") + index * 5)
            assert h.status(check) == "up"
        await h.ping(ids["down"])
        assert h.status(ids["down"]) == "up"

    play(shard_dsn, before, start="2024-01-01T08:00Z")
    play(shard_dsn, after, start="2024-01-01T12:00Z")


def test_unparsable_stored_schedule_is_skipped(shard_dsn: str) -> None:
    async def setup(h: Harness) -> None:
        await h.create(timeout_s=300, grace_s=300)
        broken = await h.create(kind="cron", schedule="0 5 * * *", grace_s=300)
        await h.settle()
        with psycopg.connect(shard_dsn) as conn:
            conn.execute("UPDATE checks SET tz = 'Gone/Zone' WHERE id = %s", (broken,))
        ids["broken"] = broken

    async def reload(h: Harness) -> None:
        assert ids["broken"] not in h.service.checks
        assert len(h.service.checks) == 1

    ids: dict[str, str] = {}
    play(shard_dsn, setup)
    play(shard_dsn, reload)
