"""Telemetry of a web worker, and `GET /metrics` for the whole server.

Each web worker records `http.server.request.duration` (OpenTelemetry's HTTP semantic
conventions, labelled by route template, never by path, because a ping path contains
the check's UUID or the project's ping key) and the round trip of every shard request.
While trace export is on, each request gets a server span, and its context goes to the
shard process in the request's `traceparent` field.

`GET /metrics` returns the metrics of every process of the server, merged:

- the web worker that serves the scrape collects its own metrics;
- it sends the `metrics` socket operation to every shard process;
- it sends the same request to every other web worker, over that worker's metrics
  socket. Each worker listens, from its ASGI start-up until its shutdown, on
  `RUNTIME_DIR/web-metrics/<pid>.sock`. A socket that refuses connections belongs to a
  worker that is gone, and the scrape deletes it.

Web workers' series are added up (they have no label that distinguishes them), while
shard processes' series carry `shard`. `serverlord_shard_up` and
`serverlord_web_workers` show which processes responded, so a missing process shows as a
gap instead of silently lower totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi
from opentelemetry import context, propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serverlord import protocol
from serverlord.config import Settings
from serverlord.logs import setup_logging
from serverlord.observability.exposition import CONTENT_TYPE, Family, merge, render
from serverlord.observability.logcontext import install_log_context
from serverlord.observability.projects import ProjectMetrics
from serverlord.observability.telemetry import LATENCY_BUCKETS, Telemetry
from serverlord.web.auth import Catalog
from serverlord.web.shards import ShardRouter, ShardUnavailable

log = logging.getLogger(__name__)

# Seconds a scrape waits for each shard process and each other web worker.
SCRAPE_TIMEOUT = 2.0
PEER_FOLDER = "web-metrics"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Requests that would only add noise to traces: Prometheus and load balancers poll them.
UNTRACED_PATHS = frozenset({"/metrics", "/healthz"})

_traceparent = TraceContextTextMapPropagator()


class _HeaderGetter(Getter[falcon.asgi.Request]):
    def get(self, carrier: falcon.asgi.Request, key: str) -> list[str] | None:
        value = carrier.get_header(key)
        return None if value is None else [value]

    def keys(self, carrier: falcon.asgi.Request) -> list[str]:
        return list(carrier.headers)


_header_getter = _HeaderGetter()


class WebTelemetry:
    """The instruments of one web worker, its metrics socket and the scrape of all processes."""

    def __init__(self, router: ShardRouter, runtime_dir: Path, token: str | None) -> None:
        self.telemetry = Telemetry("web")
        self.tracer = self.telemetry.tracer
        self.router = router
        self.token = token
        self.peer_folder = runtime_dir / PEER_FOLDER
        self.peer_path = self.peer_folder / f"{os.getpid()}.sock"
        self._peer_server: asyncio.AbstractServer | None = None

        meter = self.telemetry.meter
        self.request_duration = self.telemetry.histogram(
            "http.server.request.duration",
            "s",
            "Duration of HTTP server requests.",
            LATENCY_BUCKETS,
        )
        # Requests in progress by (method, scheme), kept as plain integers because an
        # OpenTelemetry add() on every request start and end costs several microseconds.
        self.active_requests: Counter[tuple[str, str]] = Counter()
        meter.create_observable_up_down_counter(
            "http.server.active_requests",
            [self._observe_active_requests],
            unit="{request}",
            description="Number of active HTTP server requests.",
        )
        self.round_trip = self.telemetry.histogram(
            "serverlord.socket.round_trip.duration",
            "s",
            "Round trip of a web worker's request to a shard process, by op.",
            LATENCY_BUCKETS,
        )

    def _observe_active_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(count, {"http.request.method": method, "url.scheme": scheme})
            for (method, scheme), count in list(self.active_requests.items())
        ]

    # -- shard requests (the ShardConnection observer) ---------------------------------

    def outgoing(self, shard: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Return the request's arguments with the current trace context added."""
        if self.tracer is None:
            return args
        carrier: dict[str, str] = {}
        _traceparent.inject(carrier)
        traceparent = carrier.get("traceparent")
        return args if traceparent is None else {**args, "traceparent": traceparent}

    def finished(self, shard: int, op: str, status: int | None, seconds: float) -> None:
        """Record one round trip; `status` is None when no response arrived."""
        self.round_trip.record(
            seconds,
            {"shard": shard, "op": op, "status": "none" if status is None else status},
        )

    # -- the metrics socket ------------------------------------------------------------

    async def start_peer_server(self) -> None:
        """Listen for other workers' scrapes, publishing the socket only once it accepts."""
        self.peer_folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        pending = self.peer_path.with_name(self.peer_path.name + ".new")
        pending.unlink(missing_ok=True)
        self._peer_server = await asyncio.start_unix_server(self._serve_peer, path=str(pending))
        os.chmod(pending, 0o600)
        pending.replace(self.peer_path)
        log.info("web worker %d serves its metrics on %s", os.getpid(), self.peer_path)

    async def stop_peer_server(self) -> None:
        if self._peer_server is not None:
            self._peer_server.close()
            self._peer_server = None
        self.peer_path.unlink(missing_ok=True)

    async def _serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = protocol.FrameDecoder()
        try:
            while data := await reader.read(65536):
                for request_id, op, _args in decoder.feed(data):
                    if op == "metrics":
                        answer = [request_id, 200, {"families": self.telemetry.snapshot()}]
                    else:
                        answer = [request_id, 400, {"error": f"unknown operation {op!r}"}]
                    writer.write(protocol.encode(answer))
                    await writer.drain()
        except (OSError, protocol.ProtocolError) as exc:
            log.warning("web worker %d: a metrics connection failed: %s", os.getpid(), exc)
        finally:
            writer.close()

    # -- the scrape --------------------------------------------------------------------

    async def collect_all(self) -> list[Family]:
        """Return the merged metric families of this worker, every shard and every peer."""
        shard_count = len(self.router.connections)
        shard_answers, peer_answers = await asyncio.gather(
            asyncio.gather(*(self._shard_families(shard) for shard in range(shard_count))),
            self._peer_families(),
        )
        own = self.telemetry.snapshot()
        families = merge([own, *[f for f in shard_answers if f is not None], *peer_answers])
        families.append(
            {
                "name": "serverlord_shard_up",
                "type": "gauge",
                "help": "Whether the shard process responded to this scrape (1) or not (0).",
                "series": [
                    [{"shard": str(shard)}, 0 if answer is None else 1]
                    for shard, answer in enumerate(shard_answers)
                ],
            }
        )
        families.append(
            {
                "name": "serverlord_web_workers",
                "type": "gauge",
                "help": "Web workers whose metrics this scrape includes.",
                "series": [[{}, 1 + len(peer_answers)]],
            }
        )
        return families

    async def _shard_families(self, shard: int) -> list[Family] | None:
        try:
            status, body = await asyncio.wait_for(
                self.router.request_shard(shard, "metrics", {}), SCRAPE_TIMEOUT
            )
        except (ShardUnavailable, TimeoutError) as exc:
            log.warning("metrics scrape: shard %d did not respond: %s", shard, exc)
            return None
        if status != 200:
            log.warning(
                "metrics scrape: shard %d responded with status %d: %s", shard, status, body
            )
            return None
        families: list[Family] = body["families"]
        return families

    async def _peer_families(self) -> list[list[Family]]:
        try:
            paths = [
                path for path in self.peer_folder.glob("*.sock") if path.name != self.peer_path.name
            ]
        except OSError:
            return []
        answers = await asyncio.gather(*(self._peer_snapshot(path) for path in paths))
        return [answer for answer in answers if answer is not None]

    async def _peer_snapshot(self, path: Path) -> list[Family] | None:
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                return await _request_metrics(path)
        except ConnectionRefusedError:
            _remove_stale_socket(path)
        except (OSError, TimeoutError, protocol.ProtocolError) as exc:
            log.warning("metrics scrape: web worker socket %s failed: %s", path, exc)
        return None

    def authorize(self, req: falcon.asgi.Request) -> None:
        """Raise 401 unless METRICS_TOKEN is unset or the request carries it as a bearer token."""
        if self.token is None:
            return
        header = req.get_header("Authorization") or ""
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode(), self.token.encode()
        ):
            raise falcon.HTTPUnauthorized(
                title="Unauthorized",
                description="missing or wrong metrics token; send the METRICS_TOKEN value"
                " as 'Authorization: Bearer <token>'",
                challenges=["Bearer"],
            )


