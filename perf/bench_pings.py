"""Durable ping throughput of a running Server Lord, measured against its ceilings.

Usage: .venv/bin/python perf/bench_pings.py [--checks 100000] [--shards 4] [--rounds 3]

Steps, all on 127.0.0.1:

1. Start an embedded PostgreSQL cluster in a temporary folder and refuse to go on
   unless fsync and synchronous_commit are on.
2. Create and migrate the catalog and the shard databases, then COPY --checks checks
   straight into the shards (perf/seed.py) and write their ids to a file.
3. Start `serverlord serve` with --workers web workers.
4. Run perf/http/run.py with the server as an external target, next to nginx, the
   bare Falcon app under gunicorn with the uvicorn worker, and the same app with one
   round trip to an echo process over a Unix socket per request (the least any server
   of this shape can cost, before a database), in interleaved rounds. wrk draws a random
   check id for every request. The server's CPU figures cover the
   server's process tree and the PostgreSQL cluster.
5. Read the writer counters of every shard (the `health` operation) and PostgreSQL's
   xact_commit before and after step 4: transactions and pings per transaction.
6. Durability: compare the stored pings with the 2xx responses of step 4, then send
   --verify-pings pings with a client that reads every response before it stops, and
   check that the stored count equals its 2xx count exactly.
7. With --py-spy, load the server with wrk for --profile-seconds more while py-spy
   records shard 0 and every web worker. Either way, that run measures the CPU time of
   each kind of process.
8. Record RSS, peak RSS and PSS of every process: supervisor, gunicorn master and
   workers, shard processes and PostgreSQL.

The JSON result goes to stdout (and --output); run.py's markdown table goes to
WORKDIR/http-table.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "http"))

from bench_server import (
    BenchError,
    RunningServer,
    committed_transactions,
    count_rows,
    database_names,
    durability_settings,
    http_get,
    prepare,
    process_cpu_seconds,
    process_memory,
    py_spy_recording,
    run_server,
    shard_health,
    source_revision,
    start_database,
    summarize_profile,
    write_json,
)
from seed import seed, shard_dsns
from wrkload import LoadSettings, run_wrk

PERF = Path(__file__).resolve().parent

# Seconds each ping of the verification client may take before it counts as unanswered.
VERIFY_REQUEST_TIMEOUT = 10.0
# pg_stat_database is flushed by each backend at most once a second.
STATS_SETTLE_SECONDS = 2.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Measure durable ping throughput.")
    parser.add_argument("--checks", type=int, default=100_000, help="checks to seed")
    parser.add_argument("--shards", type=int, default=4, help="shard processes")
    parser.add_argument("--workers", type=int, default=2, help="web workers")
    parser.add_argument("--rounds", type=int, default=3, help="run.py rounds")
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per visit")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument(
        "--verify-pings", type=int, default=20_000, help="pings of the durability check"
    )
    parser.add_argument(
        "--verify-connections", type=int, default=64, help="connections of the durability check"
    )
    parser.add_argument("--py-spy", help="path of py-spy, to profile the server under load")
    parser.add_argument(
        "--profile-seconds", type=int, default=10, help="seconds of the profiled wrk run"
    )
    parser.add_argument("--workdir", type=Path, help="keep logs and tables here")
    parser.add_argument("--output", type=Path, help="also write the JSON result here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sl-pings-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, workdir)
    except BenchError as exc:
        sys.exit(f"bench_pings: {exc}")
    write_json(args.output, result)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    database, admin = start_database(workdir / "data", {})
    try:
        durability = durability_settings(admin)
        catalog = prepare(admin, args.shards)
        ids_by_shard = seed(catalog, args.checks, 86400, 3600, None, 0, random.Random(5))
        ids = [check_id for shard_ids in ids_by_shard.values() for check_id in shard_ids]
        ids_file = workdir / "ids.txt"
        ids_file.write_text("".join(f"{check_id}\n" for check_id in ids))

        with run_server(catalog, args.shards, args.workers, workdir) as server:
            result = measure(args, workdir, catalog, database.pid, server, ids, ids_file)
        result["postgres"] = durability
        return result
    finally:
        database.stop()


def measure(
    args: argparse.Namespace,
    workdir: Path,
    catalog: str,
    postgres_pid: int | None,
    server: RunningServer,
    ids: list[str],
    ids_file: Path,
) -> dict[str, Any]:
    shard_dsn_list = shard_dsns(catalog)
    names = database_names(catalog, args.shards)

    health_before = shard_health(server.runtime_dir)
    xact_before = committed_transactions(catalog, names)
    stored_before = count_rows(shard_dsn_list, "pings")
    visits = run_http_rounds(args, workdir, server, postgres_pid, ids_file)
    time.sleep(STATS_SETTLE_SECONDS)
    health_after = shard_health(server.runtime_dir)
    xact_after = committed_transactions(catalog, names)
    stored_after = count_rows(shard_dsn_list, "pings")

    verification = verify_durability(args, server, ids, shard_dsn_list)
    role_cpu, profiles = profile_load(args, workdir, server, postgres_pid, ids_file)
    memory = process_memory(server.process.pid, postgres_pid)

    return {
        "revision": source_revision(),
        "checks": args.checks,
        "shards": args.shards,
        "workers": args.workers,
        "throughput": summarize_visits(visits, server.process.pid, postgres_pid),
        "group_commit": group_commit(health_before, health_after, xact_before, xact_after),
        "wrk_durability": wrk_durability(visits, stored_after - stored_before, args.connections),
        "verification": verification,
        "cpu_by_role_us_per_ping": role_cpu,
        "profiles": profiles,
        "memory": [
            {
                "role": row.role,
                "pid": row.pid,
                "rss_mib": mib(row.rss),
                "peak_rss_mib": mib(row.peak_rss),
                "pss_mib": mib(row.pss),
            }
            for row in memory
        ],
        "memory_totals_mib": memory_totals(memory),
    }


def mib(value: float) -> float:
    return round(value / 2**20, 1)


# -- throughput --------------------------------------------------------------------------


def run_http_rounds(
    args: argparse.Namespace,
    workdir: Path,
    server: RunningServer,
    postgres_pid: int | None,
    ids_file: Path,
) -> list[dict[str, Any]]:
    raw = workdir / "http-raw.json"
    command = [
        sys.executable,
        str(PERF / "http" / "run.py"),
        "--only",
        "nginx,bare-uvicorn,roundtrip-uvicorn",
        "--target",
        f"real={server.url}",
        "--target-pid",
        f"real={server.process.pid}",
        "--ids",
        str(ids_file),
        "--ceiling",
        "bare-uvicorn",
        "--ceiling",
        "nginx",
        "--ceiling",
        "roundtrip-uvicorn",
        "--rounds",
        str(args.rounds),
        "--duration",
        str(args.duration),
        "--connections",
        str(args.connections),
        "--workers",
        str(args.workers),
        "--output",
        str(workdir / "http-table.md"),
        "--raw",
        str(raw),
        "--workdir",
        str(workdir / "http"),
    ]
    if postgres_pid is not None:
        command += ["--target-pid", f"real={postgres_pid}"]
    # Each visit takes warm-up + duration + a few seconds to start and stop a server.
    budget = args.rounds * 4 * (args.duration + 20) + 60
    with (workdir / "http-run.log").open("wb") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=budget)
    visits: list[dict[str, Any]] = json.loads(raw.read_text())
    return visits


def summarize_visits(
    visits: list[dict[str, Any]], server_pid: int, postgres_pid: int | None
) -> dict[str, Any]:
    """Return the median figures of each target and the real server's per-round ratios."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for visit in visits:
        by_target.setdefault(visit["target"], []).append(visit)
    summary: dict[str, Any] = {}
    for target, own in by_target.items():
        summary[target] = {
            "req_per_s": round(statistics.median(v["requests_per_second"] for v in own)),
            "req_per_s_rounds": [round(v["requests_per_second"]) for v in own],
            "p50_ms": statistics.median(v["p50_ms"] for v in own),
            "p99_ms": statistics.median(v["p99_ms"] for v in own),
            "errors": sum(v["errors"] for v in own),
            "cpu_us_per_req": median_cpu(own, None),
        }
    real = summary.get("real")
    if real is not None:
        real["server_cpu_us_per_req"] = median_cpu(by_target["real"], server_pid)
        if postgres_pid is not None:
            real["postgres_cpu_us_per_req"] = median_cpu(by_target["real"], postgres_pid)
        for ceiling in ("bare-uvicorn", "nginx", "roundtrip-uvicorn"):
            real[f"rate_ratio_to_{ceiling}"] = round_ratio(visits, ceiling)
    return summary


