"""Channels: where a project's notifications go, and how their configs are validated.

A channel row lives in the catalog database (`channels`). Its `config` depends on `kind`:

- webhook: one request per event, `{"down": request, "up": request}`, where a request is
  `{"method", "url", "body", "headers"}` and null switches that event off. Optional
  `late`, `reminder` and `flapping` requests may be added. A reminder without its own
  request uses the down request, while late and flapping notices without their own
  request are not sent.
- email: `{"to": ["ops@example.com", ...], "events": [...]}`. The SMTP server comes from
  the operator's settings.
- apprise: `{"urls": ["slack://...", ...], "events": [...]}`, sent with the apprise
  package, which supports Slack, Discord, Teams, Telegram, ntfy, PagerDuty and more.

`events` lists the notification kinds the channel receives and defaults to all of them.
`validate_channel` returns the config in normal form, with defaults filled in, or
raises ChannelError naming the field and the fix.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from serverlord.alerting import apprise_loader
from serverlord.alerting.addresses import AddressPolicy, TargetRejected
from serverlord.alerting.policy import NOTIFICATION_KINDS, NotificationKind
from serverlord.clock import Clock

log = logging.getLogger(__name__)

ChannelKind = Literal["webhook", "email", "apprise"]
CHANNEL_KINDS: tuple[ChannelKind, ...] = get_args(ChannelKind)

MAX_NAME_LENGTH = 100
MAX_URL_LENGTH = 2000
MAX_BODY_LENGTH = 10_000
MAX_HEADERS = 20
MAX_HEADER_VALUE_LENGTH = 1000
MAX_RECIPIENTS = 20
MAX_APPRISE_URLS = 10
WEBHOOK_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
WEBHOOK_EVENTS: tuple[NotificationKind, ...] = ("down", "up", "late", "reminder", "flapping")

# Headers that the transport sets itself: a user value would break the request framing,
# the connection to the checked address, or the meaning of the event id.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "idempotency-key"}
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_EMAIL_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[^@\s<>(),;:\"\[\]]+\.[^@\s<>(),;:\"\[\].]+$")


class ChannelError(ValueError):
    """Invalid channel name, kind or config. The message starts with the field's name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Channel:
    id: uuid.UUID
    project_id: int
    name: str
    kind: ChannelKind
    config: dict[str, Any] = field(repr=False)
    created: datetime | None = None

    def wants(self, kind: str) -> bool:
        """Return whether this channel receives notifications of `kind`."""
        if self.kind == "webhook":
            return webhook_request(self.config, kind) is not None
        return kind in self.config.get("events", NOTIFICATION_KINDS)

    def secrets(self) -> list[str]:
        """Return the parts of the config that must never appear in a log or error."""
        found: list[str] = []
        if self.kind == "webhook":
            for request in self.config.values():
                if request:
                    found.extend(_url_secrets(request["url"]))
                    found.extend(request["headers"].values())
        elif self.kind == "apprise":
            for url in self.config["urls"]:
                found.append(url)
                found.extend(part for part in re.split(r"[/:@?&=#,]+", url) if len(part) >= 6)
        return found


