"""Bad input gets a 4xx whose message names the field, never a 500."""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from typing import Any

import pytest

from tests.server import Server, request


def post_task(server: Server, body: bytes | str) -> tuple[int, dict[str, Any]]:
    headers = {"X-Api-Key": server.project.rw_key}
    answer = request("POST", f"{server.url}/api/tasks", body, headers)
    return answer.status, answer.json()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ("", "body is empty"),
        ("[1, 2]", "must be a JSON object"),
        ('{"name": "x", "interval": "5m", "colour": "red"}', "unknown field 'colour'"),
        ('{"name": "x"}', "interval: missing"),
        ('{"name": 5, "interval": "5m"}', "name: expected a string"),
        ('{"name": "x", "interval": [5]}', "interval"),
        ('{"name": "x", "interval": "0s"}', "interval"),
        ('{"name": "x", "interval": -5}', "interval"),
        ('{"name": "x", "interval": "400d"}', "interval"),
        ('{"name": "x", "interval": 99999999999999999999}', "interval"),
        ('{"name": "x", "interval": true}', "interval"),
        ('{"name": "x", "interval": 1.5}', "interval"),
        ('{"name": "x", "interval": "5m", "grace_period": "soon"}', "grace_period"),
        ('{"name": "x", "interval": "5m", "grace_period": null}', "grace_period"),
        ('{"name": "x", "schedule": "61 * * * *"}', "schedule"),
        ('{"name": "x", "schedule": "0 0 * * *", "tz": "Mars/Olympus"}', "tz"),
        ('{"name": "x", "schedule": "0 0 * * *", "interval": "5m"}', "interval"),
    ],
)
def test_create_task_rejects_bad_body(server: Server, body: str, fragment: str) -> None:
    status, answer = post_task(server, body)
    assert status == 400
    assert fragment in answer["error"]


def test_create_task_rejects_long_name(server: Server) -> None:
    status, answer = post_task(server, json.dumps({"name": "n" * 101, "interval": 60}))
    assert status == 400
    assert "name" in answer["error"]
    assert "100" in answer["error"]


def test_create_task_rejects_huge_body(server: Server) -> None:
    body = json.dumps({"name": "x", "interval": 60, "pad": "p" * 100_000})
    status, answer = post_task(server, body)
    assert status == 413
    assert "limit" in answer["error"]


def test_create_task_accepts_integer_seconds(server: Server) -> None:
    status, answer = post_task(server, json.dumps({"name": "x", "interval": 90}))
    assert status == 201
    assert answer["interval"] == 90
    assert answer["grace_period"] == 3600


@pytest.mark.parametrize("bad_id", ["nope", "1234", f"{uuid.uuid4()}x", "%7Buuid%7D"])
def test_status_rejects_malformed_id(server: Server, bad_id: str) -> None:
    answer = request("GET", f"{server.url}/api/tasks/{bad_id}/status")
    assert answer.status == 400
    assert "id:" in answer.json()["error"]


def test_heartbeat_rejects_malformed_id(server: Server) -> None:
    answer = request("POST", f"{server.url}/api/heartbeat/not-a-uuid")
    assert answer.status == 400
    assert "id:" in answer.json()["error"]


def test_heartbeat_unknown_check_is_404(server: Server) -> None:
    answer = request("POST", f"{server.url}/api/heartbeat/{uuid.uuid4()}")
    assert answer.status == 404


def test_ping_malformed_uuid_is_404(server: Server) -> None:
    answer = request("GET", f"{server.url}/ping/not-a-uuid")
    assert answer.status == 404
    assert answer.text == "not found"


def test_create_task_rejects_nul_in_name(server: Server) -> None:
    status, answer = post_task(server, json.dumps({"name": "a\u0000b", "interval": 60}))
    assert status == 400
    assert "name" in answer["error"]
    assert "U+0000" in answer["error"]


@pytest.mark.parametrize("field", ["name", "tags", "desc"])
def test_v3_create_rejects_nul(server: Server, field: str) -> None:
    answer = server.api("POST", "/api/v3/checks/", server.project.rw_key, {field: "a\u0000b"})
    assert answer.status == 400
    assert field in answer.json()["error"]
    assert "U+0000" in answer.json()["error"]


@pytest.mark.parametrize("field", ["name", "tags", "desc"])
def test_v3_update_rejects_nul_keeps_check(server: Server, field: str) -> None:
    key = server.project.rw_key
    body = {"name": "nul target", "tags": "t", "desc": "d", "timeout": 3600}
    created = server.api("POST", "/api/v3/checks/", key, body).json()
    path = f"/api/v3/checks/{created['uuid']}"

    answer = server.api("POST", path, key, {field: "a\u0000b"})
    assert answer.status == 400
    assert field in answer.json()["error"]

    # A rejected update changes nothing and leaves the check serving pings.
    after = server.api("GET", path, key).json()
    assert after[field] == created[field]
    assert request("GET", created["ping_url"]).status == 200


def test_v3_unique_name_with_nul_rejected(server: Server) -> None:
    body = {"name": "x\u0000", "unique": ["name"]}
    answer = server.api("POST", "/api/v3/checks/", server.project.rw_key, body)
    assert answer.status == 400
    assert "name" in answer.json()["error"]


def test_v3_list_rejects_nul_in_slug_filter(server: Server) -> None:
    answer = server.api("GET", "/api/v3/checks/?slug=a%00b", server.project.rw_key)
    assert answer.status == 400
    assert "slug" in answer.json()["error"]


def raw_status_line(server: Server, head: bytes) -> bytes:
    """Send `head` as the whole request and return the response's status line."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    "request_line", [b"GET /healthz HTTP/0.9", b"GET /healthz HTTP/2.0", b"GET /healthz"]
)
def test_unsupported_http_version_is_400(server: Server, request_line: bytes) -> None:
    status_line = raw_status_line(server, request_line + b"\r\nHost: x\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 400")
    # The server keeps serving afterwards.
    assert request("GET", f"{server.url}/healthz").status == 200


@pytest.mark.parametrize("path", ["/healthz", f"/ping/{uuid.uuid4()}", "/no/such/route"])
def test_websocket_upgrade_is_4xx(server: Server, path: str) -> None:
    head = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    status_line = raw_status_line(server, head.encode())
    assert status_line.startswith(b"HTTP/1.1 4")


def test_huge_request_head_rejected(server: Server) -> None:
    # The head is sent in pieces, as a client that streams a header without end would.
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(f"GET /ping/{uuid.uuid4()} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode())
        answer = b""
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                sock.sendall(b"a" * 65536)
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(4096):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 431")
    assert request("GET", f"{server.url}/healthz").status == 200


def test_head_under_limit_accepted(server: Server) -> None:
    headers = {f"X-Header-{number}": "v" * 200 for number in range(100)}
    answer = request("GET", f"{server.url}/healthz", headers=headers)
    assert answer.status == 200