def _remove_stale_socket(path: Path) -> None:
    """Delete the socket of a web worker that has exited, so no process accepts on it."""
    path.unlink(missing_ok=True)
    log.info("removed the metrics socket %s of a web worker that is gone", path)


async def _request_metrics(path: Path) -> list[Family]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(protocol.encode([1, "metrics", {}]))
        decoder = protocol.FrameDecoder()
        while data := await reader.read(65536):
            for _request_id, status, body in decoder.feed(data):
                if status != 200:
                    raise protocol.ProtocolError(
                        f"the worker responded with status {status}: {body}"
                    )
                families: list[Family] = body["families"]
                return families
        raise protocol.ProtocolError("the worker closed the connection without a response")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class TelemetryMiddleware:
    """Times and traces every request, and runs the metrics socket for the worker's life."""

    def __init__(self, web: WebTelemetry) -> None:
        self.web = web

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        try:
            await self.web.start_peer_server()
        except OSError as exc:
            log.warning(
                "web worker %d cannot serve its metrics to the other workers, so /metrics"
                " answered by them leaves it out: %s",
                os.getpid(),
                exc,
            )

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        await self.web.stop_peer_server()
        await asyncio.to_thread(self.web.telemetry.shutdown)

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.telemetry_started = time.perf_counter()
        method = req.method if req.method in HTTP_METHODS else "_OTHER"
        self.web.active_requests[method, req.scheme] += 1
        if self.web.tracer is None or req.path in UNTRACED_PATHS:
            return
        parent = propagate.extract(req, getter=_header_getter)
        span = self.web.tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.scheme": req.scheme},
        )
        req.context.telemetry_span = span
        req.context.telemetry_token = context.attach(trace.set_span_in_context(span))

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        started = req.context.get("telemetry_started")
        if started is None:
            return
        method = req.method if req.method in HTTP_METHODS else "_OTHER"
        status = _status_code(resp)
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": req.scheme,
            "http.response.status_code": status,
        }
        route = req.uri_template
        if route:
            attributes["http.route"] = route
        self.web.request_duration.record(time.perf_counter() - started, attributes)
        self.web.active_requests[method, req.scheme] -= 1
        span = req.context.get("telemetry_span")
        if span is not None:
            _end_span(span, method, route, status, attributes)
            context.detach(req.context.telemetry_token)


