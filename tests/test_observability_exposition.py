"""Metric snapshots: OpenTelemetry names in Prometheus form, merging and the text format."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from serverlord.observability.exposition import (
    Family,
    add_empty_histograms,
    families_from,
    merge,
    metric_name,
    render,
)


def histogram(counts: list[int], total: float) -> dict[str, Any]:
    return {"bounds": [0.1, 1.0], "counts": counts, "sum": total, "count": sum(counts)}


def family(name: str, kind: str, *series: list[Any]) -> Family:
    return {"name": name, "type": kind, "help": "", "series": list(series)}


def test_metric_names_follow_otel_rules() -> None:
    assert metric_name("http.server.request.duration", "s", False) == (
        "http_server_request_duration_seconds"
    )
    assert metric_name("process.cpu.time", "s", True) == "process_cpu_time_seconds_total"
    assert metric_name("process.memory.usage", "By", False) == "process_memory_usage_bytes"
    assert metric_name("serverlord.shard.pings", "{ping}", True) == "serverlord_shard_pings_total"
    assert metric_name("already_total", "", True) == "already_total"


def test_sdk_data_becomes_labelled_families() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader], shutdown_on_exit=False).get_meter("test")
    meter.create_counter("serverlord.flips", unit="{flip}").add(2, {"reason": "timeout"})
    meter.create_histogram(
        "serverlord.commit.duration", unit="s", explicit_bucket_boundaries_advisory=[0.1, 1.0]
    ).record(0.5)

    families = {f["name"]: f for f in families_from(reader.get_metrics_data(), {"shard": "3"})}

    flips = families["serverlord_flips_total"]
    assert flips["type"] == "counter"
    assert flips["series"] == [[{"reason": "timeout", "shard": "3"}, 2]]
    commits = families["serverlord_commit_duration_seconds"]
    assert commits["type"] == "histogram"
    [[labels, value]] = commits["series"]
    assert labels == {"shard": "3"}
    assert value["counts"] == [0, 1, 0]
    assert value["count"] == 1


def test_merge_adds_equal_series_only() -> None:
    worker = [
        family("c_total", "counter", [{"role": "web"}, 2]),
        family("h", "histogram", [{}, histogram([1, 0, 0], 0.05)]),
    ]
    other_worker = [
        family("c_total", "counter", [{"role": "web"}, 3]),
        family("h", "histogram", [{}, histogram([0, 2, 1], 3.0)]),
    ]
    shard = [family("c_total", "counter", [{"shard": "0"}, 7])]

    merged = {
        merged_family["name"]: merged_family
        for merged_family in merge([worker, other_worker, shard])
    }

    assert merged["c_total"]["series"] == [[{"role": "web"}, 5], [{"shard": "0"}, 7]]
    [[_, total]] = merged["h"]["series"]
    assert total["counts"] == [1, 2, 1]
    assert total["count"] == 4
    assert total["sum"] == 3.05
    # The inputs are left as they were.
    assert worker[1]["series"][0][1]["counts"] == [1, 0, 0]


def test_render_writes_cumulative_buckets() -> None:
    families: list[Family] = [
        {"name": "h", "type": "histogram", "help": "A histogram.", "series": []},
    ]
    add_empty_histograms(families, "h", "A histogram.", [0.1, 1.0], [{"shard": "0"}])
    families[0]["series"][0][1] = histogram([1, 2, 3], 9.5)

    lines = render(families).splitlines()

    assert lines == [
        "# HELP h A histogram.",
        "# TYPE h histogram",
        'h_bucket{le="0.1",shard="0"} 1',
        'h_bucket{le="1",shard="0"} 3',
        'h_bucket{le="+Inf",shard="0"} 6',
        'h_sum{shard="0"} 9.5',
        'h_count{shard="0"} 6',
    ]


def test_render_escapes_label_values() -> None:
    families: list[Family] = [
        {
            "name": "hc_check_up",
            "type": "gauge",
            "help": "Line one\nline two.",
            "series": [[{"name": 'say "hi"\\now\n'}, 1]],
        }
    ]

    lines = render(families).splitlines()

    assert lines[0] == "# HELP hc_check_up Line one\\nline two."
    assert lines[2] == 'hc_check_up{name="say \\"hi\\"\\\\now\\n"} 1'
