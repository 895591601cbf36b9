"""The supervisor: prepares the databases, then spawns, watches and stops every process.

It runs one shard process per shard and one gunicorn master with the web workers. It
never parses HTTP and never touches a check. Signal handlers only queue the signal; the
main loop dispatches it to `handle_<name>`, reaps children and respawns a shard process
that died, with backoff. A child that exits with a boot error would fail again the same
way, so the supervisor halts instead of respawning it forever.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import conninfo, sql

from serverlord.config import ConfigError, Settings
from serverlord.shardproc.process import EXIT_BOOT_ERROR, EXIT_SHARD_LOCKED
from serverlord.storage.cluster_lock import ServerRunning
from serverlord.storage.embedded import EmbeddedPostgres
from serverlord.storage.migrate import migrate
from serverlord.storage.topology import Topology, load_or_create_slot_map, provision_shards

log = logging.getLogger(__name__)

# The database that contains the catalog inside the embedded cluster.
EMBEDDED_CATALOG = "serverlord"

# gunicorn exits with 3 when a worker cannot boot (gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR).
GUNICORN_BOOT_ERROR = 3

# Seconds between respawns of a shard process grow from the first to the last value and
# return to the first once a process has lived for STABLE_AFTER seconds.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0

SHARD_READY_TIMEOUT = 60.0
GUNICORN_READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

PR_SET_PDEATHSIG = 1


class HaltServer(Exception):
    """Stop everything and exit with this message and code."""

    def __init__(self, reason: str, exit_status: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status


def _die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this child when the supervisor dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: children also watch their parent id


@dataclass
class ShardChild:
    shard: int
    dsn: str
    socket_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = BACKOFF_FIRST
    respawn_at: float | None = None
    restarts: int = 0


@dataclass
class Supervisor:
    settings: Settings
    embedded: EmbeddedPostgres | None = None
    shards: list[ShardChild] = field(default_factory=list)
    gunicorn: subprocess.Popen[bytes] | None = None
    signals: deque[int] = field(default_factory=deque)
    catalog_dsn: str | None = None
    stopping: bool = False

    # -- running -----------------------------------------------------------------------

    def run(self) -> int:
        """Boot everything, supervise until a stop signal arrives, and return the exit status."""
        wakeup_read, wakeup_write = socket.socketpair()
        wakeup_read.setblocking(False)
        wakeup_write.setblocking(False)
        signal.set_wakeup_fd(wakeup_write.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, self._queue_signal)

        status = 0
        try:
            catalog_dsn = self.prepare_databases(serving=True)
            self.catalog_dsn = catalog_dsn
            self.spawn_shards(catalog_dsn)
            self.spawn_gunicorn(catalog_dsn)
            log.info(
                "Server Lord listening on http://%s:%d with %d shards",
                self.settings.host,
                self.settings.port,
                len(self.shards),
            )
            while not self.stopping:
                select.select([wakeup_read], [], [], 0.5)
                _drain(wakeup_read)
                self.dispatch_signals()
                self.reap()
        except HaltServer as exc:
            log.error("halting: %s", exc.reason)
            status = exc.exit_status
        except ConfigError as exc:
            log.error("invalid configuration: %s", exc)
            status = 2
        except psycopg.OperationalError as exc:
            log.error("cannot reach the database: %s", str(exc).strip())
            status = 1
        finally:
            self.halt()
        return status

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def dispatch_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            name = signal.Signals(signum).name.lower()
            handler = getattr(self, f"handle_{name}", None)
            if handler is not None:
                handler()

    def handle_sigterm(self) -> None:
        log.info("received SIGTERM, stopping")
        self.stopping = True

    def handle_sigint(self) -> None:
        log.info("received SIGINT, stopping")
        self.stopping = True

    def handle_sighup(self) -> None:
        if self.gunicorn is not None:
            log.info("received SIGHUP, reloading the web workers")
            self.gunicorn.send_signal(signal.SIGHUP)

    def handle_sigchld(self) -> None:
        self.reap()

    # -- databases ---------------------------------------------------------------------

    def prepare_databases(self, serving: bool = False) -> str:
        """Start the embedded server if needed, migrate, and return the catalog's DSN.

        `serving` claims the embedded cluster for this server: a second server on the
        same DATA_DIR halts here, before it touches any database.
        """
        catalog_dsn = self.settings.database_url
        if catalog_dsn is None:
            self.embedded = EmbeddedPostgres(self.settings.data_dir)
            try:
                admin_dsn = self.embedded.start(serving)
            except ServerRunning as exc:
                raise HaltServer(str(exc), 1) from exc
            catalog_dsn = _ensure_database(admin_dsn, EMBEDDED_CATALOG)
            log.info(
                "no DATABASE_URL set: using the embedded PostgreSQL in %s", self.settings.data_dir
            )

        migrate(catalog_dsn, "catalog")
        slot_map = load_or_create_slot_map(catalog_dsn, self.settings.shard_count)
        dsns = provision_shards(catalog_dsn, self.settings.shard_count, self.settings.shard_dsns)
        for dsn in dsns:
            migrate(dsn, "shard")

        runtime = self.settings.runtime_dir
        runtime.mkdir(parents=True, exist_ok=True)
        os.chmod(runtime, 0o700)
        self.shards = [
            ShardChild(shard, dsn, runtime / f"shard{shard}.sock") for shard, dsn in enumerate(dsns)
        ]
        topology = Topology(slot_map, tuple(str(child.socket_path) for child in self.shards))
        topology.write(self.topology_path)
        return catalog_dsn

    @property
    def topology_path(self) -> Path:
        return self.settings.runtime_dir / "topology.json"

    # -- shard processes ---------------------------------------------------------------

    def spawn_shards(self, catalog_dsn: str) -> None:
        for child in self.shards:
            self.spawn_shard(child)
        for child in self.shards:
            self.wait_shard_ready(child)

    def spawn_shard(self, child: ShardChild) -> None:
        settings = self.settings
        command = [
            sys.executable,
            "-m",
            "serverlord.shardproc",
            "--shard",
            str(child.shard),
            "--socket",
            str(child.socket_path),
            "--pool-size",
            str(settings.shard_pool_size),
            "--db-concurrency",
            str(settings.shard_db_concurrency),
            "--body-limit",
            str(settings.ping_body_limit),
            "--commit-linger-ms",
            str(settings.commit_linger_ms),
            "--log-level",
            settings.log_level,
        ]
        if settings.startup_quiet_period is not None:
            command += ["--quiet-period", str(settings.startup_quiet_period)]
        if self.embedded is not None:
            command += ["--embedded-data-dir", str(self.embedded.data_dir)]
        # A process group of its own keeps a terminal's Ctrl-C away from the child, so
        # shutdown follows the supervisor's order instead of hitting every process at once.
        env = {**os.environ, "SERVERLORD_SHARD_DSN": child.dsn}
        if self.catalog_dsn is not None:
            env["SERVERLORD_CATALOG_DSN"] = self.catalog_dsn
        child.process = subprocess.Popen(
            command, env=env, preexec_fn=_die_with_parent, process_group=0
        )
        child.started_at = time.monotonic()
        child.respawn_at = None
        log.info("spawned shard %d as pid %d", child.shard, child.process.pid)

    def wait_shard_ready(self, child: ShardChild) -> None:
        deadline = time.monotonic() + SHARD_READY_TIMEOUT
        while time.monotonic() < deadline:
            assert child.process is not None
            status = child.process.poll()
            if status is not None:
                raise HaltServer(_shard_exit_reason(child.shard, status), 1)
            if _socket_accepts(child.socket_path):
                log.info("shard %d ready", child.shard)
                return
            time.sleep(0.05)
        raise HaltServer(f"shard {child.shard} did not become ready in {SHARD_READY_TIMEOUT:g} s")

    def reap(self) -> None:
        now = time.monotonic()
        if self.embedded is not None and not self.stopping and not self.embedded.is_running():
            # Shard processes keep returning 503 while it is down and reconnect by
            # themselves once it is back; acknowledged pings are already on disk.
            self.embedded.restart()
        for child in self.shards:
            process = child.process
            if process is not None and process.poll() is not None:
                self._on_shard_exit(child, process.returncode, now)
            if child.respawn_at is not None and now >= child.respawn_at and not self.stopping:
                self.spawn_shard(child)
        if self.gunicorn is not None and self.gunicorn.poll() is not None and not self.stopping:
            code = self.gunicorn.returncode
            raise HaltServer(f"the web server (gunicorn) exited with status {code}", 1)

    def _on_shard_exit(self, child: ShardChild, code: int, now: float) -> None:
        child.process = None
        if self.stopping:
            return
        if code in (EXIT_BOOT_ERROR, EXIT_SHARD_LOCKED):
            raise HaltServer(_shard_exit_reason(child.shard, code), 1)
        if now - child.started_at >= STABLE_AFTER:
            child.backoff = BACKOFF_FIRST
        child.respawn_at = now + child.backoff
        child.restarts += 1
        log.warning(
            "shard %d exited with status %d; respawning in %.1f s (restart %d)",
            child.shard,
            code,
            child.backoff,
            child.restarts,
        )
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)

    # -- web server --------------------------------------------------------------------

    def spawn_gunicorn(self, catalog_dsn: str | None = None) -> None:
        env = dict(os.environ)
        env["SERVERLORD_TOPOLOGY"] = str(self.topology_path)
        if catalog_dsn is not None:
            # Web workers look up API and ping keys in the catalog.
            env["SERVERLORD_CATALOG_DSN"] = catalog_dsn
        # uvicorn would otherwise take X-Forwarded-For from any local peer; the web
        # workers read it themselves, from the proxies in TRUSTED_PROXIES only.
        env["FORWARDED_ALLOW_IPS"] = ""
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "python:serverlord.web.gunicorn_conf",
            "serverlord.web.app:create_app()",
        ]
        self.gunicorn = subprocess.Popen(
            command, env=env, preexec_fn=_die_with_parent, process_group=0
        )
        log.info("spawned gunicorn as pid %d", self.gunicorn.pid)
        deadline = time.monotonic() + GUNICORN_READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.gunicorn.poll() is not None:
                raise HaltServer(f"gunicorn exited with status {self.gunicorn.returncode}")
            if _port_accepts(self.settings.host, self.settings.port):
                return
            time.sleep(0.05)
        raise HaltServer(f"gunicorn did not listen on port {self.settings.port} in time")

    # -- stopping ----------------------------------------------------------------------

    def halt(self) -> None:
        """Stop in order: web first (drains requests), then shards (flush), then the database."""
        self.stopping = True

        # 1. Web workers finish the requests they hold; new connections are refused.
        if self.gunicorn is not None:
            _terminate([self.gunicorn], "gunicorn")
            self.gunicorn = None

        # 2. Shard processes commit what they have queued and close their pools.
        processes = [child.process for child in self.shards if child.process is not None]
        _terminate(processes, "shard processes")
        for child in self.shards:
            child.process = None

        # 3. The embedded database goes last, after every writer has finished. It keeps
        # running while another process, such as a `serverlord user` command, uses it.
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
        log.info("Server Lord stopped")


def _terminate(processes: list[subprocess.Popen[bytes]], what: str) -> None:
    """Send SIGTERM, wait up to STOP_TIMEOUT seconds, then SIGKILL what is left."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s pid %d did not stop in time; killing it", what, process.pid)
            process.kill()
            process.wait()


def _shard_exit_reason(shard: int, code: int) -> str:
    if code == EXIT_SHARD_LOCKED:
        return f"shard {shard} is already run by another Server Lord on the same database"
    if code == EXIT_BOOT_ERROR:
        return f"shard {shard} could not boot; its log above says why"
    return f"shard {shard} exited with status {code} before it was ready"


def _ensure_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(admin_dsn, dbname=name)


def _socket_accepts(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _port_accepts(host: str, port: int) -> bool:
    probe_host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((probe_host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass
