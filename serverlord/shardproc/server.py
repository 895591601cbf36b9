"""The shard process's Unix-socket server: frames in, handler calls, frames out.

Each request runs as its own task so that a slow one (waiting for a commit) never holds
up the requests behind it on the same connection; responses go out as they complete.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from serverlord import protocol

log = logging.getLogger(__name__)

Response = tuple[int, Any]
Handler = Callable[[str, dict[str, Any]], Awaitable[Response]]


class SocketServer:
    def __init__(self, path: Path, handler: Handler, shard: int) -> None:
        self.path = path
        self._handler = handler
        self._shard = shard
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        # A socket file left by a killed process would make bind fail.
        self.path.unlink(missing_ok=True)
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(tmp))
        os.chmod(tmp, 0o600)
        # Web workers connect as soon as the path exists; renaming a bound socket makes it
        # appear only when it already accepts connections.
        tmp.replace(self.path)
        log.info("shard %d listening on %s", self._shard, self.path)

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
            self.path.unlink(missing_ok=True)

    async def drain(self, seconds: float) -> None:
        """Wait up to `seconds` for requests already received to finish."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=seconds)

    async def close_connections(self) -> None:
        """Close every client connection and wait for their readers to end."""
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = protocol.FrameDecoder()
        sender = protocol.FrameWriter(writer)
        current = asyncio.current_task()
        if current is not None:
            self._connections[current] = writer
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for request_id, op, args in decoder.feed(data):
                    task = asyncio.create_task(self._answer(sender, request_id, op, args))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except protocol.ProtocolError as exc:
            log.warning("shard %d closed a connection that sent a bad frame: %s", self._shard, exc)
        except ConnectionError:
            pass
        finally:
            writer.close()
            if current is not None:
                self._connections.pop(current, None)

    async def _answer(
        self, sender: protocol.FrameWriter, request_id: int, op: str, args: dict[str, Any]
    ) -> None:
        try:
            status, body = await self._handler(op, args)
        except Exception:
            log.exception("shard %d failed on %s request %s", self._shard, op, request_id)
            status, body = 500, {"error": "internal error in the shard process"}
        sender.send([request_id, status, body])
