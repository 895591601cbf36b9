"""Soak: a fixed ping rate for a long time, with the RSS of every process sampled.

Starts a private PostgreSQL and `serverlord serve`, seeds checks, then pings at `--rate`
for `--duration` seconds (one hour by default) in slices of `--sample` seconds, and
records after each slice the RSS of the supervisor, the gunicorn master and workers, and
each shard process. Growth is measured from the end of the warm-up (the first slices,
`--warmup` seconds) to the end, per process, against `--bound-mib`.

Usage: python perf/soak.py --duration 3600 --rate 500
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
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detection import free_port, prepare, wait_ready
from loadgen import run_load
from seed import seed

from serverlord.storage.embedded import EmbeddedPostgres


def sample(root_pid: int) -> dict[str, float]:
    """Return the RSS in MiB of every server process, by a stable name."""
    sizes: dict[str, float] = {}
    root = psutil.Process(root_pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            cmdline = process.cmdline()
            rss = process.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
        if process.pid == root_pid:
            name = "supervisor"
        elif "serverlord.shardproc" in cmdline:
            name = f"shard{cmdline[cmdline.index('--shard') + 1]}"
        elif process.ppid() == root_pid:
            name = "gunicorn-master"
        else:
            name = f"web-{process.pid}"
        sizes[name] = round(rss, 1)
    return sizes


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="sl-soak-", dir="/tmp"))
    database = EmbeddedPostgres(workdir / "data")
    admin = database.start()
    process: subprocess.Popen[bytes] | None = None
    try:
        catalog = prepare(admin, args.shards)
        ids_by_shard = seed(catalog, args.checks, 3600, 600, None, 0, random.Random(9))
        ids = [check_id for shard_ids in ids_by_shard.values() for check_id in shard_ids]
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": catalog,
            "SHARD_COUNT": str(args.shards),
            "PORT": str(port),
            "SERVER_HOST": "127.0.0.1",
            "RUNTIME_DIR": str(workdir / "run"),
            "LOG_LEVEL": "WARNING",
        }
        with (workdir / "server.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "serverlord.cli", "serve"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(port, process, 60)

        samples: list[dict[str, Any]] = []
        sent = ok = failed = 0
        started = time.monotonic()
        while time.monotonic() - started < args.duration:
            result = asyncio.run(run_load(port, ids, args.rate, args.sample, 64))
            sent += result.sent
            ok += result.ok
            failed += result.failed + sum(
                count for status, count in result.statuses.items() if status >= 300
            )
            entry = {
                "t": round(time.monotonic() - started),
                "rss_mib": sample(process.pid),
                "sent": sent,
                "failed": failed,
            }
            samples.append(entry)
            # One line per slice on stderr, so a cut-short run still leaves its samples.
            print(json.dumps(entry), file=sys.stderr, flush=True)
        return summarize(args, samples, sent, ok, failed)
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        database.stop()


def summarize(
    args: argparse.Namespace, samples: list[dict[str, Any]], sent: int, ok: int, failed: int
) -> dict[str, Any]:
    after_warmup = [entry for entry in samples if entry["t"] >= args.warmup] or samples
    first, last = after_warmup[0]["rss_mib"], samples[-1]["rss_mib"]
    growth = {name: round(last[name] - first[name], 1) for name in last if name in first}
    worst = max(growth.values(), default=0.0)
    return {
        "duration_s": args.duration,
        "rate": args.rate,
        "checks": args.checks,
        "sent": sent,
        "ok": ok,
        "failed": failed,
        "rss_after_warmup_mib": first,
        "rss_end_mib": last,
        "growth_mib": growth,
        "bound_mib": args.bound_mib,
        "within_bound": worst <= args.bound_mib,
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a soak and watch memory.")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds")
    parser.add_argument("--rate", type=float, default=500.0, help="pings per second")
    parser.add_argument("--checks", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--sample", type=float, default=30.0, help="seconds per slice")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds")
    parser.add_argument("--bound-mib", type=float, default=16.0, help="allowed growth per process")
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
