"""Cron schedules in IANA time zones: DST gaps, repeated hours and the TZ variable."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from serverlord.schedules import ScheduleError, clear_cache, parse_schedule, validate_timezone


def utc(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%MZ")


def fires(expression: str, tz: str, start: str, count: int) -> list[str | None]:
    """Return `count` fire times in a row, each one strictly after the one before."""
    schedule = parse_schedule(expression, tz)
    epoch: float | None = utc(start)
    result = []
    for _ in range(count):
        assert epoch is not None
        epoch = schedule.next_after(epoch)
        result.append(iso(epoch))
    return result


@pytest.fixture
def los_angeles_tz_variable() -> Iterator[None]:
    """Set TZ=America/Los_Angeles for the process, and start with no cached schedules."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    clear_cache()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()
        clear_cache()


def test_gap_time_runs_when_gap_ends() -> None:
    # 02:30 does not exist in New York on 2026-03-08, so the job runs at 03:00 EDT.
    assert fires("30 2 * * *", "America/New_York", "2026-03-07T07:30:10Z", 2) == [
        "2026-03-08T07:00Z",
        "2026-03-09T06:30Z",
    ]


def test_gap_time_in_london() -> None:
    assert fires("30 1 * * *", "Europe/London", "2024-03-30T12:00Z", 2) == [
        "2024-03-31T01:00Z",
        "2024-04-01T00:30Z",
    ]


def test_quarter_hours_through_repeated_hour() -> None:
    # 05:45Z is 01:45 EDT, and 06:00Z is 01:00 EST: the repeated hour fires again.
    assert fires("*/15 * * * *", "America/New_York", "2023-11-05T05:45Z", 2) == [
        "2023-11-05T06:00Z",
        "2023-11-05T06:15Z",
    ]
    assert fires("*/15 * * * *", "America/New_York", "2023-11-05T05:15Z", 1) == [
        "2023-11-05T05:30Z"
    ]
    assert fires("*/15 * * * *", "America/New_York", "2023-11-05T05:30Z", 1) == [
        "2023-11-05T05:45Z"
    ]


def test_fixed_time_runs_once_in_repeated_hour() -> None:
    assert fires("30 1 * * *", "America/New_York", "2023-11-05T05:00Z", 2) == [
        "2023-11-05T05:30Z",
        "2023-11-06T06:30Z",
    ]


def test_ping_in_second_pass_not_before() -> None:
    # 06:10Z is 01:10 EST, after the 01:30 EDT fire: the next one is the following day.
    assert fires("30 1 * * *", "America/New_York", "2023-11-05T06:10Z", 1) == ["2023-11-06T06:30Z"]


def test_sunday_noon_on_dst_day() -> None:
    assert fires("0 12 * * 0", "Europe/Berlin", "2022-03-24T11:00Z", 1) == ["2022-03-27T10:00Z"]


def test_sunday_morning_after_dst_change() -> None:
    assert fires("0 8 * * 0", "America/Chicago", "2026-03-08T05:45Z", 1) == ["2026-03-08T13:00Z"]


def test_daily_seven_across_dst_start() -> None:
    assert fires("0 7 * * *", "America/New_York", "2024-03-09T00:00Z", 3) == [
        "2024-03-09T12:00Z",
        "2024-03-10T11:00Z",
        "2024-03-11T11:00Z",
    ]


@pytest.mark.usefixtures("los_angeles_tz_variable")
def test_tz_variable_changes_nothing() -> None:
    assert time.tzname[0] == "PST"
    assert fires("0 7 * * *", "America/New_York", "2024-03-09T00:00Z", 3) == [
        "2024-03-09T12:00Z",
        "2024-03-10T11:00Z",
        "2024-03-11T11:00Z",
    ]
    assert fires("30 2 * * *", "America/New_York", "2026-03-07T07:30:10Z", 2) == [
        "2026-03-08T07:00Z",
        "2026-03-09T06:30Z",
    ]
    # Honolulu is west of Los Angeles. Reading a Los Angeles clock as Honolulu time
    # would start the search two hours late and miss this fire.
    assert fires("0 7 * * *", "Pacific/Honolulu", "2024-03-09T16:00Z", 1) == ["2024-03-09T17:00Z"]


def test_hour_range_wraps_to_next_day() -> None:
    assert fires("*/5 6-23 * * *", "Europe/Amsterdam", "2020-02-13T22:55Z", 1) == [
        "2020-02-14T05:00Z"
    ]


def test_gap_only_schedule_never_fires() -> None:
    # In New York the second Sunday of March has no 02:xx since 2007.
    with pytest.raises(ScheduleError, match="never fires in America/New_York"):
        parse_schedule("*/5 2 * 3 SUN#2", "America/New_York")


def test_same_schedule_fires_in_utc() -> None:
    assert fires("*/5 2 * 3 SUN#2", "UTC", "2026-01-01T00:00Z", 1) == ["2026-03-08T02:00Z"]


def test_oncalendar_uses_check_time_zone() -> None:
    assert fires("*-*-* 09:00", "Asia/Tokyo", "2024-04-01T00:30Z", 1) == ["2024-04-02T00:00Z"]


@pytest.mark.parametrize("tz", ["UTC", "Etc/UTC", "Europe/Berlin", "America/Argentina/Salta"])
def test_known_time_zone_accepted(tz: str) -> None:
    validate_timezone(tz)


@pytest.mark.parametrize(
    "tz",
    ["Mars/Base", "", "utc", "localtime", "posixrules", "../../etc/passwd", "/etc/localtime"],
)
def test_unknown_time_zone_rejected(tz: str) -> None:
    with pytest.raises(ScheduleError, match=r'unknown time zone ".*"; use an IANA name'):
        validate_timezone(tz)


def test_schedule_with_unknown_zone_rejected() -> None:
    with pytest.raises(ScheduleError, match='unknown time zone "Mars/Base"'):
        parse_schedule("0 * * * *", "Mars/Base")


def test_long_time_zone_name_shortened() -> None:
    with pytest.raises(ScheduleError) as caught:
        validate_timezone("x" * 10_000)

    assert len(str(caught.value)) < 200
