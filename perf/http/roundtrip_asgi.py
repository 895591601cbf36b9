"""Falcon ASGI app that makes one round trip to a shard process for each ping.

Each worker process keeps one persistent Unix-socket connection and pipelines requests over
it: a dict maps request id to a Future, and a reader task resolves each Future when its
response frame arrives. The socket path comes from SERVERLORD_SHARD_SOCKET.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any

import falcon
import falcon.asgi

from serverlord.protocol import FrameDecoder, encode

logger = logging.getLogger(__name__)

SOCKET_ENV = "SERVERLORD_SHARD_SOCKET"
DEFAULT_SOCKET = "/tmp/serverlord-echo-shard.sock"

# A shard that takes longer than this is treated as unavailable, so a stuck shard ties up
# a request for a bounded time instead of forever.
SHARD_TIMEOUT_SECONDS = 5.0
READ_SIZE = 256 * 1024

Response = tuple[int, Any]


class ShardUnavailableError(Exception):
    """The shard connection failed or closed, or a response did not arrive in time."""


class ShardConnection:
    """One open connection with the requests still waiting for a response on it."""

    def __init__(
        self, socket_path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.socket_path = socket_path
        self.writer = writer
        self.pending: dict[int, asyncio.Future[Response]] = {}
        # Keeping a reference stops the reader task from being garbage-collected mid-run.
        self.reader_task = asyncio.get_running_loop().create_task(self._read_responses(reader))

    def is_open(self) -> bool:
        return not self.writer.is_closing()

    async def _read_responses(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        error: Exception = ConnectionResetError("shard closed the connection")
        try:
            while data := await reader.read(READ_SIZE):
                for request_id, status, body in decoder.feed(data):
                    future = self.pending.get(request_id)
                    # A missing entry means the caller already gave up on a timeout.
                    if future is not None and not future.done():
                        future.set_result((status, body))
        except Exception as caught:
            # The reader task is a task boundary: whatever broke the stream (an OSError, a
            # ProtocolError, or a ValueError from orjson) ends this connection only, and
            # the next request opens a new one.
            error = caught
            logger.warning("connection to shard at %s failed: %r", self.socket_path, caught)
        finally:
            self.writer.close()
            # These requests will never get a response, so fail them now instead of letting
            # each one wait out the timeout.
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ShardUnavailableError(repr(error)))


class ShardClient:
    """Pipelined client for one shard process; connects on first use and after a failure."""

    def __init__(self, socket_path: str) -> None:
        self._socket_path = socket_path
        self._request_ids = itertools.count(1)
        self._connection: ShardConnection | None = None
        self._connecting = asyncio.Lock()

    async def call(self, op: str, args: dict[str, Any]) -> Response:
        """Send one request and return the shard's `(status, body)`."""
        connection = await self._open_connection()
        request_id = next(self._request_ids)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        connection.pending[request_id] = future
        try:
            connection.writer.write(encode([request_id, op, args]))
            await connection.writer.drain()
            return await asyncio.wait_for(future, SHARD_TIMEOUT_SECONDS)
        except (OSError, TimeoutError) as error:
            raise ShardUnavailableError(f"shard at {self._socket_path}: {error!r}") from error
        finally:
            connection.pending.pop(request_id, None)

    async def _open_connection(self) -> ShardConnection:
        connection = self._connection
        if connection is not None and connection.is_open():
            return connection

        # The lock keeps concurrent first requests from opening one connection each.
        async with self._connecting:
            if self._connection is None or not self._connection.is_open():
                try:
                    reader, writer = await asyncio.open_unix_connection(self._socket_path)
                except OSError as error:
                    raise ShardUnavailableError(
                        f"cannot connect to shard at {self._socket_path}: {error}"
                    ) from error
                self._connection = ShardConnection(self._socket_path, reader, writer)
                logger.info("connected to shard at %s", self._socket_path)
            return self._connection


class PingResource:
    def __init__(self, shard: ShardClient) -> None:
        self._shard = shard

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, check_id: str
    ) -> None:
        try:
            status, _ = await self._shard.call("ping", {"check": check_id, "method": req.method})
        except ShardUnavailableError as error:
            logger.warning("ping for check %s failed: %s", check_id, error)
            raise falcon.HTTPServiceUnavailable(
                title="Shard unavailable",
                description="The shard that stores this check did not respond. Retry later.",
            ) from error
        resp.status = status
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "OK"

    on_head = on_get
    on_post = on_get


app = falcon.asgi.App()
app.add_route(
    "/ping/{check_id}", PingResource(ShardClient(os.environ.get(SOCKET_ENV, DEFAULT_SOCKET)))
)
