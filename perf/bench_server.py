"""Start, inspect and profile a private Server Lord, for the benchmarks in this folder.

The database is an embedded PostgreSQL cluster in a temporary folder, with fsync and
synchronous_commit checked to be on. The server listens on 127.0.0.1 only. Every wait
is bounded, and only processes started here are signalled, by their own pid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import conninfo, sql

from serverlord import protocol
from serverlord.storage.embedded import EmbeddedPostgres
from serverlord.storage.migrate import migrate
from serverlord.storage.topology import Topology, load_or_create_slot_map, provision_shards

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 60.0
HEALTH_TIMEOUT_SECONDS = 10.0


class BenchError(Exception):
    """An error that stops the benchmark. The message names the cause."""


# -- database ----------------------------------------------------------------------------


def start_database(data_dir: Path, settings: dict[str, str]) -> tuple[EmbeddedPostgres, str]:
    """Start an embedded cluster with `settings` applied, and return it with its admin DSN.

    Settings go through ALTER SYSTEM and a restart, because some of them (such as
    track_commit_timestamp) take effect only at server start.
    """
    database = EmbeddedPostgres(data_dir)
    admin = database.start()
    if settings:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name, value in settings.items():
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
        database.stop()
        admin = database.start()
    return database, admin


def durability_settings(dsn: str) -> dict[str, str]:
    """Return fsync and synchronous_commit, or raise BenchError unless both are on."""
    values: dict[str, str] = {}
    with psycopg.connect(dsn) as conn:
        for name in ("fsync", "synchronous_commit", "wal_sync_method", "server_version"):
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            values[name] = "" if row is None else str(row[0])
    for name in ("fsync", "synchronous_commit"):
        if values[name] != "on":
            raise BenchError(
                f"PostgreSQL {name} is {values[name]!r}, but the benchmark requires on; "
                "turn it on in the cluster's configuration"
            )
    return values


def prepare(admin_dsn: str, shards: int) -> str:
    """Create and migrate the catalog and its shard databases, and return the catalog DSN."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("bench")))
    catalog = conninfo.make_conninfo(admin_dsn, dbname="bench")
    migrate(catalog, "catalog")
    load_or_create_slot_map(catalog, shards)
    for dsn in provision_shards(catalog, shards, {}):
        migrate(dsn, "shard")
    return catalog


def database_names(catalog: str, shards: int) -> list[str]:
    name = conninfo.conninfo_to_dict(catalog)["dbname"]
    return [f"{name}_shard{shard}" for shard in range(shards)]


def committed_transactions(catalog: str, names: list[str]) -> int:
    """Return xact_commit summed over the databases in `names`, from pg_stat_database.

    The statistics are flushed by each backend at most once a second, so read this after
    the load has been quiet for a couple of seconds.
    """
    with psycopg.connect(catalog) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(xact_commit), 0) FROM pg_stat_database WHERE datname = ANY(%s)",
            (names,),
        ).fetchone()
    return 0 if row is None else int(row[0])


def count_rows(dsns: list[str], table: str) -> int:
    total = 0
    for dsn in dsns:
        with psycopg.connect(dsn) as conn:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            row = conn.execute(query).fetchone()
        total += 0 if row is None else int(row[0])
    return total


