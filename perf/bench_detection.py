"""Detection latency, load time and memory per check of a running Server Lord.

Usage: .venv/bin/python perf/bench_detection.py --checks 100000 --shards 4 --rate 2000

Starts a private PostgreSQL with fsync and synchronous_commit on, and with
track_commit_timestamp on so that each flip's commit time can be read back. Seeds checks
straight into the shards and starts `serverlord serve` against them. Then, while a steady
ping load arrives, three groups of checks fall due:

- steady: `--due` checks whose deadlines are spread uniformly over `--window` seconds;
- burst: `--burst` checks whose deadlines all fall inside one second, BURST_GAP seconds
  after the steady window;
- the rest (the ping targets) have long periods and never fall due.

Detection latency is the commit time of the flip's transaction
(pg_xact_commit_timestamp) minus the check's deadline. It is split into three parts:
noticed (the shard process logs the timeout right after queueing the flip, stamped to the
millisecond), queued (the flip's INSERT runs, `committed_at` = clock_timestamp()) and
committed (COMMIT has returned from fsync).

Memory per check is the RSS of a shard process once its checks are loaded, minus the RSS
of a shard process of the same build with no checks (measured first, unless
--no-empty-baseline), over the checks of that shard.

With --py-spy, shard 0 is profiled with `py-spy record` for the whole ping load.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import (
    BenchError,
    OpenLoopResult,
    RunningServer,
    durability_settings,
    free_port,
    open_loop_pings,
    prepare,
    process_memory,
    py_spy_recording,
    run_server,
    shard_health,
    shard_load_seconds,
    source_revision,
    start_database,
    summarize_profile,
    timeout_log_times,
    wait_ready,
    write_json,
)
from seed import seed, shard_dsns

# perf/bench_alert_latency.py imports these helpers from this module.
__all__ = ["free_port", "prepare", "summary", "wait_ready"]

# Seconds between the last steady deadline and the burst, so the two never overlap.
BURST_GAP = 3.0
# Seconds after the last deadline before the results are read, so the last flips commit.
SETTLE_SECONDS = 3.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Measure detection latency.")
    parser.add_argument("--checks", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--due", type=int, default=20_000, help="checks falling due steadily")
    parser.add_argument("--burst", type=int, default=10_000, help="checks due in one second")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of steady deadlines")
    parser.add_argument("--rate", type=float, default=2000.0, help="pings per second")
    parser.add_argument("--workers", type=int, default=2, help="web workers")
    parser.add_argument("--connections", type=int, default=128, help="HTTP connections")
    parser.add_argument(
        "--startup-margin",
        type=float,
        default=30.0,
        help="seconds from the end of seeding to the first deadline (default 30); the "
        "server must be ready before then",
    )
    parser.add_argument(
        "--no-empty-baseline",
        action="store_true",
        help="skip measuring a shard process with no checks",
    )
    parser.add_argument("--py-spy", help="path of py-spy, to profile shard 0 under load")
    parser.add_argument("--workdir", type=Path, help="keep the database, logs and profiles here")
    parser.add_argument("--output", type=Path, help="also write the JSON result here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sl-detect-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, workdir)
    except BenchError as exc:
        sys.exit(f"bench_detection: {exc}")
    write_json(args.output, result)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    database, admin = start_database(workdir / "data", {"track_commit_timestamp": "on"})
    try:
        durability = durability_settings(admin)
        catalog = prepare(admin, args.shards)
        empty_rss = None if args.no_empty_baseline else empty_shard_rss(catalog, args, workdir)
        result = detect(args, workdir, catalog, database.pid)
        result["empty_shard_rss_mib"] = empty_rss
        result["shard_bytes_per_check"] = bytes_per_check(result, empty_rss)
        result["shard_bytes_per_check_gross"] = bytes_per_check(result, None)
        result["postgres"] = durability
        return result
    finally:
        database.stop()


def empty_shard_rss(catalog: str, args: argparse.Namespace, workdir: Path) -> list[float]:
    """Start the server on the empty shards and return each shard process's RSS in MiB."""
    baseline_dir = workdir / "empty"
    baseline_dir.mkdir(exist_ok=True)
    with run_server(catalog, args.shards, args.workers, baseline_dir) as server:
        time.sleep(1.0)
        memory = process_memory(server.process.pid, None)
    return [mib(row.rss) for row in memory if row.role.startswith("shard")]


