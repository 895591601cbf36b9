"""The life of one shard process: boot, serve, and stop without losing a commit.

Boot: take the shard's advisory lock (so two servers never run one shard), open the
pool, load every check, then listen. Stop, on SIGTERM or SIGINT or when the supervisor
is gone: stop accepting, let received requests finish, flush the writer, close the pool.
On the embedded cluster, the process counts as one of its users, so when the supervisor
was killed, the last shard process to stop also stops the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import uvloop
from psycopg_pool import AsyncConnectionPool

from serverlord.alerting.channels import CatalogChannelLoader
from serverlord.alerting.deliverer import Deliverer
from serverlord.alerting.settings import alert_settings_from_env
from serverlord.clock import SystemClock
from serverlord.config import from_env
from serverlord.logs import setup_logging
from serverlord.observability.shard import ShardTelemetry
from serverlord.shardproc.api_ops import ApiOps
from serverlord.shardproc.retention import Retention
from serverlord.shardproc.server import SocketServer
from serverlord.shardproc.service import ShardService
from serverlord.storage.cluster_lock import ClusterLock
from serverlord.storage.embedded import postmaster_pid, stop_cluster

log = logging.getLogger(__name__)

# Exit codes the supervisor reads: a process that cannot boot, or whose shard another
# server already runs, would fail again the same way, so the supervisor halts instead of
# respawning it forever.
EXIT_BOOT_ERROR = 3
EXIT_SHARD_LOCKED = 4

# One key for every shard lock; the second half of the two-part key is the shard number.
SHARD_LOCK_CLASS = 0x5E1D


class BootError(Exception):
    """The shard process cannot start; retrying without a change will not help."""


class ShardLocked(Exception):
    """Another process holds the shard's lock."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="serverlord-shard", description="Run one shard.")
    parser.add_argument("--shard", type=int, required=True, help="shard number")
    # DSNs come from the environment by default: a password on the command line would be
    # visible to every local user in the process list.
    parser.add_argument(
        "--dsn",
        default=os.environ.get("SERVERLORD_SHARD_DSN"),
        help="PostgreSQL DSN of the shard database (default: $SERVERLORD_SHARD_DSN)",
    )
    parser.add_argument("--socket", type=Path, required=True, help="Unix socket path")
    parser.add_argument("--pool-size", type=int, default=4, help="database connections")
    parser.add_argument(
        "--db-concurrency", type=int, default=3, help="database operations run at once"
    )
    parser.add_argument("--body-limit", type=int, default=100_000, help="ping body bytes kept")
    parser.add_argument(
        "--commit-linger-ms",
        type=float,
        default=5.0,
        help="milliseconds a batch may wait for more changes under load",
    )
    parser.add_argument(
        "--boot-timeout", type=float, default=60.0, help="seconds to wait for the database"
    )
    parser.add_argument(
        "--quiet-period",
        type=float,
        default=None,
        help="seconds to hold alerts for deadlines missed while stopped (default: grace)",
    )
    parser.add_argument(
        "--catalog-dsn",
        default=os.environ.get("SERVERLORD_CATALOG_DSN"),
        help="catalog database DSN, for alert channels (default: $SERVERLORD_CATALOG_DSN)",
    )
    parser.add_argument(
        "--embedded-data-dir",
        type=Path,
        default=None,
        help="data folder of the embedded cluster the shard lives in, if any",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("the shard DSN is missing: set SERVERLORD_SHARD_DSN or pass --dsn")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.log_level, f"shard{args.shard}")
    cluster = None
    if args.embedded_data_dir is not None:
        cluster = ClusterLock(args.embedded_data_dir)
        cluster.acquire(serving=False)
        cluster.share()
    try:
        uvloop.run(ShardProcess(args).run())
    except ShardLocked as exc:
        log.error("shard %d: %s", args.shard, exc)
        sys.exit(EXIT_SHARD_LOCKED)
    except BootError as exc:
        log.error("shard %d could not boot: %s", args.shard, exc)
        sys.exit(EXIT_BOOT_ERROR)
    finally:
        if cluster is not None:
            _leave_cluster(cluster, args.embedded_data_dir, args.shard)