def _status_code(resp: falcon.asgi.Response) -> int:
    status = resp.status
    if isinstance(status, int):
        return status
    return int(str(status).split(" ", 1)[0])


def _end_span(
    span: trace.Span, method: str, route: str | None, status: int, attributes: dict[str, Any]
) -> None:
    if route:
        span.update_name(f"{method} {route}")
    span.set_attributes(attributes)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


class MetricsResource:
    """`GET /metrics`: every process's metrics in the Prometheus text format."""

    def __init__(self, web: WebTelemetry) -> None:
        self.web = web

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self.web.authorize(req)
        families = await self.web.collect_all()
        resp.content_type = CONTENT_TYPE
        resp.text = render(families)


def install_web_telemetry(
    app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response],
    router: ShardRouter,
    settings: Settings,
    catalog: Catalog,
) -> WebTelemetry:
    """Instrument `app` and `router`, and serve `/metrics` and the projects' metrics."""
    # gunicorn configures only its own loggers, so without this the web tier's records
    # below WARNING were dropped and none were JSON lines.
    setup_logging(settings.log_level, "web")
    install_log_context(None, settings.log_format == "json")
    web = WebTelemetry(router, settings.runtime_dir, settings.metrics_token)
    app.add_middleware(TelemetryMiddleware(web))
    for connection in router.connections:
        connection.observer = web
    app.add_route("/metrics", MetricsResource(web))
    project_metrics = ProjectMetrics(router, catalog)
    app.add_route("/projects/{project}/metrics", project_metrics)
    app.add_route("/projects/{project}/metrics/{key}", project_metrics)
    return web
