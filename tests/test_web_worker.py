"""The web worker's HTTP protocol: a connection whose request head is too slow is closed.

A real uvicorn server runs the protocol in a thread, with a head timeout short enough for
a test. test_api_bad_input tests the size limit against the whole server.
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


class QuickHeadTimeout(BoundedHttpToolsProtocol):
    head_timeout = 0.5


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    chosen = free_port()
    config = uvicorn.Config(
        hello,
        host="127.0.0.1",
        port=chosen,
        http=QuickHeadTimeout,
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


def test_partial_head_gets_408(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"did not arrive" in answer


def test_silent_connection_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        assert read_all(sock) == b""


def test_second_head_also_timed_out(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.count(b"HTTP/1.1 408") == 1


def test_complete_request_served(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"hello" in answer
