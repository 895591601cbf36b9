"""Web-worker side of the shard sockets: one persistent, pipelined connection per shard.

A request that gets no response in time (the shard process is restarting, its queue
is full, its database is down) raises ShardUnavailable, which the app turns into a 503
with Retry-After: the client's retry then reaches the restarted process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from serverlord import protocol
from serverlord.storage.topology import Topology

log = logging.getLogger(__name__)


class ShardUnavailable(Exception):
    def __init__(self, shard: int, reason: str) -> None:
        super().__init__(f"shard {shard} unavailable: {reason}")
        self.shard = shard
        self.reason = reason


class RequestObserver(Protocol):
    """Hooks around every shard request, set by the observability layer."""

    def outgoing(self, shard: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Return the arguments to send, for example with the trace context added."""
        ...

    def finished(self, shard: int, op: str, status: int | None, seconds: float) -> None:
        """Record a round trip; `status` is None when no response arrived."""
        ...


class ShardConnection:
    def __init__(self, shard: int, path: str, timeout: float) -> None:
        self.shard = shard
        self.path = path
        self.timeout = timeout
        self._writer: asyncio.StreamWriter | None = None
        self._sender: protocol.FrameWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[tuple[int, Any]]] = {}
        self._ids = itertools.count(1)
        self._connecting = asyncio.Lock()
        self.observer: RequestObserver | None = None

    async def request(self, op: str, args: dict[str, Any]) -> tuple[int, Any]:
        observer = self.observer
        if observer is None:
            return await self._request(op, args)
        args = observer.outgoing(self.shard, op, args)
        started = time.perf_counter()
        status = None
        try:
            status, body = await self._request(op, args)
            return status, body
        finally:
            observer.finished(self.shard, op, status, time.perf_counter() - started)

    async def _request(self, op: str, args: dict[str, Any]) -> tuple[int, Any]:
        sender = await self._connected()
        request_id = next(self._ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, Any]] = loop.create_future()
        self._pending[request_id] = future
        # A timer handle costs less than wait_for, which wraps the future in another task.
        timer = loop.call_later(self.timeout, _expire, future)
        try:
            sender.send([request_id, op, args])
            return await future
        except TimeoutError:
            raise ShardUnavailable(self.shard, f"no response within {self.timeout:g} s") from None
        finally:
            timer.cancel()
            self._pending.pop(request_id, None)

    async def _connected(self) -> protocol.FrameWriter:
        if self._sender is not None and self._writer is not None and not self._writer.is_closing():
            return self._sender
        async with self._connecting:
            if (
                self._sender is not None
                and self._writer is not None
                and not self._writer.is_closing()
            ):
                return self._sender
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.path), self.timeout
                )
            except (OSError, TimeoutError) as exc:
                raise ShardUnavailable(self.shard, f"cannot connect ({exc})") from None
            self._writer = writer
            self._sender = protocol.FrameWriter(writer)
            self._reader_task = asyncio.create_task(self._read(reader, writer))
            log.info("connected to shard %d at %s", self.shard, self.path)
            return self._sender

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = protocol.FrameDecoder()
        reason = "connection closed"
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for request_id, status, body in decoder.feed(data):
                    future = self._pending.get(request_id)
                    if future is not None and not future.done():
                        future.set_result((status, body))
        except (OSError, protocol.ProtocolError) as exc:
            reason = str(exc)
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            # Requests sent on this connection may or may not have been committed; their
            # callers return 503 and the client's retry decides.
            for future in list(self._pending.values()):
                if not future.done():
                    future.set_exception(ShardUnavailable(self.shard, reason))
            log.info("connection to shard %d closed: %s", self.shard, reason)


def _expire(future: asyncio.Future[tuple[int, Any]]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class ShardRouter:
    """Finds a check's shard and sends it requests."""

    def __init__(self, topology: Topology, timeout: float) -> None:
        self.topology = topology
        self.connections = [
            ShardConnection(shard, path, timeout) for shard, path in enumerate(topology.sockets)
        ]

    @classmethod
    def from_file(cls, path: Path, timeout: float) -> ShardRouter:
        return cls(Topology.read(path), timeout)

    def shard_of(self, check_id: UUID) -> int:
        return self.topology.slot_map.shard_of(check_id)

    async def request(self, check_id: UUID, op: str, args: dict[str, Any]) -> tuple[int, Any]:
        return await self.connections[self.shard_of(check_id)].request(op, args)

    async def request_shard(self, shard: int, op: str, args: dict[str, Any]) -> tuple[int, Any]:
        return await self.connections[shard].request(op, args)
