"""The framed message protocol between web workers and shard processes.

Every message is a 4-byte big-endian length followed by that many bytes of orjson. A
request is `[request_id, op, args]` and its response `[request_id, status, body]`, where
`status` uses HTTP status codes so the web tier can pass it on unchanged. Request ids let
one connection carry many requests at once; responses may come back in any order.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import orjson

HEADER = struct.Struct(">I")

# A ping's frame carries its body in base64: 13,333,336 bytes at the largest
# PING_BODY_LIMIT (10,000,000), plus a few hundred bytes of other fields. Beyond that, the
# cap bounds what a broken or hostile peer can make the other side buffer.
MAX_FRAME = 16 * 1024 * 1024


class ProtocolError(Exception):
    """A peer sent bytes that are not a valid frame."""


def encode(message: list[Any]) -> bytes:
    payload = orjson.dumps(message)
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the limit of {MAX_FRAME}")
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into decoded messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        self._buffer += data
        messages: list[list[Any]] = []
        offset = 0
        buffer = self._buffer
        while len(buffer) - offset >= HEADER.size:
            (length,) = HEADER.unpack_from(buffer, offset)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame length {length} exceeds the limit of {MAX_FRAME}")
            end = offset + HEADER.size + length
            if len(buffer) < end:
                break
            try:
                message = orjson.loads(memoryview(buffer)[offset + HEADER.size : end])
            except orjson.JSONDecodeError as exc:
                raise ProtocolError(f"a frame is not valid JSON: {exc}") from None
            if not isinstance(message, list) or len(message) != 3:
                raise ProtocolError("a frame must hold a list of three items")
            messages.append(message)
            offset = end
        if offset:
            del buffer[:offset]
        return messages


class FrameWriter:
    """Queues frames for one connection and writes all of them once per loop iteration.

    Many frames are often ready in the same iteration, such as the responses to every ping
    of one commit. One write for all of them costs one system call and wakes the peer once,
    where a write each would wake it once a frame.
    """

    __slots__ = ("_frames", "_loop", "_writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._frames: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def send(self, message: list[Any]) -> None:
        frame = encode(message)
        if not self._frames:
            self._loop.call_soon(self._flush)
        self._frames.append(frame)

    def _flush(self) -> None:
        frames, self._frames = self._frames, []
        if not self._writer.is_closing():
            self._writer.write(frames[0] if len(frames) == 1 else b"".join(frames))
