"""Webhook delivery over HTTP(S), on pooled keep-alive connections.

Each try resolves the target host once, checks every address with the AddressPolicy and
sends to a checked address, while the Host header and TLS server name stay those of the
URL, so certificates are verified for the real host. Connections are kept open between
tries and reused only for the same address, port and TLS server name (see http_pool),
so the pinning holds for reused connections too.

Redirects are followed only to the same host (at most three), because a receiver that
redirects elsewhere could point the server at an address that was never checked.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import h11
import httpx

from serverlord.alerting.addresses import AddressPolicy, Resolver, TargetRejected, parse_ip
from serverlord.alerting.channels import Channel, webhook_request
from serverlord.alerting.http_pool import (
    ConnectError,
    Header,
    HttpConnectionPool,
    HttpProtocolError,
    HttpRequest,
    HttpResponse,
    Origin,
)
from serverlord.alerting.messages import render_header, render_template, template_values
from serverlord.alerting.notifications import Notification
from serverlord.alerting.redaction import redact_url
from serverlord.alerting.transports import AttemptResult, Outcome, skipped

log = logging.getLogger(__name__)

USER_AGENT = "serverlord-alerts"
MAX_REDIRECTS = 3
# Bytes of a response body kept for the error message of a failed try.
_EXCERPT_BYTES = 200
_RETRYABLE_STATUSES = frozenset({408, 425, 429})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Methods that always carry a Content-Length, as httpx sent them before: 0 without a body.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class WebhookTransport:
    def __init__(
        self,
        policy: AddressPolicy,
        timeout: float = 10.0,
        resolver: Resolver | None = None,
        connections: HttpConnectionPool | None = None,
    ) -> None:
        self._policy = policy
        self._timeout = timeout
        self._resolver = resolver
        self._connections = connections or HttpConnectionPool()

    async def close(self) -> None:
        await self._connections.close()

    async def send(self, channel: Channel, notification: Notification) -> AttemptResult:
        request = webhook_request(channel.config, notification.kind)
        if request is None:
            return skipped(channel, notification.kind)

        values = template_values(notification)
        url = render_template(request["url"], values, in_url=True)
        body = render_template(request["body"], values).encode()
        headers = {name: render_header(value, values) for name, value in request["headers"].items()}
        headers["Idempotency-Key"] = str(notification.id)

        try:
            async with asyncio.timeout(self._timeout):
                return await self._send_following_redirects(request["method"], url, body, headers)
        except TargetRejected as exc:
            return AttemptResult(Outcome.REJECTED, error=str(exc))
        except httpx.InvalidURL as exc:
            return AttemptResult(Outcome.REJECTED, error=f"the rendered URL is invalid: {exc}")
        except h11.LocalProtocolError as exc:
            return AttemptResult(Outcome.REJECTED, error=f"the request is invalid: {exc}")
        except TimeoutError:
            return AttemptResult(Outcome.TIMEOUT, error=f"timed out after {self._timeout:g} s")
        except HttpProtocolError as exc:
            return AttemptResult(Outcome.FAILED, error=str(exc))
        except OSError as exc:
            return AttemptResult(Outcome.FAILED, error=f"{type(exc).__name__}: {exc}")

    async def _send_following_redirects(
        self, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> AttemptResult:
        target = _parse_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            if target.scheme not in ("http", "https") or not target.host:
                return AttemptResult(Outcome.REJECTED, error="the URL must be http(s) with a host")
            response = await self._send_pinned(method, target, body, headers)
            location = response.header("location")
            if response.status_code not in _REDIRECT_STATUSES or not location:
                return _classify(response)

            next_target = target.join(location)
            if next_target.host != target.host:
                return AttemptResult(
                    Outcome.REJECTED,
                    status_code=response.status_code,
                    error=f"the receiver redirected to another host"
                    f" ({redact_url(str(next_target))}); redirects are followed only within"
                    " one host",
                )
            # Browsers and curl turn these into a GET without a body, while 307 and 308
            # keep the method and body.
            if response.status_code == 303 or (
                response.status_code in (301, 302) and method == "POST"
            ):
                method, body = "GET", b""
            target = next_target
        return AttemptResult(Outcome.REJECTED, error=f"more than {MAX_REDIRECTS} redirects")

    async def _send_pinned(
        self, method: str, target: httpx.URL, body: bytes, headers: dict[str, str]
    ) -> HttpResponse:
        """Send to the checked addresses of the target's host, trying each in order."""
        host = target.raw_host.decode("ascii")
        port = target.port or (443 if target.scheme == "https" else 80)
        addresses = await self._policy.resolve(host, port, self._resolver)
        server_name = None
        if target.scheme == "https" and parse_ip(host) is None:
            server_name = host
        request = HttpRequest(
            method.encode("ascii"),
            target.raw_path,
            _request_headers(method, target, body, headers),
            body,
        )

        last_error: ConnectError | None = None
        for address in addresses:
            origin = Origin(target.scheme, address, port, server_name)
            try:
                response = await self._connections.request(origin, request, _EXCERPT_BYTES)
            except ConnectError as exc:
                log.debug("webhook connect to %s failed: %s", address, exc)
                last_error = exc
                continue
            log.debug(
                "webhook request to %s via %s returned status %d",
                redact_url(str(target)),
                address,
                response.status_code,
            )
            return response
        assert last_error is not None  # resolve() returns at least one address
        raise last_error


@functools.lru_cache(maxsize=1024)
def _parse_url(url: str) -> httpx.URL:
    """Parse a rendered URL. Cached, because most channels send every notification to one URL."""
    return httpx.URL(url)


def _request_headers(
    method: str, target: httpx.URL, body: bytes, headers: dict[str, str]
) -> list[Header]:
    """Return the headers of one request: defaults, then the channel's, then framing."""
    merged = {"host": ("Host", target.netloc.decode("ascii"))}
    merged["user-agent"] = ("User-Agent", USER_AGENT)
    merged["accept"] = ("Accept", "*/*")
    for name, value in headers.items():
        merged[name.lower()] = (name, value)
    if target.username or target.password:
        # Credentials in the URL become Basic authentication, as httpx sent them before.
        pair = f"{target.username}:{target.password}".encode()
        merged["authorization"] = ("Authorization", "Basic " + base64.b64encode(pair).decode())
    if body or method in _BODY_METHODS:
        merged["content-length"] = ("Content-Length", str(len(body)))
    return [(name.encode("latin-1"), value.encode("utf-8")) for name, value in merged.values()]


def _classify(response: HttpResponse) -> AttemptResult:
    status = response.status_code
    if 200 <= status < 300:
        return AttemptResult(Outcome.SENT, status_code=status)
    excerpt = " ".join(response.body_excerpt.decode("utf-8", "replace").split())
    error = f"the receiver answered {status}" + (f": {excerpt}" if excerpt else "")
    if status >= 500 or status in _RETRYABLE_STATUSES:
        return AttemptResult(
            Outcome.FAILED,
            status_code=status,
            error=error,
            retry_after=_retry_after(response.header("retry-after")),
        )
    return AttemptResult(Outcome.REJECTED, status_code=status, error=error)


def _retry_after(value: str | None) -> float | None:
    """Parse Retry-After (seconds or an HTTP date) as seconds, or return None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # An HTTP date is wall-clock time, so it is compared with the system's wall clock.
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
