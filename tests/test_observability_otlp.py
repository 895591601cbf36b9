"""OTLP export of a running server: metrics and spans reach a collector on loopback.

The collector is a small OTLP/HTTP sink in this file that decodes what the exporters
send, so the tests check the real wire format of the real exporters.
"""

from __future__ import annotations

import gzip
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from tests.conftest import create_database
from tests.server import Server, request, running_server, server_env

pytestmark = pytest.mark.e2e

# Seconds the tests wait for the exporters' next batch before they fail.
EXPORT_WAIT = 20.0

T = TypeVar("T")


class ReceivedExports:
    """The OTLP export requests a test receiver has decoded, shared by its threads."""

    def __init__(self) -> None:
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.traces: list[ExportTraceServiceRequest] = []
        self._lock = threading.Lock()

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Return every span received with its resource's attributes."""
        with self._lock:
            found: list[tuple[dict[str, Any], Any]] = []
            for export in self.traces:
                for resource_spans in export.resource_spans:
                    resource = attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        found.extend((resource, span) for span in scope_spans.spans)
            return found

    def metric_names(self) -> dict[str, set[str]]:
        """Return the metric names received, by the `serverlord.role` of their resource."""
        with self._lock:
            names: dict[str, set[str]] = {}
            for export in self.metrics:
                for resource_metrics in export.resource_metrics:
                    role = attributes(resource_metrics.resource.attributes)["serverlord.role"]
                    for scope_metrics in resource_metrics.scope_metrics:
                        names.setdefault(role, set()).update(
                            metric.name for metric in scope_metrics.metrics
                        )
            return names


class OtlpSink(ReceivedExports):
    """An OTLP/HTTP receiver on 127.0.0.1 that keeps every decoded request."""

    def __init__(self) -> None:
        super().__init__()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                answer = sink.receive(self.path, body)
                if answer is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def receive(self, path: str, body: bytes) -> bytes | None:
        with self._lock:
            if path == "/v1/metrics":
                metrics = ExportMetricsServiceRequest()
                metrics.ParseFromString(body)
                self.metrics.append(metrics)
                metrics_response: bytes = ExportMetricsServiceResponse().SerializeToString()
                return metrics_response
            if path == "/v1/traces":
                traces = ExportTraceServiceRequest()
                traces.ParseFromString(body)
                self.traces.append(traces)
                traces_response: bytes = ExportTraceServiceResponse().SerializeToString()
                return traces_response
        return None

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def attributes(pairs: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        kind = pair.value.WhichOneof("value")
        values[pair.key] = getattr(pair.value, kind) if kind else None
    return values


def wait_for(probe: Callable[[], T | None], what: str) -> T:
    """Return probe()'s first true value, failing after EXPORT_WAIT seconds."""
    deadline = time.monotonic() + EXPORT_WAIT
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def sink() -> Iterator[OtlpSink]:
    with OtlpSink() as running:
        yield running


@pytest.fixture
def exporting_server(
    pg_admin_dsn: str, runtime_dir: Path, tmp_path: Path, sink: OtlpSink
) -> Iterator[Server]:
    env = server_env(
        create_database(pg_admin_dsn, "otlp"),
        runtime_dir,
        shard_count=2,
        OTEL_EXPORTER_OTLP_ENDPOINT=sink.url,
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    with running_server(env, tmp_path / "server.log") as server:
        yield server


def test_metrics_reach_collector_from_every_role(exporting_server: Server, sink: OtlpSink) -> None:
    server = exporting_server
    check_id = server.create_check()["id"]
    assert request("GET", f"{server.url}/ping/{check_id}").status == 200

    def both_roles_with_pings() -> dict[str, set[str]] | None:
        names = sink.metric_names()
        shard_names = names.get("shard", set())
        ready = "serverlord.commit.duration" in shard_names and "web" in names
        return names if ready else None

    names = wait_for(both_roles_with_pings, "metrics from web workers and shard processes")
    assert "http.server.request.duration" in names["web"]
    assert "serverlord.socket.round_trip.duration" in names["web"]
    assert "serverlord.shard.pings" in names["shard"]
    assert "process.cpu.time" in names["shard"]
    assert "process.memory.usage" in names["web"]


CLIENT_SPAN_ID = "00f067aa0ba902b7"


def traced_ping(server: Server, sink: ReceivedExports, description: str) -> tuple[str, Any, Any]:
    """Ping a new check with a client trace context; return its id and the web and shard spans."""
    check_id: str = server.create_check()["id"]
    trace_id = uuid.uuid4().hex
    headers = {"traceparent": f"00-{trace_id}-{CLIENT_SPAN_ID}-01"}
    assert request("GET", f"{server.url}/ping/{check_id}", headers=headers).status == 200

    def spans_of_ping() -> list[tuple[dict[str, Any], Any]] | None:
        found = [(res, span) for res, span in sink.spans() if span.trace_id.hex() == trace_id]
        roles = {res["serverlord.role"] for res, _ in found}
        return found if {"web", "shard"} <= roles else None

    found = wait_for(spans_of_ping, description)
    [web_span] = [span for res, span in found if res["serverlord.role"] == "web"]
    [shard_span] = [span for res, span in found if res["serverlord.role"] == "shard"]
    return check_id, web_span, shard_span


def test_ping_trace_crosses_unix_socket(exporting_server: Server, sink: OtlpSink) -> None:
    check_id, web_span, shard_span = traced_ping(
        exporting_server, sink, "the ping's spans from both processes"
    )
    assert web_span.name == "GET /ping/{code}"
    assert web_span.parent_span_id.hex() == CLIENT_SPAN_ID
    assert shard_span.name == "shard ping"
    assert shard_span.parent_span_id == web_span.span_id
    shard_attributes = attributes(shard_span.attributes)
    assert shard_attributes["rpc.method"] == "ping"
    # Spans name a check by its unique key: the UUID is the secret of the ping URL.
    assert check_id not in str(shard_attributes)
    assert len(shard_attributes["serverlord.check.unique_key"]) == 40


def test_commit_and_flip_spans_are_exported(exporting_server: Server, sink: OtlpSink) -> None:
    server = exporting_server
    check_id = server.create_check()["id"]
    assert request("GET", f"{server.url}/ping/{check_id}/fail").status == 200

    def flip_and_commit() -> list[str] | None:
        names = [span.name for _, span in sink.spans()]
        return names if {"check flip", "shard commit"} <= set(names) else None

    names = wait_for(flip_and_commit, "commit and flip spans")
    assert "shard commit" in names
    assert "check flip" in names
