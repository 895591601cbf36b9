"""Parse the durations that users give for a check's period and grace time.

A duration is a whole number of seconds, either as an int or as a string such as
"90s", "5m", "24h", "7d", "1w", "1h30m" or plain digits like "3600".
"""

from __future__ import annotations

import re

MIN_SECONDS = 1
MAX_SECONDS = 365 * 86400

# The longest accepted string. It is far above any valid duration (365d is
# "31536000"), and it stops int() from converting thousands of digits.
MAX_LENGTH = 32

_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}

# Units must appear from largest to smallest, each at most once. re.ASCII keeps
# \d to 0-9, so that digits such as "٣" or "¹" do not match.
_DURATION_RE = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)
_DIGITS_RE = re.compile(r"\d+", re.ASCII)

_EXPECTED = 'expected an integer number of seconds or a string like "90s", "5m", "24h" or "1h30m"'


class DurationError(ValueError):
    """An invalid duration. The message names the field and the accepted form."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def parse_duration(value: object, field: str) -> int:
    """Convert an int or a duration string to seconds, checking 1 s <= value <= 365 d.

    `field` names the input in error messages, for example "grace_period".
    Raises DurationError for any other type (bool and float included), a malformed
    string, or a value out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise DurationError(field, f"{_EXPECTED}; got {_preview(value)}")

    seconds = value if isinstance(value, int) else _parse_string(value, field)
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise DurationError(field, f"{_preview(value)} is out of range; use 1s to 365d")
    return seconds


def _parse_string(text: str, field: str) -> int:
    if len(text) > MAX_LENGTH:
        raise DurationError(
            field, f"{_EXPECTED}; got a string of {len(text)} characters (max {MAX_LENGTH})"
        )

    if _DIGITS_RE.fullmatch(text):
        return int(text)

    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise DurationError(field, f"{_EXPECTED}; got {_preview(text)}")

    total = 0
    for unit, digits in zip(_UNIT_SECONDS.values(), match.groups(), strict=True):
        if digits is not None:
            total += int(digits) * unit
    return total


def _preview(value: object) -> str:
    """Describe a value for an error message, cut short so a huge input stays readable."""
    if isinstance(value, str):
        text = value if len(value) <= MAX_LENGTH else value[:MAX_LENGTH] + "..."
        return f'"{text}"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        # str() of an int with more than 4300 digits raises ValueError.
        return str(value) if value.bit_length() <= 64 else "a very large integer"
    if isinstance(value, float):
        return f"{value!r} (a float)"
    return f"a value of type {type(value).__name__}"
