"""Ping endpoints: `/ping/<uuid>` and its suffixes, as crontab lines call them.

Answers are plain text (`OK`, `not found`) like healthchecks', so wrappers that look at
the body keep working. HEAD, GET and POST are all pings.
"""

from __future__ import annotations

import base64
from typing import Any
from uuid import UUID

import falcon
import falcon.asgi

from serverlord.web.shards import ShardRouter

SUFFIX_SIGNALS = {"start": "start", "fail": "fail", "log": "log"}
MAX_EXIT_STATUS = 255


class PingSettings:
    def __init__(self, body_limit: int) -> None:
        self.body_limit = body_limit


def text(resp: falcon.asgi.Response, status: int, body: str) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_TEXT
    resp.text = body


def parse_suffix(suffix: str | None) -> tuple[str, int | None] | None:
    """Return (signal, exit status) for a ping URL suffix, or None when it is unknown."""
    if suffix is None:
        return "success", None
    if suffix in SUFFIX_SIGNALS:
        return SUFFIX_SIGNALS[suffix], None
    if suffix.isascii() and suffix.isdigit() and len(suffix) <= 3:
        code = int(suffix)
        return ("success" if code == 0 else "fail"), code
    return None


class PingResource:
    def __init__(self, router: ShardRouter, settings: PingSettings) -> None:
        self.router = router
        self.settings = settings

    async def on_get(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        code: str,
        suffix: str | None = None,
    ) -> None:
        await self._ping(req, resp, code, suffix)

    on_post = on_get
    on_head = on_get

    async def _ping(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, code: str, suffix: str | None
    ) -> None:
        _common_headers(resp, self.settings.body_limit)
        try:
            check_id = UUID(code)
        except ValueError:
            text(resp, 404, "not found")
            return
        if len(code) != 36:
            text(resp, 404, "not found")
            return

        parsed = parse_suffix(suffix)
        if parsed is not None and parsed[1] is not None and parsed[1] > MAX_EXIT_STATUS:
            text(resp, 400, "invalid url format")
            return
        if parsed is None:
            text(resp, 404, "not found")
            return
        signal, exitstatus = parsed

        rid = req.get_param("rid")
        if rid is not None:
            try:
                rid = str(UUID(rid))
            except ValueError:
                text(resp, 400, "invalid uuid format")
                return

        body, size = await _read_body(req, self.settings.body_limit)
        args: dict[str, Any] = {
            "id": str(check_id),
            "signal": signal,
            "exitstatus": exitstatus,
            "rid": rid,
            "method": req.method,
            "scheme": req.scheme,
            "remote_addr": req.remote_addr or "",
            "ua": req.user_agent or "",
            "body": base64.b64encode(body).decode() if body else None,
            "body_size": size,
        }
        status, answer = await self.router.request(check_id, "ping", args)
        if status == 200:
            text(resp, 200, "OK" if req.method != "HEAD" else "")
        elif status == 404:
            text(resp, 404, "not found")
        else:
            resp.status = status
            resp.media = answer
            if status == 503:
                resp.set_header("Retry-After", "2")


def _common_headers(resp: falcon.asgi.Response, body_limit: int) -> None:
    resp.set_header("Access-Control-Allow-Origin", "*")
    resp.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
    resp.set_header("Ping-Body-Limit", str(body_limit))


async def _read_body(req: falcon.asgi.Request, limit: int) -> tuple[bytes, int]:
    """Read at most `limit` bytes of the body and discard the rest.

    A long body is cut, never refused: the signal must get through even when the job's
    log is large. Returns the kept bytes and the full size.
    """
    if req.method == "HEAD":
        return b"", 0
    kept = bytearray()
    size = 0
    async for chunk in req.stream:
        size += len(chunk)
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
    return bytes(kept), size
