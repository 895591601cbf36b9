"""The checks endpoints of the management API: list, create, read, update, delete, pause,
resume, pings, ping bodies and flips.

Every shard request carries the key's `project_id`, and the shard returns 404 for a
check of another project exactly as for a missing one. Healthchecks returns 403 there;
Server Lord does not, so that a key cannot even confirm that another project's check
exists.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import falcon
import falcon.asgi
import orjson

from serverlord.web.api_v3 import fanout
from serverlord.web.api_v3.spec import CREATE_DEFAULTS, CheckSpec, invalid, parse_spec
from serverlord.web.api_v3.views import Urls, check_view, flip_view, ping_view
from serverlord.web.auth import Access, Authenticator, Catalog
from serverlord.web.shards import ShardRouter, ShardUnavailable
from serverlord.web.validation import MAX_JSON_BODY, NUL_MESSAGE

UNIQUE_KEY_LENGTH = 40


@dataclass(frozen=True)
class ApiContext:
    """Dependencies of every API resource; one per web worker."""

    router: ShardRouter
    auth: Authenticator
    catalog: Catalog
    ping_retention: int


def not_found() -> falcon.HTTPNotFound:
    return falcon.HTTPNotFound(title="Not Found", description="not found")


async def read_body(req: falcon.asgi.Request) -> dict[str, Any] | None:
    """Return the JSON object of a POST body, or None when the body is empty."""
    raw = await req.stream.read(MAX_JSON_BODY + 1)
    if len(raw) > MAX_JSON_BODY:
        raise falcon.HTTPContentTooLarge(
            title="Content Too Large",
            description=f"the request body exceeds the limit of {MAX_JSON_BODY} bytes",
        )
    if not raw.strip():
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise falcon.HTTPBadRequest(
            title="Bad Request", description="could not parse request body; send a JSON object"
        ) from None
    if not isinstance(data, dict):
        raise invalid("the request body is not a JSON object")
    return data


def version_of(req: falcon.asgi.Request) -> int:
    """Return the API version of the request path, /api/v1/ to /api/v3/."""
    return int(req.path.split("/", 3)[2][1:])


def parse_check_id(code: str) -> uuid.UUID:
    try:
        parsed = uuid.UUID(code)
    except ValueError:
        raise not_found() from None
    if len(code) != 36:
        raise not_found()
    return parsed


def _answer(resp: falcon.asgi.Response, status: int, body: Any) -> None:
    resp.status = status
    resp.media = body


def _shard_error(status: int, body: Any, router: ShardRouter, check_id: uuid.UUID) -> None:
    """Raise the HTTP error that matches a shard's error response."""
    message = body.get("error", "") if isinstance(body, dict) else ""
    if status == 404:
        raise not_found()
    if status == 409:
        raise falcon.HTTPConflict(title="Conflict", description=message)
    if status == 400:
        raise invalid(message)
    raise ShardUnavailable(router.shard_of(check_id), message or f"status {status}")


class ApiResource:
    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self.router = context.router
        self.auth = context.auth

    async def urls(self, req: falcon.asgi.Request, access: Access) -> Urls:
        badge = await self.context.catalog.badge_project(project_id=access.project_id)
        badge_key = None if badge is None else str(badge.badge_key)
        return Urls(req.prefix, version_of(req), badge_key)

    async def request_check(self, check_id: uuid.UUID, op: str, access: Access, **args: Any) -> Any:
        """Send `op` for one check of the key's project; return the body of a 2xx response."""
        status, body = await self.router.request(
            check_id, op, {"id": str(check_id), "project_id": access.project_id, **args}
        )
        if status >= 300:
            _shard_error(status, body, self.router, check_id)
        return body

    async def resolve(self, code: str, access: Access) -> uuid.UUID:
        """Return the UUID of a check named by UUID or, for reads, by its unique key."""
        if len(code) == UNIQUE_KEY_LENGTH and all(c in "0123456789abcdef" for c in code):
            found = await fanout.find_on_shards(
                self.router,
                "find_unique_key",
                {"project_id": access.project_id, "unique_key": code},
            )
            if not found:
                raise not_found()
            return uuid.UUID(found[0]["id"])
        return parse_check_id(code)

    async def resolve_channels(self, spec: CheckSpec, access: Access) -> list[str] | None:
        """Return the channel ids that `channels` names, or None when it was not sent."""
        if spec.channels is None:
            return None
        available = await self.context.catalog.channels(access.project_id)
        if spec.channels == "*":
            return [channel["id"] for channel in available]
        if spec.channels == "":
            return []
        chosen: list[str] = []
        for name in spec.channels.split(","):
            if not name:
                raise invalid("channels has an empty channel identifier; remove the extra comma")
            matches = [c for c in available if name in (c["id"], c["name"])]
            if not matches:
                raise invalid(f"invalid channel identifier: {name[:100]}")
            if len(matches) > 1:
                raise invalid(f"non-unique channel identifier: {name[:100]}; use the channel id")
            if matches[0]["id"] not in chosen:
                chosen.append(matches[0]["id"])
        return chosen

    async def update(
        self, check_id: uuid.UUID, spec: CheckSpec, channels: list[str] | None, access: Access
    ) -> dict[str, Any]:
        """Apply the fields of `spec` to a check and return the check as it is now."""
        fields = dict(spec.fields)
        if channels is not None:
            fields["channels"] = channels
        if not fields:
            result: dict[str, Any] = await self.request_check(check_id, "view", access)
            return result
        result = await self.request_check(check_id, "update", access, fields=fields)
        return result


class ChecksCollection(ApiResource):
    """`GET /api/v3/checks/` lists, `POST` creates or, with `unique`, upserts."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        access = await self.auth.require(req)
        filters: dict[str, Any] = {}
        tags = req.get_param_as_list("tag")
        if tags:
            filters["tags"] = sorted(set(tags))
        slug = req.get_param("slug")
        if slug:
            if "\x00" in slug:
                raise falcon.HTTPBadRequest(title="Bad Request", description=f"slug {NUL_MESSAGE}")
            filters["slug"] = slug
        checks = await fanout.project_checks(self.router, access.project_id, **filters)
        urls = await self.urls(req, access)
        _answer(resp, 200, {"checks": [check_view(check, access, urls) for check in checks]})

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await read_body(req) or {}
        access = await self.auth.require(req, body, write=True)
        spec = parse_spec(body, version_of(req))
        channels = await self.resolve_channels(spec, access)
        urls = await self.urls(req, access)

        if spec.match:
            existing = await fanout.project_checks(self.router, access.project_id, match=spec.match)
            if existing:
                check_id = uuid.UUID(existing[0]["id"])
                updated = await self.update(check_id, spec, channels, access)
                _answer(resp, 200, check_view(updated, access, urls))
                return

        fields = {**CREATE_DEFAULTS, **spec.fields, "project_id": access.project_id}
        fields["channels"] = channels or []
        check_id = uuid.uuid4()
        await self.request_check(check_id, "create", access, fields=fields)
        created = await self.request_check(check_id, "view", access)
        _answer(resp, 201, check_view(created, access, urls))


class CheckResource(ApiResource):
    """`/api/v3/checks/<uuid>`: GET reads (also by unique key), POST updates, DELETE deletes."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, code: str) -> None:
        access = await self.auth.require(req)
        check_id = await self.resolve(code, access)
        check = await self.request_check(check_id, "view", access)
        _answer(resp, 200, check_view(check, access, await self.urls(req, access)))

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, code: str
    ) -> None:
        body = await read_body(req) or {}
        access = await self.auth.require(req, body, write=True)
        check_id = parse_check_id(code)
        spec = parse_spec(body, version_of(req))
        if spec.unique:
            raise invalid("unique is only for creating checks; leave it out of an update")
        channels = await self.resolve_channels(spec, access)
        updated = await self.update(check_id, spec, channels, access)
        _answer(resp, 200, check_view(updated, access, await self.urls(req, access)))

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, code: str
    ) -> None:
        access = await self.auth.require(req, write=True)
        check_id = parse_check_id(code)
        deleted = await self.request_check(check_id, "delete", access)
        _answer(resp, 200, check_view(deleted, access, await self.urls(req, access)))


