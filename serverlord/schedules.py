"""Cron and systemd OnCalendar schedules, evaluated in an IANA time zone.

A cron schedule has 5 fields (minute hour day-of-month month day-of-week) or is one
of the @-macros in CRON_MACROS. cronsim evaluates it with Debian cron semantics:
when day-of-month or day-of-week starts with "*", a date must match both fields,
otherwise either one. If neither the minute nor the hour field starts with "*", the
job runs at a fixed local time: in a DST gap it runs when the gap ends, and in a
repeated hour it runs once. Other jobs fire at each matching local time, so they
skip a DST gap and fire in both passes of a repeated hour. Any other expression is
parsed as a systemd OnCalendar expression by the oncalendar package.

All instants going in and out are UTC epoch seconds, so results never depend on
the TZ environment variable of the process.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from typing import Protocol

from cronsim import CronSim, CronSimError
from oncalendar import BaseIterator, OnCalendarError

logger = logging.getLogger(__name__)

MAX_EXPRESSION_LENGTH = 100
MAX_TIMEZONE_LENGTH = 64

# Many checks share a schedule, so parsed schedules (and rejection messages) are
# kept. An entry takes a few hundred bytes (an estimate, not measured).
CACHE_SIZE = 16384

CRON_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")

_LIST_RANGE_STEP = "a list (1,15), a range (1-5) or a step (*/10)"
_CRON_FIELD_HINTS = {
    "minute": f"use 0-59, {_LIST_RANGE_STEP}",
    "hour": f"use 0-23, {_LIST_RANGE_STEP}",
    "day-of-month": f"use 1-31, L (last day), LW (last weekday), {_LIST_RANGE_STEP}",
    "month": f"use 1-12 or JAN-DEC, {_LIST_RANGE_STEP}",
    "day-of-week": (
        f"use 0-7 or SUN-SAT (0 and 7 are Sunday), 5#2 (second Friday), "
        f"5L (last Friday), {_LIST_RANGE_STEP}"
    ),
}

# Files under /usr/share/zoneinfo that are not locations. "localtime" is the
# machine's own zone, which would make results depend on the host.
_NON_LOCATION_ZONES = frozenset({"localtime", "posixrules", "Factory"})

# A token made only of cron field syntax: numbers, * , / - #, L and W, and the
# names of months and weekdays.
_CRON_TOKEN_RE = re.compile(
    r"(?:[0-9*,/#-]|L|W|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
    r"|SUN|MON|TUE|WED|THU|FRI|SAT)+",
    re.ASCII | re.IGNORECASE,
)

# In a repeated hour (DST ends) both libraries return the first of the two
# instants, which can lie before the requested start. Skipping such results takes
# at most one step per fire in the repeated period: 3600 for a per-second
# OnCalendar expression in a zone that repeats one hour. The limit allows two hours.
_MAX_EARLY_RESULTS = 7300


class ScheduleError(ValueError):
    """An invalid schedule or time zone. The message names the problem and the fix."""


class Schedule(Protocol):
    expression: str
    tz: str

    def next_after(self, epoch: float) -> float | None:
        """Return the first fire time strictly after `epoch`, in UTC epoch seconds.

        The fraction of a second in `epoch` is dropped first, so a ping at
        08:00:00.000 covers the 08:00 fire and one at 07:59:59.999 does not.
        Returns None if the schedule never fires again.
        """
        ...


class _SearchedSchedule:
    """A schedule whose fire times come from a library iterator, in one time zone."""

    __slots__ = ("_memo", "_source", "_zone", "expression", "tz")

    def __init__(self, expression: str, tz: str, source: str, zone: tzinfo) -> None:
        self.expression = expression
        self.tz = tz
        # The text that the library parses: cron fields or an OnCalendar expression.
        self._source = source
        self._zone = zone
        # The last input second and its result. Checks that share this schedule
        # often ask for the same second.
        self._memo: tuple[int | None, float | None] = (None, None)

    def next_after(self, epoch: float) -> float | None:
        second = math.floor(epoch)
        memo = self._memo
        if memo[0] == second:
            return memo[1]

        result = self._first_fire_after(second)
        self._memo = (second, result)
        return result

    def _iterate(self, start: datetime) -> Iterator[datetime]:
        raise NotImplementedError

    def _first_fire_after(self, second: int) -> float | None:
        fires = self._iterate(datetime.fromtimestamp(second, self._zone))
        for _ in range(_MAX_EARLY_RESULTS):
            fire = next(fires, None)
            if fire is None:
                return None
            instant = fire.timestamp()
            if instant > second:
                return instant

        logger.warning(
            "gave up on %r after %d fire times before %d; treating it as never firing",
            self,
            _MAX_EARLY_RESULTS,
            second,
        )
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.expression!r}, tz={self.tz!r})"


class CronSchedule(_SearchedSchedule):
    """A 5-field cron schedule (macros already expanded) in one time zone."""

    __slots__ = ()

    def _iterate(self, start: datetime) -> Iterator[datetime]:
        return CronSim(self._source, start)


class OnCalendarSchedule(_SearchedSchedule):
    """A single systemd OnCalendar expression, without a time zone, in one time zone.

    A time in a DST gap is skipped rather than moved to the end of the gap.
    NOTE: oncalendar 1.1 yields only the first pass through a repeated hour (when
    DST ends), so a schedule that fires every few minutes expects no ping during
    the second pass.
    """

    __slots__ = ()

    def _iterate(self, start: datetime) -> Iterator[datetime]:
        return BaseIterator(self._source, start)


def parse_schedule(expression: str, tz: str) -> Schedule:
    """Parse and validate a cron or OnCalendar expression for the time zone `tz`.

    Raises ScheduleError for an invalid expression, one that never fires, or an
    unknown time zone. Results are cached, rejections included.
    """
    if not isinstance(expression, str):
        raise ScheduleError(f"schedule must be a string, not {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ScheduleError(
            f"schedule is too long ({len(expression)} characters); "
            f"the maximum is {MAX_EXPRESSION_LENGTH}"
        )
    validate_timezone(tz)

    result = _parse_cached(expression, tz)
    if isinstance(result, str):
        raise ScheduleError(result)
    return result


def clear_cache() -> None:
    """Drop every cached schedule, so that the next parse starts fresh (used by tests)."""
    _parse_cached.cache_clear()


def validate_timezone(tz: str) -> None:
    """Raise ScheduleError unless `tz` is an IANA time zone name such as "Europe/Berlin"."""
    _load_zone(tz)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _parse_cached(expression: str, tz: str) -> Schedule | str:
    """Return the parsed schedule, or the message of the ScheduleError it raises.

    Storing the message rather than the exception keeps a reused exception from
    collecting tracebacks each time it is raised.
    """
    try:
        return _parse(expression, tz)
    except ScheduleError as error:
        return str(error)


def _parse(expression: str, tz: str) -> Schedule:
    zone = _load_zone(tz)
    text = expression.strip()
    _check_characters(text)

    if text.startswith("@"):
        return _parse_cron(expression, tz, _expand_macro(text), zone)

    tokens = text.split()
    if len(tokens) == len(CRON_FIELDS):
        return _parse_cron(expression, tz, text, zone)
    return _parse_oncalendar(expression, tz, tokens, zone)


def _check_characters(text: str) -> None:
    if not text:
        raise ScheduleError(
            'schedule is empty; use 5 cron fields like "*/5 * * * *" '
            'or an OnCalendar expression like "Mon..Fri 09:00"'
        )
    for character in text:
        if not character.isprintable():
            raise ScheduleError(
                f"schedule contains the non-printable character U+{ord(character):04X}; "
                "write it on one line with plain spaces between fields"
            )
    if "?" in text:
        raise ScheduleError(
            '"?" is not supported in a schedule; use "*" for any day-of-month or day-of-week'
        )


def _expand_macro(text: str) -> str:
    fields = CRON_MACROS.get(text.lower())
    if fields is not None:
        return fields

    known = ", ".join(CRON_MACROS)
    if text.lower() == "@reboot":
        raise ScheduleError(
            f'"@reboot" is not supported because it names no time to expect a ping; use {known}'
        )
    raise ScheduleError(f'unknown macro "{text}"; use {known}')


def _parse_cron(expression: str, tz: str, fields: str, zone: tzinfo) -> CronSchedule:
    start = _validation_start(zone)
    try:
        CronSim(fields, start)
    except CronSimError as error:
        raise ScheduleError(_describe_cron_error(fields, error)) from None

    schedule = CronSchedule(expression, tz, fields, zone)
    if schedule.next_after(start.timestamp()) is None:
        raise ScheduleError(
            f'schedule "{fields}" never fires in {tz}; check that its day-of-month, '
            "month and day-of-week fields can match the same date (when either day "
            'field starts with "*", a date must match both)'
        )
    return schedule


def _describe_cron_error(fields: str, error: CronSimError) -> str:
    """Turn cronsim's "Bad <field>" message into one that quotes the field and the fix."""
    name = str(error).removeprefix("Bad ")
    if name not in CRON_FIELDS:
        return f'invalid cron expression "{fields}": {error}'

    token = fields.split()[CRON_FIELDS.index(name)]
    if name == "day-of-month" and _is_valid_day_of_month(token):
        # cronsim rejects a day that no listed month has, such as 30 with month 2.
        return f'schedule "{fields}" never fires: no month in it has day {token}'
    return f'invalid {name} field "{token}"; {_CRON_FIELD_HINTS[name]}'


