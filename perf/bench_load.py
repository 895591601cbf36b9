"""Start-up load time and memory per check of shard processes, without the rest of the server.

Seeds N checks into each of several shard databases of an embedded PostgreSQL, then
starts `python -m serverlord.shardproc` directly (no supervisor, no web workers) and
reads the "shard %d loaded %d checks in %.2f s" line it logs. Two cases are measured:
one shard process loading alone, several times, and all seeded shards loading at once,
which is how a server with that many shards starts on a machine with fewer cores.

Memory per check is the RSS of a loaded shard process, after its "ready" line, minus the
RSS of a shard process that loaded an empty database, divided by N.

`--source DIR` (repeatable) runs the shard processes from other checkouts of the
repository, for example an export of the previous commit, so that loaders can be
compared as ratios within one run on the same seeded data. Every wait is bounded, and
only processes started here are signalled, by their own pid.

Usage: python perf/bench_load.py [--checks 250000] [--repeats 3] [--shards 4]
       [--source OLD=/tmp/old-checkout] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
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

import psutil
import psycopg
from psycopg import conninfo, sql

from serverlord.storage.migrate import migrate

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import package_root, source_revision, start_database, stop_process

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 300.0

SEED_COLUMNS = (
    "id",
    "project_id",
    "name",
    "slug",
    "kind",
    "timeout_s",
    "grace_s",
    "schedule",
    "tz",
    "max_runtime_s",
    "manual_resume",
    "methods",
    "status",
    "last_ping",
    "last_start",
    "last_start_rid",
    "last_duration_s",
    "n_pings",
    "alert_after",
    "recover_after",
    "reminder_s",
    "late_notice",
)

# A few shared cron and OnCalendar expressions and zones, as real users write them.
CRON_EXPRESSIONS = ("*/5 * * * *", "0 * * * *", "30 2 * * *", "0 9 * * 1-5", "15 */6 * * *")
ONCALENDAR_EXPRESSIONS = ("daily", "*-*-* 04:00:00", "Mon *-*-* 08:30:00")
ZONES = ("UTC", "Europe/Riga", "America/New_York", "Asia/Tokyo")
PERIODS = (60, 300, 900, 3600, 86400)
GRACES = (60, 300, 3600)


def seed_row(rng: random.Random, now: float, simple_only: bool) -> tuple[object, ...]:
    """Return one check row: mostly simple and up, some cron, down, paused or with a policy.

    With `simple_only`, every check is a simple check that is up, with the default
    policy, no slug and no open run, like the checks perf/seed.py makes.
    """
    if simple_only:
        return simple_row(rng, now)
    draw = rng.random()
    if draw < 0.80:
        kind, schedule, tz = "simple", "* * * * *", "UTC"
    elif draw < 0.95:
        kind, schedule, tz = "cron", rng.choice(CRON_EXPRESSIONS), rng.choice(ZONES)
    else:
        kind, schedule, tz = "oncalendar", rng.choice(ONCALENDAR_EXPRESSIONS), rng.choice(ZONES)

    draw = rng.random()
    if draw < 0.85:
        status = "up"
    elif draw < 0.92:
        status = "down"
    elif draw < 0.97:
        status = "paused"
    else:
        status = "new"
    last_ping = None if status == "new" else now - rng.random() * 3600
    running = status == "up" and rng.random() < 0.05
    with_policy = rng.random() < 0.10
    return (
        uuid.UUID(int=rng.getrandbits(128), version=4),
        rng.randrange(1, 2000) if rng.random() < 0.5 else None,
        "seeded",
        f"job-{rng.randrange(1_000_000)}" if rng.random() < 0.3 else "",
        kind,
        rng.choice(PERIODS),
        rng.choice(GRACES),
        schedule,
        tz,
        rng.choice((600, 7200)) if rng.random() < 0.1 else None,
        status == "paused" and rng.random() < 0.5,
        "POST" if rng.random() < 0.05 else "",
        status,
        None if last_ping is None else datetime.fromtimestamp(last_ping, UTC),
        datetime.fromtimestamp(now - rng.random() * 60, UTC) if running else None,
        uuid.UUID(int=rng.getrandbits(128), version=4) if running else None,
        rng.random() * 100 if last_ping is not None and rng.random() < 0.5 else None,
        0 if status == "new" else rng.randrange(1, 10_000),
        rng.choice((2, 3)) if with_policy else 1,
        rng.choice((1, 2)) if with_policy else 1,
        rng.choice((3600, 86400)) if with_policy and rng.random() < 0.5 else None,
        with_policy and rng.random() < 0.5,
    )


def simple_row(rng: random.Random, now: float) -> tuple[object, ...]:
    check_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    last_ping = datetime.fromtimestamp(now - rng.random() * 3600, UTC)
    return (
        check_id, None, "seeded", "", "simple", 3600, 300, "* * * * *", "UTC", None,
        False, "", "up", last_ping, None, None, None, 1, 1, 1, None, False,
    )  # fmt: skip


def seed_shard(dsn: str, count: int, rng: random.Random, simple_only: bool) -> None:
    now = time.time()
    columns = ", ".join(SEED_COLUMNS)
    with (
        psycopg.connect(dsn) as conn,
        conn.cursor() as cursor,
        cursor.copy(f"COPY checks ({columns}) FROM STDIN") as copy,
    ):
        for _ in range(count):
            copy.write_row(seed_row(rng, now, simple_only))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE checks")


def create_shard_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = conninfo.make_conninfo(admin_dsn, dbname=name)
    migrate(dsn, "shard")
    return dsn


@dataclass(frozen=True)
class ShardRun:
    """A shard process that was started, loaded its checks and reported ready."""

    load_seconds: float
    loaded: int
    rss: int
    cpu_seconds: float


def start_shard(
    source: Path, shard: int, dsn: str, workdir: Path, wrapper: list[str]
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = workdir / f"shard{shard}-{time.monotonic_ns()}.log"
    command = [
        *wrapper,
        sys.executable,
        "-m",
        "serverlord.shardproc",
        "--shard",
        str(shard),
        "--socket",
        str(workdir / f"shard{shard}.sock"),
        "--pool-size",
        "2",
        "--log-level",
        "INFO",
    ]
    env = {**os.environ, "SERVERLORD_SHARD_DSN": dsn}
    env.pop("SERVERLORD_CATALOG_DSN", None)
    with log_path.open("wb") as output:
        # `python -m` with cwd=source imports serverlord from that checkout first.
        process = subprocess.Popen(command, env=env, cwd=source, stdout=output, stderr=output)
    return process, log_path


def wait_loaded(process: subprocess.Popen[bytes], log_path: Path) -> ShardRun:
    """Wait for the "ready" line, then return the logged load time, RSS and CPU time."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        text = log_path.read_text()
        loaded = re.search(r"loaded (\d+) checks in ([\d.]+) s", text)
        if loaded is not None and " ready with " in text:
            measured = _shard_process(process)
            times = measured.cpu_times()
            return ShardRun(
                float(loaded.group(2)),
                int(loaded.group(1)),
                measured.memory_info().rss,
                times.user + times.system,
            )
        if process.poll() is not None:
            raise RuntimeError(f"shard exited with status {process.returncode}, see {log_path}")
        time.sleep(0.05)
    raise RuntimeError(f"shard was not ready within {READY_TIMEOUT_SECONDS:g} s, see {log_path}")


