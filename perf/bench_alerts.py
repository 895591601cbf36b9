"""Measure the alert path: policy decisions, outbox inserts and webhook delivery.

Usage: .venv/bin/python perf/bench_alerts.py [--dsn DSN] [--notifications 2000]
       [--latencies 0 0.05] [--concurrency 1 10] [--repeat 3]

Without --dsn, an embedded PostgreSQL cluster is started in a temporary folder and
stopped at the end. Every step gets a fresh, migrated shard database.

- policy: CPU time of `decide` per event, for a healthy check (success pings, state
  None) and for the flapping day of 1,440 down/up cycles. Memory: bytes traced by
  tracemalloc per PolicyState after one failure each for 100,000 checks.
- enqueue: outbox rows inserted per second, 100 rows per transaction, as the writer's
  group commit would batch them. Each commit waits for fsync.
- delivery: notifications per second from the outbox to a webhook receiver on
  127.0.0.1 that responds after a fixed latency, for each send concurrency, with
  `Deliverer.run` as the shard process runs it. Each run delivers --notifications
  rows and is bounded by a 300 s timeout. A deliverer round is one transaction that
  stores the results of the sends finished since the last round and claims due
  notifications. Each round waits for fsync.

Times are the best of --repeat runs for policy and enqueue; delivery runs once per
setting because every run needs a new outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo, sql
from psycopg_pool import AsyncConnectionPool

from serverlord.alerting.channels import Channel, validate_channel
from serverlord.alerting.deliverer import Deliverer
from serverlord.alerting.notifications import build_payload, notification_rows
from serverlord.alerting.outbox import enqueue
from serverlord.alerting.policy import DEFAULT_POLICY, PolicyState, decide
from serverlord.alerting.settings import AlertSettings, parse_networks
from serverlord.clock import SystemClock
from serverlord.storage.embedded import EmbeddedPostgres
from serverlord.storage.migrate import migrate

T0 = 1_800_000_000.0
ROWS_PER_TRANSACTION = 100
PHASE_TIMEOUT = 300.0
_database_counter = iter(range(1_000_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="maintenance DSN of a PostgreSQL server to use")
    parser.add_argument("--notifications", type=int, default=2000)
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.0, 0.05])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    print(f"python {platform.python_version()} on {platform.machine()}, {platform.node()}")
    bench_policy(args.repeat)
    if args.dsn:
        asyncio.run(bench_database(args.dsn, args))
        return
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data")
        dsn = server.start()
        try:
            asyncio.run(bench_database(dsn, args))
        finally:
            server.stop()


# -- policy ------------------------------------------------------------------------------


def bench_policy(repeat: int) -> None:
    healthy = [(T0 + minute * 60.0, "success") for minute in range(100_000)]
    flapping = []
    for minute in range(1440):
        flapping += [(T0 + minute * 60.0, "fail"), (T0 + minute * 60.0 + 30, "success")]

    for label, events in (("healthy check", healthy), ("flapping day", flapping)):
        best = min(_time_decisions(events) for _ in range(repeat))
        print(f"policy  {label:<14} {best / len(events) * 1e6:8.3f} µs per event")

    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    states = [decide(None, DEFAULT_POLICY, "fail", T0 + index).state for index in range(100_000)]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    traced = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    list_bytes = 8 * len(states)  # the list's own pointers are not policy memory
    print(f"policy  state memory   {(traced - list_bytes) / len(states):8.1f} bytes per check")


def _time_decisions(events: list[tuple[float, Any]]) -> float:
    state: PolicyState | None = None
    started = time.perf_counter()
    for when, event in events:
        state, _ = decide(state, DEFAULT_POLICY, event, when)
    return time.perf_counter() - started


# -- database ----------------------------------------------------------------------------


async def bench_database(admin_dsn: str, args: argparse.Namespace) -> None:
    best = 0.0
    for _ in range(args.repeat):
        dsn = _new_shard_database(admin_dsn)
        best = max(best, await _bench_enqueue(dsn, args.notifications))
    print(
        f"enqueue {ROWS_PER_TRANSACTION} rows/transaction {best:10.0f} rows per second"
        f" ({args.notifications} rows)"
    )

    for latency in args.latencies:
        for concurrency in args.concurrency:
            dsn = _new_shard_database(admin_dsn)
            rate = await asyncio.wait_for(
                _bench_delivery(dsn, args.notifications, latency, concurrency), PHASE_TIMEOUT
            )
            print(
                f"deliver receiver latency {latency * 1000:5.0f} ms, concurrency"
                f" {concurrency:3d}: {rate:8.1f} notifications per second"
            )


def _new_shard_database(admin_dsn: str) -> str:
    name = f"bench_alerts_{next(_database_counter)}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = conninfo.make_conninfo(admin_dsn, dbname=name)
    migrate(dsn, "shard")
    return dsn


def _channel(url: str) -> Channel:
    config = validate_channel("webhook", {"down": {"url": url, "body": "$JSON"}, "up": None})
    return Channel(uuid.uuid4(), 1, "bench", "webhook", config)


async def _fill_outbox(pool: AsyncConnectionPool[Any], channel: Channel, count: int) -> None:
    for start in range(0, count, ROWS_PER_TRANSACTION):
        async with pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            for index in range(start, min(count, start + ROWS_PER_TRANSACTION)):
                check_id = str(uuid.UUID(int=index + 1))
                payload = build_payload(
                    check_id=check_id, name=f"job {index}", status="down", event_time=T0
                )
                # Due at once on the real clock that the deliverer reads.
                now = time.time()
                rows = notification_rows(check_id, T0, "down", [channel.id], payload, now)
                await enqueue(cursor, rows)


async def _bench_enqueue(dsn: str, count: int) -> float:
    async with _open_pool(dsn) as pool:
        started = time.perf_counter()
        await _fill_outbox(pool, _channel("https://example.com/hook"), count)
        return count / (time.perf_counter() - started)


async def _bench_delivery(dsn: str, count: int, latency: float, concurrency: int) -> float:
    receiver = _Receiver(latency, count)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = _channel(f"http://127.0.0.1:{port}/hook")

    async def load_channel(channel_id: uuid.UUID) -> Channel | None:
        return channel if channel_id == channel.id else None

    settings = AlertSettings(webhook_allowed_networks=parse_networks("127.0.0.0/8", "loopback"))
    try:
        async with _open_pool(dsn, size=concurrency + 2) as pool:
            await _fill_outbox(pool, channel, count)
            deliverer = Deliverer(
                pool, SystemClock(), load_channel, settings=settings, concurrency=concurrency
            )
            started = time.perf_counter()
            runner = asyncio.create_task(deliverer.run())
            await receiver.all_received.wait()
            # The last sends still store their results; close waits for them.
            await deliverer.close(grace=PHASE_TIMEOUT)
            elapsed = time.perf_counter() - started
            await runner
            delivered = deliverer.sent
    finally:
        server.close()
        await server.wait_closed()
    if delivered != count or receiver.requests != count:
        raise RuntimeError(f"delivered {delivered}, received {receiver.requests} of {count}")
    return count / elapsed


class _Receiver:
    """A minimal HTTP/1.1 receiver that responds with 200 after `latency` seconds.

    `all_received` is set when `expected` requests have arrived.
    """

    def __init__(self, latency: float, expected: int) -> None:
        self.latency = latency
        self.expected = expected
        self.requests = 0
        self.all_received = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            self.requests += 1
            if self.requests >= self.expected:
                self.all_received.set()
            if self.latency:
                await asyncio.sleep(self.latency)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def _open_pool(dsn: str, size: int = 4) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=size, max_size=size, open=False
    )
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close()


if __name__ == "__main__":
    main()
