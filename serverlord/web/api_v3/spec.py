"""Validation of the JSON bodies that create and update checks.

Types are strict, as in healthchecks: `"60"` is not a number, `1` is not a boolean, and
`null` is never a value. Every error is a 400 whose message starts with healthchecks'
`json validation error: `, then names the field and the accepted values.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import falcon

from serverlord.durations import MAX_SECONDS, MIN_SECONDS
from serverlord.schedules import (
    OnCalendarSchedule,
    ScheduleError,
    parse_schedule,
    validate_timezone,
)
from serverlord.web.validation import NUL_MESSAGE

MAX_NAME = 100
MAX_SLUG = 100
MAX_TAGS = 500
MAX_DESC = 10_000
MAX_SCHEDULE = 100
MAX_KEYWORDS = 200

SLUG_RE = re.compile(r"[a-z0-9_-]*")
UNIQUE_FIELDS = ("name", "slug", "tags", "timeout", "grace")

# healthchecks' fields for classifying pings sent by email. Server Lord takes no pings by
# email, so these are type-checked and then ignored, which lets clients that always send
# them (such as generated API clients) keep working.
EMAIL_TEXT_FIELDS = ("subject", "subject_fail", "success_kw", "failure_kw", "start_kw")
EMAIL_FLAG_FIELDS = ("filter_subject", "filter_body")

KNOWN_FIELDS = frozenset(
    {
        "api_key",
        "name",
        "slug",
        "tags",
        "desc",
        "timeout",
        "grace",
        "schedule",
        "tz",
        "manual_resume",
        "methods",
        "channels",
        "unique",
        "max_runtime",
        "alert_after",
        "recover_after",
        "reminder",
        "late_notice",
        *EMAIL_TEXT_FIELDS,
        *EMAIL_FLAG_FIELDS,
    }
)

# A new check's values for the fields a create leaves out, as shard column values.
CREATE_DEFAULTS: dict[str, Any] = {
    "name": "",
    "slug": "",
    "tags": "",
    "description": "",
    "kind": "simple",
    "timeout_s": 86400,
    "grace_s": 3600,
    "schedule": "* * * * *",
    "tz": "UTC",
    "max_runtime_s": None,
    "manual_resume": False,
    "methods": "",
}


def invalid(message: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(
        title="Bad Request", description=f"json validation error: {message}"
    )


@dataclass
class CheckSpec:
    """A validated create or update request."""

    fields: dict[str, Any] = field(default_factory=dict)
    """Shard column values of the fields the request gave."""

    channels: str | None = None
    """The `channels` value as sent: "*", "", or a comma list of ids or names."""

    unique: list[str] = field(default_factory=list)
    match: dict[str, Any] = field(default_factory=dict)
    """For `unique`: the values an existing check must have, as the shard lists them."""


def parse_spec(body: dict[str, Any], version: int) -> CheckSpec:
    """Validate a create or update body; raise a 400 naming the first invalid field."""
    for name, value in body.items():
        if name not in KNOWN_FIELDS:
            raise invalid(f"unknown field {name[:60]!r}; see the API documentation for fields")
        if value is None:
            raise invalid(f"{name} is null; send a value or leave the field out")

    spec = CheckSpec()
    fields = spec.fields
    if "name" in body:
        fields["name"] = _string(body, "name", MAX_NAME)
        if version < 3 and "slug" not in body:
            # API v1 and v2 derive the slug from the name.
            fields["slug"] = slugify(fields["name"])
    if "slug" in body:
        fields["slug"] = _slug(body["slug"])
    if "tags" in body:
        fields["tags"] = _string(body, "tags", MAX_TAGS)
    if "desc" in body:
        fields["description"] = _string(body, "desc", MAX_DESC)
    if "grace" in body:
        fields["grace_s"] = _seconds(body, "grace")
    if "manual_resume" in body:
        fields["manual_resume"] = _boolean(body, "manual_resume")
    if "methods" in body:
        if body["methods"] not in ("", "POST"):
            raise invalid('methods has an unexpected value; use "" (any method) or "POST"')
        fields["methods"] = body["methods"]
    if "channels" in body:
        spec.channels = _string(body, "channels", 10_000)
    _policy_fields(body, fields)
    for name in EMAIL_TEXT_FIELDS:
        if name in body:
            _string(body, name, MAX_KEYWORDS)
    for name in EMAIL_FLAG_FIELDS:
        if name in body:
            _boolean(body, name)

    _schedule_fields(body, fields)
    spec.unique = _unique(body)
    spec.match = _match(spec.unique, fields)
    return spec


# Server Lord's additions to the check fields: a bound on runs, and the alert policy.
MAX_THRESHOLD = 1000
MIN_REMINDER = 60


def _policy_fields(body: dict[str, Any], fields: dict[str, Any]) -> None:
    if "max_runtime" in body:
        value = body["max_runtime"]
        fields["max_runtime_s"] = None if value == 0 else _seconds(body, "max_runtime")
    for name in ("alert_after", "recover_after"):
        if name in body:
            value = body[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise invalid(f"{name} is not a number; give a count from 1 to {MAX_THRESHOLD}")
            if not 1 <= value <= MAX_THRESHOLD:
                raise invalid(f"{name} is out of range; use 1 to {MAX_THRESHOLD}")
            fields[name] = value
    if "reminder" in body:
        value = body["reminder"]
        if value == 0 and not isinstance(value, bool):
            fields["reminder_s"] = None
        else:
            seconds = _seconds(body, "reminder")
            if seconds < MIN_REMINDER:
                raise invalid(
                    f"reminder is too small; use 0 (no reminders) or {MIN_REMINDER} to "
                    f"{MAX_SECONDS} seconds"
                )
            fields["reminder_s"] = seconds
    if "late_notice" in body:
        fields["late_notice"] = _boolean(body, "late_notice")


def _string(body: dict[str, Any], name: str, limit: int) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise invalid(f"{name} is not a string")
    if len(value) > limit:
        raise invalid(f"{name} is too long ({len(value)} characters); use at most {limit}")
    if "\x00" in value:
        raise invalid(f"{name} {NUL_MESSAGE}")
    return value


def _slug(value: Any) -> str:
    if not isinstance(value, str):
        raise invalid("slug is not a string")
    if len(value) > MAX_SLUG:
        raise invalid(f"slug is too long ({len(value)} characters); use at most {MAX_SLUG}")
    if not SLUG_RE.fullmatch(value):
        raise invalid("slug does not match pattern; use only a-z, 0-9, '-' and '_'")
    return value


def _seconds(body: dict[str, Any], name: str) -> int:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} is not a number; give whole seconds such as 3600")
    if value < MIN_SECONDS:
        raise invalid(f"{name} is too small; use {MIN_SECONDS} to {MAX_SECONDS} seconds")
    if value > MAX_SECONDS:
        raise invalid(f"{name} is too large; use {MIN_SECONDS} to {MAX_SECONDS} seconds")
    return value


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body[name]
    if not isinstance(value, bool):
        raise invalid(f"{name} is not a boolean; use true or false")
    return value


def _schedule_fields(body: dict[str, Any], fields: dict[str, Any]) -> None:
    """Set kind, timeout, schedule and tz: a schedule makes a cron check, a timeout a simple one.

    When both come, the schedule wins, as in healthchecks.
    """
    tz = "UTC"
    if "tz" in body:
        tz = _string(body, "tz", 64)
        try:
            validate_timezone(tz)
        except ScheduleError:
            raise invalid(
                "tz is not a valid timezone; use an IANA name such as Europe/Riga"
            ) from None
        fields["tz"] = tz
    if "timeout" in body:
        timeout = _seconds(body, "timeout")
        if "schedule" not in body:
            fields["kind"] = "simple"
            fields["timeout_s"] = timeout
    if "schedule" in body:
        schedule = _string(body, "schedule", MAX_SCHEDULE)
        try:
            parsed = parse_schedule(schedule, tz)
        except ScheduleError as exc:
            raise invalid(f"schedule is not a valid cron or OnCalendar expression: {exc}") from None
        fields["kind"] = "oncalendar" if isinstance(parsed, OnCalendarSchedule) else "cron"
        fields["schedule"] = schedule


def _unique(body: dict[str, Any]) -> list[str]:
    if "unique" not in body:
        return []
    value = body["unique"]
    if not isinstance(value, list):
        raise invalid('unique is not an array; send a list such as ["name"]')
    for item in value:
        if item not in UNIQUE_FIELDS:
            raise invalid(
                f"an item in 'unique' has an unexpected value; use {', '.join(UNIQUE_FIELDS)}"
            )
    return list(value)


def _match(unique: list[str], fields: dict[str, Any]) -> dict[str, Any]:
    """Return the values a check must have to be the one `unique` names, or {} for none.

    As in healthchecks, a field named in `unique` but absent from the request means
    there is no match to look for, so a new check is created.
    """
    columns = {
        "name": "name",
        "slug": "slug",
        "tags": "tags",
        "timeout": "timeout_s",
        "grace": "grace_s",
    }
    match: dict[str, Any] = {}
    for name in unique:
        column = columns[name]
        if column not in fields or (name == "timeout" and fields.get("kind") != "simple"):
            return {}
        match[name] = fields[column]
    return match


def slugify(name: str) -> str:
    """Derive a slug from a name: ASCII letters and digits, words joined by hyphens."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[^\w\s-]", "", ascii_name.lower())
    return re.sub(r"[-\s]+", "-", cleaned).strip("-_")[:MAX_SLUG]