def _leave_cluster(cluster: ClusterLock, data_dir: Path, shard: int) -> None:
    """Stop the embedded cluster if no other live process, such as the supervisor, uses it.

    That happens when the supervisor was killed. This process has already committed its
    queue and closed its connections.
    """
    try:
        if cluster.release_and_check_last():
            log.warning(
                "shard %d stops the embedded PostgreSQL in %s: the supervisor is gone and "
                "no other process uses it",
                shard,
                data_dir,
            )
            stop_cluster(data_dir, postmaster_pid(data_dir))
    finally:
        cluster.release()


class ShardProcess:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.shard: int = args.shard
        self.parent = os.getppid()
        self._stop = asyncio.Event()
        self._lock_conn: psycopg.AsyncConnection[Any] | None = None
        self.owner_token = str(uuid.uuid4())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)

        await self._acquire_lock()
        pool = AsyncConnectionPool(
            self.args.dsn,
            min_size=min(2, self.args.pool_size),
            max_size=self.args.pool_size,
            open=False,
            name=f"shard{self.shard}",
        )
        await pool.open(wait=True, timeout=self.args.boot_timeout)
        service = ShardService(
            self.shard,
            pool,
            SystemClock(),
            self.args.db_concurrency,
            self.owner_token,
            self.args.body_limit,
            self.args.quiet_period,
            self.args.commit_linger_ms / 1000.0,
        )
        try:
            await service.load()
        except psycopg.errors.UndefinedTable as exc:
            raise BootError(f"the shard database is not migrated: {exc}") from exc
        # The loaded checks live as long as the process: moving them out of the collector's
        # generations spares every later collection a walk over hundreds of thousands of
        # objects. Collecting first keeps the garbage of the load out of the frozen set.
        gc.collect()
        gc.freeze()
        ApiOps(service).install()
        telemetry = ShardTelemetry.install(service)
        settings = from_env()
        retention = Retention(service, settings.ping_retention, settings.flip_retention_days)

        deliverer, catalog_pool = await self._start_deliverer(service)

        server = SocketServer(self.args.socket, telemetry.wrap(service.handle), self.shard)
        tasks = [
            asyncio.create_task(service.writer.run(), name="writer"),
            asyncio.create_task(service.engine.run(), name="engine"),
            asyncio.create_task(service.reload_stale(), name="reload"),
            asyncio.create_task(self._watch_parent(), name="parent-watch"),
            asyncio.create_task(self._watch_lock(), name="lock-watch"),
            asyncio.create_task(self._watch_ownership(service), name="owner-watch"),
            asyncio.create_task(retention.run(), name="retention"),
            asyncio.create_task(telemetry.run(), name="telemetry"),
        ]
        if deliverer is not None:
            tasks.append(asyncio.create_task(deliverer.run(), name="deliverer"))
        await server.start()
        log.info("shard %d ready with %d checks", self.shard, len(service.checks))

        await self._stop.wait()
        if deliverer is not None:
            # Sends under way get a moment to finish; the rest stay in the outbox and are
            # sent after the next start.
            await deliverer.close(grace=2.0)
        await self._shutdown(server, service, pool, tasks)
        if catalog_pool is not None:
            await catalog_pool.close()
        await telemetry.close()

    async def _shutdown(
        self,
        server: SocketServer,
        service: ShardService,
        pool: AsyncConnectionPool[Any],
        tasks: list[asyncio.Task[None]],
    ) -> None:
        log.info("shard %d stopping", self.shard)

        # 1. Stop accepting: web workers see the socket gone and return 503.
        await server.stop_accepting()

        # 2. Let received requests finish; each waits for its commit.
        await server.drain(5.0)
        await server.close_connections()

        # 3. Flush the writer, then stop the background tasks.
        writer_task = tasks[0]
        await service.writer.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer_task, 5.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        # 4. Close the database connections.
        await pool.close()
        if self._lock_conn is not None:
            await self._lock_conn.close()
        log.info("shard %d stopped", self.shard)

    async def _start_deliverer(
        self, service: ShardService
    ) -> tuple[Deliverer | None, AsyncConnectionPool[Any] | None]:
        """Create the shard's alert deliverer; None without a catalog to read channels from."""
        if self.args.catalog_dsn is None:
            log.warning("shard %d has no catalog DSN: alerts are stored but not sent", self.shard)
            return None, None
        catalog_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.args.catalog_dsn, min_size=1, max_size=2, open=False, name=f"catalog{self.shard}"
        )
        await catalog_pool.open(wait=True, timeout=self.args.boot_timeout)

        # This process holds the shard's lock, so claims left by an earlier process are
        # dead: release them now instead of waiting for their leases to run out.
        async with service.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE notifications SET claim_token = NULL, lease_expires = NULL"
                " WHERE status = 'pending' AND claim_token IS NOT NULL"
            )
            if cursor.rowcount:
                log.info(
                    "shard %d released %d notification claims of its previous process",
                    self.shard,
                    cursor.rowcount,
                )
        clock = SystemClock()
        deliverer = Deliverer(
            service.pool,
            clock,
            CatalogChannelLoader(catalog_pool, clock),
            settings=alert_settings_from_env(),
            db_semaphore=service.semaphore,
            shard=self.shard,
        )
        service.writer.on_alerts_committed = deliverer.wake
        return deliverer, catalog_pool

    async def _acquire_lock(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.args.boot_timeout
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.args.dsn, autocommit=True)
                break
            except psycopg.OperationalError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise BootError(f"cannot connect to the shard database: {exc}") from exc
                log.warning("shard %d waiting for its database: %s", self.shard, exc)
                await asyncio.sleep(1.0)
        cursor = await conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", (SHARD_LOCK_CLASS, self.shard)
        )
        row = await cursor.fetchone()
        if row is None or not row[0]:
            await conn.close()
            raise ShardLocked(
                f"another Server Lord process already runs shard {self.shard} on this database; "
                "stop it first (two writers would corrupt the shard's state)"
            )
        self._lock_conn = conn
        # Claim the shard for this process's commits; a process that held it before and
        # is still running fails its next commit on the token check.
        await conn.execute(
            "INSERT INTO shard_owner (id, token, pid, host) VALUES (1, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET token = excluded.token, pid = excluded.pid,"
            " host = excluded.host, since = now()",
            (self.owner_token, os.getpid(), socket.gethostname()),
        )

    async def _watch_ownership(self, service: ShardService) -> None:
        await service.writer.ownership_lost.wait()
        log.error("shard %d was taken over by another process; stopping", self.shard)
        self._stop.set()

    async def _watch_lock(self) -> None:
        """Stop the process if the lock's connection is lost and cannot be taken again.

        The lock dies with its connection, for example when PostgreSQL restarts; another
        server could then take the shard, so this one must take it back or go away.
        """
        while True:
            await asyncio.sleep(1.0)
            conn = self._lock_conn
            try:
                if conn is None or conn.closed:
                    raise psycopg.OperationalError("lock connection closed")
                await conn.execute("SELECT 1")
            except psycopg.Error as exc:
                log.warning(
                    "shard %d lost its lock connection: %s; taking it again", self.shard, exc
                )
                try:
                    await self._acquire_lock()
                except ShardLocked as locked:
                    log.error("shard %d: %s", self.shard, locked)
                    self._stop.set()
                    return
                except BootError as failed:
                    log.error("shard %d could not take its lock again: %s", self.shard, failed)
                    self._stop.set()
                    return
                log.info("shard %d acquired its lock again", self.shard)

    async def _watch_parent(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != self.parent:
                log.warning("shard %d: the supervisor is gone, stopping", self.shard)
                self._stop.set()
                return


if __name__ == "__main__":
    main()
