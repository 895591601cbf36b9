"""parse_duration: accepted forms, bounds and the messages of rejected values."""

from __future__ import annotations

import pytest

from serverlord.durations import MAX_SECONDS, DurationError, parse_duration

ACCEPTED = [
    ("90s", 90),
    ("5m", 300),
    ("24h", 86400),
    ("7d", 604800),
    ("1w", 604800),
    ("1h30m", 5400),
    ("1w1d2h3m4s", 698584),
    ("3600", 3600),
    ("0005m", 300),
    (3600, 3600),
]


@pytest.mark.parametrize(("value", "seconds"), ACCEPTED)
def test_duration_accepted_forms(value: object, seconds: int) -> None:
    assert parse_duration(value, "interval") == seconds


def test_duration_bounds_are_inclusive() -> None:
    assert parse_duration(1, "interval") == 1
    assert parse_duration("1s", "interval") == 1
    assert parse_duration(MAX_SECONDS, "interval") == MAX_SECONDS
    assert parse_duration("365d", "interval") == MAX_SECONDS


@pytest.mark.parametrize(
    "value",
    [
        0,
        "0s",
        "0",
        "0h0m",
        -5,
        MAX_SECONDS + 1,
        "365d1s",
        "53w",
        10**100,
        pytest.param(10**5000, id="int-with-5001-digits"),
        "9" * 30,
    ],
)
def test_duration_out_of_range_rejected(value: object) -> None:
    with pytest.raises(DurationError, match="is out of range; use 1s to 365d"):
        parse_duration(value, "interval")


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        90.0,
        True,
        False,
        None,
        [90],
        "",
        " 5m",
        "5m ",
        "1h 30m",
        "30m1h",
        "5m5m",
        "5M",
        "1.5h",
        "-5m",
        "+5",
        "h",
        "5x",
        "٣",
        "¹",
        "\uff11\uff12",  # fullwidth digits
        pytest.param("x" * 10_000, id="string-of-10000-chars"),
    ],
)
def test_duration_malformed_rejected(value: object) -> None:
    with pytest.raises(DurationError, match="expected an integer number of seconds"):
        parse_duration(value, "grace_period")


def test_duration_error_names_field_and_fix() -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration("0s", "interval")

    assert str(caught.value) == 'interval: "0s" is out of range; use 1s to 365d'
    assert caught.value.field == "interval"


def test_duration_error_quotes_bad_value() -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration("soon", "grace_period")

    message = str(caught.value)
    assert message.startswith("grace_period: expected an integer number of seconds")
    assert '"90s", "5m", "24h"' in message
    assert message.endswith('got "soon"')


def test_duration_error_shortens_long_value() -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration("x" * 10_000, "grace_period")

    assert len(str(caught.value)) < 200


def test_duration_error_is_value_error() -> None:
    assert issubclass(DurationError, ValueError)
