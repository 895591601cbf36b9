"""Faults under load: killed shard processes, SIGTERM, restarts, a second server.

The promise under test: a ping answered 2xx is committed, whatever happens next.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from tests.conftest import create_database
from tests.load import PingLoad
from tests.server import Server, request, server_env

pytestmark = pytest.mark.e2e


def shard_dsn(catalog: str, shard: int) -> str:
    name = conninfo.conninfo_to_dict(catalog)["dbname"]
    return conninfo.make_conninfo(catalog, dbname=f"{name}_shard{shard}")


def stored_pings(catalog: str, shard_count: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for shard in range(shard_count):
        with psycopg.connect(shard_dsn(catalog, shard)) as conn:
            for check_id, count in conn.execute(
                "SELECT check_id::text, count(*) FROM pings GROUP BY check_id"
            ):
                counts[check_id] = count
    return counts


def wait_until(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def fresh_server(pg_admin_dsn: str, runtime_dir: Path, tmp_path: Path) -> Server:
    catalog = create_database(pg_admin_dsn, "fault")
    server = Server(server_env(catalog, runtime_dir, shard_count=2), tmp_path / "server.log")
    server.extra["catalog"] = catalog
    return server


def test_killed_shard_loses_no_acked_ping(fresh_server: Server) -> None:
    server = fresh_server
    server.start()
    try:
        ids = [server.create_check()["id"] for _ in range(20)]
        load = PingLoad(server.port, ids, threads=4, max_seconds=20)
        load.start()
        time.sleep(1.5)
        victim = server.shard_pid(0)
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: _respawned(server, victim), 15)
        time.sleep(1.5)
        load.stop()

        assert load.statuses[500] == 0
        assert load.errors["TimeoutError"] == 0
        assert load.statuses[200] > 0
        assert set(load.statuses) <= {200, 503}
        stored = stored_pings(server.extra["catalog"], 2)
        for check_id, acked in load.acked.items():
            assert stored.get(check_id, 0) >= acked, check_id
        # Pings succeed again once the restarted shard has loaded its checks. On a busy
        # machine that takes longer than the load above ran after the restart.
        assert wait_until(lambda: request("GET", f"{server.url}/ping/{ids[0]}").status == 200, 15)
    finally:
        server.stop()


def _respawned(server: Server, old_pid: int) -> bool:
    try:
        return server.shard_pid(0) != old_pid
    except LookupError:
        return False


def test_sigterm_under_load_loses_nothing(fresh_server: Server) -> None:
    server = fresh_server
    server.start()
    ids = [server.create_check()["id"] for _ in range(10)]
    load = PingLoad(server.port, ids, threads=4, max_seconds=20)
    load.start()
    time.sleep(1.5)
    started = time.monotonic()
    code = server.stop(timeout=60)
    stop_seconds = time.monotonic() - started
    load.stop()

    assert code == 0
    assert stop_seconds < 45
    assert load.statuses[500] == 0
    stored = stored_pings(server.extra["catalog"], 2)
    for check_id, acked in load.acked.items():
        assert stored.get(check_id, 0) >= acked, check_id


def test_restart_keeps_checks_and_last_ping(fresh_server: Server) -> None:
    server = fresh_server
    server.start()
    created = server.create_check(interval="10m")
    assert request("GET", created["ping_url"]).status == 200
    before = request("GET", f"{server.url}/api/tasks/{created['id']}/status").json()
    server.stop()

    server.start()
    try:
        after = request("GET", f"{server.url}/api/tasks/{created['id']}/status").json()
        assert after["status"] == "up"
        assert after["last_ping"] == before["last_ping"]
        assert after["n_pings"] == 1
    finally:
        server.stop()


def test_contradicting_shard_count_refused(fresh_server: Server) -> None:
    server = fresh_server
    server.start()
    server.stop()
    env = {**server.env, "SHARD_COUNT": "3"}
    result = subprocess.run(
        [sys.executable, "-m", "serverlord.cli", "serve"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"SHARD_COUNT=3 contradicts the stored slot map" in result.stderr


def test_second_server_on_same_shards_refused(fresh_server: Server, tmp_path: Path) -> None:
    server = fresh_server
    server.start()
    try:
        runtime = Path(f"/tmp/sl-second-{uuid.uuid4().hex[:8]}")
        env = server_env(server.extra["catalog"], runtime, shard_count=2)
        result = subprocess.run(
            [sys.executable, "-m", "serverlord.cli", "serve"],
            env=env,
            capture_output=True,
            timeout=90,
            check=False,
        )
        assert result.returncode == 1
        assert b"already run by another Server Lord" in result.stderr
        # The first server still serves.
        created = server.create_check()
        assert request("GET", created["ping_url"]).status == 200
    finally:
        server.stop()


def test_invalid_setting_names_variable(tmp_path: Path) -> None:
    env = {**os.environ, "SHARD_COUNT": "many", "PORT": "8080"}
    result = subprocess.run(
        [sys.executable, "-m", "serverlord.cli", "serve"],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"SHARD_COUNT must be a whole number" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LOG_FORMAT", "xml"),
        ("SERVER_HOST", "999.1.1.1"),
        ("OTEL_COLLECTOR_ENDPOINT", "collector 4318"),
    ],
)
def test_invalid_setting_stops_before_start(
    name: str, value: str, runtime_dir: Path, tmp_path: Path
) -> None:
    # These values used to start every process and fail only later, or never.
    env = server_env(None, runtime_dir, DATA_DIR=str(tmp_path / "data"))
    env[name] = value
    result = subprocess.run(
        [sys.executable, "-m", "serverlord.cli", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"invalid configuration: {name} must be".encode() in result.stderr


def test_killed_database_loses_no_acked_ping(runtime_dir: Path, tmp_path: Path) -> None:
    data_dir = Path(f"/tmp/sl-pgkill-{uuid.uuid4().hex[:8]}") / "data"
    env = server_env(None, runtime_dir, shard_count=2, DATA_DIR=str(data_dir))
    server = Server(env, tmp_path / "server.log")
    server.start()
    try:
        ids = [server.create_check()["id"] for _ in range(10)]
        load = PingLoad(server.port, ids, threads=4, max_seconds=25)
        load.start()
        time.sleep(1.5)
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        assert wait_until(lambda: _postmaster_changed(data_dir, postmaster), 20)
        assert wait_until(
            lambda: request("GET", f"{server.url}/ping/{ids[0]}").status == 200, 20
        ), server.log()
        time.sleep(1.0)
        load.stop()

        assert load.statuses[500] == 0
        assert load.errors["TimeoutError"] == 0
        dsn = f"host={data_dir} user=postgres dbname=serverlord"
        stored = stored_pings(dsn, 2)
        for check_id, acked in load.acked.items():
            assert stored.get(check_id, 0) >= acked, check_id
    finally:
        server.stop()


def _postmaster_changed(data_dir: Path, old_pid: int) -> bool:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0]) != old_pid
    except (OSError, ValueError, IndexError):
        return False
