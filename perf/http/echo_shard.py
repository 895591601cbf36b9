"""Stand-in shard process that responds to every request with `[request_id, 200, {}]` at once.

It speaks serverlord.protocol on a Unix-domain socket so the round-trip apps can be measured
without PostgreSQL. Usage: `python echo_shard.py SOCKET_PATH`. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import cast

import uvloop

from serverlord.protocol import FrameDecoder, ProtocolError, encode

logger = logging.getLogger(__name__)

OK_BODY: dict[str, object] = {}


class EchoProtocol(asyncio.Protocol):
    """One client connection: decodes each request frame and writes its response."""

    def __init__(self) -> None:
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's stream transports provide the asyncio.Transport methods without
        # subclassing it, so an isinstance check would reject them.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        try:
            requests = self._decoder.feed(data)
        except (ProtocolError, ValueError) as error:
            # FrameDecoder lets orjson.JSONDecodeError, a ValueError, through for a frame
            # whose payload is not JSON.
            logger.warning("closing connection after invalid frame: %s", error)
            self._transport.close()
            return

        # One write for all frames decoded from this read keeps syscalls per request low
        # when the client pipelines.
        responses = [encode([request[0], 200, OK_BODY]) for request in requests]
        if responses:
            self._transport.write(b"".join(responses))


async def serve(socket_path: str) -> None:
    """Serve on `socket_path` until SIGTERM or SIGINT, then remove the socket file."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    server = await loop.create_unix_server(EchoProtocol, socket_path, backlog=1024)
    logger.info("echo shard listening on %s", socket_path)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        os.unlink(socket_path)
        logger.info("echo shard on %s stopped", socket_path)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: echo_shard.py SOCKET_PATH")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    socket_path = sys.argv[1]
    # A socket file left by a killed run would make bind fail with "Address already in use".
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    uvloop.run(serve(socket_path))


if __name__ == "__main__":
    main()
