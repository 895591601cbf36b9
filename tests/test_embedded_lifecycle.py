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
from collections.abc import Callable, Iterator
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


def ping_then_kill(
    env: dict[str, str], log_path: Path, data_dir: Path, with_children: bool
) -> tuple[Server, list[str], dict[str, int], int]:
    """Start a server, ping three checks, then SIGKILL its supervisor.

    Returns the stopped server, the check ids, the acknowledged pings per check and the
    postmaster's pid while the server ran.
    """
    server = Server(env, log_path)
    server.start()
    try:
        ids = [server.create_check()["id"] for _ in range(3)]
        acked = ping_checks(server, ids, 4)
        postmaster = postmaster_pid(data_dir)
        assert postmaster is not None
        kill_supervisor(server, with_children)
    finally:
        server.stop()
    return server, ids, acked, postmaster


def serve_again(
    env: dict[str, str],
    log_path: Path,
    data_dir: Path,
    ids: list[str],
    acked: dict[str, int],
    while_running: Callable[[Server], None],
) -> Server:
    """Start a new server on the same folder, ping once, check storage, and stop it."""
    server = Server({**env}, log_path)
    server.start()
    try:
        assert request("GET", f"{server.url}/ping/{ids[0]}").status == 200
        acked[ids[0]] += 1
        while_running(server)
        assert_pings_stored(data_dir, acked)
    finally:
        code = server.stop()
    assert code == 0
    assert postmasters(data_dir) == []
    return server


def test_killed_server_cluster_adopted(runtime_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    env = server_env(None, runtime_dir, shard_count=2, DATA_DIR=str(data_dir))
    # Every Server Lord process dies at once, as with `kill -9` on all of them.
    _, ids, acked, orphan = ping_then_kill(env, tmp_path / "first.log", data_dir, True)

    # Nothing is left to stop the database, so it keeps running.
    assert postmaster_pid(data_dir) == orphan
    assert [process.pid for process in postmasters(data_dir)] == [orphan]

    def adopted(server: Server) -> None:
        assert postmaster_pid(data_dir) == orphan
        assert f"adopted the embedded PostgreSQL in {data_dir} (pid {orphan})" in server.log()

    second = serve_again(env, tmp_path / "second.log", data_dir, ids, acked, adopted)
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == "zombie"
    assert f"embedded PostgreSQL in {data_dir} stopped (pid {orphan})" in second.log()


def test_killed_supervisor_cluster_stops(runtime_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    env = server_env(None, runtime_dir, shard_count=2, DATA_DIR=str(data_dir))
    # The shard processes flush their queues and exit. The last one stops the database
    # before it exits.
    first, ids, acked, postmaster = ping_then_kill(env, tmp_path / "first.log", data_dir, False)

    assert postmasters(data_dir) == []
    assert f"embedded PostgreSQL in {data_dir} stopped (pid {postmaster})" in first.log()

    def not_adopted(server: Server) -> None:
        assert "adopted the embedded PostgreSQL" not in server.log()

    serve_again(env, tmp_path / "second.log", data_dir, ids, acked, not_adopted)


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
