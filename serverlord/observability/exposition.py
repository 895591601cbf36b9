"""Metric snapshots: OpenTelemetry data as JSON-ready families, merged and rendered.

Every process turns its own OpenTelemetry metrics into a snapshot, a list of families
that orjson can send over a socket. A web worker merges the snapshots of all processes
and renders them in the Prometheus text format (version 0.0.4).

Names follow the OpenTelemetry rules for Prometheus: dots become underscores, the unit
becomes a suffix (`s` gives `_seconds`, `By` gives `_bytes`, a `{annotation}` unit gives
none) and a monotonic sum ends in `_total`. So `http.server.request.duration` in seconds
is `http_server_request_duration_seconds`.

A family is `{"name", "type", "help", "series"}`. `type` is counter, gauge or histogram.
Each series is `[labels, value]`, where a histogram's value is
`{"bounds", "counts", "sum", "count"}` with one count per bucket (not cumulative) and
one more for the bucket above the last bound.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import Gauge, Histogram, MetricsData, Sum

log = logging.getLogger(__name__)

Family = dict[str, Any]
Labels = dict[str, str]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_UNIT_SUFFIXES = {
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "%": "percent",
}
_INVALID_NAME_CHARACTERS = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL_CHARACTERS = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str, unit: str, monotonic_sum: bool) -> str:
    """Return the Prometheus name of an OpenTelemetry metric."""
    converted = _INVALID_NAME_CHARACTERS.sub("_", name)
    suffix = _UNIT_SUFFIXES.get(unit, "")
    if suffix and not converted.endswith(f"_{suffix}"):
        converted = f"{converted}_{suffix}"
    if monotonic_sum and not converted.endswith("_total"):
        converted = f"{converted}_total"
    if converted[:1].isdigit():
        converted = f"_{converted}"
    return converted


def label_name(key: str) -> str:
    converted = _INVALID_LABEL_CHARACTERS.sub("_", key)
    return f"key_{converted}" if converted[:1].isdigit() else converted


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def families_from(data: MetricsData | None, labels: Mapping[str, str]) -> list[Family]:
    """Convert the metrics of one collection into families, adding `labels` to each series."""
    families: list[Family] = []
    if data is None:
        return families
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                family = _family(
                    metric.name, metric.unit or "", metric.description or "", metric.data
                )
                if family is None:
                    continue
                for series in family["series"]:
                    series[0].update(labels)
                families.append(family)
    return families


def _family(name: str, unit: str, help_text: str, data: Any) -> Family | None:
    if isinstance(data, Histogram):
        series: list[list[Any]] = [
            [
                _labels(point.attributes),
                {
                    "bounds": list(point.explicit_bounds),
                    "counts": list(point.bucket_counts),
                    "sum": point.sum,
                    "count": point.count,
                },
            ]
            for point in data.data_points
        ]
        return _new_family(metric_name(name, unit, False), "histogram", help_text, series)
    if isinstance(data, Sum):
        kind = "counter" if data.is_monotonic else "gauge"
        series = [[_labels(point.attributes), point.value] for point in data.data_points]
        return _new_family(metric_name(name, unit, data.is_monotonic), kind, help_text, series)
    if isinstance(data, Gauge):
        series = [[_labels(point.attributes), point.value] for point in data.data_points]
        return _new_family(metric_name(name, unit, False), "gauge", help_text, series)
    # Exponential histograms are not used by Server Lord's instruments.
    return None


def _labels(attributes: Mapping[str, Any] | None) -> Labels:
    if not attributes:
        return {}
    return {label_name(key): _label_value(value) for key, value in attributes.items()}


def _new_family(name: str, kind: str, help_text: str, series: list[list[Any]]) -> Family:
    return {"name": name, "type": kind, "help": help_text, "series": series}


def add_empty_histograms(
    families: list[Family],
    name: str,
    help_text: str,
    bounds: Iterable[float],
    label_sets: Iterable[Mapping[str, str]],
) -> None:
    """Add a zero series for each label set that the histogram `name` does not have yet.

    OpenTelemetry creates a histogram series at its first observation, and Prometheus
    cannot take a rate from a series' first sample, so that first event would never show.
    A zero series from the start lets the first event count.
    """
    family = next((family for family in families if family["name"] == name), None)
    if family is None:
        family = _new_family(name, "histogram", help_text, [])
        families.append(family)
    present = [labels for labels, _ in family["series"]]
    bound_list = [float(bound) for bound in bounds]
    for label_set in label_sets:
        if dict(label_set) in present:
            continue
        empty = {"bounds": bound_list, "counts": [0] * (len(bound_list) + 1), "sum": 0, "count": 0}
        family["series"].append([dict(label_set), empty])


def merge(snapshots: Iterable[list[Family]]) -> list[Family]:
    """Merge the families of several processes into one list, sorted by name.

    Series with equal labels are added up: counters and histograms because they count
    events, and gauges because the only gauges that two processes share without a label
    that distinguishes them are the web workers' totals (memory, active requests). A
    histogram whose bucket bounds differ from the first one seen is dropped and logged.
    """
    merged: dict[str, Family] = {}
    series_index: dict[str, dict[tuple[tuple[str, str], ...], list[Any]]] = {}
    for snapshot in snapshots:
        for family in snapshot:
            name = family["name"]
            target = merged.get(name)
            if target is None:
                target = _new_family(name, family["type"], family["help"], [])
                merged[name] = target
                series_index[name] = {}
            elif target["type"] != family["type"]:
                log.warning(
                    "metric %s is a %s in one process and a %s in another; keeping the first",
                    name,
                    target["type"],
                    family["type"],
                )
                continue
            for labels, value in family["series"]:
                _add_series(target, series_index[name], labels, value)
    return [merged[name] for name in sorted(merged)]


def _add_series(
    family: Family,
    index: dict[tuple[tuple[str, str], ...], list[Any]],
    labels: Labels,
    value: Any,
) -> None:
    key = tuple(sorted(labels.items()))
    existing = index.get(key)
    if existing is None:
        copied = dict(value) if isinstance(value, dict) else value
        if isinstance(copied, dict):
            copied["counts"] = list(copied["counts"])
        series = [dict(labels), copied]
        index[key] = series
        family["series"].append(series)
        return
    if family["type"] != "histogram":
        existing[1] += value
        return
    total = existing[1]
    if total["bounds"] != value["bounds"]:
        log.warning("histogram %s has other bucket bounds in another process", family["name"])
        return
    total["counts"] = [a + b for a, b in zip(total["counts"], value["counts"], strict=True)]
    total["sum"] += value["sum"]
    total["count"] += value["count"]


def render(families: Iterable[Family]) -> str:
    """Return the families in the Prometheus text exposition format."""
    lines: list[str] = []
    for family in families:
        name = family["name"]
        if family["help"]:
            lines.append(f"# HELP {name} {_escape_help(family['help'])}")
        lines.append(f"# TYPE {name} {family['type']}")
        for labels, value in family["series"]:
            if family["type"] == "histogram":
                lines.extend(_histogram_lines(name, labels, value))
            else:
                lines.append(f"{name}{_format_labels(labels)} {_format_number(value)}")
    lines.append("")
    return "\n".join(lines)


def _histogram_lines(name: str, labels: Labels, value: dict[str, Any]) -> list[str]:
    lines = []
    cumulative = 0
    bounds = [*value["bounds"], math.inf]
    for bound, count in zip(bounds, value["counts"], strict=True):
        cumulative += count
        bucket_labels = {**labels, "le": _format_number(bound)}
        lines.append(f"{name}_bucket{_format_labels(bucket_labels)} {cumulative}")
    lines.append(f"{name}_sum{_format_labels(labels)} {_format_number(value['sum'])}")
    lines.append(f"{name}_count{_format_labels(labels)} {value['count']}")
    return lines


def _format_labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    pairs = ",".join(f'{key}="{_escape_label(value)}"' for key, value in sorted(labels.items()))
    return f"{{{pairs}}}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
