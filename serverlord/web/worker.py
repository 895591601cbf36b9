"""The gunicorn worker class of the web tier: uvicorn's, with bounds on each request.

uvicorn 0.55 with httptools buffers a request head of any size and waits for its end
without a deadline. A client could therefore make a worker hold megabytes per header, or
keep thousands of connections open by sending a head slowly (slowloris). This protocol
rejects a head larger than MAX_HEAD_BYTES with 431 and closes a connection whose head
has not arrived within HEAD_TIMEOUT seconds. A connection whose request body stops for
BODY_IDLE_TIMEOUT seconds is closed too, and the app receives a disconnect.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

# Request line and headers together. Ping URLs and API keys are short, so this leaves
# room for long cookies or proxy headers.
MAX_HEAD_BYTES = 64 * 1024
# Seconds from a connection's start, or from the first byte of its next request, to the
# end of that request's head.
HEAD_TIMEOUT = 20.0
# Seconds a request body may go without a byte. Idle time, not a total, so a large body
# on a slow link still arrives.
BODY_IDLE_TIMEOUT = 20.0


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on each request's head and body."""

    head_timeout = HEAD_TIMEOUT
    max_head_bytes = MAX_HEAD_BYTES
    body_idle_timeout = BODY_IDLE_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_open = False
        self._head_began_in_chunk = False
        self._head_bytes = 0
        self._head_started = 0.0
        self._any_request = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_open = False
        self._body_seen = 0.0
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_started = self.loop.time()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._head_began_in_chunk = False
        super().data_received(data)
        # Bytes fed while the head is still open belong to it. The chunk in which the head
        # began is not counted, because it may also end the previous request, so a head
        # can exceed the limit by at most one chunk.
        if self._head_open and not self._head_began_in_chunk and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._stop_head_timer()
                self._reject(431, f"the request head exceeds {self.max_head_bytes} bytes")
        # A GET without a body completes in the chunk of its head, so the ping path never
        # starts this timer.
        if self._body_open:
            self._body_seen = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(
                    self.body_idle_timeout, self._body_idle_check
                )
        elif self._body_timer is not None:
            self._stop_body_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._head_began_in_chunk = True
        self._head_bytes = 0
        self._any_request = True
        # The connection keeps one timer, armed lazily and checked when it fires, because
        # a timer for every request cost the ping path about 4 µs of CPU.
        self._head_started = self.loop.time()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()
        self._body_open = True

    def on_message_complete(self) -> None:
        self._body_open = False
        super().on_message_complete()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_idle_check(self) -> None:
        self._body_timer = None
        if not self._body_open or self.transport.is_closing():
            return
        idle = self.loop.time() - self._body_seen
        if idle < self.body_idle_timeout:
            self._body_timer = self.loop.call_later(
                self.body_idle_timeout - idle, self._body_idle_check
            )
            return
        # The app may already be reading the body or responding, so a response written
        # here could interleave with the app's. Closing ends the request as a disconnect.
        self.logger.warning(
            "closed a connection: its request body sent nothing for %g s", self.body_idle_timeout
        )
        self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_open:
            waited = self.loop.time() - self._head_started
            if waited < self.head_timeout:
                self._head_timer = self.loop.call_later(
                    self.head_timeout - waited, self._head_timed_out
                )
                return
            self._reject(408, f"the request head did not arrive within {self.head_timeout:g} s")
        elif not self._any_request:
            # A connection that never sent a request gets no response to one. Between
            # requests, uvicorn's keep-alive timeout closes an idle connection.
            self.transport.close()

    def _reject(self, status: int, message: str) -> None:
        self.logger.warning("closed a connection: %s", message)
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        body = orjson.dumps({"error": message})
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()


class Worker(UvicornWorker):  # type: ignore[misc]
    """gunicorn's uvicorn worker, serving HTTP with BoundedHttpToolsProtocol."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **UvicornWorker.CONFIG_KWARGS,
        "http": BoundedHttpToolsProtocol,
    }
