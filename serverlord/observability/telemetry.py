"""OpenTelemetry set-up for one process: resource, meter, tracer and OTLP export.

Every process (each shard process, each web worker) calls `Telemetry(role, shard)` once.
Metrics always go to an in-memory reader, which `GET /metrics` reads on demand. OTLP
export over HTTP/protobuf is added when an endpoint is configured:
OTEL_EXPORTER_OTLP_ENDPOINT (the standard base URL), OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT (full signal URLs), or OTEL_COLLECTOR_ENDPOINT (a
base URL, used when the standard variables are unset). The exporters read the other
standard variables themselves: OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION and
_CERTIFICATE, OTEL_METRIC_EXPORT_INTERVAL, OTEL_BSP_* for the span batches and
OTEL_TRACES_SAMPLER(_ARG). OTEL_SDK_DISABLED=true turns export off, and
OTEL_TRACES_EXPORTER=none or OTEL_METRICS_EXPORTER=none turns off one signal.

Spans are made only while trace export is on, so a server without a collector pays no
tracing cost on the ping path.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer

from serverlord import __version__
from serverlord.observability.exposition import Family, families_from
from serverlord.observability.process_metrics import register_process_metrics

log = logging.getLogger(__name__)

INSTRUMENTATION_SCOPE = "serverlord"

# Seconds: a bound on the process's own latencies (a ping, a commit, a socket round
# trip), from a tenth of a millisecond, where a healthy ping sits, up to the 10 s API
# timeout.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True)
class ExportSettings:
    """OTLP endpoints by signal. An endpoint of None means that the signal is not exported."""

    traces_endpoint: str | None
    metrics_endpoint: str | None
    protocol: str

    @property
    def any(self) -> bool:
        return self.traces_endpoint is not None or self.metrics_endpoint is not None


def export_settings(env: Mapping[str, str]) -> ExportSettings:
    """Read the OTLP endpoints from the standard OTEL_* variables and OTEL_COLLECTOR_ENDPOINT."""
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip() or "http/protobuf"
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ExportSettings(None, None, protocol)
    base = (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or env.get("OTEL_COLLECTOR_ENDPOINT", "").strip()
    )

    def signal_endpoint(signal: str, exporter_variable: str) -> str | None:
        if env.get(exporter_variable, "otlp").strip().lower() == "none":
            return None
        specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
        if specific:
            return specific
        if base:
            return f"{base.rstrip('/')}/v1/{signal}"
        return None

    return ExportSettings(
        signal_endpoint("traces", "OTEL_TRACES_EXPORTER"),
        signal_endpoint("metrics", "OTEL_METRICS_EXPORTER"),
        protocol,
    )


def build_resource(role: str, shard: int | None) -> Resource:
    """Return the resource of this process; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win."""
    attributes: dict[str, str | int] = {
        "service.name": "serverlord",
        "service.version": __version__,
        "service.instance.id": str(uuid.uuid4()),
        "process.pid": os.getpid(),
        "serverlord.role": role,
    }
    if shard is not None:
        attributes["serverlord.shard"] = shard
    # Resource.create reads the environment and adds the SDK's own attributes; merging
    # it second lets the environment override ours. Without a configured name it says
    # "unknown_service", which must not replace ours.
    from_environment = Resource.create({})
    name = str(from_environment.attributes.get("service.name", ""))
    if name.startswith("unknown_service"):
        from_environment = from_environment.merge(Resource({"service.name": "serverlord"}))
    return Resource(attributes).merge(from_environment)


class Telemetry:
    """The meter, the tracer (None without trace export) and the exporters of one process."""

    def __init__(
        self, role: str, shard: int | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if env is None else env
        self.role = role
        self.shard = shard
        self.labels: dict[str, str] = {"role": role}
        if shard is not None:
            self.labels["shard"] = str(shard)
        self.export = export_settings(env)
        if self.export.any and self.export.protocol != "http/protobuf":
            log.warning(
                "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting with http/protobuf,"
                " so point the endpoint at the collector's OTLP/HTTP port (4318 by default)",
                self.export.protocol,
            )
        resource = build_resource(role, shard)

        self._reader = InMemoryMetricReader()
        readers: list[MetricReader] = [self._reader]
        if self.export.metrics_endpoint is not None:
            readers.append(
                PeriodicExportingMetricReader(OTLPMetricExporter(self.export.metrics_endpoint))
            )
        # Shutdown is called by the process in its own stop sequence, with a time limit.
        self.meter_provider = MeterProvider(
            metric_readers=readers, resource=resource, shutdown_on_exit=False
        )
        self.meter: Meter = self.meter_provider.get_meter(INSTRUMENTATION_SCOPE, __version__)

        self.tracer_provider: TracerProvider | None = None
        self.tracer: Tracer | None = None
        if self.export.traces_endpoint is not None:
            self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            self.tracer_provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(self.export.traces_endpoint))
            )
            self.tracer = self.tracer_provider.get_tracer(INSTRUMENTATION_SCOPE, __version__)

        register_process_metrics(self.meter)
        if self.export.any:
            log.info(
                "%s exports telemetry by OTLP: traces to %s, metrics to %s",
                self.process_name,
                self.export.traces_endpoint or "nowhere",
                self.export.metrics_endpoint or "nowhere",
            )

    @property
    def process_name(self) -> str:
        return self.role if self.shard is None else f"{self.role} {self.shard}"

    def snapshot(self) -> list[Family]:
        """Collect this process's metrics now, as families labelled with its role and shard."""
        return families_from(self._reader.get_metrics_data(), self.labels)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Export what is buffered, waiting up to about `timeout` seconds for each signal."""
        millis = int(timeout * 1000)
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(millis)
            self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=millis)