def _is_valid_day_of_month(token: str) -> bool:
    try:
        CronSim(f"0 0 {token} * *", datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError:
        return False
    return True


def _parse_oncalendar(
    expression: str, tz: str, tokens: list[str], zone: tzinfo
) -> OnCalendarSchedule:
    if tokens[-1] in _known_zones():
        raise ScheduleError(
            f'an OnCalendar schedule must not name a time zone ("{tokens[-1]}"); '
            "set the check's time zone instead"
        )

    text = " ".join(tokens)
    start = _validation_start(zone)
    try:
        BaseIterator(text, start)
    except OnCalendarError as error:
        raise ScheduleError(_describe_non_cron_error(text, tokens, error)) from None

    schedule = OnCalendarSchedule(expression, tz, text, zone)
    if schedule.next_after(start.timestamp()) is None:
        raise ScheduleError(
            f'OnCalendar schedule "{text}" never fires again in {tz}; '
            "check its date and the years in it"
        )
    return schedule


def _describe_non_cron_error(text: str, tokens: list[str], error: OnCalendarError) -> str:
    field_list = " ".join(CRON_FIELDS)
    looks_like_cron = all(_CRON_TOKEN_RE.fullmatch(token) for token in tokens)
    if looks_like_cron and len(tokens) in (6, 7):
        return (
            f"expected 5 cron fields ({field_list}), got {len(tokens)}; a seconds or "
            "year field is not supported because a 6- or 7-field expression is ambiguous"
        )
    if looks_like_cron and len(tokens) > 1:
        return f"expected 5 cron fields ({field_list}), got {len(tokens)}"

    reason = str(error)
    reason = reason[:1].lower() + reason[1:]
    return (
        f'invalid schedule "{text}": it is not 5 cron fields, an @-macro or a valid '
        f"OnCalendar expression ({reason})"
    )


def _validation_start(zone: tzinfo) -> datetime:
    # Validation starts from the current time, so that an OnCalendar expression
    # whose years are all past is rejected. Cron fields repeat with the calendar,
    # so for cron the start makes no difference.
    return datetime.fromtimestamp(math.floor(time.time()), zone)


def _load_zone(tz: str) -> tzinfo:
    if not isinstance(tz, str) or tz not in _known_zones():
        truncated = str(tz)[:MAX_TIMEZONE_LENGTH]
        raise ScheduleError(
            f'unknown time zone "{truncated}"; use an IANA name such as "Europe/Berlin" or "UTC"'
        )
    if tz in ("UTC", "Etc/UTC"):
        # cronsim and oncalendar take a faster path for datetime.timezone.utc.
        return UTC
    return zoneinfo.ZoneInfo(tz)


@functools.cache
def _known_zones() -> frozenset[str]:
    # Membership in this set also keeps path-like names such as "../etc/passwd"
    # away from the file system.
    return frozenset(zoneinfo.available_timezones() - _NON_LOCATION_ZONES)
