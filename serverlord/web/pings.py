"""Ping endpoints: `/ping/<uuid>` and its suffixes, as crontab lines call them.

`/ping/<ping-key>/<slug>` and its suffixes are handed to the slug ping handler.

Responses are plain text (`OK`, `not found`) like healthchecks', so wrappers that look at
the body keep working. HEAD, GET and POST are all pings.
"""

from __future__ import annotations

import base64
import functools
import logging
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Protocol
from uuid import UUID

import falcon
import falcon.asgi

from serverlord.web.shards import ShardRouter

log = logging.getLogger(__name__)

SUFFIX_SIGNALS = {"start": "start", "fail": "fail", "log": "log"}
MAX_EXIT_STATUS = 255


class PingSettings:
    def __init__(
        self, body_limit: int, trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    ) -> None:
        self.body_limit = body_limit
        self.trusted_proxies = trusted_proxies


class SlugPingHandler(Protocol):
    async def ping(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        ping_key: str,
        slug: str,
        suffix: str | None,
    ) -> None: ...


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
    def __init__(
        self,
        router: ShardRouter,
        settings: PingSettings,
        slug_pings: SlugPingHandler | None = None,
    ) -> None:
        self.router = router
        self.settings = settings
        self.slug_pings = slug_pings

    async def on_get(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        code: str,
        suffix: str | None = None,
        action: str | None = None,
    ) -> None:
        if self.slug_pings is not None and suffix is not None and len(code) != 36:
            # /ping/<ping-key>/<slug>[/<action>]: a UUID is always 36 characters, a ping
            # key never is.
            _common_headers(resp, self.settings.body_limit)
            await self.slug_pings.ping(req, resp, code, suffix, action)
            return
        if action is not None:
            _common_headers(resp, self.settings.body_limit)
            text(resp, 404, "not found")
            return
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

        args = await read_ping(req, resp, suffix, self.settings)
        if args is None:
            return
        args["id"] = str(check_id)
        status, answer = await self.router.request(check_id, "ping", args)
        respond_to_ping(req, resp, status, answer)


async def read_ping(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, suffix: str | None, settings: PingSettings
) -> dict[str, Any] | None:
    """Parse a ping's signal, run id and body into shard `ping` arguments (without `id`).

    Sends the error response and returns None when the URL or the run id is invalid.
    """
    parsed = parse_suffix(suffix)
    if parsed is not None and parsed[1] is not None and parsed[1] > MAX_EXIT_STATUS:
        text(resp, 400, "invalid url format")
        return None
    if parsed is None:
        text(resp, 404, "not found")
        return None
    signal, exitstatus = parsed

    rid = req.get_param("rid")
    if rid is not None:
        try:
            rid = str(UUID(rid))
        except ValueError:
            text(resp, 400, "invalid uuid format")
            return None

    read = await _read_body(req, settings.body_limit)
    if read is None:
        text(resp, 400, "the request body is shorter than its Content-Length")
        return None
    body, size = read
    return {
        "signal": signal,
        "exitstatus": exitstatus,
        "rid": rid,
        "method": req.method,
        "scheme": client_scheme(req, settings.trusted_proxies),
        "remote_addr": client_address(req, settings.trusted_proxies),
        "ua": req.user_agent or "",
        "body": base64.b64encode(body).decode() if body else None,
        "body_size": size,
    }


def respond_to_ping(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, status: int, body: Any
) -> None:
    if status == 200:
        text(resp, 200, "OK" if req.method != "HEAD" else "")
    elif status == 404:
        text(resp, 404, "not found")
    else:
        resp.status = status
        resp.media = body
        if status == 503:
            resp.set_header("Retry-After", "2")


def client_address(
    req: falcon.asgi.Request, trusted_proxies: tuple[IPv4Network | IPv6Network, ...]
) -> str:
    """Return the client's address, from X-Forwarded-For when a trusted proxy sent it.

    The header is read only when the connecting peer is one of `trusted_proxies`. Its
    entries are walked from the right, skipping trusted proxies, because a client can
    write any entries of its own at the left. With one proxy and a client that sends no
    header, this is the first entry.
    """
    peer = normalize_address(req.remote_addr or "")
    forwarded = req.get_header("X-Forwarded-For")
    if not forwarded or not _is_trusted(peer, trusted_proxies):
        return peer
    for entry in reversed(forwarded.split(",")):
        address = normalize_address(entry)
        if not address:
            break
        if not _is_trusted(address, trusted_proxies):
            return address
    return peer


def client_scheme(
    req: falcon.asgi.Request, trusted_proxies: tuple[IPv4Network | IPv6Network, ...]
) -> str:
    """Return the scheme the client used, from X-Forwarded-Proto when a trusted proxy sent it."""
    if not trusted_proxies:
        return req.scheme
    forwarded = (req.get_header("X-Forwarded-Proto") or "").strip().lower()
    peer = normalize_address(req.remote_addr or "")
    if forwarded in ("http", "https") and _is_trusted(peer, trusted_proxies):
        return forwarded
    return req.scheme


@functools.lru_cache(maxsize=4096)
def normalize_address(value: str) -> str:
    """Return `value` as a plain IP address, or "" when `value` is not an IP address.

    Drops a port (`1.2.3.4:5678`, `[::1]:80`) and unwraps IPv4-mapped IPv6 addresses
    (`::ffff:192.0.2.10` is `192.0.2.10`).
    """
    value = value.strip()
    if value.startswith("["):
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ip_address(value)
    except ValueError:
        return ""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _is_trusted(address: str, trusted_proxies: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    if not address or not trusted_proxies:
        return False
    parsed = ip_address(address)
    return any(parsed in network for network in trusted_proxies)


def _common_headers(resp: falcon.asgi.Response, body_limit: int) -> None:
    resp.set_header("Access-Control-Allow-Origin", "*")
    resp.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
    resp.set_header("Ping-Body-Limit", str(body_limit))


async def _read_body(req: falcon.asgi.Request, limit: int) -> tuple[bytes, int] | None:
    """Read at most `limit` bytes of the body and discard the rest.

    A long body is cut, never refused: the signal must get through even when the job's
    log is large. Returns the kept bytes and the full size, or None when the body ended
    before its Content-Length.
    """
    if req.method == "HEAD":
        return b"", 0
    expected = req.content_length
    if not expected and req.get_header("Transfer-Encoding") is None:
        # Neither a length nor chunks means no body in HTTP/1.1, and skipping the stream
        # saves most of a GET ping's time in this function.
        return b"", 0
    kept = bytearray()
    size = 0
    async for chunk in req.stream:
        size += len(chunk)
        room = limit - len(kept)
        if room > 0:
            kept += chunk[:room]
    if expected is not None and size < expected:
        # The client went away before its body ended. It did not see a response, so its
        # retry would count the same run twice if this cut-off request were stored.
        log.info("ping not recorded: its body ended after %d of %d bytes", size, expected)
        return None
    return bytes(kept), size