def detect(
    args: argparse.Namespace, workdir: Path, catalog: str, postgres_pid: int | None
) -> dict[str, Any]:
    rng = random.Random(3)
    started = time.monotonic()
    deadlines: dict[str, float] = {}
    targets = seed(catalog, args.checks - args.due - args.burst, 86400, 3600, None, 0, rng)
    # Deadlines start after the server is expected to be ready and the load is running.
    due_from = time.time() + args.startup_margin
    steady = seed(catalog, args.due, 60, 30, due_from, args.window, rng, deadlines)
    # The burst falls after the steady window, so that the steady figures measure a
    # steady load and the burst is measured on its own. The pings go on through both.
    burst_at = due_from + args.window + BURST_GAP
    burst = seed(catalog, args.burst, 60, 30, burst_at, 1.0, rng, deadlines)
    seed_seconds = time.monotonic() - started

    boot = time.time()
    with run_server(catalog, args.shards, args.workers, workdir, args.startup_margin) as server:
        ready = time.time()
        if ready > due_from:
            raise BenchError(
                f"the server was ready {ready - due_from:.1f} s after the first deadline; "
                "raise --startup-margin"
            )
        loaded = process_memory(server.process.pid, postgres_pid)
        target_ids = [check_id for ids in targets.values() for check_id in ids]
        seconds = max(burst_at + 1.0 + SETTLE_SECONDS - time.time(), 5.0)
        load, loadgen_cpu, profiles = drive_load(args, workdir, server, target_ids, seconds)
        time.sleep(SETTLE_SECONDS)
        health = shard_health(server.runtime_dir)
        after_load = process_memory(server.process.pid, postgres_pid)
        noticed = timeout_log_times(server.log_path)
        load_seconds = shard_load_seconds(server.log_path)

    flips = read_flips(catalog, ready)
    steady_ids = {check_id for ids in steady.values() for check_id in ids}
    burst_ids = {check_id for ids in burst.values() for check_id in ids}
    return {
        "revision": source_revision(),
        "checks": args.checks,
        "shards": args.shards,
        "seed_seconds": round(seed_seconds, 1),
        "boot_to_ready_s": round(ready - boot, 2),
        "shard_load_s": load_seconds,
        "steady": latency_report(flips, steady_ids, deadlines, noticed),
        "burst": latency_report(flips, burst_ids, deadlines, noticed),
        "ping_load": describe_load(load, args, seconds, loadgen_cpu),
        "shard_counters": health,
        "rss_mib_loaded": memory_by_role(loaded),
        "rss_mib_after_load": memory_by_role(after_load),
        "peak_rss_mib": {row.role: mib(row.peak_rss) for row in after_load},
        "profiles": profiles,
    }


def drive_load(
    args: argparse.Namespace,
    workdir: Path,
    server: RunningServer,
    target_ids: list[str],
    seconds: float,
) -> tuple[OpenLoopResult, float, dict[str, Any]]:
    """Send pings at --rate for `seconds`.

    Returns the load's result, the load generator's CPU use in cores and the py-spy
    summaries.
    """
    shard0 = [row.pid for row in process_memory(server.process.pid, None) if row.role == "shard 0"]
    profiled = {"shard-0": shard0[0]} if shard0 else {}
    me = psutil.Process()
    cpu_before = sum(me.cpu_times()[:2])
    wall_before = time.monotonic()
    with py_spy_recording(args.py_spy, profiled, seconds, workdir / "profiles"):
        load = uvloop.run(
            open_loop_pings(server.port, target_ids, args.rate, seconds, args.connections)
        )
    loadgen_cores = (sum(me.cpu_times()[:2]) - cpu_before) / (time.monotonic() - wall_before)
    profiles = {}
    if args.py_spy is not None:
        profiles = {
            name: summarize_profile(workdir / "profiles" / f"{name}.txt", 20) for name in profiled
        }
    return load, loadgen_cores, profiles


