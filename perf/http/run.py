"""Measure ping throughput, latency and server CPU per request across gunicorn worker types.

Each round starts every target in turn on 127.0.0.1, warms it up, loads it with wrk and
ping.lua, and stops it. Rounds interleave the targets, so machine drift hits all of them
alike, and the table reports the median of the rounds plus ratios against one or more
ceiling targets, computed round by round. Usage from the repository root:

    .venv/bin/python perf/http/run.py --output /tmp/bench-http.md

It needs wrk and nginx on PATH (Debian: `apt-get install -y nginx wrk`), which are not
project dependencies. Add a server that is already running with
`--target NAME=http://127.0.0.1:PORT --target-pid NAME=PID --ids FILE`. docs/bench-http.md
has the results and the choice of worker type.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from proctree import cpu_seconds_between, snapshot_cpu_ticks
from report import Visit, format_number, render_report
from targets import (
    ExternalTarget,
    GunicornTarget,
    NginxTarget,
    ServerSettings,
    Target,
    TargetError,
    split_loopback_url,
    start_target,
)
from wrkload import LoadSettings, WrkError, run_wrk

logger = logging.getLogger("run")

UVICORN_WORKER = "uvicorn_worker.UvicornWorker"
BARE_WSGI = "bare Falcon WSGI app"
BARE_ASGI = "bare Falcon ASGI app"
ROUNDTRIP_WSGI = "Falcon WSGI app + shard round trip"
ROUNDTRIP_ASGI = "Falcon ASGI app + shard round trip"

# Targets for gunicorn's own workers pin --http-parser, so that installing gunicorn[fast]
# later cannot silently change what "bare-asgi" measures. UvicornWorker parses HTTP with
# httptools (uvicorn[standard]) and ignores that setting.
BUILTIN_TARGETS: list[Target] = [
    NginxTarget("nginx", "nginx `return 200`"),
    GunicornTarget("bare-sync", "baseline_wsgi:app", "sync", "python", False, f"{BARE_WSGI}, sync"),
    GunicornTarget(
        "bare-gthread", "baseline_wsgi:app", "gthread", "python", False, f"{BARE_WSGI}, gthread"
    ),
    GunicornTarget("bare-asgi", "baseline_asgi:app", "asgi", "python", False, f"{BARE_ASGI}, asgi"),
    GunicornTarget(
        "bare-asgi-h1c", "baseline_asgi:app", "asgi", "fast", False, f"{BARE_ASGI}, asgi + h1c"
    ),
    GunicornTarget(
        "bare-uvicorn", "baseline_asgi:app", UVICORN_WORKER, None, False, f"{BARE_ASGI}, uvicorn"
    ),
    GunicornTarget(
        "roundtrip-sync", "roundtrip_wsgi:app", "sync", "python", True, f"{ROUNDTRIP_WSGI}, sync"
    ),
    GunicornTarget(
        "roundtrip-gthread",
        "roundtrip_wsgi:app",
        "gthread",
        "python",
        True,
        f"{ROUNDTRIP_WSGI}, gthread",
    ),
    GunicornTarget(
        "roundtrip-asgi", "roundtrip_asgi:app", "asgi", "python", True, f"{ROUNDTRIP_ASGI}, asgi"
    ),
    GunicornTarget(
        "roundtrip-asgi-h1c",
        "roundtrip_asgi:app",
        "asgi",
        "fast",
        True,
        f"{ROUNDTRIP_ASGI}, asgi + h1c",
    ),
    GunicornTarget(
        "roundtrip-uvicorn",
        "roundtrip_asgi:app",
        UVICORN_WORKER,
        None,
        True,
        f"{ROUNDTRIP_ASGI}, uvicorn",
    ),
]

# Starting and stopping a target takes one to three seconds on top of warm-up and load.
VISIT_OVERHEAD_SECONDS = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load ping endpoints on 127.0.0.1 with wrk and compare gunicorn workers."
    )
    load = parser.add_argument_group("load (wrk)")
    load.add_argument("--rounds", type=positive_int, default=3, help="rounds (default 3)")
    load.add_argument("--threads", type=positive_int, default=2, help="wrk threads (default 2)")
    load.add_argument(
        "--connections", type=positive_int, default=64, help="wrk connections (default 64)"
    )
    load.add_argument(
        "--duration", type=positive_int, default=10, help="measured seconds per visit (default 10)"
    )
    load.add_argument(
        "--warmup",
        type=non_negative_int,
        default=2,
        help="unmeasured seconds before each visit (default 2)",
    )
    load.add_argument(
        "--request-timeout",
        type=positive_int,
        default=2,
        help="seconds before wrk counts a request as timed out (default 2)",
    )
    load.add_argument("--method", default="GET", help="HTTP method (default GET)")
    load.add_argument(
        "--ids",
        type=Path,
        help="file with one check id per line; every target gets ids from it at random, "
        "so the client does the same work for all (default: one fixed id)",
    )

    servers = parser.add_argument_group("servers")
    servers.add_argument(
        "--only",
        type=lambda value: value.split(","),
        help="comma-separated built-in targets to run (default: all; "
        + ", ".join(target.name for target in BUILTIN_TARGETS)
        + ")",
    )
    servers.add_argument(
        "--workers", type=positive_int, default=2, help="gunicorn and nginx workers (default 2)"
    )
    servers.add_argument(
        "--gthread-threads",
        type=positive_int,
        default=8,
        help="threads per gthread worker (default 8)",
    )
    servers.add_argument(
        "--h1c-path",
        type=Path,
        help="directory with gunicorn_h1c (`pip install --target DIR gunicorn-h1c`); "
        "without it the *-h1c targets are skipped",
    )
    servers.add_argument(
        "--startup-timeout",
        type=float,
        default=30.0,
        help="seconds a target may take to return 200 for its first ping (default 30)",
    )
    servers.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="an already running server to load too, e.g. real=http://127.0.0.1:8000",
    )
    servers.add_argument(
        "--target-pid",
        action="append",
        default=[],
        metavar="NAME=PID",
        help="root pid of an external target's process tree, for its CPU figures. Repeat "
        "it to add trees, such as the server's database",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--ceiling",
        action="append",
        metavar="NAME",
        help="target to compute ratios against; repeat for more (default: nginx)",
    )
    output.add_argument("--output", type=Path, help="also write the markdown report here")
    output.add_argument("--raw", type=Path, help="write every visit as JSON here")
    output.add_argument(
        "--workdir",
        type=Path,
        help="keep server logs and configs here (default: a temporary directory, removed)",
    )
    return parser.parse_args()


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {value}")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 0, got {value}")
    return number


def select_targets(args: argparse.Namespace) -> list[Target]:
    """Build the target list from the options, or exit with a message naming the bad one."""
    builtin_names = [target.name for target in BUILTIN_TARGETS]
    selected_names: list[str] = args.only if args.only is not None else builtin_names
    unknown = sorted(set(selected_names) - set(builtin_names))
    if unknown:
        sys.exit(f"--only: unknown targets {', '.join(unknown)}; choose from {builtin_names}")

    targets: list[Target] = []
    for target in BUILTIN_TARGETS:
        if target.name not in selected_names:
            continue
        if isinstance(target, GunicornTarget) and target.http_parser == "fast":
            if args.h1c_path is None:
                logger.info("skipping %s: --h1c-path is not set", target.name)
                continue
            if not (args.h1c_path / "gunicorn_h1c").exists():
                sys.exit(f"--h1c-path: no gunicorn_h1c package in {args.h1c_path}")
        targets.append(target)

    targets.extend(parse_external_targets(args.target, args.target_pid, builtin_names))
    if args.ids is not None and not args.ids.is_file():
        sys.exit(f"--ids: {args.ids} is not a file")

    args.ceiling = args.ceiling or ["nginx"]
    names = [target.name for target in targets]
    for ceiling in args.ceiling:
        if ceiling not in names:
            sys.exit(f"--ceiling: {ceiling} is not among the targets of this run: {names}")
    return targets


def parse_external_targets(
    specs: list[str], pid_specs: list[str], taken: list[str]
) -> list[ExternalTarget]:
    pids: dict[str, list[int]] = {}
    for spec in pid_specs:
        name, _, pid = spec.partition("=")
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            sys.exit(f"--target-pid {spec}: expected NAME=PID of a running process")
        pids.setdefault(name, []).append(int(pid))

    targets: list[ExternalTarget] = []
    for spec in specs:
        name, _, url = spec.partition("=")
        if not name or not url:
            sys.exit(f"--target {spec}: expected NAME=URL, e.g. real=http://127.0.0.1:8000")
        if name in taken or name in [target.name for target in targets]:
            sys.exit(f"--target {spec}: the name {name} is already used by another target")
        try:
            split_loopback_url(url)
        except TargetError as error:
            sys.exit(f"--target {spec}: {error}")
        targets.append(ExternalTarget(name, url, tuple(pids.pop(name, [])), f"external, {url}"))

    if pids:
        sys.exit(f"--target-pid: no --target named {', '.join(pids)}")
    return targets


def check_tools(targets: list[Target]) -> None:
    needed = ["wrk"]
    if any(isinstance(target, NginxTarget) for target in targets):
        needed.append("nginx")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"{' and '.join(missing)} not found on PATH; on Debian install with "
            f"`apt-get update && apt-get install -y {' '.join(missing)}`"
        )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = parse_args()
    targets = select_targets(args)
    check_tools(targets)
    load = LoadSettings(
        threads=args.threads,
        connections=args.connections,
        duration_seconds=args.duration,
        warmup_seconds=args.warmup,
        request_timeout_seconds=args.request_timeout,
        method=args.method,
        ids_file=args.ids,
    )
    servers = ServerSettings(
        workers=args.workers,
        gthread_threads=args.gthread_threads,
        startup_timeout_seconds=args.startup_timeout,
        h1c_path=args.h1c_path,
    )
    visit_seconds = args.warmup + args.duration + VISIT_OVERHEAD_SECONDS
    logger.info(
        "%d targets x %d rounds, about %.1f minutes",
        len(targets),
        args.rounds,
        len(targets) * args.rounds * visit_seconds / 60,
    )

    with open_workdir(args.workdir) as workdir:
        visits = run_rounds(targets, args.rounds, load, servers, workdir)

    report = render_report(
        targets, visits, args.ceiling, shlex.join(["python", *sys.argv]), describe_load(args)
    )
    sys.stdout.write(report)
    if args.output is not None:
        args.output.write_text(report)
    if args.raw is not None:
        args.raw.write_text(json.dumps([asdict(visit) for visit in visits], indent=2) + "\n")


def describe_load(args: argparse.Namespace) -> str:
    ids = f"ids drawn from {args.ids}" if args.ids else "one fixed check id"
    return (
        f"Load: `wrk --threads={args.threads} --connections={args.connections} "
        f"--duration={args.duration}s --latency` with ping.lua ({args.method}, {ids}), "
        f"{args.warmup} s warm-up per visit, {args.rounds} interleaved rounds. "
        "Each cell is the median of the rounds, and each ratio is the median of the "
        f"per-round ratios. Servers: {args.workers} workers each "
        f"(gthread {args.workers} x {args.gthread_threads} threads). Server CPU is user + system "
        "time of the target's whole process tree (master, workers, echo shard) during the "
        "measured run, and errors are summed over the rounds."
    )


@contextmanager
def open_workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="serverlord-bench-http-") as tempdir:
        yield Path(tempdir)


def run_rounds(
    targets: list[Target],
    rounds: int,
    load: LoadSettings,
    servers: ServerSettings,
    workdir: Path,
) -> list[Visit]:
    visits: list[Visit] = []
    for round_number in range(1, rounds + 1):
        for target in targets:
            visit_dir = workdir / f"round{round_number}-{target.name}"
            # Each visit is a task boundary: a target that fails is logged and left out of
            # this round, and the other targets still run.
            try:
                visit = visit_target(target, round_number, load, servers, visit_dir)
            except (TargetError, WrkError, OSError) as error:
                logger.error("round %d: %s failed: %s", round_number, target.name, error)
                continue
            logger.info(
                "round %d/%d: %-20s %9.0f req/s  p99 %7.2f ms  cpu %s us/req  errors %d",
                round_number,
                rounds,
                target.name,
                visit.requests_per_second,
                visit.p99_ms,
                format_number(visit.cpu_us_per_request, 1),
                visit.errors,
            )
            visits.append(visit)
    return visits


def visit_target(
    target: Target,
    round_number: int,
    load: LoadSettings,
    servers: ServerSettings,
    workdir: Path,
) -> Visit:
    with start_target(target, servers, workdir) as running:
        # The warm-up lets each worker import lazily loaded code and open its shard
        # connection before the measured run.
        warmup = None
        if load.warmup_seconds > 0:
            warmup = run_wrk(running.url, load, load.warmup_seconds)

        before = {root: snapshot_cpu_ticks([root]) for root in running.root_pids}
        report = run_wrk(running.url, load, load.duration_seconds)
        after = {root: snapshot_cpu_ticks([root]) for root in running.root_pids}

    # NOTE: a process inside two of the trees would be counted twice. The roots are
    # meant to be separate programs, such as a server and its database.
    cpu_by_root = {root: cpu_seconds_between(before[root], after[root]) for root in after}
    return Visit(
        target=target.name,
        round=round_number,
        requests=report.requests,
        requests_per_second=report.requests_per_second,
        p50_ms=report.p50_ms,
        p99_ms=report.p99_ms,
        errors=report.errors,
        cpu_seconds=sum(cpu_by_root.values()) if running.root_pids else None,
        elapsed_seconds=report.elapsed_seconds,
        non_2xx=report.non_2xx,
        cpu_seconds_by_root=cpu_by_root or None,
        warmup_requests=0 if warmup is None else warmup.requests,
        warmup_non_2xx=0 if warmup is None else warmup.non_2xx,
    )


if __name__ == "__main__":
    main()
