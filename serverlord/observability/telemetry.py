"""OpenTelemetry set-up for one process: resource, meter, tracer and OTLP export.

Every process (each shard process, each web worker) calls `Telemetry(role, shard)` once.
Metrics always go to an in-memory reader, which `GET /metrics` reads on demand. OTLP
export is added when an endpoint is configured: OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, or
OTEL_COLLECTOR_ENDPOINT (used when the standard variables are unset).

Each signal is sent with http/protobuf (the default) or grpc, chosen by
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, else by
OTEL_EXPORTER_OTLP_PROTOCOL. Over HTTP the base endpoint gets the signal's path
(/v1/traces, /v1/metrics) appended. Over gRPC every endpoint is used as given, because
the service name travels in the gRPC method, not in the URL.

The exporters read the other standard variables themselves: OTEL_EXPORTER_OTLP_HEADERS,
_TIMEOUT, _COMPRESSION, _CERTIFICATE and, for gRPC, _INSECURE; OTEL_METRIC_EXPORT_INTERVAL,
OTEL_BSP_* for the span batches and OTEL_TRACES_SAMPLER(_ARG). OTEL_SDK_DISABLED=true
turns export off, and OTEL_TRACES_EXPORTER=none or OTEL_METRICS_EXPORTER=none turns off
one signal.

Spans are made only while trace export is on, so a server without a collector pays no
tracing cost on the ping path.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Tracer

from serverlord import __version__
from serverlord.config import ConfigError
from serverlord.observability.exposition import Family, families_from
from serverlord.observability.histograms import (
    LocalHistogram,
    LocalHistogramExporter,
    with_metrics,
)
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


HTTP_PROTOBUF = "http/protobuf"
GRPC = "grpc"
SUPPORTED_PROTOCOLS = (HTTP_PROTOBUF, GRPC)


@dataclass(frozen=True)
class ExportSettings:
    """OTLP endpoint and protocol by signal. A signal whose endpoint is None is not exported."""

    traces_endpoint: str | None
    metrics_endpoint: str | None
    traces_protocol: str = HTTP_PROTOBUF
    metrics_protocol: str = HTTP_PROTOBUF

    @property
    def any(self) -> bool:
        return self.traces_endpoint is not None or self.metrics_endpoint is not None


def export_settings(env: Mapping[str, str]) -> ExportSettings:
    """Read the OTLP endpoints and protocols from the OTEL_* variables.

    Raises ConfigError when an exported signal's protocol variable contains a value other
    than grpc or http/protobuf. A protocol variable of a signal that is not exported is
    not checked, because it has no effect. `serverlord serve` calls this before it
    starts any child, so a rejected value stops the start with one line.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ExportSettings(None, None)
    base = _Endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    for variable in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_COLLECTOR_ENDPOINT"):
        value = env.get(variable, "").strip()
        if value:
            base = _Endpoint(variable, value)
            break
    traces_protocol = _signal_protocol(env, "traces")
    metrics_protocol = _signal_protocol(env, "metrics")
    return ExportSettings(
        traces_endpoint=_signal_endpoint(env, "traces", traces_protocol, base),
        metrics_endpoint=_signal_endpoint(env, "metrics", metrics_protocol, base),
        traces_protocol=traces_protocol.value,
        metrics_protocol=metrics_protocol.value,
    )


@dataclass(frozen=True)
class _Protocol:
    """A signal's protocol and the variable that set it (None for the default)."""

    value: str
    variable: str | None


def _signal_protocol(env: Mapping[str, str], signal: str) -> _Protocol:
    """Return the protocol of `signal`: its own variable first, then the general one."""
    for variable in (
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ):
        value = env.get(variable, "").strip().lower()
        if value:
            return _Protocol(value, variable)
    return _Protocol(HTTP_PROTOBUF, None)


@dataclass(frozen=True)
class _Endpoint:
    """An endpoint as configured, and the variable that set it."""

    variable: str
    value: str


def _signal_endpoint(
    env: Mapping[str, str], signal: str, protocol: _Protocol, base: _Endpoint
) -> str | None:
    """Return where `signal` is exported to, or None when it is not exported."""
    if env.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower() == "none":
        return None
    variable = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    configured = _Endpoint(variable, env.get(variable, "").strip())
    endpoint = configured.value or None
    if endpoint is None and base.value:
        configured = base
        # The OTLP exporter specification: over HTTP the base URL gets the signal's
        # path, and over gRPC the endpoint is the same for every signal.
        endpoint = base.value
        if protocol.value != GRPC:
            endpoint = f"{base.value.rstrip('/')}/v1/{signal}"
    if endpoint is not None and protocol.value not in SUPPORTED_PROTOCOLS:
        raise ConfigError(_unsupported_protocol_message(protocol))
    if endpoint is not None:
        _check_endpoint(configured, protocol.value)
    return endpoint


