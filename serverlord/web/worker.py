"""The gunicorn worker class of the web tier: uvicorn's, with bounds on each request head.

uvicorn 0.55 with httptools buffers a request head of any size and waits for its end
without a deadline. A client could therefore make a worker hold megabytes per header, or
keep thousands of connections open by sending a head slowly (slowloris). This protocol
rejects a head larger than MAX_HEAD_BYTES with 431 and closes a connection whose head
has not arrived within HEAD_TIMEOUT seconds.

NOTE: a request body still has no deadline. A client that sends less than its
Content-Length keeps its connection and the request's task until it disconnects.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

# Request line and headers together. Ping URLs and API keys are short; this leaves room
# for long cookies or proxy headers.
MAX_HEAD_BYTES = 64 * 1024
# Seconds from a connection's start, or from the first byte of its next request, to the
# end of that request's head.
HEAD_TIMEOUT = 20.0


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size limit and a deadline for each request head."""

    head_timeout = HEAD_TIMEOUT
    max_head_bytes = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_open = False
        self._head_began_in_chunk = False
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
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

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._head_began_in_chunk = True
        self._head_bytes = 0
        self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._stop_head_timer()
        super().on_headers_complete()

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_open:
            self._reject(408, f"the request head did not arrive within {self.head_timeout:g} s")
        else:
            # A connection that never sent a request gets no response to one.
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