class CheckAction(ApiResource):
    """`POST /api/v3/checks/<uuid>/pause` and `/resume`."""

    def __init__(self, context: ApiContext, op: str) -> None:
        super().__init__(context)
        self.op = op

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, code: str
    ) -> None:
        body = await read_body(req)
        access = await self.auth.require(req, body, write=True)
        check_id = parse_check_id(code)
        check = await self.request_check(check_id, self.op, access, view=True)
        _answer(resp, 200, check_view(check, access, await self.urls(req, access)))


class CheckPings(ApiResource):
    """`GET /api/v3/checks/<uuid>/pings/`: the latest pings, newest first."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, code: str) -> None:
        access = await self.auth.require(req, write=True)
        check_id = parse_check_id(code)
        body = await self.request_check(
            check_id, "pings", access, limit=self.context.ping_retention
        )
        urls = await self.urls(req, access)
        pings = [ping_view(ping, str(check_id), urls) for ping in body["pings"]]
        _answer(resp, 200, {"pings": pings})


class PingBody(ApiResource):
    """`GET /api/v3/checks/<uuid>/pings/<n>/body`: one stored body as text/plain.

    Bodies are stored as the bytes received; bytes that are not UTF-8 are shown as U+FFFD.
    """

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, code: str, n: str
    ) -> None:
        access = await self.auth.require(req, write=True)
        check_id = parse_check_id(code)
        if not (n.isascii() and n.isdigit()) or len(n) > 9:
            raise not_found()
        body = await self.request_check(
            check_id, "ping_body", access, n=int(n), limit=self.context.ping_retention
        )
        resp.status = 200
        resp.content_type = "text/plain; charset=utf-8"
        resp.text = base64.b64decode(body["body"]).decode("utf-8", "replace")


class CheckFlips(ApiResource):
    """`GET /api/v3/checks/<uuid|unique_key>/flips/` with `seconds`, `start`, `end`."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, code: str) -> None:
        access = await self.auth.require(req)
        window = _flip_window(req)
        check_id = await self.resolve(code, access)
        body = await self.request_check(check_id, "flips", access, **window)
        _answer(resp, 200, {"flips": [flip_view(flip) for flip in body["flips"]]})


class CheckNotifications(ApiResource):
    """`GET /api/v3/checks/<uuid|unique_key>/notifications/`: alerts sent and their outcome.

    A Server Lord addition: the latest 100 notifications, newest first.
    """

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, code: str) -> None:
        access = await self.auth.require(req)
        check_id = await self.resolve(code, access)
        body = await self.request_check(check_id, "notifications", access)
        _answer(
            resp,
            200,
            {
                "notifications": [
                    {
                        **item,
                        "event_time": _iso(item["event_time"]),
                        "created": _iso(item["created"]),
                        "due": _iso(item["due"]),
                        "finished": _iso(item["finished"]),
                    }
                    for item in body["notifications"]
                ]
            },
        )


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _flip_window(req: falcon.asgi.Request) -> dict[str, float]:
    """Return the `start` and `end` epoch bounds of the query."""
    window: dict[str, float] = {}
    for name in ("seconds", "start", "end"):
        raw = req.get_param(name)
        if raw is None:
            continue
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
            raise falcon.HTTPBadRequest(
                title="Bad Request",
                description=f"{name} must be a whole number of seconds, got {raw[:40]!r}",
            )
        window[name] = float(raw)
    seconds = window.pop("seconds", None)
    if seconds is not None:
        start = time.time() - seconds
        window["start"] = max(start, window.get("start", start))
    return window
