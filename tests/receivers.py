"""Loopback receivers for alert tests (an HTTP server and an SMTP sink) and outbox helpers.

Both receivers run in the test's own event loop on 127.0.0.1 with a port chosen by the
kernel, so tests talk to real sockets and never leave the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from types import TracebackType
from typing import Any, Literal, Self

from aiosmtpd.smtp import SMTP, Envelope, Session
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from serverlord.alerting.channels import Channel, ChannelKind, validate_channel
from serverlord.alerting.notifications import NotificationRow, build_payload, notification_rows
from serverlord.alerting.outbox import enqueue
from serverlord.alerting.policy import NotificationKind
from serverlord.alerting.settings import AlertSettings, parse_networks

Mode = Literal["ok", "error", "hang", "slow", "redirect", "status"]

# Upper bound on every wait in these helpers, so a broken test fails instead of hanging.
WAIT_LIMIT = 20.0


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    target: str
    headers: dict[str, str]
    """Header names in lower case."""

    body: bytes


class HttpReceiver:
    """An HTTP/1.1 server whose response is set by `mode`.

    ok: 200. error: 500 at once. hang: no response until `release()` or close. slow:
    200 after `delay` seconds (12 by default, beyond the 10 s webhook timeout), or at
    `release()` or close if that comes first. redirect:
    302 to `location`. status: `status` at once. Every request is recorded, including
    ones that never get a response.
    """

    def __init__(
        self,
        mode: Mode = "ok",
        *,
        host: str = "127.0.0.1",
        delay: float = 12.0,
        location: str = "",
        status: int = 200,
        response_headers: dict[str, str] | None = None,
    ) -> None:
        self.mode: Mode = mode
        self.host = host
        self.delay = delay
        self.location = location
        self.status = status
        self.response_headers = response_headers or {}
        self.requests: list[ReceivedRequest] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._arrived = asyncio.Condition()
        self._released = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Releasing, rather than cancelling, lets each handler close its socket itself.
        self.release()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=WAIT_LIMIT)
        await self._server.wait_closed()
        self._server = None

    def url(self, path: str = "/hook") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def release(self) -> None:
        """Let every hanging request, and every later one, get its response."""
        self._released.set()

    async def wait_for_requests(self, count: int) -> list[ReceivedRequest]:
        """Wait until `count` requests have arrived (at most WAIT_LIMIT seconds)."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.requests) >= count), WAIT_LIMIT
            )
        return list(self.requests)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request = await _read_request(reader)
            if request is None:
                return
            async with self._arrived:
                self.requests.append(request)
                self._arrived.notify_all()
            status, headers = await self._answer()
            writer.write(_response(status, headers))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self) -> tuple[int, dict[str, str]]:
        headers = dict(self.response_headers)
        if self.mode == "error":
            return 500, headers
        if self.mode == "hang":
            await self._released.wait()
        elif self.mode == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), self.delay)
        elif self.mode == "redirect":
            headers["Location"] = self.location
            return 302, headers
        elif self.mode == "status":
            return self.status, headers
        return 200, headers


async def _read_request(reader: asyncio.StreamReader) -> ReceivedRequest | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return ReceivedRequest(parts[0], parts[1], headers, body)


_REASONS = {200: "OK", 302: "Found", 500: "Internal Server Error"}


def _response(status: int, headers: dict[str, str]) -> bytes:
    body = f"answer {status}".encode()
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


@dataclass(frozen=True)
class ReceivedMail:
    sender: str
    recipients: list[str]
    message: EmailMessage


class SmtpSink:
    """An SMTP server (aiosmtpd) that stores every message it accepts.

    Recipients listed in `reject` get a 550 reply, as for an unknown mailbox.
    """

    def __init__(self, reject: tuple[str, ...] = ()) -> None:
        self.reject = reject
        self.messages: list[ReceivedMail] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._arrived = asyncio.Condition()

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="sink.localhost", loop=loop), "127.0.0.1", 0
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_for_messages(self, count: int) -> list[ReceivedMail]:
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.messages) >= count), WAIT_LIMIT
            )
        return list(self.messages)

    # aiosmtpd calls these hooks by name.

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.reject:
            return "550 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        parsed = BytesParser(policy=email.policy.default).parsebytes(content)
        assert isinstance(parsed, EmailMessage)
        async with self._arrived:
            self.messages.append(
                ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), parsed)
            )
            self._arrived.notify_all()
        return "250 Message accepted"


# -- outbox helpers ----------------------------------------------------------------------


async def eventually(predicate: Callable[[], Awaitable[bool]], description: str) -> None:
    """Wait until `predicate` returns true, checking every 20 ms for up to WAIT_LIMIT s.

    For results that are stored after a receiver has responded, which no event reports.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + WAIT_LIMIT
    while not await predicate():
        if loop.time() > give_up:
            raise AssertionError(f"still not true after {WAIT_LIMIT:g} s: {description}")
        await asyncio.sleep(0.02)


# The receivers listen on loopback, which the address policy rejects unless allowed.
ALLOW_LOOPBACK = AlertSettings(
    webhook_allowed_networks=parse_networks("127.0.0.0/8,::1/128", "test networks")
)


class ChannelBook:
    """Channels kept in memory and loaded by id, in place of the catalog."""

    def __init__(self) -> None:
        self.channels: dict[uuid.UUID, Channel] = {}

    def add(self, kind: ChannelKind, config: Any, name: str = "ops") -> Channel:
        channel = Channel(uuid.uuid4(), 1, name, kind, validate_channel(kind, config))
        self.channels[channel.id] = channel
        return channel

    async def __call__(self, channel_id: uuid.UUID) -> Channel | None:
        return self.channels.get(channel_id)


@contextlib.asynccontextmanager
async def open_pool(dsn: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False)
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close()


async def enqueue_event(
    pool: AsyncConnectionPool[Any],
    channels: list[Channel],
    now: float,
    *,
    kind: NotificationKind = "down",
    check_id: str = "6f1b7a52-3c1e-4f0e-9a57-1b2f7e0d9c11",
    name: str = "nightly backup",
    event_time: float | None = None,
    body: bytes | None = b"rsync: connection refused",
) -> list[NotificationRow]:
    """Enqueue one event's notifications in a transaction of their own; return the rows."""
    status = {"down": "down", "up": "up", "late": "grace", "reminder": "down"}.get(kind, "down")
    when = now if event_time is None else event_time
    payload = build_payload(
        check_id=check_id,
        name=name,
        slug="nightly-backup",
        tags="prod db",
        status=status,
        event_time=when,
        reason="fail" if status == "down" else "success",
        last_ping=when,
        body=body,
        exitstatus=1 if status == "down" else 0,
    )
    rows = notification_rows(check_id, when, kind, [c.id for c in channels], payload, now)
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
        await enqueue(cursor, rows)
    return rows


async def fetch_notification(pool: AsyncConnectionPool[Any], row_id: uuid.UUID) -> dict[str, Any]:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute("SELECT * FROM notifications WHERE id = %s", (row_id,))
        row: dict[str, Any] | None = await cursor.fetchone()
    assert row is not None, f"notification {row_id} not found"
    return row


async def fetch_attempts(pool: AsyncConnectionPool[Any], row_id: uuid.UUID) -> list[dict[str, Any]]:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT * FROM notification_attempts WHERE notification_id = %s ORDER BY attempt",
            (row_id,),
        )
        rows: list[dict[str, Any]] = await cursor.fetchall()
    return rows
