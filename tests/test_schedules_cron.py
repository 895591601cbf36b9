"""parse_schedule on cron fields, @-macros and the OnCalendar fallback, in UTC.

Instants are written as UTC ISO strings ("2024-10-11T11:00Z") so that a failure
shows readable times.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest

from serverlord.schedules import MAX_EXPRESSION_LENGTH, ScheduleError, parse_schedule


def utc(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%MZ")


def fires(expression: str, start: str, count: int, tz: str = "UTC") -> list[str | None]:
    """Return `count` fire times in a row, each one strictly after the one before."""
    schedule = parse_schedule(expression, tz)
    epoch: float | None = utc(start)
    result = []
    for _ in range(count):
        assert epoch is not None
        epoch = schedule.next_after(epoch)
        result.append(iso(epoch))
    return result


def test_day_fields_are_ored() -> None:
    assert fires("0 11 1-7 * FRI", "2024-10-10T12:00Z", 1) == ["2024-10-11T11:00Z"]


def test_nth_weekday_of_month() -> None:
    assert fires("0 11 * * FRI#1", "2024-10-10T12:00Z", 2) == [
        "2024-11-01T11:00Z",
        "2024-12-06T11:00Z",
    ]


def test_star_step_day_is_anded() -> None:
    assert fires("0 16 */2 * SAT", "2023-05-01T00:00Z", 4) == [
        "2023-05-13T16:00Z",
        "2023-05-27T16:00Z",
        "2023-06-03T16:00Z",
        "2023-06-17T16:00Z",
    ]


def test_star_step_day_with_monday() -> None:
    assert fires("0 0 */7 * 1", "2024-01-01T00:00Z", 5) == [
        "2024-01-08T00:00Z",
        "2024-01-15T00:00Z",
        "2024-01-22T00:00Z",
        "2024-01-29T00:00Z",
        "2024-04-01T00:00Z",
    ]


def test_day_31_skips_short_months() -> None:
    assert fires("0 0 31 1,2 *", "2024-04-01T00:00Z", 1) == ["2025-01-31T00:00Z"]
    assert fires("0 0 31 * *", "2024-04-01T00:00Z", 2) == [
        "2024-05-31T00:00Z",
        "2024-07-31T00:00Z",
    ]


def test_weekday_seven_is_sunday() -> None:
    assert fires("0 0 * * 7", "2024-04-01T00:00Z", 1) == ["2024-04-07T00:00Z"]
    assert fires("0 0 * * 5-7", "2024-04-01T00:00Z", 3) == [
        "2024-04-05T00:00Z",
        "2024-04-06T00:00Z",
        "2024-04-07T00:00Z",
    ]


def test_fifth_monday_of_february() -> None:
    assert fires("0 0 * 2 MON#5", "2020-01-01T00:00Z", 1) == ["2044-02-29T00:00Z"]


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@hourly", "2024-04-01T13:00Z"),
        ("@daily", "2024-04-02T00:00Z"),
        ("@midnight", "2024-04-02T00:00Z"),
        ("@weekly", "2024-04-07T00:00Z"),
        ("@monthly", "2024-05-01T00:00Z"),
        ("@yearly", "2025-01-01T00:00Z"),
        ("@annually", "2025-01-01T00:00Z"),
    ],
)
def test_macro_next_fire(macro: str, expected: str) -> None:
    assert fires(macro, "2024-04-01T12:00Z", 1) == [expected]


def test_ping_on_the_second_covers_slot() -> None:
    schedule = parse_schedule("0 8 * * *", "UTC")

    assert iso(schedule.next_after(utc("2024-04-01T08:00:00.000Z"))) == "2024-04-02T08:00Z"
    assert iso(schedule.next_after(utc("2024-04-01T07:59:59.999Z"))) == "2024-04-01T08:00Z"


def test_fraction_close_to_next_second_dropped() -> None:
    # The float just below 08:00:00 rounds up to 08:00:00 when converted to a
    # datetime, which has whole microseconds.
    schedule = parse_schedule("0 8 * * *", "UTC")
    just_before = math.nextafter(utc("2024-04-01T08:00Z"), 0)

    assert iso(schedule.next_after(just_before)) == "2024-04-01T08:00Z"


def test_minute_later_same_day() -> None:
    assert fires("51 22 * * *", "2024-04-01T22:50:30Z", 1) == ["2024-04-01T22:51Z"]


def test_hourly_next_full_hour() -> None:
    assert fires("0 * * * *", "2024-04-01T13:10Z", 1) == ["2024-04-01T14:00Z"]


def test_lowercase_names_accepted() -> None:
    assert fires("0 11 * jan fri#1", "2024-01-01T00:00Z", 1) == ["2024-01-05T11:00Z"]


def test_schedule_keeps_expression_and_tz() -> None:
    schedule = parse_schedule("@daily", "Europe/Berlin")

    assert schedule.expression == "@daily"
    assert schedule.tz == "Europe/Berlin"


def test_parse_returns_cached_schedule() -> None:
    assert parse_schedule("*/7 * * * *", "UTC") is parse_schedule("*/7 * * * *", "UTC")


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 1 0/10 * *", 'invalid day-of-month field "0/10"; use 1-31'),
        ("0 0 * * 8", 'invalid day-of-week field "8"; use 0-7 or SUN-SAT'),
        ("0 ¹ * * *", 'invalid hour field "¹"; use 0-23'),
        ("0 ٣ * * *", 'invalid hour field "٣"; use 0-23'),
        ("*/0 * * * *", 'invalid minute field "\\*/0"; use 0-59'),
        ("60 * * * *", 'invalid minute field "60"; use 0-59'),
        ("0 24 * * *", 'invalid hour field "24"; use 0-23'),
        ("5-1 * * * *", 'invalid minute field "5-1"; use 0-59'),
        ("0 0 1 13 *", 'invalid month field "13"; use 1-12 or JAN-DEC'),
        ("* * * * 1#6", 'invalid day-of-week field "1#6"'),
        ("", "schedule is empty"),
        ("   ", "schedule is empty"),
        (
            "* * * *",
            r"expected 5 cron fields \(minute hour day-of-month month day-of-week\), got 4",
        ),
        ("0 0\n* * *", r"non-printable character U\+000A"),
        ("0\u00a00 * * *", r"non-printable character U\+00A0"),
    ],
)
def test_invalid_cron_rejected(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(expression, "UTC")


def test_long_expression_rejected() -> None:
    with pytest.raises(ScheduleError, match=r"too long \(10240 characters\); the maximum is 100"):
        parse_schedule("*" * 10240, "UTC")


def test_expression_at_length_limit_parsed() -> None:
    expression = "0 0 * * *".ljust(MAX_EXPRESSION_LENGTH)

    assert parse_schedule(expression, "UTC").expression == expression


@pytest.mark.parametrize("expression", ["0 15 */1 * * *", "0 0 1 1 * 2020", "0 0 12 1 1 * 2030"])
def test_six_or_seven_fields_rejected(expression: str) -> None:
    with pytest.raises(ScheduleError, match="6- or 7-field expression is ambiguous"):
        parse_schedule(expression, "UTC")


@pytest.mark.parametrize("expression", ["15 6 1 * ?", "0 0 12 * * ?"])
def test_question_mark_rejected(expression: str) -> None:
    with pytest.raises(ScheduleError, match='"\\?" is not supported'):
        parse_schedule(expression, "UTC")


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 2,4 *"])
def test_missing_day_never_fires(expression: str) -> None:
    with pytest.raises(ScheduleError, match="never fires: no month in it has day 3"):
        parse_schedule(expression, "UTC")


def test_impossible_weekday_never_fires() -> None:
    # Days 1 and 21 never hold the last Monday of a month, which is day 22 or later.
    with pytest.raises(ScheduleError, match="never fires in UTC"):
        parse_schedule("* * */20 * 1L", "UTC")


def test_reboot_macro_rejected() -> None:
    with pytest.raises(ScheduleError, match='"@reboot" is not supported'):
        parse_schedule("@reboot", "UTC")


def test_unknown_macro_rejected() -> None:
    with pytest.raises(ScheduleError, match='unknown macro "@every5m"; use @hourly'):
        parse_schedule("@every5m", "UTC")


def test_rejection_raised_again_from_cache() -> None:
    for _ in range(3):
        with pytest.raises(ScheduleError, match='invalid minute field "61"'):
            parse_schedule("61 * * * *", "UTC")


# A small grammar of cron and OnCalendar pieces, so that random expressions reach
# deep into both parsers instead of failing on the first character.
# fmt: off
FUZZ_PIECES = [
    "*", "0", "1", "5", "7", "12", "23", "29", "30", "31", "59", "60", "L", "LW", "W",
    "#", "#5", "/", "/0", "/2", "-", ",", "?", "¹", "٣", ":", "..", "~", "MON", "FRI",
    "SUN", "JAN", "DEC", "Mon", "*-*-*", "00:00", "12:30:15", "Europe/Riga", "@daily",
    "@", "daily",
]
# fmt: on


def random_expression(rng: random.Random) -> str:
    fields = rng.choice([1, 2, 3, 4, 5, 5, 5, 6, 7])
    return " ".join(
        "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 3))) for _ in range(fields)
    )


def test_random_expressions_raise_only_schedule_error() -> None:
    rng = random.Random(20261204)
    accepted = 0
    for _ in range(3000):
        expression = random_expression(rng)
        try:
            schedule = parse_schedule(expression, rng.choice(["UTC", "America/New_York"]))
        except ScheduleError:
            continue
        accepted += 1
        start = rng.uniform(0, 4e9)
        following = schedule.next_after(start)
        assert following is None or following > start, expression

    assert accepted > 0


def test_oncalendar_weekdays() -> None:
    assert fires("Mon..Fri 09:00", "2024-04-05T12:00Z", 2, tz="Europe/Berlin") == [
        "2024-04-08T07:00Z",
        "2024-04-09T07:00Z",
    ]


def test_oncalendar_shorthand() -> None:
    assert fires("daily", "2024-04-01T12:00Z", 1) == ["2024-04-02T00:00Z"]


def test_oncalendar_quarter_hours() -> None:
    assert fires("*:0/15", "2024-04-01T12:07Z", 2) == ["2024-04-01T12:15Z", "2024-04-01T12:30Z"]


def test_oncalendar_past_date_rejected() -> None:
    with pytest.raises(ScheduleError, match='"2020-01-01" never fires again'):
        parse_schedule("2020-01-01", "UTC")


def test_oncalendar_missing_day_rejected() -> None:
    with pytest.raises(ScheduleError, match="never fires again"):
        parse_schedule("*-02-30", "UTC")


def test_oncalendar_own_time_zone_rejected() -> None:
    with pytest.raises(ScheduleError, match='must not name a time zone \\("Europe/Riga"\\)'):
        parse_schedule("Mon 12:00 Europe/Riga", "UTC")


def test_oncalendar_garbage_rejected() -> None:
    with pytest.raises(ScheduleError, match="not 5 cron fields, an @-macro or a valid OnCalendar"):
        parse_schedule("every monday", "UTC")
