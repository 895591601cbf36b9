"""Measure two costs on the ping path in one process: batch parameters and histogram records.

1. Building the parameters of one `write_batch` call for ten pings: psycopg dumping one
   text array per column (the form used before sql/shard/0009), against the JSON
   document that the writer sends now. The same for one `insert_alerts` call of 100
   down events (arrays before sql/shard/0010).
2. One histogram record with four attributes: the OpenTelemetry SDK's `Histogram.record`
   against `LocalHistogram.record`.
3. One GET ping through the web tier's Falcon app, called in-process with a stub shard
   router that responds at once: the app's share of a ping, without uvicorn and sockets.

Needs no database and no server. CPU time per call, median of --repeats runs of
--calls calls each. Prints JSON.

Usage: python perf/bench_hotpath.py [--calls N] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from psycopg._queries import PostgresQuery
from psycopg.adapt import Transformer

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_wal import sample_rows

from serverlord.alerting.notifications import iso_time
from serverlord.observability.histograms import LocalHistogram
from serverlord.observability.telemetry import LATENCY_BUCKETS, Telemetry
from serverlord.shardproc.alerts import AlertEvent
from serverlord.shardproc.writer import (
    INSERT_ALERTS,
    WRITE_BATCH,
    PingRow,
    alert_document,
    batch_document,
)
from serverlord.web.app import create_app
from serverlord.web.shards import ShardConnection, ShardRouter

# The statement and parameters of write_batch before it took a JSON document.
ARRAY_STATEMENT = (
    "SELECT write_batch(%s::uuid,"
    " %s::uuid[], %s::int[], %s::float8[], %s::text[], %s::smallint[], %s::uuid[],"
    " %s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[], %s::int[], %s::float8[],"
    " %s::uuid[], %s::text[], %s::float8[], %s::float8[], %s::uuid[], %s::float8[], %s::int[],"
    " %s::uuid[], %s::float8[], %s::text[], %s::text[], %s::text[], %s::float8[])"
)
ALERT_ARRAY_STATEMENT = (
    "SELECT insert_alerts(%s::uuid[], %s::text[], %s::text[], %s::timestamptz[], %s::text[],"
    " %s::text[], %s::text[], %s::text[], %s::text[], %s::boolean[], %s::integer[],"
    " %s::timestamptz[])"
)
PING_WIDTH = len(PingRow._fields)
STATE_WIDTH = 7
FLIP_WIDTH = 6
OWNER = str(uuid.uuid4())
ATTRIBUTES: dict[str, str | int] = {
    "http.request.method": "GET",
    "url.scheme": "http",
    "http.response.status_code": 200,
    "http.route": "/ping/{code}",
}


def sample_alerts(size: int) -> list[AlertEvent]:
    now = time.time()
    return [
        AlertEvent(str(uuid.uuid4()), "down", now - 1.5, "down", "timeout", now, now - 61.0)
        for _ in range(size)
    ]


def alert_arrays(alerts: list[AlertEvent]) -> list[list[Any]]:
    """Return insert_alerts' arguments in their form before sql/shard/0010."""
    rows = [
        (
            alert.check_id,
            repr(alert.event_time),
            alert.kind,
            datetime.fromtimestamp(alert.event_time, UTC),
            alert.status,
            alert.reason,
            iso_time(alert.event_time),
            None if alert.last_ping is None else iso_time(alert.last_ping),
            None,
            False,
            alert.exitstatus,
            datetime.fromtimestamp(alert.due, UTC),
        )
        for alert in alerts
    ]
    return [list(column) for column in zip(*rows, strict=True)]


class StubConnection(ShardConnection):
    """A shard connection that responds to every ping at once, without a socket."""

    async def _request(self, op: str, args: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"n": 1, "signal": "success", "late_start": False}


class StubRouter(ShardRouter):
    def __init__(self) -> None:
        self.connections = [StubConnection(shard, "", 10.0) for shard in range(4)]

    def shard_of(self, check_id: uuid.UUID) -> int:
        return check_id.int % len(self.connections)


def ping_scope(check_id: str) -> dict[str, Any]:
    path = f"/ping/{check_id}"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8080"), (b"user-agent", b"curl/8")],
    }


def falcon_ping_us(calls: int, repeats: int) -> float:
    """Return the median CPU µs of one GET ping through the app, over `repeats` runs."""
    os.environ.setdefault("RUNTIME_DIR", tempfile.mkdtemp(prefix="bench-hotpath-"))
    app = create_app(StubRouter())
    scopes = [ping_scope(str(uuid.uuid4())) for _ in range(1000)]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"the ping got status {message['status']}")

    async def run() -> list[float]:
        runs = []
        for _ in range(repeats + 1):
            started = time.process_time()
            for index in range(calls):
                await app(scopes[index % len(scopes)], receive, send)
            runs.append((time.process_time() - started) / calls * 1e6)
        return runs[1:]

    return round(statistics.median(uvloop.run(run())), 2)


def columns(rows: list[Any], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def dump(statement: str, params: list[Any]) -> None:
    query = PostgresQuery(Transformer())
    query.convert(statement, params)
    query.dump(params)


def per_call_us(action: Callable[[], None], calls: int, repeats: int) -> float:
    action()
    runs = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(calls):
            action()
        runs.append((time.process_time() - started) / calls * 1e6)
    return round(statistics.median(runs), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    pings, states = sample_rows([str(uuid.uuid4()) for _ in range(10)], time.time())

    def arrays() -> None:
        params = [
            OWNER,
            *columns(pings, PING_WIDTH),
            *columns(states, STATE_WIDTH),
            *columns([], FLIP_WIDTH),
        ]
        dump(ARRAY_STATEMENT, params)

    def document() -> None:
        dump(WRITE_BATCH, [OWNER, batch_document(pings, states, [])])

    alerts = sample_alerts(100)

    def alerts_as_arrays() -> None:
        dump(ALERT_ARRAY_STATEMENT, alert_arrays(alerts))

    def alerts_as_document() -> None:
        dump(INSERT_ALERTS, [alert_document(alerts)])

    telemetry = Telemetry("web", env={})
    sdk = telemetry.meter.create_histogram(
        "sdk", unit="s", explicit_bucket_boundaries_advisory=LATENCY_BUCKETS
    )
    local = LocalHistogram("local", "s", "", LATENCY_BUCKETS)

    result = {
        "batch_of_10_arrays_us": per_call_us(arrays, args.calls, args.repeats),
        "batch_of_10_document_us": per_call_us(document, args.calls, args.repeats),
        "alerts_of_100_arrays_us": per_call_us(alerts_as_arrays, args.calls // 10, args.repeats),
        "alerts_of_100_document_us": per_call_us(
            alerts_as_document, args.calls // 10, args.repeats
        ),
        "sdk_record_us": per_call_us(
            lambda: sdk.record(0.001, ATTRIBUTES), args.calls * 10, args.repeats
        ),
        "local_record_us": per_call_us(
            lambda: local.record(0.001, ATTRIBUTES), args.calls * 10, args.repeats
        ),
    }
    telemetry.shutdown()
    result["falcon_get_ping_us"] = falcon_ping_us(args.calls * 3, args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
