"""Measure slug pings against UUID pings, and listing a large project, on a real server.

Usage: .venv/bin/python perf/bench_api.py [--checks 10000] [--ping-seconds 10] [--rounds 3]

It starts a private embedded PostgreSQL in a temporary folder, then `serverlord serve`
with 4 shards on 127.0.0.1, and sends traffic only there.

- Pings: 200 checks with slugs in one project. Each round runs UUID pings, then slug
  pings to the same checks, for --ping-seconds each, from 32 keep-alive connections
  of one client process. Alternating rounds spread the machine's noise over both
  kinds. The figure is pings with a 200 response per second; the ratio compares the two
  within the same run. The client shares the machine's cores with the server.
- Listing: --checks checks of one project are written straight into the 4 shard
  databases while the server is stopped (the API would take minutes to create them),
  then the server starts, loads them, and `GET /api/v3/checks/` is timed 10 times
  (after 2 warm-up requests). The figure is the median and the maximum.

Every loop is bounded by a count or a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serverlord.storage.embedded import EmbeddedPostgres  # noqa: E402
from serverlord.storage.topology import SlotMap  # noqa: E402
from tests.server import Server, request, server_env  # noqa: E402

SHARDS = 4
PING_CHECKS = 200
CONNECTIONS = 32
LIST_REQUESTS = 10


@dataclass
class PingRate:
    kind: str
    answered: int
    failed: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.answered / self.seconds


async def _hammer(port: int, paths: list[str], seconds: float) -> tuple[int, int]:
    """Send GET requests over keep-alive connections until `seconds` pass."""
    deadline = time.monotonic() + seconds
    answered = failed = 0

    async def connection(index: int) -> None:
        nonlocal answered, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent = index
        try:
            while time.monotonic() < deadline:
                path = paths[sent % len(paths)]
                sent += CONNECTIONS
                writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if status_line.split()[1] == b"200":
                    answered += 1
                else:
                    failed += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
    return answered, failed


def measure_pings(server: Server, seconds: float, rounds: int) -> list[PingRate]:
    project = server.create_project("bench")
    uuid_paths, slug_paths = [], []
    for index in range(PING_CHECKS):
        body = {"name": f"job {index}", "slug": f"job-{index}", "timeout": 3600}
        created = server.api("POST", "/api/v3/checks/", project.rw_key, body).json()
        uuid_paths.append(f"/ping/{created['uuid']}")
        slug_paths.append(f"/ping/{project.ping_key}/job-{index}")
    # One pass over the slugs fills every worker's route cache, as a live server's is.
    asyncio.run(_hammer(server.port, slug_paths, 1.0))

    rates = []
    for _ in range(rounds):
        for kind, paths in (("uuid", uuid_paths), ("slug", slug_paths)):
            started = time.monotonic()
            answered, failed = asyncio.run(_hammer(server.port, paths, seconds))
            rates.append(PingRate(kind, answered, failed, time.monotonic() - started))
    return rates


def seed_checks(server: Server, project_id: int, count: int) -> None:
    """Write `count` checks of one project straight into the shard databases."""
    catalog = server.env["DATABASE_URL"]
    slot_map = SlotMap.even(SHARDS)
    by_shard: dict[int, list[tuple[Any, ...]]] = {shard: [] for shard in range(SHARDS)}
    now = datetime.now(UTC)
    for index in range(count):
        check_id = uuid.uuid4()
        by_shard[slot_map.shard_of(check_id)].append(
            (check_id, project_id, f"check {index}", f"check-{index}", "bench prod", now)
        )
    dbname = psycopg.conninfo.conninfo_to_dict(catalog)["dbname"]
    for shard, rows in by_shard.items():
        dsn = psycopg.conninfo.make_conninfo(catalog, dbname=f"{dbname}_shard{shard}")
        with (
            psycopg.connect(dsn) as conn,
            conn.cursor() as cursor,
            cursor.copy(
                "COPY checks (id, project_id, name, slug, tags, created_at) FROM STDIN"
            ) as copy,
        ):
            for row in rows:
                copy.write_row(row)


def measure_listing(server: Server, count: int) -> list[float]:
    project = server.create_project("listing")
    server.stop()
    seed_checks(server, project.id, count)
    server.start()
    url = f"{server.url}/api/v3/checks/"
    headers = {"X-Api-Key": project.ro_key}
    for _ in range(2):
        assert request("GET", url, headers=headers, timeout=60).status == 200
    times = []
    for _ in range(LIST_REQUESTS):
        started = time.perf_counter()
        answer = request("GET", url, headers=headers, timeout=60)
        times.append(time.perf_counter() - started)
        assert answer.status == 200
        assert len(answer.json()["checks"]) == count
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=10_000, help="checks to list")
    parser.add_argument("--ping-seconds", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each ping kind")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sl-bench-api-") as folder:
        postgres = EmbeddedPostgres(Path(folder) / "pg")
        admin = postgres.start()
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench_api")
            catalog = psycopg.conninfo.make_conninfo(admin, dbname="bench_api")
            runtime = Path(folder) / "run"
            env = server_env(catalog, runtime, shard_count=SHARDS, LOG_LEVEL="WARNING")
            server = Server(env, Path(folder) / "server.log")
            server.start()
            try:
                rates = measure_pings(server, args.ping_seconds, args.rounds)
                listing = measure_listing(server, args.checks)
            finally:
                server.stop()
        finally:
            postgres.stop()

    report(rates, listing, args)


def report(rates: list[PingRate], listing: list[float], args: argparse.Namespace) -> None:
    totals = {}
    for kind in ("uuid", "slug"):
        chosen = [rate for rate in rates if rate.kind == kind]
        answered = sum(rate.answered for rate in chosen)
        seconds = sum(rate.seconds for rate in chosen)
        totals[kind] = answered / seconds
        failed = sum(rate.failed for rate in chosen)
        rounds = ", ".join(f"{rate.per_second:.0f}" for rate in chosen)
        print(f"{kind} pings: {totals[kind]:.0f}/s (rounds: {rounds}; non-200: {failed})")
    print(f"slug/uuid ratio: {totals['slug'] / totals['uuid']:.3f}")
    print(
        f"list {args.checks} checks over {SHARDS} shards: median "
        f"{statistics.median(listing) * 1000:.0f} ms, max {max(listing) * 1000:.0f} ms"
    )
    print(json.dumps({"pings_per_second": totals, "list_seconds": listing}))
    print(f"machine: {os.cpu_count()} cores; {subprocess.getoutput('uname -srm')}")


if __name__ == "__main__":
    main()
