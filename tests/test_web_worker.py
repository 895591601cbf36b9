"""The web worker's HTTP protocol: a connection whose request head or body stalls is closed.

A real uvicorn server runs the protocol in a thread, with timeouts short enough for a
test. test_api_bad_input tests the size limit against the whole server.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from serverlord.web.worker import BoundedHttpToolsProtocol
from tests.server import free_port


class QuickTimeouts(BoundedHttpToolsProtocol):
    head_timeout = 0.5
    body_idle_timeout = 0.5


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Respond "hello", after reading the whole body of a POST and adding its size."""
    if scope["type"] != "http":
        return
    text = b"hello"
    if scope["method"] == "POST":
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        text += b" %d" % size
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": text})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    chosen = free_port()
    config = uvicorn.Config(
        hello,
        host="127.0.0.1",
        port=chosen,
        http=QuickTimeouts,
        lifespan="off",
        log_level="error",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield chosen
    server.should_exit = True
    thread.join(timeout=15)


def read_all(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer


def exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection and return all it receives until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        return read_all(sock)


def test_partial_head_gets_408(port: int) -> None:
    answer = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"did not arrive" in answer


def test_silent_connection_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        assert read_all(sock) == b""


def test_second_head_also_timed_out(port: int) -> None:
    answer = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.count(b"HTTP/1.1 408") == 1


def test_complete_request_served(port: int) -> None:
    answer = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"hello" in answer


def test_stalled_body_closes_connection(port: int) -> None:
    answer = exchange(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert answer == b""


def test_slow_steady_body_served(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        )
        # Five bytes over 1.2 s: longer than the idle timeout in all, never idle that long.
        for byte in b"abcde":
            time.sleep(0.3)
            sock.sendall(bytes([byte]))
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"hello 5" in answer


def test_late_head_measured_from_its_start(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        time.sleep(0.3)
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answer = read_all(sock)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408")
    # The connection's timer fired 0.2 s into this head and was set again for the rest.
    assert waited >= 0.45


def test_spaced_requests_on_one_connection_served(port: int) -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        answers = []
        for _ in range(3):
            time.sleep(0.4)
            sock.sendall(request)
            answers.append(sock.recv(4096))
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