def _shard_process(process: subprocess.Popen[bytes]) -> psutil.Process:
    """Return the shard process itself, which is a child when py-spy wraps it."""
    parent = psutil.Process(process.pid)
    for child in parent.children(recursive=True):
        if "serverlord.shardproc" in child.cmdline():
            return child
    return parent


def run_shards(
    source: Path, dsns: list[str], workdir: Path, wrapper: list[str] | None = None
) -> list[ShardRun]:
    """Start one shard process per DSN at once, wait until all are loaded, stop them."""
    started = [
        start_shard(source, shard, dsn, workdir, wrapper or []) for shard, dsn in enumerate(dsns)
    ]
    try:
        return [wait_loaded(process, log_path) for process, log_path in started]
    finally:
        for process, _ in started:
            stop_process(process, "shard")


def measure_source(
    label: str,
    source: Path,
    dsns: list[str],
    empty_dsn: str,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    empty = run_shards(source, [empty_dsn], workdir)[0]
    alone = [run_shards(source, dsns[:1], workdir)[0] for _ in range(args.repeats)]
    together = run_shards(source, dsns, workdir)
    loaded = alone[0].loaded
    net_rss = statistics.median(run.rss for run in alone) - empty.rss
    result = {
        "source": label,
        "path": str(source),
        "loaded_per_shard": loaded,
        "alone_load_s": [run.load_seconds for run in alone],
        "alone_cpu_s": [round(run.cpu_seconds, 2) for run in alone],
        "together_load_s": [run.load_seconds for run in together],
        "together_cpu_s": [round(run.cpu_seconds, 2) for run in together],
        "empty_rss_mib": round(empty.rss / 2**20, 1),
        "loaded_rss_mib": [round(run.rss / 2**20, 1) for run in alone],
        "bytes_per_check_net": round(net_rss / max(loaded, 1)),
    }
    print(json.dumps(result), flush=True)
    return result


def record_profile(source: Path, dsn: str, py_spy: str, out: Path, workdir: Path) -> None:
    """Load one shard under `py-spy record`, writing collapsed stacks to `out`."""
    wrapper = [py_spy, "record", "--rate", "250", "--format", "raw", "--output", str(out), "--"]
    run_shards(source, [dsn], workdir, wrapper)


def parse_sources(values: list[str]) -> list[tuple[str, Path]]:
    sources = [("current", package_root())]
    for value in values:
        label, separator, path = value.partition("=")
        if not separator or not Path(path, "serverlord").is_dir():
            raise SystemExit(
                f"invalid --source {value!r}: expected LABEL=DIR, where DIR contains serverlord/"
            )
        sources.append((label, Path(path).resolve()))
    return sources


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=250_000, help="checks seeded per shard")
    parser.add_argument("--shards", type=int, default=4, help="shards loading at once")
    parser.add_argument("--repeats", type=int, default=3, help="loads of one shard alone")
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run shard processes from the checkout in DIR, reported as LABEL",
    )
    parser.add_argument(
        "--simple-only",
        action="store_true",
        help="seed only simple up checks on the default policy, as perf/seed.py does",
    )
    parser.add_argument("--py-spy", help="path of py-spy: record one load of each source")
    parser.add_argument("--json-out", type=Path, help="also write the results to this file")
    return parser.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args()
    sources = parse_sources(args.source)
    with tempfile.TemporaryDirectory(prefix="sl-bench-load-") as tmp:
        workdir = Path(tmp)
        database, admin = start_database(workdir / "pg", {"max_connections": "100"})
        try:
            empty_dsn = create_shard_database(admin, "empty")
            dsns = [create_shard_database(admin, f"load{n}") for n in range(args.shards)]
            started = time.monotonic()
            for shard, dsn in enumerate(dsns):
                seed_shard(dsn, args.checks, random.Random(shard), args.simple_only)
            log.info("seeded %d shards in %.1f s", args.shards, time.monotonic() - started)

            results = []
            for label, source in sources:
                if args.py_spy:
                    out = workdir / f"profile-{label}.txt"
                    record_profile(source, dsns[0], args.py_spy, out, workdir)
                    Path(f"profile-{label}.txt").write_text(out.read_text())
                results.append(measure_source(label, source, dsns, empty_dsn, args, workdir))
        finally:
            database.stop()
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": source_revision(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "checks_per_shard": args.checks,
        "shards_together": args.shards,
        "simple_only": args.simple_only,
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
