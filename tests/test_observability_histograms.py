"""Local histograms: bucket placement, snapshots and OTLP export in both temporalities."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from serverlord.observability.histograms import (
    LocalHistogram,
    LocalHistogramExporter,
    with_metrics,
)
from serverlord.observability.telemetry import Telemetry, metric_exporter

BOUNDS = (0.001, 0.01, 0.1)
SCOPE = InstrumentationScope("serverlord", "test")
RESOURCE = Resource({"service.name": "serverlord"})


class CapturingExporter(MetricExporter):
    """Keeps every export, as an OTLP exporter would send it."""

    def __init__(self, delta: bool = False) -> None:
        temporality = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
        super().__init__(preferred_temporality={HistogramInstrument: temporality})
        self.exports: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.exports.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def only_metric(data: MetricsData, name: str) -> Metric:
    found = [
        metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
    ]
    assert len(found) == 1, found
    return found[0]


def points_by_op(metric: Metric) -> dict[Any, HistogramDataPoint]:
    assert isinstance(metric.data, Histogram)
    return {
        (point.attributes or {}).get("op"): point
        for point in metric.data.data_points
        if isinstance(point, HistogramDataPoint)
    }


def test_upper_bound_is_inclusive() -> None:
    histogram = LocalHistogram("latency", "s", "help", BOUNDS)
    for value in (0.0005, 0.001, 0.0011, 0.01, 0.5, 2.0):
        histogram.record(value, {"op": "ping"})
    metric = histogram.metric()
    assert metric is not None
    point = points_by_op(metric)["ping"]
    assert list(point.bucket_counts) == [2, 2, 0, 2]
    assert point.count == 6
    assert point.sum == 0.0005 + 0.001 + 0.0011 + 0.01 + 0.5 + 2.0
    assert (point.min, point.max) == (0.0005, 2.0)
    assert list(point.explicit_bounds) == list(BOUNDS)


def test_attributes_separate_series() -> None:
    histogram = LocalHistogram("latency", "s", "help", BOUNDS)
    assert histogram.metric() is None
    histogram.record(0.002, {"op": "ping", "status": 200})
    histogram.record(0.002, {"op": "ping", "status": 503})
    histogram.record(0.002, {"op": "ping", "status": 200})
    histogram.record(0.002)
    metric = histogram.metric()
    assert metric is not None and isinstance(metric.data, Histogram)
    counts = {
        tuple(sorted((point.attributes or {}).items())): point.count
        for point in metric.data.data_points
    }
    assert counts == {
        (("op", "ping"), ("status", 200)): 2,
        (("op", "ping"), ("status", 503)): 1,
        (): 1,
    }
    assert metric.data.aggregation_temporality == AggregationTemporality.CUMULATIVE


def test_snapshot_includes_local_histograms() -> None:
    telemetry = Telemetry("web", env={})
    histogram = telemetry.histogram("serverlord.socket.round_trip.duration", "s", "trip", BOUNDS)
    counter = telemetry.meter.create_counter("serverlord.test.things")
    counter.add(3)
    histogram.record(0.05, {"op": "ping"})
    histogram.record(0.05, {"op": "ping"})
    families = {family["name"]: family for family in telemetry.snapshot()}
    trip = families["serverlord_socket_round_trip_duration_seconds"]
    assert trip["type"] == "histogram"
    labels, value = trip["series"][0]
    assert labels == {"op": "ping", "role": "web"}
    assert value["counts"] == [0, 0, 2, 0]
    assert value["count"] == 2
    assert families["serverlord_test_things_total"]["series"][0][1] == 3
    telemetry.shutdown()


def test_cumulative_export_adds_histograms() -> None:
    inner = CapturingExporter()
    histogram = LocalHistogram("serverlord.commit.duration", "s", "commit", BOUNDS)
    exporter = LocalHistogramExporter(inner, [histogram], RESOURCE, SCOPE)
    assert exporter.delta is False

    exporter.export(MetricsData([]))
    assert inner.exports[-1].resource_metrics == []

    histogram.record(0.005, {"op": "ping"})
    exporter.export(MetricsData([]))
    histogram.record(0.005, {"op": "ping"})
    exporter.export(MetricsData([]))
    first = points_by_op(only_metric(inner.exports[1], "serverlord.commit.duration"))["ping"]
    second = points_by_op(only_metric(inner.exports[2], "serverlord.commit.duration"))["ping"]
    assert (first.count, second.count) == (1, 2)
    assert second.start_time_unix_nano == first.start_time_unix_nano
    assert inner.exports[2].resource_metrics[0].resource is RESOURCE


def test_delta_export_sends_changes() -> None:
    inner = CapturingExporter(delta=True)
    histogram = LocalHistogram("serverlord.commit.duration", "s", "commit", BOUNDS)
    exporter = LocalHistogramExporter(inner, [histogram], RESOURCE, SCOPE)
    assert exporter.delta is True

    histogram.record(0.0005, {"op": "ping"})
    histogram.record(0.5, {"op": "ping"})
    histogram.record(0.05, {"op": "status"})
    exporter.export(MetricsData([]))
    histogram.record(0.05, {"op": "ping"})
    exporter.export(MetricsData([]))
    exporter.export(MetricsData([]))

    first_metric = only_metric(inner.exports[0], "serverlord.commit.duration")
    assert isinstance(first_metric.data, Histogram)
    assert first_metric.data.aggregation_temporality == AggregationTemporality.DELTA
    first = points_by_op(first_metric)
    assert list(first["ping"].bucket_counts) == [1, 0, 0, 1]
    assert (first["ping"].min, first["ping"].max) == (0.0005, 0.5)

    second = points_by_op(only_metric(inner.exports[1], "serverlord.commit.duration"))
    assert set(second) == {"ping"}, "a series without new values is left out"
    assert list(second["ping"].bucket_counts) == [0, 0, 1, 0]
    assert second["ping"].sum == pytest.approx(0.05)
    assert (second["ping"].min, second["ping"].max) == (0.05, 0.05)
    assert second["ping"].start_time_unix_nano == first["ping"].time_unix_nano

    assert inner.exports[2].resource_metrics == [], "nothing changed, nothing added"


def test_merge_into_existing_scope() -> None:
    inner = CapturingExporter()
    sdk_histogram = LocalHistogram("sdk.side", "s", "", BOUNDS)
    sdk_histogram.record(0.5)
    sdk_metric = sdk_histogram.metric()
    assert sdk_metric is not None
    data = with_metrics(None, [sdk_metric], RESOURCE, SCOPE)

    local = LocalHistogram("local.side", "s", "", BOUNDS)
    local.record(0.5)
    exporter = LocalHistogramExporter(inner, [local], RESOURCE, SCOPE)
    exporter.export(data)
    exported = inner.exports[0]
    assert len(exported.resource_metrics) == 1
    scopes = exported.resource_metrics[0].scope_metrics
    assert len(scopes) == 1
    assert [metric.name for metric in scopes[0].metrics] == ["sdk.side", "local.side"]

    other_scope = with_metrics(None, [sdk_metric], RESOURCE, InstrumentationScope("other"))
    merged = with_metrics(other_scope, [sdk_metric], RESOURCE, SCOPE)
    names = [scope.scope.name for scope in merged.resource_metrics[0].scope_metrics]
    assert names == ["other", "serverlord"]


def test_temporality_preference_reaches_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    delta = LocalHistogramExporter(
        metric_exporter("http://127.0.0.1:9/v1/metrics", "http/protobuf"), [], RESOURCE, SCOPE
    )
    assert delta.delta is True

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
    cumulative = LocalHistogramExporter(
        metric_exporter("http://127.0.0.1:9/v1/metrics", "http/protobuf"), [], RESOURCE, SCOPE
    )
    assert cumulative.delta is False
