"""Webhook connections stay open between sends, but only for one address and TLS name."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter
from types import TracebackType
from typing import Literal, Self

import trustme

from serverlord.alerting.addresses import AddressPolicy
from serverlord.alerting.deliverer import Deliverer
from serverlord.alerting.http_pool import HttpConnectionPool, HttpRequest, Origin
from serverlord.alerting.webhook import WebhookTransport
from serverlord.clock import FakeClock
from tests.receivers import (
    ALLOW_LOOPBACK,
    WAIT_LIMIT,
    ChannelBook,
    enqueue_event,
    fetch_attempts,
    fetch_notification,
    open_pool,
)

NAMES = ("hooks-a.example.test", "hooks-b.example.test")

Mode = Literal["keep", "drop-second"]


class KeepAliveReceiver:
    """An HTTP/1.1 server that keeps connections open and counts requests per connection.

    keep: 200 with keep-alive to every request. drop-second: the second request on a
    connection is read and then the connection is closed without a response, as a
    server does whose idle timeout ends just as a request arrives.
    """

    def __init__(self, mode: Mode = "keep", tls: ssl.SSLContext | None = None) -> None:
        self.mode = mode
        self.tls = tls
        self.port = 0
        # Requests received on each connection, in the order the connections opened.
        self.requests_per_connection: list[int] = []
        # TLS server name (SNI) of each connection, when TLS is on.
        self.server_names: list[str | None] = []
        self._server: asyncio.Server | None = None
        if tls is not None:
            tls.sni_callback = self._note_server_name
        self._pending_name: str | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), WAIT_LIMIT)

    def url(self, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}/hook"

    def _note_server_name(
        self, connection: ssl.SSLObject, name: str | None, context: ssl.SSLContext
    ) -> None:
        self._pending_name = name

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.requests_per_connection)
        self.requests_per_connection.append(0)
        self.server_names.append(self._pending_name)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests_per_connection[index] += 1
                if self.mode == "drop-second" and self.requests_per_connection[index] == 2:
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()


def test_webhooks_reuse_one_connection(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with KeepAliveReceiver() as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": receiver.url()}, "up": None})
            rows = []
            for index in range(3):
                rows += await enqueue_event(pool, [channel], clock.time(), check_id=_check(index))
            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK, concurrency=1)

            assert await deliverer.deliver_due() == 3
            await deliverer.close()

            assert receiver.requests_per_connection == [3]
            for row in rows:
                assert (await fetch_notification(pool, row.id))["status"] == "sent"

    asyncio.run(scenario())


def test_closed_idle_connection_is_retried(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with KeepAliveReceiver("drop-second") as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": receiver.url()}, "up": None})
            first = await enqueue_event(pool, [channel], clock.time(), check_id=_check(0))
            second = await enqueue_event(pool, [channel], clock.time(), check_id=_check(1))
            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK, concurrency=1)

            assert await deliverer.deliver_due() == 2
            await deliverer.close()

            # The second notification went out on the kept connection, which the receiver
            # closed without a response, then again on a new connection in the same try.
            assert receiver.requests_per_connection == [2, 1]
            for row in (*first, *second):
                stored = await fetch_notification(pool, row.id)
                attempts = await fetch_attempts(pool, row.id)
                assert stored["status"] == "sent"
                assert [attempt["outcome"] for attempt in attempts] == ["sent"]

    asyncio.run(scenario())


def test_tls_connection_per_server_name(shard_dsn: str) -> None:
    async def scenario() -> None:
        authority = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert(*NAMES).configure_cert(server_context)
        client_context = ssl.create_default_context()
        authority.configure_trust(client_context)

        clock = FakeClock()
        book = ChannelBook()
        async with KeepAliveReceiver(tls=server_context) as receiver, open_pool(shard_dsn) as pool:
            channels = [
                book.add("webhook", {"down": {"url": receiver.url(name)}, "up": None})
                for name in NAMES
            ]
            for index in range(4):
                channel = channels[index % 2]
                await enqueue_event(pool, [channel], clock.time(), check_id=_check(index))
            deliverer = Deliverer(
                pool,
                clock,
                book,
                concurrency=1,
                transports={"webhook": _transport_resolving_to_loopback(client_context)},
            )

            assert await deliverer.deliver_due() == 4
            await deliverer.close()

            # Both names resolve to 127.0.0.1, yet each has a connection of its own,
            # verified against its own name.
            assert sorted(receiver.requests_per_connection) == [2, 2]
            assert sorted(name or "" for name in receiver.server_names) == sorted(NAMES)

    asyncio.run(scenario())


def test_tls_certificate_must_match_name(shard_dsn: str) -> None:
    async def scenario() -> None:
        authority = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert(NAMES[0]).configure_cert(server_context)
        client_context = ssl.create_default_context()
        authority.configure_trust(client_context)

        clock = FakeClock()
        book = ChannelBook()
        async with KeepAliveReceiver(tls=server_context) as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": receiver.url(NAMES[1])}, "up": None})
            rows = await enqueue_event(pool, [channel], clock.time())
            deliverer = Deliverer(
                pool,
                clock,
                book,
                transports={"webhook": _transport_resolving_to_loopback(client_context)},
            )

            await deliverer.deliver_due()
            await deliverer.close()

            attempts = await fetch_attempts(pool, rows[0].id)
            assert [attempt["outcome"] for attempt in attempts] == ["failed"]
            assert "CERTIFICATE_VERIFY_FAILED" in attempts[0]["error"]

    asyncio.run(scenario())


def test_idle_connection_expires() -> None:
    async def scenario() -> None:
        now = [0.0]
        connections = HttpConnectionPool(idle_timeout=4.0, monotonic=lambda: now[0])
        async with KeepAliveReceiver() as receiver:
            origin = Origin("http", "127.0.0.1", receiver.port, None)
            request = HttpRequest(b"GET", b"/hook", [(b"Host", b"127.0.0.1")])

            await connections.request(origin, request)
            now[0] += 3.9
            await connections.request(origin, request)
            now[0] += 4.0
            await connections.request(origin, request)
            await connections.close()

            assert receiver.requests_per_connection == [2, 1]
            assert connections.connections_opened == 2
            assert Counter(receiver.server_names) == {None: 2}

    asyncio.run(scenario())


def _transport_resolving_to_loopback(context: ssl.SSLContext) -> WebhookTransport:
    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    policy = AddressPolicy(ALLOW_LOOPBACK.webhook_allowed_networks)
    return WebhookTransport(
        policy, 10.0, resolver=resolve, connections=HttpConnectionPool(ssl_context=context)
    )


def _check(index: int) -> str:
    return f"00000000-0000-4000-8000-{index:012d}"
