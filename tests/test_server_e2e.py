"""The whole server, started as a user starts it, answering real HTTP over real shards."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from serverlord.storage.topology import SlotMap
from tests.server import Server, request

pytestmark = pytest.mark.e2e


def test_checks_spread_over_every_shard(server: Server) -> None:
    slot_map = SlotMap.even(3)
    seen: set[int] = set()
    for _ in range(30):
        created = server.create_check()
        seen.add(slot_map.shard_of(uuid.UUID(created["id"])))
        if len(seen) == 3:
            break
    assert seen == {0, 1, 2}


def test_ping_then_status_shows_up(server: Server) -> None:
    created = server.create_check(interval="5m", grace_period="1m")
    assert created["status"] == "new"
    assert created["ping_url"] == f"{server.url}/ping/{created['id']}"

    answer = request("GET", created["ping_url"])
    assert answer.status == 200
    assert answer.text == "OK"

    status = request("GET", f"{server.url}/api/tasks/{created['id']}/status").json()
    assert status["status"] == "up"
    assert status["last_ping"] is not None
    assert status["next_ping"] is not None
    assert status["n_pings"] == 1


def test_heartbeat_endpoint_counts_as_success(server: Server) -> None:
    created = server.create_check()
    answer = request("POST", f"{server.url}/api/heartbeat/{created['id']}")
    assert answer.status == 200
    assert answer.json()["n"] == 1
    status = request("GET", f"{server.url}/api/tasks/{created['id']}/status").json()
    assert status["status"] == "up"


def test_acknowledged_ping_is_in_database(server: Server) -> None:
    created = server.create_check()
    for _ in range(5):
        assert request("POST", created["ping_url"], b"log line").status == 200

    shard = SlotMap.even(3).shard_of(uuid.UUID(created["id"]))
    catalog = server.extra["catalog"]
    shard_dsn = psycopg.conninfo.make_conninfo(
        catalog, dbname=f"{psycopg.conninfo.conninfo_to_dict(catalog)['dbname']}_shard{shard}"
    )
    with psycopg.connect(shard_dsn) as conn:
        rows = conn.execute(
            "SELECT n, kind, body FROM pings WHERE check_id = %s ORDER BY n", (created["id"],)
        ).fetchall()
        n_pings = conn.execute(
            "SELECT n_pings, status FROM checks WHERE id = %s", (created["id"],)
        ).fetchone()
    assert [row[0] for row in rows] == [1, 2, 3, 4, 5]
    assert {row[1] for row in rows} == {"success"}
    assert bytes(rows[0][2]) == b"log line"
    assert n_pings == (5, "up")


def test_unknown_check_is_not_found(server: Server) -> None:
    answer = request("GET", f"{server.url}/ping/{uuid.uuid4()}")
    assert answer.status == 404
    assert answer.text == "not found"
    answer = request("GET", f"{server.url}/api/tasks/{uuid.uuid4()}/status")
    assert answer.status == 404
    assert answer.json() == {"error": "not found"}


def test_healthz_reports_every_shard(server: Server) -> None:
    answer = request("GET", f"{server.url}/healthz")
    assert answer.status == 200
    assert answer.json()["status"] == "ok"
