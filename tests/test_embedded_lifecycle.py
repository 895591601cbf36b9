"""Who stops the embedded PostgreSQL: a killed server, the next server, a second server.

Each test runs `serverlord serve` without DATABASE_URL on a DATA_DIR of its own and
checks the postmaster processes of that folder, not just the server's log.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from serverlord.storage.embedded import postmaster_pid
from tests.server import Server, request, server_env
from tests.test_server_faults import stored_pings

pytestmark = pytest.mark.e2e

# Seconds the shard processes and web workers of a killed server get to exit.
CHILD_EXIT_TIMEOUT = 30.0


def postmasters(data_dir: Path) -> list[psutil.Process]:
    """Return the live postgres processes started with `-D data_dir`."""
    found = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if process.info["name"] == "postgres" and str(data_dir) in cmdline:
            found.append(process)
    return found


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short, new DATA_DIR; any postmaster still running in it is shut down afterwards."""
    # The cluster's Unix socket lives in the folder, and socket paths are limited to
    # about 100 bytes.
    root = Path(f"/tmp/sl-emb-{uuid.uuid4().hex[:8]}")
    folder = root / "data"
    try:
        yield folder
    finally:
        left = postmasters(folder)
        for process in left:
            process.send_signal(signal.SIGINT)  # fast shutdown
        psutil.wait_procs(left, timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def children_of(server: Server) -> list[psutil.Process]:
    assert server.process is not None
    children: list[psutil.Process] = psutil.Process(server.process.pid).children(recursive=True)
    return children


def kill_supervisor(server: Server, with_children: bool) -> None:
    """SIGKILL the supervisor (and its children when asked), then wait until all have exited.

    Children left alive get SIGTERM from the kernel and stop by themselves.
    """
    assert server.process is not None
    children = children_of(server)
    server.process.kill()
    if with_children:
        for process in children:
            process.kill()
    server.process.wait()
    server.process = None
    _, alive = psutil.wait_procs(children, timeout=CHILD_EXIT_TIMEOUT)
    for process in alive:
        process.kill()
    assert alive == [], "children of the killed supervisor did not exit"


def ping_checks(server: Server, ids: list[str], rounds: int) -> dict[str, int]:
    """Ping each check `rounds` times; return the acknowledged pings per check."""
    acked: dict[str, int] = {}
    for check_id in ids:
        for _ in range(rounds):
            assert request("GET", f"{server.url}/ping/{check_id}").status == 200
            acked[check_id] = acked.get(check_id, 0) + 1
    return acked


def assert_pings_stored(data_dir: Path, acked: dict[str, int]) -> None:
    dsn = f"host={data_dir} user=postgres dbname=serverlord"
    stored = stored_pings(dsn, 2)
    for check_id, count in acked.items():
        assert stored.get(check_id, 0) >= count, check_id


def test_killed_server_cluster_adopted(runtime_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    env = server_env(None, runtime_dir, shard_count=2, DATA_DIR=str(data_dir))
    first = Server(env, tmp_path / "first.log")
    first.start()
    try:
        ids = [first.create_check()["id"] for _ in range(3)]
        acked = ping_checks(first, ids, 4)
        orphan = postmaster_pid(data_dir)
        assert orphan is not None
        # Every Server Lord process dies at once, as with `kill -9` on all of them.
        kill_supervisor(first, with_children=True)
    finally:
        first.stop()

    # Nothing is left to stop the database, so it keeps running.
    assert postmaster_pid(data_dir) == orphan
    assert [process.pid for process in postmasters(data_dir)] == [orphan]

    second = Server({**env}, tmp_path / "second.log")
    second.start()
    try:
        assert request("GET", f"{second.url}/ping/{ids[0]}").status == 200
        acked[ids[0]] += 1
        assert postmaster_pid(data_dir) == orphan
        assert f"adopted the embedded PostgreSQL in {data_dir} (pid {orphan})" in second.log()
        assert_pings_stored(data_dir, acked)
    finally:
        code = second.stop()

    assert code == 0
    assert postmasters(data_dir) == []
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == "zombie"
    assert f"embedded PostgreSQL in {data_dir} stopped (pid {orphan})" in second.log()


def test_killed_supervisor_cluster_stops(runtime_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    env = server_env(None, runtime_dir, shard_count=2, DATA_DIR=str(data_dir))
    first = Server(env, tmp_path / "first.log")
    first.start()
    try:
        ids = [first.create_check()["id"] for _ in range(3)]
        acked = ping_checks(first, ids, 4)
        postmaster = postmaster_pid(data_dir)
        assert postmaster is not None
        # The shard processes flush their queues and exit; the last one stops the
        # database before it exits.
        kill_supervisor(first, with_children=False)
    finally:
        first.stop()

    assert postmasters(data_dir) == []
    assert f"embedded PostgreSQL in {data_dir} stopped (pid {postmaster})" in first.log()

    second = Server({**env}, tmp_path / "second.log")
    second.start()
    try:
        assert request("GET", f"{second.url}/ping/{ids[0]}").status == 200
        acked[ids[0]] += 1
        assert "adopted the embedded PostgreSQL" not in second.log()
        assert_pings_stored(data_dir, acked)
    finally:
        code = second.stop()

    assert code == 0
    assert postmasters(data_dir) == []


def test_second_server_on_data_dir_rejected(
    runtime_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    env = server_env(None, runtime_dir, shard_count=2, DATA_DIR=str(data_dir))
    first = Server(env, tmp_path / "first.log")
    first.start()
    try:
        assert first.process is not None
        postmaster = postmaster_pid(data_dir)
        assert postmaster is not None

        second_runtime = Path(f"/tmp/sl-second-{uuid.uuid4().hex[:8]}")
        second_env = server_env(None, second_runtime, shard_count=2, DATA_DIR=str(data_dir))
        result = subprocess.run(
            [sys.executable, "-m", "serverlord.cli", "serve"],
            env=second_env,
            capture_output=True,
            timeout=90,
            check=False,
        )
        shutil.rmtree(second_runtime, ignore_errors=True)
        output = result.stderr.decode(errors="replace")
        assert result.returncode == 1, output
        assert "already run by another Server Lord" in output
        assert f"pid {first.process.pid}" in output
        assert "stopped (pid" not in output

        # The first server keeps its database and serves.
        assert postmaster_pid(data_dir) == postmaster
        created = first.create_check()
        assert request("GET", created["ping_url"]).status == 200

        # A command run beside the server uses the same cluster and leaves it running.
        first.cli("user", "create", f"beside-{os.getpid()}@example.com")
        assert postmaster_pid(data_dir) == postmaster
        assert request("GET", created["ping_url"]).status == 200
    finally:
        code = first.stop()

    assert code == 0
    assert postmasters(data_dir) == []