def median_cpu(visits: list[dict[str, Any]], root: int | None) -> float | None:
    """Return the median CPU µs per request, of all roots or of the tree under `root`."""
    values = []
    for visit in visits:
        if visit["cpu_seconds"] is None or visit["requests"] == 0:
            continue
        seconds = visit["cpu_seconds"]
        if root is not None:
            seconds = (visit["cpu_seconds_by_root"] or {}).get(str(root), 0.0)
        values.append(seconds * 1e6 / visit["requests"])
    return round(statistics.median(values), 1) if values else None


def round_ratio(visits: list[dict[str, Any]], ceiling: str) -> float | None:
    rates = {(v["target"], v["round"]): v["requests_per_second"] for v in visits}
    ratios = [
        rates[("real", round_number)] / rates[(ceiling, round_number)]
        for target, round_number in rates
        if target == "real" and (ceiling, round_number) in rates
    ]
    return round(statistics.median(ratios), 3) if ratios else None


def group_commit(
    before: list[dict[str, Any]], after: list[dict[str, Any]], xact_before: int, xact_after: int
) -> dict[str, Any]:
    transactions = sum(
        a["transactions"] - b["transactions"] for a, b in zip(after, before, strict=True)
    )
    changes = sum(a["changes"] - b["changes"] for a, b in zip(after, before, strict=True))
    return {
        "writer_transactions": transactions,
        "writer_changes": changes,
        "changes_per_transaction": round(changes / transactions, 2) if transactions else None,
        "transactions_per_change": round(transactions / changes, 4) if changes else None,
        # Includes each shard's lock check (one SELECT a second) and retention work.
        "pg_xact_commit": xact_after - xact_before,
        "pg_xact_commit_per_change": round((xact_after - xact_before) / changes, 4)
        if changes
        else None,
    }


