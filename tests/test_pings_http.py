"""The ping URLs as crontab lines and wrappers call them, over real HTTP."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from tests.conftest import create_database
from tests.server import Server, request, running_server, server_env

pytestmark = pytest.mark.e2e


def status_of(server: Server, check_id: str) -> dict[str, object]:
    headers = {"X-Api-Key": server.project.rw_key}
    answer = request("GET", f"{server.url}/api/tasks/{check_id}/status", headers=headers)
    assert answer.status == 200
    result: dict[str, object] = answer.json()
    return result


@pytest.mark.parametrize(
    ("suffix", "http_status", "expected"),
    [("0", 200, "up"), ("1", 200, "down"), ("255", 200, "down"), ("256", 400, "new")],
)
def test_exit_status_suffix(server: Server, suffix: str, http_status: int, expected: str) -> None:
    check = server.create_check()
    answer = request("GET", f"{check['ping_url']}/{suffix}")
    assert answer.status == http_status
    if http_status == 400:
        assert answer.text == "invalid url format"
    assert status_of(server, check["id"])["status"] == expected


def test_cut_off_body_records_nothing(server: Server) -> None:
    check = server.create_check()
    path = f"/ping/{check['id']}"
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        sock.sendall(head.encode() + b"only ten b")
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):
            pass

    deadline = time.monotonic() + 15
    while "ping not recorded: its body ended after 10 of 100 bytes" not in server.log():
        assert time.monotonic() < deadline, "the server never logged the cut-off ping"
        time.sleep(0.1)
    assert status_of(server, check["id"])["n_pings"] == 0
    assert request("POST", check["ping_url"], body=b"whole").status == 200
    assert status_of(server, check["id"])["n_pings"] == 1


def test_negative_exit_status_records_nothing(server: Server) -> None:
    check = server.create_check()
    answer = request("GET", f"{check['ping_url']}/-1")
    assert answer.status == 404
    assert status_of(server, check["id"])["n_pings"] == 0


@pytest.mark.parametrize("path", ["/", "/start/", "/fail/", "/log/", "/0/"])
def test_trailing_slash_same_meaning(server: Server, path: str) -> None:
    check = server.create_check()
    answer = request("GET", f"{check['ping_url']}{path}")
    assert answer.status == 200
    state = status_of(server, check["id"])
    assert state["n_pings"] == 1
    if path == "/start/":
        assert state["status"] == "new"
        assert state["started"] is True
    elif path == "/fail/":
        assert state["status"] == "down"
    elif path == "/log/":
        assert state["status"] == "new"
    else:
        assert state["status"] == "up"


def test_upper_case_uuid_same_check(server: Server) -> None:
    check = server.create_check()
    answer = request("GET", f"{server.url}/ping/{check['id'].upper()}")
    assert answer.status == 200
    assert status_of(server, check["id"])["n_pings"] == 1


def test_head_ping_empty_body(server: Server) -> None:
    check = server.create_check()
    answer = request("HEAD", check["ping_url"])
    assert answer.status == 200
    assert answer.body == b""
    assert status_of(server, check["id"])["status"] == "up"


def test_ping_headers_for_browsers_and_wrappers(server: Server) -> None:
    check = server.create_check()
    answer = request("GET", check["ping_url"])
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "no-cache" in answer.headers["cache-control"]
    assert answer.headers["ping-body-limit"] == "100000"


def test_start_then_success_records_duration(server: Server) -> None:
    check = server.create_check()
    run_id = str(uuid.uuid4())
    assert request("GET", f"{check['ping_url']}/start?rid={run_id}").status == 200
    assert status_of(server, check["id"])["started"] is True
    assert request("GET", f"{check['ping_url']}?rid={run_id}").status == 200
    state = status_of(server, check["id"])
    assert state["started"] is False
    assert isinstance(state["last_duration"], float)


def test_malformed_rid_rejected(server: Server) -> None:
    check = server.create_check()
    answer = request("GET", f"{check['ping_url']}?rid=not-a-uuid")
    assert answer.status == 400
    assert answer.text == "invalid uuid format"
    assert status_of(server, check["id"])["n_pings"] == 0


@pytest.mark.parametrize(
    "body",
    [
        bytes.fromhex("41424344E9E9"),
        "héllo".encode("utf-16-le"),
        b"",
        b"\x00\xff\xfe",
    ],
)
def test_any_body_bytes_accepted(server: Server, body: bytes) -> None:
    check = server.create_check()
    for suffix in ("", "/fail"):
        answer = request("POST", f"{check['ping_url']}{suffix}", body)
        assert answer.status == 200
    assert status_of(server, check["id"])["status"] == "down"


def test_long_body_cut_not_refused(server: Server) -> None:
    check = server.create_check()
    body = ("a" + "é" * 60_000).encode()
    answer = request("POST", check["ping_url"], body)
    assert answer.status == 200
    assert status_of(server, check["id"])["status"] == "up"


def test_pause_and_resume_over_http(server: Server) -> None:
    check = server.create_check()
    request("GET", check["ping_url"])
    headers = {"X-Api-Key": server.project.rw_key}
    answer = request("POST", f"{server.url}/api/tasks/{check['id']}/pause", headers=headers)
    assert answer.status == 200
    assert answer.json()["status"] == "paused"
    answer = request("POST", f"{server.url}/api/tasks/{check['id']}/resume", headers=headers)
    assert answer.status == 200
    assert answer.json()["status"] == "new"
    answer = request("POST", f"{server.url}/api/tasks/{check['id']}/resume", headers=headers)
    assert answer.status == 409
    assert answer.json() == {"error": "check is not paused"}


@pytest.fixture(scope="module")
def proxied_server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a 10,000-byte body limit behind a trusted proxy on 127.0.0.1."""
    catalog = create_database(pg_admin_dsn, "proxied")
    runtime = Path(f"/tmp/sl-proxied-{os.getpid()}")
    env = server_env(
        catalog, runtime, shard_count=1, PING_BODY_LIMIT="10000", TRUSTED_PROXIES="127.0.0.1"
    )
    with running_server(env, tmp_path_factory.mktemp("proxied") / "server.log") as running:
        running.extra["catalog"] = catalog
        yield running


