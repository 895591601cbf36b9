"""Deadlines on a running server in real time, and flips across a shard crash."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from serverlord.storage.topology import SlotMap
from tests.conftest import create_database
from tests.server import Server, request, server_env

pytestmark = pytest.mark.e2e


def shard_dsn(catalog: str, shard: int) -> str:
    name = conninfo.conninfo_to_dict(catalog)["dbname"]
    return conninfo.make_conninfo(catalog, dbname=f"{name}_shard{shard}")


def down_flips(catalog: str, shard_count: int) -> dict[str, list[tuple[float, float]]]:
    """Return (deadline, committed_at) of each check's down flips, by check id."""
    flips: dict[str, list[tuple[float, float]]] = {}
    for shard in range(shard_count):
        with psycopg.connect(shard_dsn(catalog, shard)) as conn:
            rows = conn.execute(
                "SELECT check_id::text, created, committed_at FROM flips"
                " WHERE new_status = 'down' ORDER BY created"
            ).fetchall()
        for check_id, created, committed in rows:
            flips.setdefault(check_id, []).append((created.timestamp(), committed.timestamp()))
    return flips


@pytest.fixture
def fresh_server(pg_admin_dsn: str, runtime_dir: Path, tmp_path: Path) -> Server:
    catalog = create_database(pg_admin_dsn, "rt")
    server = Server(server_env(catalog, runtime_dir, shard_count=2), tmp_path / "server.log")
    server.extra["catalog"] = catalog
    return server


def test_one_second_checks_go_down_on_time(fresh_server: Server) -> None:
    server = fresh_server
    server.start()
    try:
        silent = [server.create_check(interval=1, grace_period=1)["id"] for _ in range(10)]
        busy = server.create_check(interval=1, grace_period=1)["id"]
        for check_id in silent:
            assert request("GET", f"{server.url}/ping/{check_id}").status == 200
        pinged_at = time.time()
        while time.time() < pinged_at + 4:
            assert request("GET", f"{server.url}/ping/{busy}").status == 200
            time.sleep(0.3)

        for check_id in silent:
            state = request("GET", f"{server.url}/api/tasks/{check_id}/status").json()
            assert state["status"] == "down"
        state = request("GET", f"{server.url}/api/tasks/{busy}/status").json()
        assert state["status"] == "up"

        flips = down_flips(server.extra["catalog"], 2)
        assert busy not in flips
        for check_id in silent:
            [(deadline, committed)] = flips[check_id]
            # The flip carries the deadline itself; it is committed after the deadline,
            # never before, and well inside the check's next period.
            assert pinged_at - 0.5 < deadline - 2.0 < pinged_at + 0.5
            assert committed >= deadline
            assert committed - deadline < 2.0
    finally:
        server.stop()


def test_shard_crash_keeps_each_flip_once(fresh_server: Server) -> None:
    server = fresh_server
    server.start()
    try:
        # Checks on shard 0 only, so that killing it hurts all of them.
        ids: list[str] = []
        while len(ids) < 12:
            created = server.create_check(interval=2, grace_period=1)
            if _shard_of(created["id"]) == 0:
                ids.append(created["id"])
        early, late = ids[:6], ids[6:]
        for check_id in early:
            request("GET", f"{server.url}/ping/{check_id}")
        time.sleep(3.5)  # the early checks are down and their flips committed
        for check_id in late:
            request("GET", f"{server.url}/ping/{check_id}")
        time.sleep(2.5)  # the late checks are now overdue (deadline 3 s after ping)
        os.kill(server.shard_pid(0), signal.SIGKILL)
        time.sleep(1.5)

        assert _wait_healthy(server)
        time.sleep(1.0)
        flips = down_flips(server.extra["catalog"], 2)
        for check_id in ids:
            assert len(flips.get(check_id, [])) == 1, check_id
    finally:
        server.stop()


def _shard_of(check_id: str) -> int:
    return SlotMap.even(2).shard_of(uuid.UUID(check_id))


def _wait_healthy(server: Server) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if request("GET", f"{server.url}/healthz").status == 200:
            return True
        time.sleep(0.2)
    return False