def describe_load(
    load: OpenLoopResult, args: argparse.Namespace, seconds: float, loadgen_cores: float
) -> dict[str, Any]:
    return {
        "rate": args.rate,
        "connections": args.connections,
        "seconds": round(seconds, 1),
        "scheduled": load.scheduled,
        "sent": load.sent,
        "dropped": load.dropped,
        "unanswered": load.unanswered,
        "statuses": dict(load.statuses),
        "responses_per_s": round(load.statuses.total() / seconds),
        "p50_ms": round(load.percentile(0.5) * 1000, 1),
        "p99_ms": round(load.percentile(0.99) * 1000, 1),
        # CPU of this process (the load generator), in cores, over the load.
        "loadgen_cores": round(loadgen_cores, 2),
    }


# -- flips -------------------------------------------------------------------------------

Flip = tuple[str, float, float, float]


def read_flips(catalog: str, since: float) -> list[Flip]:
    """Return (check id, deadline, INSERT time, commit time) of the timeout flips."""
    rows: list[Flip] = []
    for dsn in shard_dsns(catalog):
        with psycopg.connect(dsn) as conn:
            rows += conn.execute(
                "SELECT check_id::text, extract(epoch FROM created)::float8,"
                " extract(epoch FROM committed_at)::float8,"
                " extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8"
                " FROM flips WHERE reason = 'timeout' AND created >= to_timestamp(%s)",
                (since,),
            ).fetchall()
    return rows


def latency_report(
    flips: list[Flip], ids: set[str], deadlines: dict[str, float], noticed: dict[str, float]
) -> dict[str, Any]:
    """Summarize detection latency of the flips of `ids`, and check each flipped once.

    The top-level count and percentiles are commit time minus deadline, and `parts`
    splits that time into noticed, queued and committed.
    """
    own = [flip for flip in flips if flip[0] in ids]
    flipped = [flip[0] for flip in own]
    report = summary([commit - deadline for _, deadline, _, commit in own])
    report.update(
        expected=len(ids),
        missing=len(ids - set(flipped)),
        duplicates=len(flipped) - len(set(flipped)),
        stamped_with_deadline=sum(abs(flip[1] - deadlines[flip[0]]) < 0.001 for flip in own),
    )
    # The log stamp has millisecond resolution, so the first two parts are good to ~1 ms.
    with_log = [flip for flip in own if flip[0] in noticed]
    report["parts"] = {
        "noticed_minus_deadline": summary(
            [noticed[check_id] - deadline for check_id, deadline, _, _ in with_log]
        ),
        "insert_minus_noticed": summary(
            [insert - noticed[check_id] for check_id, _, insert, _ in with_log]
        ),
        "commit_minus_insert": summary([commit - insert for _, _, insert, commit in own]),
    }
    return report


def summary(values: list[float]) -> dict[str, Any]:
    """Return count, p50, p99, max and mean of `values` (seconds), in milliseconds."""
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


# -- memory ------------------------------------------------------------------------------


def mib(value: float) -> float:
    return round(value / 2**20, 1)


def memory_by_role(rows: list[Any]) -> dict[str, float]:
    by_role: dict[str, float] = {}
    for row in rows:
        role = "postgres (sum of RSS)" if row.role.startswith("postgres") else row.role
        by_role[role] = round(by_role.get(role, 0.0) + mib(row.rss), 1)
    return by_role


def bytes_per_check(result: dict[str, Any], empty_rss: list[float] | None) -> float | None:
    """Return a shard process's RSS per check net of an empty process's RSS, in bytes.

    Without the empty baseline, returns the gross figure: all shard RSS over all checks.
    """
    loaded: list[float] = [
        value for role, value in result["rss_mib_loaded"].items() if "shard" in role
    ]
    checks: int = result["checks"]
    shards: int = result["shards"]
    if not loaded:
        return None
    if not empty_rss:
        return round(sum(loaded) * 2**20 / checks)
    checks_per_shard = checks / shards
    net = statistics.median(loaded) - statistics.median(empty_rss)
    return round(net * 2**20 / checks_per_shard)


if __name__ == "__main__":
    main()
