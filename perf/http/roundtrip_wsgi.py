"""Falcon WSGI app that makes one round trip to a shard process for each ping.

Each worker thread keeps its own blocking Unix-socket connection, so a connection carries
one request at a time and needs no request-id bookkeeping. The socket path comes from
SERVERLORD_SHARD_SOCKET.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
from typing import Any

import falcon

from serverlord.protocol import FrameDecoder, ProtocolError, encode

logger = logging.getLogger(__name__)

SOCKET_ENV = "SERVERLORD_SHARD_SOCKET"
DEFAULT_SOCKET = "/tmp/serverlord-echo-shard.sock"

# A shard that takes longer than this is treated as unavailable, so a stuck shard ties up
# a worker thread for a bounded time instead of forever.
SHARD_TIMEOUT_SECONDS = 5.0
READ_SIZE = 64 * 1024

Response = tuple[int, Any]


class ShardUnavailableError(Exception):
    """The shard connection failed or closed, or a response did not arrive in time."""


class ShardClient:
    """Blocking client for one shard process with one connection per calling thread."""

    def __init__(self, socket_path: str) -> None:
        self._socket_path = socket_path
        self._request_ids = itertools.count(1)
        self._local = threading.local()

    def call(self, op: str, args: dict[str, Any]) -> Response:
        """Send one request and return the shard's `(status, body)`."""
        # next() on itertools.count is atomic under the GIL, so threads get distinct ids.
        request_id = next(self._request_ids)
        try:
            sock, decoder = self._thread_connection()
            sock.sendall(encode([request_id, op, args]))
            return self._receive(sock, decoder, request_id)
        except (OSError, ProtocolError, ValueError) as error:
            # ValueError covers orjson.JSONDecodeError, which FrameDecoder lets through. The
            # stream may hold half a frame now, so the next call starts a new connection.
            self._drop_thread_connection()
            raise ShardUnavailableError(f"shard at {self._socket_path}: {error!r}") from error

    def _receive(self, sock: socket.socket, decoder: FrameDecoder, request_id: int) -> Response:
        while True:
            data = sock.recv(READ_SIZE)
            if not data:
                raise ConnectionResetError("shard closed the connection")
            for response_id, status, body in decoder.feed(data):
                # Any failure drops the connection, so no response to an earlier request
                # can still be in flight here.
                if response_id != request_id:
                    raise ProtocolError(
                        f"response id {response_id} does not match request id {request_id}"
                    )
                return status, body

    def _thread_connection(self) -> tuple[socket.socket, FrameDecoder]:
        connection: tuple[socket.socket, FrameDecoder] | None = getattr(
            self._local, "connection", None
        )
        if connection is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(SHARD_TIMEOUT_SECONDS)
            try:
                sock.connect(self._socket_path)
            except OSError:
                sock.close()
                raise
            connection = (sock, FrameDecoder())
            self._local.connection = connection
            logger.info(
                "thread %s connected to shard at %s", threading.get_ident(), self._socket_path
            )
        return connection

    def _drop_thread_connection(self) -> None:
        connection: tuple[socket.socket, FrameDecoder] | None = getattr(
            self._local, "connection", None
        )
        if connection is not None:
            connection[0].close()
            self._local.connection = None


class PingResource:
    def __init__(self, shard: ShardClient) -> None:
        self._shard = shard

    def on_get(self, req: falcon.Request, resp: falcon.Response, check_id: str) -> None:
        try:
            status, _ = self._shard.call("ping", {"check": check_id, "method": req.method})
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


app = falcon.App()
app.add_route(
    "/ping/{check_id}", PingResource(ShardClient(os.environ.get(SOCKET_ENV, DEFAULT_SOCKET)))
)