# A gRPC target without a scheme: a host name or an IPv4 address, or an IPv6 address in
# brackets, with an optional port.
_GRPC_TARGET = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _check_endpoint(endpoint: _Endpoint, protocol: str) -> None:
    """Raise ConfigError unless the endpoint is a URL that the protocol's exporter can use.

    The exporters accept any text and only fail, again and again, when they send.
    """
    value = endpoint.value
    if protocol == GRPC and "://" not in value:
        if _GRPC_TARGET.fullmatch(value):
            return
    else:
        parts = urlsplit(value)
        try:
            port_valid = parts.port is None or parts.port > 0
        except ValueError:
            port_valid = False
        if (
            parts.scheme in ("http", "https")
            and parts.hostname
            and port_valid
            and not any(char.isspace() for char in value)
        ):
            return
    form = "an http:// or https:// URL such as http://127.0.0.1:4318"
    if protocol == GRPC:
        form = "an http:// or https:// URL or a host:port such as 127.0.0.1:4317"
    raise ConfigError(
        f"{endpoint.variable} must be {form} of the OpenTelemetry collector, got {value!r}"
    )


def _unsupported_protocol_message(protocol: _Protocol) -> str:
    setting = f"{protocol.variable}={protocol.value}"
    if protocol.value == "http/json":
        reason = f"{setting} is not supported, because the OpenTelemetry Python SDK ships no"
        return f"{reason} OTLP http/json exporter. Set it to grpc or http/protobuf."
    return f"{setting} is invalid. Set it to grpc or http/protobuf."


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
        resource = build_resource(role, shard)

        self.local_histograms: list[LocalHistogram] = []
        self._resource = resource
        self._scope = InstrumentationScope(INSTRUMENTATION_SCOPE, __version__)
        self._reader = InMemoryMetricReader()
        readers: list[MetricReader] = [self._reader]
        if self.export.metrics_endpoint is not None:
            exporter = metric_exporter(self.export.metrics_endpoint, self.export.metrics_protocol)
            readers.append(
                PeriodicExportingMetricReader(
                    LocalHistogramExporter(exporter, self.local_histograms, resource, self._scope)
                )
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
                BatchSpanProcessor(
                    span_exporter(self.export.traces_endpoint, self.export.traces_protocol)
                )
            )
            self.tracer = self.tracer_provider.get_tracer(INSTRUMENTATION_SCOPE, __version__)

        register_process_metrics(self.meter)
        if self.export.any:
            log.info(
                "%s exports telemetry by OTLP: traces to %s (%s), metrics to %s (%s)",
                self.process_name,
                self.export.traces_endpoint or "nowhere",
                self.export.traces_protocol,
                self.export.metrics_endpoint or "nowhere",
                self.export.metrics_protocol,
            )

    @property
    def process_name(self) -> str:
        return self.role if self.shard is None else f"{self.role} {self.shard}"

    def histogram(
        self, name: str, unit: str, description: str, bounds: Sequence[float]
    ) -> LocalHistogram:
        """Create a histogram for a hot path: cheap to record, exported like the others."""
        histogram = LocalHistogram(name, unit, description, bounds)
        self.local_histograms.append(histogram)
        return histogram

    def snapshot(self) -> list[Family]:
        """Collect this process's metrics now, as families labelled with its role and shard."""
        data = self._reader.get_metrics_data()
        now = time.time_ns()
        local = [
            metric
            for metric in (histogram.metric(now) for histogram in self.local_histograms)
            if metric is not None
        ]
        if local:
            data = with_metrics(data, local, self._resource, self._scope)
        return families_from(data, self.labels)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Export what is buffered, waiting up to about `timeout` seconds for each signal."""
        millis = int(timeout * 1000)
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(millis)
            self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=millis)


# The gRPC exporters are imported only when chosen, because importing them raised a
# process's peak RSS from 23 to 44 MiB (grpcio 1.85, Python 3.11), which a process that
# exports over HTTP should not pay.


def span_exporter(endpoint: str, protocol: str) -> SpanExporter:
    """Create the OTLP span exporter of `protocol` for `endpoint`."""
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(endpoint)
    return HttpSpanExporter(endpoint)


def metric_exporter(endpoint: str, protocol: str) -> MetricExporter:
    """Create the OTLP metric exporter of `protocol` for `endpoint`."""
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter(endpoint)
    return HttpMetricExporter(endpoint)