def wrk_durability(visits: list[dict[str, Any]], stored: int, connections: int) -> dict[str, Any]:
    """Compare stored pings with the 2xx responses wrk counted for the real server.

    wrk stops with requests in flight and never reads their responses, so up to
    `connections` pings per wrk run may be stored without a counted 2xx. A 2xx without a
    stored ping would show as `stored` below `answered_2xx`.
    """
    real = [visit for visit in visits if visit["target"] == "real"]
    answered = sum(
        v["requests"] - v["non_2xx"] + v["warmup_requests"] - v["warmup_non_2xx"] for v in real
    )
    runs = len(real) * 2
    return {
        "answered_2xx": answered,
        "non_2xx": sum(v["non_2xx"] + v["warmup_non_2xx"] for v in real),
        "stored": stored,
        "stored_minus_answered": stored - answered,
        "in_flight_bound": runs * connections,
        "ok": answered <= stored <= answered + runs * connections,
    }


# -- durability --------------------------------------------------------------------------


def verify_durability(
    args: argparse.Namespace, server: RunningServer, ids: list[str], dsns: list[str]
) -> dict[str, Any]:
    before = count_rows(dsns, "pings")
    started = time.monotonic()
    statuses = uvloop.run(send_pings(server.port, ids, args.verify_pings, args.verify_connections))
    elapsed = time.monotonic() - started
    stored = count_rows(dsns, "pings") - before
    answered = sum(count for status, count in statuses.items() if 200 <= status < 300)
    unanswered = statuses.get(0, 0)
    return {
        "sent": args.verify_pings,
        "statuses": dict(statuses),
        "answered_2xx": answered,
        "unanswered": unanswered,
        "stored": stored,
        "equal": stored == answered,
        "pings_per_s": round(args.verify_pings / elapsed),
    }


async def send_pings(port: int, ids: list[str], total: int, connections: int) -> Counter[int]:
    """Send `total` GET /ping/<id>, read every response, and count responses by status.

    Status 0 counts pings that got no response (timeout or broken connection). The server
    may or may not have stored them.
    """
    statuses: Counter[int] = Counter()
    rng = random.Random(11)
    tickets = iter(range(total))

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ticket in tickets:
                path = f"/ping/{ids[rng.randrange(len(ids))]}"
                try:
                    async with asyncio.timeout(VERIFY_REQUEST_TIMEOUT):
                        status = await http_get(reader, writer, path)
                except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
                    statuses[0] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                statuses[status] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return statuses


# -- profile -----------------------------------------------------------------------------


def profile_load(
    args: argparse.Namespace,
    workdir: Path,
    server: RunningServer,
    postgres_pid: int | None,
    ids_file: Path,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Load the server with wrk once more.

    Returns CPU µs per ping by kind of process, and the py-spy summaries.
    """
    memory = process_memory(server.process.pid, postgres_pid)
    roles = {row.pid: row.role.split(" ")[0] for row in memory}
    # The two web workers share a role name, so the pid keeps their files apart.
    profiled = {
        f"{row.role.replace(' ', '-')}-{row.pid}": row.pid
        for row in memory
        if row.role in ("shard 0", "web worker")
    }
    load = LoadSettings(
        threads=2,
        connections=args.connections,
        duration_seconds=args.profile_seconds,
        warmup_seconds=0,
        request_timeout_seconds=2,
        method="GET",
        ids_file=ids_file,
    )
    before = process_cpu_seconds(list(roles))
    with py_spy_recording(args.py_spy, profiled, args.profile_seconds, workdir / "profiles"):
        report = run_wrk(server.url, load, args.profile_seconds)
    after = process_cpu_seconds(list(roles))

    by_role: dict[str, float] = {}
    for pid, seconds in after.items():
        by_role[roles[pid]] = by_role.get(roles[pid], 0.0) + seconds - before.get(pid, seconds)
    requests = max(report.requests, 1)
    role_cpu = {role: round(seconds * 1e6 / requests, 1) for role, seconds in by_role.items()}
    role_cpu["total"] = round(sum(by_role.values()) * 1e6 / requests, 1)
    role_cpu["req_per_s"] = round(report.requests_per_second)
    profiles = {
        name: summarize_profile(workdir / "profiles" / f"{name}.txt")
        for name in profiled
        if args.py_spy is not None
    }
    return role_cpu, profiles


def memory_totals(memory: list[Any]) -> dict[str, float]:
    totals: Counter[str] = Counter()
    for row in memory:
        kind = "postgres" if row.role.startswith("postgres") else row.role.split(" ")[0]
        totals[f"{kind} rss"] += row.rss
        totals[f"{kind} pss"] += row.pss
    return {name: mib(value) for name, value in sorted(totals.items())}


if __name__ == "__main__":
    main()
