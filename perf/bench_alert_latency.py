"""Deadline to webhook received, through the whole server, on loopback.

Starts a private PostgreSQL and `serverlord serve`, seeds `--checks` checks of which
`--due` fall due spread over `--window` seconds and `--burst` fall due inside one second,
all notifying one webhook channel. A small HTTP receiver on 127.0.0.1 responds 200 at once
and records when each notification arrived; the body template carries the check's UUID,
so each arrival is matched with the deadline that caused it.

"steady" covers every steady notification. Those due while the burst is still being
delivered wait behind it, so "steady_outside_burst" leaves out the ones due from the
start of the burst second until the last burst notification arrived.

Usage: python perf/bench_alert_latency.py --checks 100000 --due 5000 --burst 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detection import free_port, prepare, summary, wait_ready
from seed import seed, shard_dsns

from serverlord.storage.embedded import EmbeddedPostgres


class Receiver:
    """Records (arrival time, body) of every request; responds 200 at once."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrived = time.time()
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.arrivals.append((arrived, body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


def add_channel(catalog: str, url: str) -> uuid.UUID:
    channel_id = uuid.uuid4()
    request = {"method": "POST", "url": url, "body": "$CODE", "headers": {}}
    with psycopg.connect(catalog) as conn:
        conn.execute(
            "INSERT INTO channels (id, project_id, name, kind, config)"
            " VALUES (%s, 1, 'bench', 'webhook', %s)",
            (channel_id, Jsonb({"down": request, "up": None})),
        )
    return channel_id


def assign_channel(catalog: str, ids: list[str], channel_id: uuid.UUID) -> None:
    for dsn in shard_dsns(catalog):
        with psycopg.connect(dsn) as conn:
            conn.execute(
                "UPDATE checks SET channels = ARRAY[%s::uuid] WHERE id = ANY(%s::uuid[])",
                (channel_id, ids),
            )


async def measure(args: argparse.Namespace, workdir: Path, admin: str) -> dict[str, Any]:
    receiver = Receiver()
    await receiver.start()
    catalog = prepare(admin, args.shards)
    channel_id = add_channel(catalog, f"http://127.0.0.1:{receiver.port}/hook")

    rng = random.Random(5)
    seed(catalog, args.checks - args.due - args.burst, 86400, 3600, None, 0, rng)
    due_from = time.time() + args.startup_margin
    steady_deadlines: dict[str, float] = {}
    burst_deadlines: dict[str, float] = {}
    seed(catalog, args.due, 60, 30, due_from, args.window, rng, steady_deadlines)
    burst_at = due_from + args.window / 2
    seed(catalog, args.burst, 60, 30, burst_at, 1.0, rng, burst_deadlines)
    assign_channel(catalog, [*steady_deadlines, *burst_deadlines], channel_id)

    env = {
        **os.environ,
        "DATABASE_URL": catalog,
        "SHARD_COUNT": str(args.shards),
        "PORT": str(free_port()),
        "SERVER_HOST": "127.0.0.1",
        "RUNTIME_DIR": str(workdir / "run"),
        "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "LOG_LEVEL": "WARNING",
    }
    with (workdir / "server.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
            [sys.executable, "-m", "serverlord.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await asyncio.to_thread(wait_ready, int(env["PORT"]), process, args.startup_margin)
        ready = time.time()
        end = due_from + args.window + args.drain
        await asyncio.sleep(max(0.0, end - time.time()))
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 60)

    steady: list[tuple[float, float]] = []
    burst: list[float] = []
    burst_last = 0.0
    for arrived, body in receiver.arrivals:
        check_id = body.decode()
        if check_id in steady_deadlines and steady_deadlines[check_id] >= ready:
            steady.append((steady_deadlines[check_id], arrived - steady_deadlines[check_id]))
        elif check_id in burst_deadlines:
            burst.append(arrived - burst_deadlines[check_id])
            burst_last = max(burst_last, arrived)
    outside_burst = [
        latency
        for deadline, latency in steady
        if deadline < burst_at or (burst and deadline > burst_last)
    ]
    return {
        "checks": args.checks,
        "shards": args.shards,
        "steady": summary([latency for _, latency in steady]),
        "steady_outside_burst": summary(outside_burst),
        "burst": summary(burst),
        "burst_expected": args.burst,
        "burst_complete_after_s": round(burst_last - (burst_at + 1.0), 2) if burst else None,
        "received_total": len(receiver.arrivals),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure deadline-to-webhook latency.")
    parser.add_argument("--checks", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--due", type=int, default=5_000)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=30.0, help="seconds")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds after the window")
    parser.add_argument("--startup-margin", type=float, default=30.0, help="seconds")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sl-alerts-", dir="/tmp"))
    database = EmbeddedPostgres(workdir / "data")
    admin = database.start()
    try:
        result = asyncio.run(measure(args, workdir, admin))
    finally:
        database.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
