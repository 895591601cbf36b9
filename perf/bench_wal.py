"""WAL and backend CPU per ping of the shard's batch statement, under settings to compare.

Usage: .venv/bin/python perf/bench_wal.py [--checks 100000] [--batches 1500] [--size 10 ...]

Starts an embedded PostgreSQL in a temporary folder, creates one migrated shard database
with --checks checks, and calls write_batch (the statement the shard writer sends) with
--size pings of random checks per call, --batches times per setting. Each run starts
right after a CHECKPOINT, so the first change of every page writes a full-page image,
as it does in a server that runs for hours. Prints WAL bytes per ping, milliseconds per
batch and the backend's CPU (user + system, read from /proc) per batch and per ping for
each setting, measured one after the other in this run. Several --size values give the
cost of a transaction apart from the cost of a ping.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_server import prepare, start_database
from seed import shard_dsns

from serverlord.shardproc.writer import WRITE_BATCH, PingRow, batch_document


def measure(
    conn: psycopg.Connection[Any], token: str, ids: list[str], batches: int, size: int
) -> tuple[float, float, float]:
    """Return (WAL bytes per ping, milliseconds per batch, backend CPU µs per batch)."""
    conn.execute("CHECKPOINT")
    start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert backend is not None
    cpu_before = process_cpu_seconds(backend[0])
    started = time.perf_counter()
    for _ in range(batches):
        now = time.time()
        picked = random.sample(ids, size)
        pings, states = sample_rows(picked, now)
        conn.execute(
            WRITE_BATCH,
            [token, batch_document(pings, states, [])],
        )
    elapsed = time.perf_counter() - started
    cpu = process_cpu_seconds(backend[0]) - cpu_before
    assert start is not None
    row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start[0],)).fetchone()
    assert row is not None
    return float(row[0]) / (batches * size), elapsed / batches * 1000, cpu / batches * 1e6


def sample_rows(check_ids: list[str], now: float) -> tuple[list[PingRow], list[tuple[Any, ...]]]:
    """Return a success ping of each check and each check's new state, as the writer sends them."""
    pings = [
        PingRow(
            check_id,
            1,
            now,
            "success",
            None,
            None,
            "http",
            "GET",
            "127.0.0.1",
            "curl/8",
            None,
            0,
            None,
        )
        for check_id in check_ids
    ]
    states = [(check_id, "up", now, None, None, None, 1) for check_id in check_ids]
    return pings, states


def process_cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds of a process on this machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=1500)
    parser.add_argument("--size", type=int, nargs="+", default=[10], help="pings per batch")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-wal-"))
    database, admin = start_database(workdir / "data", {})
    try:
        catalog = prepare(admin, 1)
        dsn = shard_dsns(catalog)[0]
        with psycopg.connect(dsn, autocommit=True) as conn:
            ids = [str(uuid.uuid4()) for _ in range(args.checks)]
            with conn.cursor().copy("COPY checks (id) FROM STDIN") as copy:
                for check_id in ids:
                    copy.write_row((check_id,))
            token = str(uuid.uuid4())
            conn.execute(
                "INSERT INTO shard_owner (id, token, pid, host) VALUES (1, %s, 0, 'bench')",
                (token,),
            )
            for value in ("off", "pglz"):
                conn.execute(f"ALTER SYSTEM SET wal_compression = '{value}'")
                conn.execute("SELECT pg_reload_conf()")
                for size in args.size:
                    wal, ms, cpu = measure(conn, token, ids, args.batches, size)
                    print(
                        f"wal_compression={value}, {size} pings per batch: {wal:.0f} WAL"
                        f" bytes per ping, {ms:.2f} ms and {cpu:.0f} µs of backend CPU per"
                        f" batch, {cpu / size:.1f} µs per ping"
                    )
    finally:
        database.stop()


if __name__ == "__main__":
    main()
