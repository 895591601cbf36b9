"""Error responses of the web tier: JSON `{"error": ...}` bodies, never an HTML page.

Client errors are raised as falcon HTTP errors whose description names the field and the
expected form. An exception nobody expected is logged with its traceback and becomes a
500 that reveals nothing of the internals.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import falcon
import falcon.asgi
import orjson

from serverlord.web.shards import ShardUnavailable

log = logging.getLogger(__name__)

# Seconds a client is asked to wait before retrying a ping that a shard could not take.
RETRY_AFTER = 2


_UUID_RE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)


def loggable_path(path: str) -> str:
    """Return the path without the parts that are secrets: ping keys and check UUIDs.

    Anyone with a ping URL can ping the check, so ping paths are cut to their prefix,
    and /b/ and /badge/ paths carry badge keys.
    """
    for prefix in ("/ping/", "/b/", "/badge/", "/projects/"):
        if path.startswith(prefix):
            return prefix + "…"
    return _UUID_RE.sub("<uuid>", path)


def bad_request(message: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title="Bad Request", description=message)


def json_error(resp: falcon.asgi.Response, status: int, message: str) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps({"error": message})


async def reject_websocket(ws: falcon.asgi.WebSocket | None, status: int) -> None:
    """Close a WebSocket handshake that no route accepts, so that uvicorn responds 403."""
    if ws is not None:
        # Falcon 4.4's own handlers map an HTTP status to the WebSocket close code 3000 + status.
        await ws.close(3000 + status)


async def handle_http_error(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response | None,
    exc: falcon.HTTPError,
    params: Any,
    ws: falcon.asgi.WebSocket | None = None,
) -> None:
    # Falcon passes no response for a WebSocket request, and no route serves WebSockets.
    if resp is None:
        await reject_websocket(ws, exc.status_code)
        return
    json_error(resp, exc.status_code, exc.description or exc.title or "error")
    if exc.headers:
        resp.set_headers(exc.headers)


async def handle_shard_unavailable(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response | None,
    exc: ShardUnavailable,
    params: Any,
    ws: falcon.asgi.WebSocket | None = None,
) -> None:
    log.warning("%s %s returned 503: %s", req.method, loggable_path(req.path), exc)
    if resp is None:
        await reject_websocket(ws, 503)
        return
    json_error(resp, 503, f"temporarily unavailable ({exc.reason}); retry shortly")
    resp.set_header("Retry-After", str(RETRY_AFTER))


async def handle_unexpected(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response | None,
    exc: Exception,
    params: Any,
    ws: falcon.asgi.WebSocket | None = None,
) -> None:
    log.exception("unexpected error on %s %s", req.method, loggable_path(req.path))
    if resp is None:
        await reject_websocket(ws, 500)
        return
    json_error(resp, 500, "internal server error")


def install(app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]) -> None:
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(ShardUnavailable, handle_shard_unavailable)