# -- server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    runtime_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    # NOTE: the server binds the port after this returns, so another program could take
    # it in between. The server then fails to start, and the benchmark stops.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def run_server(
    catalog: str, shards: int, workers: int, workdir: Path, ready_seconds: float = 60.0
) -> Iterator[RunningServer]:
    """Run `serverlord serve` against `catalog` on 127.0.0.1, and stop it with SIGTERM on exit."""
    port = free_port()
    runtime_dir = workdir / "run"
    env = {
        **os.environ,
        "DATABASE_URL": catalog,
        "SHARD_COUNT": str(shards),
        "PORT": str(port),
        "SERVER_HOST": "127.0.0.1",
        "RUNTIME_DIR": str(runtime_dir),
        "WEB_CONCURRENCY": str(workers),
        "LOG_LEVEL": "INFO",
    }
    log_path = workdir / "server.log"
    with log_path.open("ab") as log:
        # `python -m` puts the working folder first on sys.path, so the server runs from
        # the checkout that this process imported serverlord from, even with PYTHONPATH.
        process = subprocess.Popen(
            [sys.executable, "-m", "serverlord.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=package_root(),
        )
    try:
        wait_ready(port, process, ready_seconds, log_path)
        yield RunningServer(process, port, runtime_dir, log_path)
    finally:
        stop_process(process, "server")


def wait_ready(
    port: int, process: subprocess.Popen[bytes], seconds: float, log_path: Path | None = None
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the server exited with status {process.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
                if b" 200 " in conn.recv(200):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(
        f"the server did not return 200 for /healthz within {seconds:g} s; see {log_path}"
    )


def stop_process(process: subprocess.Popen[bytes], label: str) -> None:
    """Stop `process` with SIGTERM, or kill it if it is still running after the timeout."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning("%s pid %d ignored SIGTERM; killing it", label, process.pid)
        process.kill()
        process.wait(STOP_TIMEOUT_SECONDS)


def shard_health(runtime_dir: Path) -> list[dict[str, Any]]:
    """Send the `health` operation to every shard process and return their counters."""
    topology = Topology.read(runtime_dir / "topology.json")
    responses = []
    for path in topology.sockets:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(HEALTH_TIMEOUT_SECONDS)
            sock.connect(path)
            sock.sendall(protocol.encode([1, "health", {}]))
            responses.append(_read_response(sock, path))
    return responses


def _read_response(sock: socket.socket, path: str) -> dict[str, Any]:
    decoder = protocol.FrameDecoder()
    while True:
        data = sock.recv(65536)
        if not data:
            raise BenchError(
                f"shard socket {path} closed before it responded to the health request"
            )
        for _request_id, status, body in decoder.feed(data):
            if status != 200:
                raise BenchError(
                    f"shard socket {path} returned {status} for the health request: {body}"
                )
            counters: dict[str, Any] = body
            return counters


def shard_load_seconds(log_path: Path) -> list[float]:
    """Return each shard's check-loading time, from the "loaded N checks in S s" log lines."""
    pattern = r"loaded \d+ checks in ([\d.]+) s"
    return [float(value) for value in re.findall(pattern, log_path.read_text())]


def timeout_log_times(log_path: Path) -> dict[str, float]:
    """Map check id to the time its timeout was logged, in epoch seconds.

    The engine logs "check ID went down at its deadline T" right after it queues the
    flip, so this time is when the shard process noticed the deadline. The log stamp has
    millisecond resolution and the machine's local time zone, as logging writes it.
    """
    pattern = re.compile(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .* check (\S+) went down at its deadline"
    )
    noticed: dict[str, float] = {}
    with log_path.open() as log:
        for line in log:
            match = pattern.match(line)
            if match is not None:
                stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
                noticed[match.group(2)] = stamp.timestamp()
    return noticed


# -- processes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessMemory:
    role: str
    pid: int
    rss: int
    # Peak RSS since the process started (VmHWM), in bytes.
    peak_rss: int
    # Proportional set size: shared pages divided among the processes that map them.
    pss: int


def process_memory(supervisor_pid: int, postgres_pid: int | None) -> list[ProcessMemory]:
    """Return the memory of every server process and of every PostgreSQL process."""
    rows = []
    supervisor = psutil.Process(supervisor_pid)
    for process in [supervisor, *supervisor.children(recursive=True)]:
        rows.extend(_measure(process, _server_role(process, supervisor_pid)))
    if postgres_pid is not None:
        postmaster = psutil.Process(postgres_pid)
        for process in [postmaster, *postmaster.children(recursive=True)]:
            rows.extend(_measure(process, _postgres_role(process, postgres_pid)))
    return rows


def _server_role(process: psutil.Process, supervisor_pid: int) -> str:
    try:
        cmdline = process.cmdline()
        parent = process.ppid()
    except psutil.NoSuchProcess:
        return "gone"
    if process.pid == supervisor_pid:
        return "supervisor"
    if "serverlord.shardproc" in cmdline:
        return f"shard {cmdline[cmdline.index('--shard') + 1]}"
    if any("gunicorn" in part for part in cmdline):
        return "gunicorn master" if parent == supervisor_pid else "web worker"
    return "other"


def _postgres_role(process: psutil.Process, postmaster_pid: int) -> str:
    if process.pid == postmaster_pid:
        return "postgres postmaster"
    try:
        title = " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return "gone"
    # Backends set their title to "postgres: USER DATABASE [local] STATE", and auxiliary
    # processes to "postgres: NAME" (checkpointer, walwriter and so on).
    title = title.removeprefix("postgres: ").strip()
    if " [local]" in title:
        database = title.split(" [local]")[0].split(" ")[-1]
        return f"postgres backend {database}"
    return f"postgres {title}"


def _measure(process: psutil.Process, role: str) -> list[ProcessMemory]:
    try:
        full = process.memory_full_info()
        status = Path(f"/proc/{process.pid}/status").read_text()
    except (psutil.NoSuchProcess, FileNotFoundError):
        return []
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    peak = int(match.group(1)) * 1024 if match else full.rss
    return [ProcessMemory(role, process.pid, full.rss, peak, full.pss)]


def process_cpu_seconds(pids: list[int]) -> dict[int, float]:
    """Return user + system CPU seconds of each pid that still runs."""
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[pid] = times.user + times.system
    return seconds


# -- load --------------------------------------------------------------------------------


@dataclass
class OpenLoopResult:
    """Outcome of an open-loop ping load."""

    scheduled: int = 0
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    # Pings sent that got no response within the request timeout or lost their connection.
    unanswered: int = 0
    # Seconds from each ping's scheduled send time to its response.
    latencies: list[float] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        """Pings scheduled but never sent, because the drain deadline passed first."""
        return self.scheduled - self.sent

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def open_loop_pings(
    port: int,
    ids: list[str],
    rate: float,
    seconds: float,
    connections: int,
    request_timeout: float = 10.0,
) -> OpenLoopResult:
    """Schedule GET /ping/<random id> at `rate` per second for `seconds`, over keep-alive
    connections that each send one ping at a time.

    The schedule does not wait for responses (open loop), so a server that falls behind
    shows as latency, counted from the scheduled time. Pings still queued
    `request_timeout` seconds after the schedule ends are dropped. Workers stop by
    reading a sentinel rather than by cancellation, because asyncio.wait_for in Python
    3.11 can swallow a cancellation and leave a worker running.
    """
    result = OpenLoopResult()
    rng = random.Random(7)
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    drain_deadline = time.perf_counter() + seconds + request_timeout

    async def worker() -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while (scheduled := await queue.get()) is not None:
            if time.perf_counter() > drain_deadline:
                continue
            result.sent += 1
            try:
                async with asyncio.timeout(request_timeout):
                    if connection is None:
                        connection = await asyncio.open_connection("127.0.0.1", port)
                    path = f"/ping/{ids[rng.randrange(len(ids))]}"
                    status = await http_get(*connection, path)
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
                result.unanswered += 1
                if connection is not None:
                    connection[1].close()
                connection = None
                continue
            result.statuses[status] += 1
            result.latencies.append(time.perf_counter() - scheduled)
        if connection is not None:
            connection[1].close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    started = time.perf_counter()
    next_send = started
    while next_send < started + seconds:
        delay = next_send - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(next_send)
        result.scheduled += 1
        next_send += 1.0 / rate
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return result


async def http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """Send GET `path` on a keep-alive connection, read the whole response, return its status."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


# -- profiling ---------------------------------------------------------------------------


@contextmanager
def py_spy_recording(
    py_spy: str | None, pids: dict[str, int], seconds: float, out_dir: Path
) -> Iterator[None]:
    """Record each process in `pids` (name to pid) with `py-spy record` while the body runs.

    Stacks go to OUT_DIR/NAME.txt in py-spy's raw (collapsed) format, sampled 200 times a
    second without pausing the process. Does nothing when `py_spy` is None.
    """
    if py_spy is None:
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    recorders = []
    for name, pid in pids.items():
        command = [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out_dir / f"{name}.txt"),
        ]
        output = (out_dir / f"{name}.log").open("wb")
        recorders.append(subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT))
        output.close()
    try:
        yield
    finally:
        for recorder in recorders:
            try:
                recorder.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                logger.warning("py-spy pid %d did not finish; stopping it", recorder.pid)
                recorder.terminate()
                recorder.wait(10)


def summarize_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Return the functions with the most samples in a py-spy raw file, self and inclusive.

    Each line of the file is a stack "frame;frame;...;frame COUNT", innermost last. A
    frame is "function (file:line)". Line numbers are dropped, so that each function counts
    once per stack.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"samples": 0, "self": [], "inclusive": []}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def shares(counter: Counter[str]) -> list[str]:
        return [f"{100 * n / total:.1f}% {name}" for name, n in counter.most_common(top)]

    return {"samples": total, "self": shares(own), "inclusive": shares(inclusive)}


def _frame_name(frame: str) -> str:
    # "write_row (psycopg/copy.py:123)" becomes "write_row (psycopg/copy.py)".
    return re.sub(r":\d+\)$", ")", frame.strip())


# -- reporting ---------------------------------------------------------------------------


def package_root() -> Path:
    """Return the checkout that the imported serverlord package comes from."""
    import serverlord

    return Path(serverlord.__file__).resolve().parents[1]


def source_revision() -> str:
    """Return the git commit of the imported serverlord package, marked dirty if changed."""
    root = package_root()
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "serverlord", "sql"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"unknown (package at {root}, not a git checkout)"
    return f"{commit}{' with uncommitted changes' if dirty else ''} ({root})"


def write_json(path: Path | None, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str)
    print(text)
    if path is not None:
        path.write_text(text + "\n")
