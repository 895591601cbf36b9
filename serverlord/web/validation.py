"""Validation of request bodies and ids, with messages that name the field and the fix."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import falcon.asgi
import orjson

from serverlord.durations import DurationError, parse_duration
from serverlord.schedules import (
    OnCalendarSchedule,
    ScheduleError,
    parse_schedule,
    validate_timezone,
)
from serverlord.web.errors import bad_request

# JSON bodies of the management API are small; this only bounds what a client can make a
# worker buffer.
MAX_JSON_BODY = 64 * 1024
MAX_NAME = 100
# PostgreSQL text cannot contain NUL, so stored text fields reject it here. The shard would
# detect it only when its commit fails, and it responds to that failure with a 503.
NUL_MESSAGE = "contains the character U+0000 (NUL), which cannot be stored; remove it"


def parse_uuid(value: str, field: str) -> UUID:
    try:
        parsed = UUID(value)
    except ValueError:
        raise bad_request(
            f"{field}: {value[:60]!r} is not a valid UUID; expected the form "
            "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
        ) from None
    # UUID() also accepts forms such as "{...}" or "urn:uuid:"; ids in URLs are canonical.
    if len(value) != 36:
        raise bad_request(f"{field}: {value[:60]!r} is not a canonical UUID")
    return parsed


async def read_json_object(req: falcon.asgi.Request) -> dict[str, Any]:
    if req.content_length is not None and req.content_length > MAX_JSON_BODY:
        raise falcon.HTTPContentTooLarge(
            title="Content Too Large",
            description=f"the request body is {req.content_length} bytes; "
            f"the limit is {MAX_JSON_BODY}",
        )
    raw = await req.stream.read(MAX_JSON_BODY + 1)
    if len(raw) > MAX_JSON_BODY:
        raise falcon.HTTPContentTooLarge(
            title="Content Too Large",
            description=f"the request body exceeds the limit of {MAX_JSON_BODY} bytes",
        )
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


TASK_FIELDS = {"name", "interval", "grace_period", "schedule", "tz", "max_runtime"}


def task_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Validate a create-task body and return the shard's column values."""
    unknown = sorted(set(data) - TASK_FIELDS)
    if unknown:
        raise bad_request(
            f"unknown field {unknown[0]!r}; allowed fields are {', '.join(sorted(TASK_FIELDS))}"
        )

    name = data.get("name", "")
    if not isinstance(name, str):
        raise bad_request(f"name: expected a string, got {type(name).__name__}")
    if len(name) > MAX_NAME:
        raise bad_request(f"name: {len(name)} characters is too long; use at most {MAX_NAME}")
    if "\x00" in name:
        raise bad_request(f"name: {NUL_MESSAGE}")

    try:
        grace = parse_duration(data.get("grace_period", 3600), "grace_period")
        max_runtime = None
        if data.get("max_runtime") is not None:
            max_runtime = parse_duration(data["max_runtime"], "max_runtime")
        schedule = data.get("schedule")
        if schedule is None:
            if "interval" not in data:
                raise bad_request(
                    'interval: missing; give a duration such as "24h", "5m", "90s" or '
                    "seconds as an integer, or a cron schedule"
                )
            timeout = parse_duration(data["interval"], "interval")
            kind, expression, tz = "simple", "* * * * *", "UTC"
        else:
            if "interval" in data:
                raise bad_request("interval: not allowed together with schedule; send one")
            kind, expression, tz, timeout = _schedule_fields(schedule, data.get("tz", "UTC"))
    except DurationError as exc:
        raise bad_request(str(exc)) from None

    return {
        "project_id": None,
        "name": name,
        "slug": "",
        "tags": "",
        "description": "",
        "kind": kind,
        "timeout_s": timeout,
        "grace_s": grace,
        "schedule": expression,
        "tz": tz,
        "max_runtime_s": max_runtime,
        "manual_resume": False,
        "methods": "",
    }


def _schedule_fields(schedule: Any, tz: Any) -> tuple[str, str, str, int]:
    if not isinstance(schedule, str):
        raise bad_request(f"schedule: expected a string, got {type(schedule).__name__}")
    if not isinstance(tz, str):
        raise bad_request(f"tz: expected a string such as 'Europe/Berlin', got {tz!r}")
    try:
        validate_timezone(tz)
    except ScheduleError as exc:
        raise bad_request(f"tz: {exc}") from None
    try:
        parsed = parse_schedule(schedule, tz)
    except ScheduleError as exc:
        raise bad_request(f"schedule: {exc}") from None
    kind = "oncalendar" if isinstance(parsed, OnCalendarSchedule) else "cron"
    return kind, schedule, tz, 86400
