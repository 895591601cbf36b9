"""Webhook delivery over HTTP(S) with httpx.

Each try resolves the target host once, checks every address with the AddressPolicy and
connects to a checked address, while the Host header and TLS server name stay those of
the URL, so certificates are verified for the real host. Keep-alive is off because
httpx pools connections by address: a connection opened for one host name must not be
reused for another name on the same address.

Redirects are followed only to the same host (at most three), because a receiver that
redirects elsewhere could point the server at an address that was never checked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from serverlord.alerting.addresses import AddressPolicy, Resolver, TargetRejected, parse_ip
from serverlord.alerting.channels import Channel, webhook_request
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


@dataclass(frozen=True, slots=True)
class _Answer:
    status_code: int
    headers: httpx.Headers
    excerpt: str


class WebhookTransport:
    def __init__(
        self, policy: AddressPolicy, timeout: float = 10.0, resolver: Resolver | None = None
    ) -> None:
        self._policy = policy
        self._resolver = resolver
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            # A proxy from HTTP_PROXY would make the connection, unchecked, in our place.
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        await self._client.aclose()

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
            return await self._send_following_redirects(request["method"], url, body, headers)
        except TargetRejected as exc:
            return AttemptResult(Outcome.REJECTED, error=str(exc))
        except httpx.InvalidURL as exc:
            return AttemptResult(Outcome.REJECTED, error=f"the rendered URL is invalid: {exc}")
        except httpx.TimeoutException as exc:
            return AttemptResult(Outcome.TIMEOUT, error=f"timed out: {type(exc).__name__}")
        except (httpx.HTTPError, OSError) as exc:
            return AttemptResult(Outcome.FAILED, error=f"{type(exc).__name__}: {exc}")

    async def _send_following_redirects(
        self, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> AttemptResult:
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            if target.scheme not in ("http", "https") or not target.host:
                return AttemptResult(Outcome.REJECTED, error="the URL must be http(s) with a host")
            answer = await self._send_pinned(method, target, body, headers)
            location = answer.headers.get("location")
            if answer.status_code not in _REDIRECT_STATUSES or not location:
                return _classify(answer)

            next_target = target.join(location)
            if next_target.host != target.host:
                return AttemptResult(
                    Outcome.REJECTED,
                    status_code=answer.status_code,
                    error=f"the receiver redirected to another host"
                    f" ({redact_url(str(next_target))}); redirects are followed only within"
                    " one host",
                )
            # Browsers and curl turn these into a GET without a body, while 307 and 308
            # keep the method and body.
            if answer.status_code == 303 or (answer.status_code in (301, 302) and method == "POST"):
                method, body = "GET", b""
            target = next_target
        return AttemptResult(Outcome.REJECTED, error=f"more than {MAX_REDIRECTS} redirects")

    async def _send_pinned(
        self, method: str, target: httpx.URL, body: bytes, headers: dict[str, str]
    ) -> _Answer:
        """Send to the checked addresses of the target's host, trying each in order."""
        host = target.raw_host.decode("ascii")
        port = target.port or (443 if target.scheme == "https" else 80)
        addresses = await self._policy.resolve(host, port, self._resolver)
        extensions = {}
        if target.scheme == "https" and parse_ip(host) is None:
            extensions["sni_hostname"] = host

        last_error: httpx.ConnectError | None = None
        for address in addresses:
            request = self._client.build_request(
                method,
                target.copy_with(host=address),
                content=body or None,
                headers={**headers, "Host": target.netloc.decode("ascii")},
                extensions=extensions,
            )
            try:
                response = await self._client.send(request, stream=True)
            except httpx.ConnectError as exc:
                log.debug("webhook connect to %s failed: %s", address, exc)
                last_error = exc
                continue
            try:
                excerpt = await _read_excerpt(response)
            finally:
                await response.aclose()
            return _Answer(response.status_code, response.headers, excerpt)
        assert last_error is not None  # resolve() returns at least one address
        raise last_error


async def _read_excerpt(response: httpx.Response) -> str:
    received = bytearray()
    async for chunk in response.aiter_bytes():
        received += chunk
        if len(received) >= _EXCERPT_BYTES:
            break
    text = received[:_EXCERPT_BYTES].decode("utf-8", "replace")
    return " ".join(text.split())


def _classify(answer: _Answer) -> AttemptResult:
    status = answer.status_code
    if 200 <= status < 300:
        return AttemptResult(Outcome.SENT, status_code=status)
    error = f"the receiver answered {status}" + (f": {answer.excerpt}" if answer.excerpt else "")
    if status >= 500 or status in _RETRYABLE_STATUSES:
        return AttemptResult(
            Outcome.FAILED,
            status_code=status,
            error=error,
            retry_after=_retry_after(answer.headers.get("retry-after")),
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
