"""Detection latency, load time and memory per check of a running Server Lord.

Starts a private PostgreSQL (fsync and synchronous_commit on), seeds checks straight
into the shards, starts `serverlord serve` against it and then, while a steady ping load
arrives, lets three groups of checks fall due:

- steady: `--due` checks whose deadlines are spread uniformly over `--window` seconds;
- burst: `--burst` checks whose deadlines all fall inside one second;
- the rest (the ping targets) have long periods and never fall due.

Detection latency is the flip's `committed_at` (clock_timestamp() inside the flip's
transaction, a fraction of a millisecond before COMMIT returns) minus its deadline.

Usage: python perf/bench_detection.py --checks 100000 --shards 4 --rate 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import conninfo, sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import run_load
from seed import seed, shard_dsns

from serverlord.storage.embedded import EmbeddedPostgres
from serverlord.storage.migrate import migrate
from serverlord.storage.topology import load_or_create_slot_map, provision_shards


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prepare(admin_dsn: str, shards: int) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("bench")))
    catalog = conninfo.make_conninfo(admin_dsn, dbname="bench")
    migrate(catalog, "catalog")
    load_or_create_slot_map(catalog, shards)
    for dsn in provision_shards(catalog, shards, {}):
        migrate(dsn, "shard")
    return catalog


def wait_ready(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if b" 200 " in conn.recv(200):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready in time")


def rss_by_role(root_pid: int) -> dict[str, list[int]]:
    roles: dict[str, list[int]] = {}
    root = psutil.Process(root_pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            cmdline = " ".join(process.cmdline())
            rss = process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        if "serverlord.shardproc" in cmdline:
            role = "shard"
        elif "gunicorn" in cmdline and process.pid != root_pid:
            role = "gunicorn"
        elif process.pid == root_pid:
            role = "supervisor"
        else:
            role = "other"
        roles.setdefault(role, []).append(rss)
    return roles


def postgres_rss() -> int:
    total = 0
    for process in psutil.process_iter(["name", "memory_info"]):
        if process.info["name"] == "postgres":
            # PostgreSQL backends share their buffer pool; USS would be fairer, RSS is
            # an upper bound.
            total += process.info["memory_info"].rss
    return total


def latencies(catalog: str, ids: set[str], since: float) -> list[float]:
    values = []
    for dsn in shard_dsns(catalog):
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT check_id::text, extract(epoch FROM committed_at - created)"
                " FROM flips WHERE reason = 'timeout' AND created >= to_timestamp(%s)",
                (since,),
            ).fetchall()
        values += [float(delay) for check_id, delay in rows if check_id in ids]
    return values


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pct(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 1)

    return {
        "count": len(values),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(values) * 1000, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="sl-detect-", dir="/tmp"))
    database = EmbeddedPostgres(workdir / "data")
    admin = database.start()
    process: subprocess.Popen[bytes] | None = None
    try:
        catalog = prepare(admin, args.shards)
        rng = random.Random(3)
        started = time.monotonic()
        targets = seed(catalog, args.checks - args.due - args.burst, 86400, 3600, None, 0, rng)
        # Deadlines start after the server is expected to be ready and the load is running.
        due_from = time.time() + args.startup_margin
        steady = seed(catalog, args.due, 60, 30, due_from, args.window, rng)
        burst_at = due_from + args.window / 2
        burst = seed(catalog, args.burst, 60, 30, burst_at, 1.0, rng)
        seed_seconds = time.monotonic() - started

        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": catalog,
            "SHARD_COUNT": str(args.shards),
            "PORT": str(port),
            "SERVER_HOST": "127.0.0.1",
            "RUNTIME_DIR": str(workdir / "run"),
            "WEB_CONCURRENCY": str(args.workers),
            "LOG_LEVEL": "INFO",
        }
        log_path = workdir / "server.log"
        with log_path.open("wb") as log:
            boot = time.time()
            process = subprocess.Popen(
                [sys.executable, "-m", "serverlord.cli", "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(port, process, args.startup_margin)
        ready = time.time()
        if ready > due_from:
            print("warning: the server was ready after the first deadline", file=sys.stderr)

        target_ids = [check_id for ids in targets.values() for check_id in ids]
        remaining = due_from + args.window + 3 - time.time()
        load = asyncio.run(
            run_load(port, target_ids, args.rate, max(remaining, 5.0), args.connections)
        )
        time.sleep(2.0)

        memory = rss_by_role(process.pid)
        steady_ids = {check_id for ids in steady.values() for check_id in ids}
        burst_ids = {check_id for ids in burst.values() for check_id in ids}
        loads = [
            float(match)
            for match in re.findall(r"loaded \d+ checks in ([\d.]+) s", log_path.read_text())
        ]
        shard_rss = memory.get("shard", [])
        return {
            "checks": args.checks,
            "shards": args.shards,
            "seed_seconds": round(seed_seconds, 1),
            "boot_to_ready_s": round(ready - boot, 2),
            "shard_load_s": loads,
            "steady": summary(latencies(catalog, steady_ids, ready)),
            "burst": summary(latencies(catalog, burst_ids, ready)),
            "ping_load": {
                "rate": args.rate,
                "sent": load.sent,
                "ok": load.ok,
                "failed": load.failed,
                "statuses": load.statuses,
                "p50_ms": round(load.percentile(0.5) * 1000, 1),
                "p99_ms": round(load.percentile(0.99) * 1000, 1),
            },
            "rss_mib": {
                role: [round(value / 2**20, 1) for value in values]
                for role, values in memory.items()
            },
            "postgres_rss_mib": round(postgres_rss() / 2**20, 1),
            "shard_bytes_per_check": (round(sum(shard_rss) / args.checks) if shard_rss else None),
        }
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        database.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure detection latency.")
    parser.add_argument("--checks", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--due", type=int, default=20_000, help="checks falling due steadily")
    parser.add_argument("--burst", type=int, default=10_000, help="checks due in one second")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of steady deadlines")
    parser.add_argument("--rate", type=float, default=2000.0, help="pings per second")
    parser.add_argument("--workers", type=int, default=2, help="web workers")
    parser.add_argument("--connections", type=int, default=128, help="HTTP connections")
    parser.add_argument("--startup-margin", type=float, default=30.0, help="seconds")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
