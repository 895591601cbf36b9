"""Frames between web workers and shard processes: encode, FrameDecoder and FrameWriter.

The decoder tests read through a real Unix stream socket pair. The batching tests write
into a SOCK_SEQPACKET socket pair, which keeps the boundary of every write call, so the
peer receives one record per write and the tests can count writes without a mock. The
closing tests use a stream pair, whose transport still accepts writes while it closes.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import orjson
import pytest
import uvloop

from serverlord.protocol import HEADER, MAX_FRAME, FrameDecoder, FrameWriter, ProtocolError, encode

CoroutineRunner = Callable[[Coroutine[Any, Any, Any]], Any]

LOOP_FACTORIES = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

SAMPLE: list[list[Any]] = [
    [1, "ping", {"check": "a1b2", "body": "ok"}],
    [2, "status", {"text": "é ✓ \u0000 and a longer body to cross several reads"}],
    [3, 200, None],
]


def frame_with_payload(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def frame_of_size(size: int) -> bytes:
    """Encode a valid three-item message whose JSON payload is exactly `size` bytes."""
    empty = orjson.dumps([0, "x", ""])
    return encode([0, "x", "a" * (size - len(empty))])


@pytest.fixture(params=list(LOOP_FACTORIES))
def run(request: pytest.FixtureRequest) -> Iterator[CoroutineRunner]:
    """Run a coroutine on the stdlib loop and on uvloop, which shard processes use."""
    with asyncio.Runner(loop_factory=LOOP_FACTORIES[request.param]) as runner:

        def run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
            return runner.run(coroutine)

        yield run_coroutine


# -- encode -----------------------------------------------------------------------------


def test_encode_prefixes_big_endian_length() -> None:
    frame = encode([7, "ping", {"a": 1}])
    payload = orjson.dumps([7, "ping", {"a": 1}])

    assert frame[:4] == len(payload).to_bytes(4, "big")
    assert frame[4:] == payload


def test_encode_accepts_frame_at_limit() -> None:
    frame = frame_of_size(MAX_FRAME)

    assert len(frame) == HEADER.size + MAX_FRAME


def test_encode_rejects_frame_over_limit() -> None:
    with pytest.raises(ProtocolError) as info:
        frame_of_size(MAX_FRAME + 1)

    assert str(MAX_FRAME) in str(info.value)
    assert str(MAX_FRAME + 1) in str(info.value)


# -- FrameDecoder -----------------------------------------------------------------------


def test_decoder_splits_at_every_byte() -> None:
    stream = b"".join(encode(message) for message in SAMPLE)

    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        messages = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])

        assert messages == SAMPLE, f"split at byte {cut}"


def test_decoder_waits_for_whole_header() -> None:
    frame = encode(SAMPLE[0])
    decoder = FrameDecoder()

    assert decoder.feed(frame[:3]) == []
    assert decoder.feed(frame[3:]) == [SAMPLE[0]]


def test_decoder_reads_one_byte_at_a_time(run: CoroutineRunner) -> None:
    async def scenario() -> list[list[Any]]:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        decoder = FrameDecoder()
        messages: list[list[Any]] = []
        try:
            for byte in b"".join(encode(message) for message in SAMPLE):
                # The peer sends one byte and waits, so each read returns exactly that byte.
                theirs.sendall(bytes([byte]))
                chunk = await reader.read(65536)
                assert len(chunk) == 1
                messages += decoder.feed(chunk)
        finally:
            writer.close()
            theirs.close()
        return messages

    assert run(scenario()) == SAMPLE


def test_decoder_returns_many_frames_per_read(run: CoroutineRunner) -> None:
    async def scenario() -> tuple[bytes, list[list[Any]]]:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        stream = b"".join(encode(message) for message in SAMPLE)
        try:
            theirs.sendall(stream)
            theirs.shutdown(socket.SHUT_WR)
            chunk = await reader.read(65536)
        finally:
            writer.close()
            theirs.close()
        return chunk, FrameDecoder().feed(chunk)

    chunk, messages = run(scenario())

    assert len(chunk) == sum(len(encode(message)) for message in SAMPLE)
    assert messages == SAMPLE


def test_decoder_keeps_partial_tail() -> None:
    first, second = encode(SAMPLE[0]), encode(SAMPLE[1])
    decoder = FrameDecoder()

    assert decoder.feed(first + second[:6]) == [SAMPLE[0]]
    assert decoder.feed(second[6:]) == [SAMPLE[1]]


def test_decoder_accepts_frame_at_limit() -> None:
    messages = FrameDecoder().feed(frame_of_size(MAX_FRAME))

    assert len(messages) == 1
    assert messages[0][1] == "x"


def test_decoder_rejects_length_over_limit() -> None:
    decoder = FrameDecoder()

    # Only the header arrives, so the decoder must reject the length before any body.
    with pytest.raises(ProtocolError) as info:
        decoder.feed(HEADER.pack(MAX_FRAME + 1))

    assert str(MAX_FRAME + 1) in str(info.value)
    assert str(MAX_FRAME) in str(info.value)


def test_decoder_rejects_invalid_json() -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(frame_with_payload(b'[1, "ping", {nope}]'))

    assert "not valid JSON" in str(info.value)


def test_decoder_rejects_invalid_utf8() -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(frame_with_payload(b'[1, "\xff", {}]'))

    assert "not valid JSON" in str(info.value)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"id": 1, "op": "ping"}',
        b'"ping"',
        b"42",
        b"null",
        b"[]",
        b'[1, "ping"]',
        b'[1, "ping", {}, "extra"]',
    ],
)
def test_decoder_rejects_wrong_shape(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(frame_with_payload(payload))

    assert "list of three items" in str(info.value)


# -- FrameWriter ------------------------------------------------------------------------


async def open_record_writer() -> tuple[asyncio.StreamWriter, socket.socket]:
    """Return a StreamWriter on one end of a SOCK_SEQPACKET pair and the other end.

    asyncio's stream transports accept only SOCK_STREAM sockets, but its write-pipe
    transport writes to any socket with os.write, one record per call.
    """
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, ours)
    return asyncio.StreamWriter(transport, protocol, None, loop), theirs


def receive_records(peer: socket.socket) -> list[bytes]:
    """Return every record waiting on the peer. An empty record means the writer closed."""
    records: list[bytes] = []
    while True:
        try:
            record = peer.recv(MAX_FRAME)
        except BlockingIOError:
            return records
        records.append(record)
        if not record:
            return records


async def next_loop_turn() -> None:
    # The writer flushes with call_soon. Two yields let that callback and the transport's
    # own write run on either loop.
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_writer_joins_one_turn_into_one_write(run: CoroutineRunner) -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        writer, peer = await open_record_writer()
        frames = FrameWriter(writer)
        for message in SAMPLE:
            frames.send(message)
        before = receive_records(peer)
        await next_loop_turn()
        after = receive_records(peer)
        writer.close()
        peer.close()
        return before, after

    before, after = run(scenario())

    assert before == []
    assert len(after) == 1
    assert FrameDecoder().feed(after[0]) == SAMPLE


def test_writer_keeps_turns_as_separate_writes(run: CoroutineRunner) -> None:
    async def scenario() -> list[bytes]:
        writer, peer = await open_record_writer()
        frames = FrameWriter(writer)
        frames.send(SAMPLE[0])
        await next_loop_turn()
        frames.send(SAMPLE[1])
        frames.send(SAMPLE[2])
        await next_loop_turn()
        records = receive_records(peer)
        writer.close()
        peer.close()
        return records

    records = run(scenario())

    assert len(records) == 2
    assert FrameDecoder().feed(records[0]) == SAMPLE[:1]
    assert FrameDecoder().feed(records[1]) == SAMPLE[1:]


def test_writer_keeps_queue_after_oversized_frame(run: CoroutineRunner) -> None:
    async def scenario() -> list[bytes]:
        writer, peer = await open_record_writer()
        frames = FrameWriter(writer)
        frames.send(SAMPLE[0])
        with pytest.raises(ProtocolError):
            frames.send([9, "x", "a" * (MAX_FRAME + 1)])
        frames.send(SAMPLE[1])
        await next_loop_turn()
        records = receive_records(peer)
        writer.close()
        peer.close()
        return records

    records = run(scenario())

    assert len(records) == 1
    assert FrameDecoder().feed(records[0]) == SAMPLE[:2]


def read_until_eof(peer: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while chunk := peer.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("send_first", [True, False], ids=["send_then_close", "close_then_send"])
def test_writer_skips_closing_transport(run: CoroutineRunner, send_first: bool) -> None:
    # A transport with unsent bytes in its buffer keeps accepting writes while it closes, so
    # only the writer's own check keeps a frame from reaching the peer after close().
    blob = b"x" * 1_000_000

    async def scenario() -> tuple[int, bytes]:
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        _, writer = await asyncio.open_connection(sock=ours)
        frames = FrameWriter(writer)
        writer.write(blob)
        pending = writer.transport.get_write_buffer_size()
        if send_first:
            frames.send(SAMPLE[0])
        writer.close()
        if not send_first:
            frames.send(SAMPLE[0])
        # The loop keeps running while a thread drains the peer, so the transport can
        # finish its buffer and close.
        received = await asyncio.to_thread(read_until_eof, theirs)
        await writer.wait_closed()
        theirs.close()
        return pending, received

    pending, received = run(scenario())

    assert pending > 0
    assert len(received) == len(blob)
    assert received == blob