def webhook_request(config: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """Return the webhook request for a notification kind, or None when it is off."""
    request = config.get(kind)
    if request is None and kind == "reminder":
        request = config.get("down")
    return request if isinstance(request, dict) else None


# -- validation --------------------------------------------------------------------------


def validate_channel(kind: str, config: Any, policy: AddressPolicy | None = None) -> dict[str, Any]:
    """Return `config` in normal form for a channel of `kind`, or raise ChannelError.

    With `policy`, URLs whose host is an IP literal outside the allowed networks are
    rejected now. Host names are checked again at every delivery, when they resolve.
    """
    if kind == "webhook":
        return _validate_webhook(config, policy)
    if kind == "email":
        return _validate_email(config)
    if kind == "apprise":
        return _validate_apprise(config, policy)
    raise ChannelError(
        "kind", f"unknown channel kind {kind!r}; use one of {', '.join(CHANNEL_KINDS)}"
    )


def validate_channel_name(name: Any) -> str:
    if not isinstance(name, str):
        raise ChannelError("name", "must be a string")
    stripped: str = name.strip()
    if len(stripped) > MAX_NAME_LENGTH:
        raise ChannelError(
            "name", f"is {len(stripped)} characters long; use at most {MAX_NAME_LENGTH}"
        )
    return stripped


def _validate_webhook(config: Any, policy: AddressPolicy | None) -> dict[str, Any]:
    _require_object(config, "config", "an object with a down and an up request")
    _reject_unknown(config, "config", WEBHOOK_EVENTS)
    normal: dict[str, Any] = {}
    for event in WEBHOOK_EVENTS:
        request = config.get(event)
        normal[event] = None if request is None else _validate_request(request, event, policy)
    if normal["down"] is None and normal["up"] is None:
        raise ChannelError(
            "config", "the down and up requests are both switched off; give at least one a url"
        )
    return normal


def _validate_request(request: Any, event: str, policy: AddressPolicy | None) -> dict[str, Any]:
    _require_object(request, event, "an object with method, url, body and headers, or null")
    _reject_unknown(request, event, ("method", "url", "body", "headers"))

    body = request.get("body", "")
    if not isinstance(body, str):
        raise ChannelError(f"{event}.body", "must be a string")
    if len(body) > MAX_BODY_LENGTH:
        raise ChannelError(
            f"{event}.body", f"is {len(body)} characters long; use at most {MAX_BODY_LENGTH}"
        )

    method = request.get("method", "POST" if body else "GET")
    if not isinstance(method, str) or method.upper() not in WEBHOOK_METHODS:
        raise ChannelError(f"{event}.method", f"must be one of {', '.join(WEBHOOK_METHODS)}")
    method = method.upper()
    if body and method in ("GET", "HEAD"):
        raise ChannelError(
            f"{event}.body", f"a {method} request carries no body; use POST or PUT, or remove it"
        )

    return {
        "method": method,
        "url": _validate_url(request.get("url"), f"{event}.url", policy),
        "body": body,
        "headers": _validate_headers(request.get("headers", {}), f"{event}.headers"),
    }


def _validate_url(value: Any, name: str, policy: AddressPolicy | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ChannelError(name, "is missing; give an http:// or https:// URL")
    url: str = value.strip()
    if len(url) > MAX_URL_LENGTH:
        raise ChannelError(name, f"is {len(url)} characters long; use at most {MAX_URL_LENGTH}")
    if any(char.isspace() or ord(char) < 32 for char in url):
        raise ChannelError(name, "contains white space or control characters; URL-encode them")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ChannelError(name, f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ChannelError(name, "must start with http:// or https://")
    if not hostname:
        raise ChannelError(name, "has no host; give a URL such as https://example.com/hook")
    if "$" in parts.netloc:
        raise ChannelError(
            name, "has a placeholder in its host; placeholders may appear in the path and query"
        )
    if policy is not None:
        try:
            policy.check_literal(hostname)
        except TargetRejected as exc:
            raise ChannelError(name, str(exc)) from None
    return url


def _validate_headers(headers: Any, name: str) -> dict[str, str]:
    _require_object(headers, name, "an object of header names to values")
    if len(headers) > MAX_HEADERS:
        raise ChannelError(name, f"has {len(headers)} headers; use at most {MAX_HEADERS}")
    normal: dict[str, str] = {}
    for header, value in headers.items():
        if not _HEADER_NAME.match(header):
            raise ChannelError(f"{name}.{header}", "is not a valid header name")
        if header.lower() in RESERVED_HEADERS:
            raise ChannelError(f"{name}.{header}", "is set by Server Lord itself; remove it")
        if not isinstance(value, str):
            raise ChannelError(f"{name}.{header}", "must be a string")
        if any(char in value for char in "\r\n\0"):
            raise ChannelError(f"{name}.{header}", "contains a line break; remove it")
        if len(value) > MAX_HEADER_VALUE_LENGTH:
            raise ChannelError(
                f"{name}.{header}", f"is longer than {MAX_HEADER_VALUE_LENGTH} characters"
            )
        normal[header] = value
    return normal


def _validate_email(config: Any) -> dict[str, Any]:
    _require_object(config, "config", 'an object such as {"to": ["ops@example.com"]}')
    _reject_unknown(config, "config", ("to", "events"))
    recipients = _string_list(config.get("to"), "to", "recipient addresses", split=True)
    if len(recipients) > MAX_RECIPIENTS:
        raise ChannelError("to", f"has {len(recipients)} addresses; use at most {MAX_RECIPIENTS}")
    for index, address in enumerate(recipients):
        if len(address) > 254 or not _EMAIL_ADDRESS.match(address):
            raise ChannelError(
                f"to[{index}]", f"{address[:60]!r} is not an email address such as ops@example.com"
            )
    return {"to": recipients, "events": _validate_events(config.get("events"))}


def _validate_apprise(config: Any, policy: AddressPolicy | None) -> dict[str, Any]:
    _require_object(config, "config", 'an object such as {"urls": ["slack://..."]}')
    _reject_unknown(config, "config", ("urls", "events"))
    urls = _string_list(config.get("urls"), "urls", "apprise URLs")
    if len(urls) > MAX_APPRISE_URLS:
        raise ChannelError("urls", f"has {len(urls)} URLs; use at most {MAX_APPRISE_URLS}")
    for index, url in enumerate(urls):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        service = apprise_loader.instantiate(url)
        if service is None:
            raise ChannelError(
                f"urls[{index}]",
                f"apprise cannot use this {scheme + '://' if scheme else ''} URL; check the "
                "service's URL form in the apprise documentation",
            )
        if policy is not None and apprise_loader.takes_custom_host(service):
            try:
                policy.check_literal(str(service.host))
            except TargetRejected as exc:
                raise ChannelError(f"urls[{index}]", str(exc)) from None
    return {"urls": urls, "events": _validate_events(config.get("events"))}


def _validate_events(events: Any) -> list[str]:
    if events is None:
        return list(NOTIFICATION_KINDS)
    if not isinstance(events, list) or not all(isinstance(item, str) for item in events):
        raise ChannelError("events", f"must be a list of {', '.join(NOTIFICATION_KINDS)}")
    unknown = [item for item in events if item not in NOTIFICATION_KINDS]
    if unknown:
        raise ChannelError(
            "events", f"unknown kind {unknown[0]!r}; use {', '.join(NOTIFICATION_KINDS)}"
        )
    return [kind for kind in NOTIFICATION_KINDS if kind in events]


def _string_list(value: Any, name: str, description: str, split: bool = False) -> list[str]:
    if isinstance(value, str) and split:
        value = value.split(",")
    elif isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ChannelError(name, f"must be a list of {description}")
    items = [item.strip() for item in value if item.strip()]
    if not items:
        raise ChannelError(name, f"is empty; give at least one of the {description}")
    return items


def _require_object(value: Any, name: str, expected: str) -> None:
    if not isinstance(value, dict):
        raise ChannelError(name, f"must be {expected}")


def _reject_unknown(value: dict[str, Any], name: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ChannelError(
            f"{name}.{unknown[0]}", f"is not a known field; use {', '.join(allowed)}"
        )


def _url_secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [url, parts.path, parts.query]
    if parts.password:
        found.append(parts.password)
    found.extend(segment for segment in parts.path.split("/") if len(segment) >= 6)
    found.extend(value for _, _, value in (pair.partition("=") for pair in parts.query.split("&")))
    return [item for item in found if item]


# -- catalog -----------------------------------------------------------------------------

ChannelLoader = Callable[[uuid.UUID], Awaitable[Channel | None]]


def channel_from_row(row: dict[str, Any]) -> Channel:
    """Build a Channel from a catalog row, validating its stored config again.

    A config stored by an older version may break the current rules. ChannelError then
    makes the deliverer fail the notification with that message instead of sending a
    malformed request.
    """
    kind = row["kind"]
    config = validate_channel(kind, row["config"])
    return Channel(
        id=row["id"],
        project_id=row["project_id"],
        name=row["name"],
        kind=kind,
        config=config,
        created=row.get("created"),
    )


async def create_channel(
    conn: psycopg.AsyncConnection[Any],
    project_id: int,
    name: str,
    kind: str,
    config: Any,
    policy: AddressPolicy | None = None,
) -> Channel:
    """Validate a channel, insert it into the catalog and return it."""
    name = validate_channel_name(name)
    normal = validate_channel(kind, config, policy)
    channel_id = uuid.uuid4()
    cursor = await conn.execute(
        "INSERT INTO channels (id, project_id, name, kind, config) VALUES (%s, %s, %s, %s, %s)"
        " RETURNING created",
        (channel_id, project_id, name, kind, Jsonb(normal)),
    )
    row = await cursor.fetchone()
    created = None if row is None else row[0]
    return Channel(channel_id, project_id, name, cast(ChannelKind, kind), normal, created)


_MAX_CACHED_CHANNELS = 10_000


class CatalogChannelLoader:
    """Load channels from the catalog database, keeping each for `ttl` seconds.

    Caching spares the catalog one query per notification when a check flaps. A
    channel changed or deleted in the catalog is therefore seen up to `ttl` seconds late.
    """

    def __init__(self, pool: AsyncConnectionPool[Any], clock: Clock, ttl: float = 30.0) -> None:
        self._pool = pool
        self._clock = clock
        self._ttl = ttl
        self._cache: dict[uuid.UUID, tuple[float, Channel | None]] = {}

    async def __call__(self, channel_id: uuid.UUID) -> Channel | None:
        now = self._clock.monotonic()
        cached = self._cache.get(channel_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                "SELECT id, project_id, name, kind, config, created FROM channels WHERE id = %s",
                (channel_id,),
            )
            row = await cursor.fetchone()
        channel = None if row is None else channel_from_row(row)
        if len(self._cache) >= _MAX_CACHED_CHANNELS:
            self._cache = {
                key: entry for key, entry in self._cache.items() if now - entry[0] < self._ttl
            }
        self._cache[channel_id] = (now, channel)
        return channel