def latest_ping(server: Server, check_id: str) -> dict[str, Any]:
    answer = server.api("GET", f"/api/v3/checks/{check_id}/pings/", server.project.rw_key)
    assert answer.status == 200
    latest: dict[str, Any] = answer.json()["pings"][0]
    return latest


def test_body_cut_inside_character(proxied_server: Server) -> None:
    server = proxied_server
    check = server.create_check()
    body = ("a" + "é" * 5000).encode()
    answer = request("POST", check["ping_url"], body)
    assert answer.status == 200
    assert answer.headers["ping-body-limit"] == "10000"

    with psycopg.connect(conninfo.make_conninfo(server.extra["catalog"], dbname=None)) as conn:
        dbname = conn.info.dbname
    shard = conninfo.make_conninfo(server.extra["catalog"], dbname=f"{dbname}_shard0")
    with psycopg.connect(shard) as conn:
        row = conn.execute(
            "SELECT body, body_size FROM pings WHERE check_id = %s", (check["id"],)
        ).fetchone()
    assert row is not None
    assert bytes(row[0]) == body[:10000]
    assert row[1] == 10001

    shown = server.api("GET", f"/api/v3/checks/{check['id']}/pings/1/body", server.project.rw_key)
    assert shown.status == 200
    assert shown.text == "a" + "é" * 4999 + "\ufffd"


@pytest.mark.parametrize(
    ("forwarded", "stored"),
    [
        ("::ffff:192.0.2.10", "192.0.2.10"),
        ("1.2.3.4:5678", "1.2.3.4"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("198.51.100.7, 127.0.0.1", "198.51.100.7"),
        ("not an address", "127.0.0.1"),
    ],
)
def test_forwarded_address_from_trusted_proxy(
    proxied_server: Server, forwarded: str, stored: str
) -> None:
    check = proxied_server.create_check()
    answer = request("GET", check["ping_url"], headers={"X-Forwarded-For": forwarded})
    assert answer.status == 200
    assert latest_ping(proxied_server, check["id"])["remote_addr"] == stored


def test_forwarded_header_ignored_without_trusted_proxy(server: Server) -> None:
    check = server.create_check()
    request("GET", check["ping_url"], headers={"X-Forwarded-For": "192.0.2.10"})
    assert latest_ping(server, check["id"])["remote_addr"] == "127.0.0.1"


def test_forwarded_scheme_from_trusted_proxy(proxied_server: Server) -> None:
    check = proxied_server.create_check()
    request("GET", check["ping_url"], headers={"X-Forwarded-Proto": "https"})
    assert latest_ping(proxied_server, check["id"])["scheme"] == "https"


def test_post_only_check_ignores_get(server: Server) -> None:
    key = server.project.rw_key
    body = {"name": "post only", "methods": "POST", "timeout": 3600}
    created = server.api("POST", "/api/v3/checks/", key, body).json()

    answer = request("GET", created["ping_url"])
    assert answer.status == 200
    check = server.api("GET", f"/api/v3/checks/{created['uuid']}", key).json()
    assert check["status"] == "new"
    assert check["n_pings"] == 1
    assert latest_ping(server, created["uuid"])["type"] == "ign"

    assert request("POST", created["ping_url"]).status == 200
    check = server.api("GET", f"/api/v3/checks/{created['uuid']}", key).json()
    assert check["status"] == "up"
    assert latest_ping(server, created["uuid"])["type"] == "success"
