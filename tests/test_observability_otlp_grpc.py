"""OTLP export over gRPC: the protocol variables, and a running server's metrics and spans.

The collector is a gRPC sink in this file, built from the OTLP service definitions of the
opentelemetry-proto package and listening on 127.0.0.1, so the tests check what the real
gRPC exporters send.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import (
    MetricsServiceServicer,
    add_MetricsServiceServicer_to_server,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)

from serverlord.config import ConfigError
from serverlord.observability.telemetry import ExportSettings, Telemetry, export_settings
from tests.conftest import create_database
from tests.server import Server, request, running_server, server_env
from tests.test_observability_otlp import OtlpSink, ReceivedExports, traced_ping, wait_for

BASE = "http://collector.example:4317"


class GrpcOtlpSink(ReceivedExports):
    """An OTLP/gRPC receiver on 127.0.0.1 that keeps every request it receives."""

    def __init__(self) -> None:
        super().__init__()
        self._server = grpc.server(ThreadPoolExecutor(max_workers=4))
        # The generated *_pb2_grpc modules have no type annotations.
        add_MetricsServiceServicer_to_server(_MetricsReceiver(self), self._server)  # type: ignore[no-untyped-call]
        add_TraceServiceServicer_to_server(_TraceReceiver(self), self._server)  # type: ignore[no-untyped-call]
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.url = f"http://{self.address}"

    def add_metrics(self, export: ExportMetricsServiceRequest) -> None:
        with self._lock:
            self.metrics.append(export)

    def add_traces(self, export: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.traces.append(export)

    def __enter__(self) -> GrpcOtlpSink:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)


# The method names below are fixed by the OTLP service definitions.
class _MetricsReceiver(MetricsServiceServicer):
    def __init__(self, sink: GrpcOtlpSink) -> None:
        self.sink = sink

    def Export(  # noqa: N802
        self, request: ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> ExportMetricsServiceResponse:
        self.sink.add_metrics(request)
        return ExportMetricsServiceResponse()


class _TraceReceiver(TraceServiceServicer):
    def __init__(self, sink: GrpcOtlpSink) -> None:
        self.sink = sink

    def Export(  # noqa: N802
        self, request: ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> ExportTraceServiceResponse:
        self.sink.add_traces(request)
        return ExportTraceServiceResponse()


@pytest.fixture
def grpc_sink() -> Iterator[GrpcOtlpSink]:
    with GrpcOtlpSink() as running:
        yield running


# -- export_settings -------------------------------------------------------------------


def test_default_protocol_appends_signal_paths() -> None:
    settings = export_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example:4318/"})
    assert settings.traces_endpoint == "http://collector.example:4318/v1/traces"
    assert settings.metrics_endpoint == "http://collector.example:4318/v1/metrics"
    assert settings.traces_protocol == "http/protobuf"
    assert settings.metrics_protocol == "http/protobuf"


def test_grpc_uses_base_endpoint_as_given() -> None:
    settings = export_settings(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert settings.traces_endpoint == BASE
    assert settings.metrics_endpoint == BASE
    assert settings.traces_protocol == "grpc"
    assert settings.metrics_protocol == "grpc"


def test_grpc_uses_collector_endpoint_as_given() -> None:
    settings = export_settings(
        {"OTEL_COLLECTOR_ENDPOINT": "collector.example:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert settings.traces_endpoint == "collector.example:4317"
    assert settings.metrics_endpoint == "collector.example:4317"


def test_grpc_keeps_signal_endpoints() -> None:
    settings = export_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": BASE,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        }
    )
    assert settings.traces_endpoint == "https://traces.example:4317"
    assert settings.metrics_endpoint == BASE


def test_traces_protocol_overrides_general() -> None:
    settings = export_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": BASE,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        }
    )
    assert settings.traces_protocol == "grpc"
    assert settings.traces_endpoint == BASE
    assert settings.metrics_protocol == "http/protobuf"
    assert settings.metrics_endpoint == f"{BASE}/v1/metrics"


def test_metrics_protocol_overrides_general() -> None:
    settings = export_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": BASE,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        }
    )
    assert settings.metrics_protocol == "http/protobuf"
    assert settings.metrics_endpoint == f"{BASE}/v1/metrics"
    assert settings.traces_protocol == "grpc"
    assert settings.traces_endpoint == BASE


@pytest.mark.parametrize(
    "variable",
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_COLLECTOR_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ],
)
@pytest.mark.parametrize(
    "value", ["not a url", "ftp://collector.example", "http://", "collector:4318"]
)
def test_http_endpoint_not_url_rejected(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        export_settings({variable: value})
    message = str(raised.value)
    assert message.startswith(f"{variable} must be an http:// or https:// URL")
    assert repr(value) in message


@pytest.mark.parametrize("value", ["not a url", "ftp://collector.example:4317", "http://"])
def test_grpc_endpoint_invalid_rejected(value: str) -> None:
    env = {"OTEL_COLLECTOR_ENDPOINT": value, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with pytest.raises(ConfigError) as raised:
        export_settings(env)
    assert str(raised.value).startswith("OTEL_COLLECTOR_ENDPOINT must be")


def test_unexported_signal_endpoint_not_checked() -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "not a url", "OTEL_TRACES_EXPORTER": "none"}
    assert export_settings(env).traces_endpoint is None


def test_protocol_ignores_case_and_blanks() -> None:
    settings = export_settings(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE, "OTEL_EXPORTER_OTLP_PROTOCOL": " GRPC "}
    )
    assert settings.traces_protocol == "grpc"
    assert settings.metrics_protocol == "grpc"


def test_empty_protocol_means_default() -> None:
    settings = export_settings(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": BASE, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": ""}
    )
    assert settings.traces_protocol == "http/protobuf"


@pytest.mark.parametrize(
    "variable",
    [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ],
)
def test_http_json_is_rejected(variable: str) -> None:
    with pytest.raises(ConfigError) as raised:
        export_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": BASE, variable: "http/json"})
    message = str(raised.value)
    assert f"{variable}=http/json is not supported" in message
    assert "no OTLP http/json exporter" in message
    assert "Set it to grpc or http/protobuf." in message


def test_unknown_protocol_is_rejected() -> None:
    with pytest.raises(ConfigError) as raised:
        export_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": BASE, "OTEL_EXPORTER_OTLP_PROTOCOL": "udp"})
    message = str(raised.value)
    assert message == "OTEL_EXPORTER_OTLP_PROTOCOL=udp is invalid. Set it to grpc or http/protobuf."


def test_protocol_of_unexported_signal_is_ignored() -> None:
    settings = export_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": BASE,
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
        }
    )
    assert settings.traces_endpoint is None
    assert settings.metrics_endpoint == f"{BASE}/v1/metrics"


def test_protocol_without_endpoint_is_ignored() -> None:
    assert export_settings({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}) == ExportSettings(
        None, None, "http/json", "http/json"
    )


def test_disabled_sdk_ignores_protocol() -> None:
    settings = export_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": BASE,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
            "OTEL_SDK_DISABLED": "true",
        }
    )
    assert not settings.any


# -- exporters in this process ---------------------------------------------------------


def export_once(env: dict[str, str]) -> None:
    """Record one span and one metric with a Telemetry of `env`, then flush by shutdown."""
    telemetry = Telemetry("web", env=env)
    assert telemetry.tracer is not None
    with telemetry.tracer.start_as_current_span("grpc probe"):
        pass
    telemetry.meter.create_counter("serverlord.test.probes").add(1)
    telemetry.shutdown()


def test_grpc_exporters_reach_sink(grpc_sink: GrpcOtlpSink) -> None:
    export_once(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": grpc_sink.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert [span.name for _, span in grpc_sink.spans()] == ["grpc probe"]
    assert "serverlord.test.probes" in grpc_sink.metric_names()["web"]


def test_insecure_variable_allows_bare_address(
    grpc_sink: GrpcOtlpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a scheme the exporters use TLS unless OTEL_EXPORTER_OTLP_INSECURE=true,
    # which they read from the process environment.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    export_once(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": grpc_sink.address, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert [span.name for _, span in grpc_sink.spans()] == ["grpc probe"]
    assert "serverlord.test.probes" in grpc_sink.metric_names()["web"]


def test_signals_use_their_own_protocols(grpc_sink: GrpcOtlpSink) -> None:
    with OtlpSink() as http_sink:
        export_once(
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": grpc_sink.url,
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{http_sink.url}/v1/metrics",
            }
        )
        assert [span.name for _, span in grpc_sink.spans()] == ["grpc probe"]
        assert grpc_sink.metrics == []
        assert "serverlord.test.probes" in http_sink.metric_names()["web"]
        assert http_sink.traces == []


# -- a running server ------------------------------------------------------------------


@pytest.fixture
def grpc_exporting_server(
    pg_admin_dsn: str, runtime_dir: Path, tmp_path: Path, grpc_sink: GrpcOtlpSink
) -> Iterator[Server]:
    env = server_env(
        create_database(pg_admin_dsn, "otlpgrpc"),
        runtime_dir,
        shard_count=2,
        OTEL_EXPORTER_OTLP_ENDPOINT=grpc_sink.url,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    with running_server(env, tmp_path / "server.log") as server:
        yield server


@pytest.mark.e2e
def test_server_metrics_arrive_over_grpc(
    grpc_exporting_server: Server, grpc_sink: GrpcOtlpSink
) -> None:
    server = grpc_exporting_server
    check_id = server.create_check()["id"]
    assert request("GET", f"{server.url}/ping/{check_id}").status == 200

    def both_roles_with_pings() -> dict[str, set[str]] | None:
        names = grpc_sink.metric_names()
        ready = "serverlord.commit.duration" in names.get("shard", set()) and "web" in names
        return names if ready else None

    names = wait_for(both_roles_with_pings, "metrics from web workers and shard processes")
    assert "http.server.request.duration" in names["web"]
    assert "serverlord.socket.round_trip.duration" in names["web"]
    assert "serverlord.shard.pings" in names["shard"]
    assert "process.cpu.time" in names["shard"]


@pytest.mark.e2e
def test_server_spans_arrive_over_grpc(
    grpc_exporting_server: Server, grpc_sink: GrpcOtlpSink
) -> None:
    _, web_span, shard_span = traced_ping(
        grpc_exporting_server, grpc_sink, "the ping's spans from both processes over gRPC"
    )
    assert web_span.name == "GET /ping/{code}"
    assert shard_span.name == "shard ping"
    assert shard_span.parent_span_id == web_span.span_id


@pytest.mark.e2e
def test_server_rejects_http_json_at_start(
    pg_admin_dsn: str, runtime_dir: Path, tmp_path: Path
) -> None:
    env = server_env(
        create_database(pg_admin_dsn, "otlpjson"),
        runtime_dir,
        shard_count=1,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/json",
    )
    server = Server(env, tmp_path / "server.log")
    try:
        with pytest.raises(RuntimeError, match="server exited"):
            server.start()
    finally:
        server.stop()
    log = server.log()
    assert "invalid configuration: OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported" in log
    assert "Set it to grpc or http/protobuf." in log
    assert "shard 0" not in log
