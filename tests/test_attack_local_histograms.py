"""The five hot histograms on a running server, under concurrent pings.

Each process aggregates them itself (serverlord/observability/histograms.py), so these
tests check from the outside what the OpenTelemetry SDK used to guarantee. In GET
/metrics, every series must be a valid histogram with the documented labels, and the web
workers must be merged. The OTLP exports must add up to the pings sent, cumulative or
delta.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics.export import AggregationTemporality as SdkTemporality
from opentelemetry.sdk.metrics.export import (
    Histogram,
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from serverlord.observability.histograms import LocalHistogram, LocalHistogramExporter
from serverlord.observability.shard import BATCH_BUCKETS
from serverlord.observability.telemetry import LATENCY_BUCKETS
from tests.conftest import create_database
from tests.server import Server, request, running_server, server_env
from tests.test_observability_metrics import Samples, scrape_all_workers, total
from tests.test_observability_otlp import OtlpSink, attributes

WEB_WORKERS = 2
SHARDS = 2
# Pings per test, sent by PARALLEL threads: enough for requests to overlap in every
# process, small enough to leave the machine to others.
PINGS = 120
PARALLEL = 12
# Seconds the tests wait for scrapes or exports to show the pings before they fail.
WAIT = 30.0

# Prometheus name: label names, as docs/observability.md lists them, plus the labels
# that GET /metrics adds to every series of a process (role, and shard for a shard).
HISTOGRAM_LABELS = {
    "http_server_request_duration_seconds": {
        "http_request_method",
        "http_route",
        "http_response_status_code",
        "url_scheme",
        "role",
    },
    "serverlord_socket_round_trip_duration_seconds": {"shard", "op", "status", "role"},
    "serverlord_shard_request_duration_seconds": {"op", "status", "role", "shard"},
    "serverlord_commit_duration_seconds": {"outcome", "role", "shard"},
    "serverlord_commit_batch_size": {"role", "shard"},
}
OTLP_NAMES = {
    "http.server.request.duration": LATENCY_BUCKETS,
    "serverlord.socket.round_trip.duration": LATENCY_BUCKETS,
    "serverlord.shard.request.duration": LATENCY_BUCKETS,
    "serverlord.commit.duration": LATENCY_BUCKETS,
    "serverlord.commit.batch.size": BATCH_BUCKETS,
}


def short_runtime_dir() -> Path:
    # Unix socket paths are limited to about 100 bytes, and pytest's tmp_path can be long.
    return Path(tempfile.mkdtemp(prefix="sl-hist-", dir="/tmp"))


@pytest.fixture(scope="module")
def metrics_server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(
        create_database(pg_admin_dsn, "hist"),
        short_runtime_dir(),
        shard_count=SHARDS,
        WEB_CONCURRENCY=str(WEB_WORKERS),
    )
    with running_server(env, tmp_path_factory.mktemp("hist") / "server.log") as server:
        yield server


def new_checks(server: Server) -> list[str]:
    return [server.create_check()["id"] for _ in range(4)]


def send_pings(server: Server, checks: list[str], count: int = PINGS) -> None:
    def ping(index: int) -> int:
        return request("POST", f"{server.url}/ping/{checks[index % len(checks)]}", b"x").status

    with ThreadPoolExecutor(PARALLEL) as pool:
        statuses = list(pool.map(ping, range(count)))
    assert set(statuses) == {200}


def histogram_series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], Any]:
    """Return each series of histogram `name` as {le: cumulative count}, plus count and sum."""
    series: dict[tuple[tuple[str, str], ...], Any] = defaultdict(
        lambda: {"buckets": {}, "count": None, "sum": None}
    )
    for labels, value in samples.get(f"{name}_bucket", []):
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        series[key]["buckets"][float(labels["le"])] = value
    for suffix in ("count", "sum"):
        for labels, value in samples.get(f"{name}_{suffix}", []):
            series[tuple(sorted(labels.items()))][suffix] = value
    return dict(series)


# -- GET /metrics ------------------------------------------------------------------------


@pytest.mark.e2e
def test_histogram_series_are_consistent(metrics_server: Server) -> None:
    send_pings(metrics_server, new_checks(metrics_server))
    samples = scrape_all_workers(metrics_server)

    for name in HISTOGRAM_LABELS:
        bounds = BATCH_BUCKETS if name == "serverlord_commit_batch_size" else LATENCY_BUCKETS
        series = histogram_series(samples, name)
        assert series, name
        for key, value in series.items():
            buckets = value["buckets"]
            counts = [buckets[bound] for bound in sorted(buckets)]
            assert sorted(buckets) == [*map(float, bounds), float("inf")], (name, key)
            assert counts == sorted(counts), (name, key)
            assert buckets[float("inf")] == value["count"], (name, key)
            assert value["sum"] is not None, (name, key)


@pytest.mark.e2e
def test_histogram_labels_match_docs(metrics_server: Server) -> None:
    send_pings(metrics_server, new_checks(metrics_server), 10)
    samples = scrape_all_workers(metrics_server)

    for name, documented in HISTOGRAM_LABELS.items():
        for key in histogram_series(samples, name):
            assert {label for label, _ in key} == documented, (name, key)


@pytest.mark.e2e
def test_histograms_count_every_ping(metrics_server: Server) -> None:
    checks = new_checks(metrics_server)
    before = scrape_all_workers(metrics_server)
    send_pings(metrics_server, checks)
    after = scrape_all_workers(metrics_server)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert total(after, "serverlord_web_workers") == WEB_WORKERS
    assert grew("http_server_request_duration_seconds_count", http_route="/ping/{code}") == PINGS
    assert grew("serverlord_socket_round_trip_duration_seconds_count", op="ping") == PINGS
    assert grew("serverlord_shard_request_duration_seconds_count", op="ping") == PINGS
    # Only the pings reached the writers between the two scrapes.
    assert grew("serverlord_commit_batch_size_sum") == PINGS
    assert grew("serverlord_commit_duration_seconds_count", outcome="ok") == grew(
        "serverlord_commit_transactions_total"
    )
    assert grew("serverlord_commit_batch_size_count") == grew(
        "serverlord_commit_transactions_total"
    )


# -- OTLP export -------------------------------------------------------------------------


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as running:
        yield running


def exporting_server(pg_admin_dsn: str, log_path: Path, sink: OtlpSink, temporality: str) -> Any:
    env = server_env(
        create_database(pg_admin_dsn, "histotlp"),
        short_runtime_dir(),
        shard_count=SHARDS,
        WEB_CONCURRENCY=str(WEB_WORKERS),
        OTEL_EXPORTER_OTLP_ENDPOINT=sink.url,
        OTEL_METRIC_EXPORT_INTERVAL="300",
        OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=temporality,
    )
    return running_server(env, log_path)


Point = tuple[str, str, dict[str, Any], Any, int]


def exported_points(sink: OtlpSink) -> list[Point]:
    """Return (process instance, metric name, attributes, point, temporality) of each export."""
    points: list[Point] = []
    # Copying the list is one step, so the receiver's threads cannot change it meanwhile.
    for export in list(sink.metrics):
        for resource_metrics in export.resource_metrics:
            instance = attributes(resource_metrics.resource.attributes)["service.instance.id"]
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name not in OTLP_NAMES:
                        continue
                    temporality = metric.histogram.aggregation_temporality
                    for point in metric.histogram.data_points:
                        attrs = attributes(point.attributes)
                        points.append((instance, metric.name, attrs, point, temporality))
    return points


def ping_requests(points: list[Point], delta: bool) -> int:
    """Return how many ping requests the exported HTTP request histograms count."""
    pings = [
        (instance, point)
        for instance, name, attrs, point, _ in points
        if name == "http.server.request.duration" and attrs.get("http.route") == "/ping/{code}"
    ]
    if delta:
        return sum(point.count for _, point in pings)
    latest: dict[str, int] = {}
    for instance, point in pings:
        latest[instance] = point.count
    return sum(latest.values())


@pytest.mark.e2e
@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_otlp_export_counts_every_ping(
    pg_admin_dsn: str, tmp_path: Path, sink: OtlpSink, temporality: str
) -> None:
    delta = temporality == "delta"
    with exporting_server(pg_admin_dsn, tmp_path / "server.log", sink, temporality) as server:
        send_pings(server, new_checks(server))
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if ping_requests(exported_points(sink), delta) >= PINGS:
                break
            time.sleep(0.2)
        points = exported_points(sink)

    assert ping_requests(points, delta) == PINGS
    wanted = AggregationTemporality.Value(f"AGGREGATION_TEMPORALITY_{temporality.upper()}")
    assert {name for _, name, _, _, _ in points} == set(OTLP_NAMES)
    for instance, name, attrs, point, exported_temporality in points:
        where = (instance, name, attrs)
        assert exported_temporality == wanted, where
        assert list(point.explicit_bounds) == list(map(float, OTLP_NAMES[name])), where
        assert len(point.bucket_counts) == len(point.explicit_bounds) + 1, where
        assert point.count == sum(point.bucket_counts), where
        assert point.count > 0 or not delta, where
        assert point.start_time_unix_nano < point.time_unix_nano, where
        assert point.min <= point.max, where


def series_points(points: list[Point]) -> dict[tuple[str, str, str], list[Any]]:
    """Return the exported points of each series, oldest first."""
    series: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for instance, name, attrs, point, _ in points:
        series[instance, name, repr(sorted(attrs.items()))].append(point)
    for found in series.values():
        found.sort(key=lambda point: point.time_unix_nano)
    return dict(series)


@pytest.mark.e2e
def test_cumulative_series_keep_start(pg_admin_dsn: str, tmp_path: Path, sink: OtlpSink) -> None:
    series = points_over_three_exports(pg_admin_dsn, tmp_path / "server.log", sink, "cumulative")

    for where, found in series.items():
        assert len({point.start_time_unix_nano for point in found}) == 1, where
        counts = [point.count for point in found]
        assert counts == sorted(counts), where
        for older, newer in pairwise(found):
            grown = [b - a for a, b in zip(older.bucket_counts, newer.bucket_counts, strict=True)]
            assert min(grown) >= 0, where


@pytest.mark.e2e
def test_delta_windows_do_not_overlap(pg_admin_dsn: str, tmp_path: Path, sink: OtlpSink) -> None:
    series = points_over_three_exports(pg_admin_dsn, tmp_path / "server.log", sink, "delta")

    for where, found in series.items():
        for older, newer in pairwise(found):
            assert newer.start_time_unix_nano >= older.time_unix_nano, where


def points_over_three_exports(
    pg_admin_dsn: str, log_path: Path, sink: OtlpSink, temporality: str
) -> dict[tuple[str, str, str], list[Any]]:
    """Send the pings in three parts, each followed by an export of every process."""
    with exporting_server(pg_admin_dsn, log_path, sink, temporality) as server:
        checks = new_checks(server)
        for _ in range(3):
            send_pings(server, checks, PINGS // 3)
            exported = len(sink.metrics)
            wait_for_exports(sink, exported + 2 * (WEB_WORKERS + SHARDS))
        points = exported_points(sink)
    return series_points(points)


def wait_for_exports(sink: OtlpSink, count: int) -> None:
    """Wait until the sink has received `count` metric exports in all."""
    deadline = time.monotonic() + WAIT
    while len(sink.metrics) < count:
        assert time.monotonic() < deadline, f"only {len(sink.metrics)} of {count} exports arrived"
        time.sleep(0.1)


# -- delta export beside a recording thread -----------------------------------------------

# Records made while an export thread takes delta points. CPython switches threads every
# SWITCH_INTERVAL seconds here, instead of every 5 ms, so that the export often runs in the
# middle of a record.
RACE_RECORDS = 100_000
SWITCH_INTERVAL = 1e-6
RACE_VALUE = 0.5


def test_delta_points_during_records() -> None:
    """Every delta point must describe the same values in its count, sum, min and max."""
    histogram = LocalHistogram("race", "s", "values recorded during exports", (0.1, 1.0))
    exporter = LocalHistogramExporter(
        DiscardingDeltaExporter(), [histogram], Resource({}), InstrumentationScope("race")
    )
    finished = threading.Event()

    def record() -> None:
        for _ in range(RACE_RECORDS):
            histogram.record(RACE_VALUE, {"op": "ping"})
        finished.set()

    points: list[HistogramDataPoint] = []
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        recorder = threading.Thread(target=record)
        recorder.start()
        now = 1
        while not finished.is_set():
            points += delta_points(exporter, now)
            now += 1
        recorder.join()
    finally:
        sys.setswitchinterval(previous_interval)
    points += delta_points(exporter, now)

    assert sum(point.count for point in points) == RACE_RECORDS
    broken = [
        (point.count, point.sum, point.min, point.max)
        for point in points
        if point.min != RACE_VALUE
        or point.max != RACE_VALUE
        or point.sum != point.count * RACE_VALUE
    ]
    assert broken == []


def delta_points(exporter: LocalHistogramExporter, now: int) -> list[HistogramDataPoint]:
    points: list[HistogramDataPoint] = []
    for metric in exporter.local_metrics(now):
        assert isinstance(metric.data, Histogram)
        points += metric.data.data_points
    return points


class DiscardingDeltaExporter(MetricExporter):
    """An exporter that prefers delta histograms and drops what it is given."""

    def __init__(self) -> None:
        super().__init__(
            preferred_temporality={HistogramInstrument: SdkTemporality.DELTA},
        )

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None
