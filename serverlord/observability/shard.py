"""Telemetry of a shard process: request, commit, deadline and pool metrics, and spans.

The shard's components keep their own counters: the writer's transactions and changes,
the engine's fired deadlines and the pool's statistics. The observable instruments here
read them at collection time. Three hooks record what has no counter:

- `wrap(handler)` times every socket request, counts pings by signal and outcome, and
  continues the trace that the web worker sent in the request's `traceparent`.
- `on_commit`, set as the writer's hook, records each transaction's size and latency,
  the flips it stored and the detection latency of timeout flips.
- `metrics` is the `metrics` socket operation that returns this process's snapshot.

Notification delivery is read from the shard database, so the numbers are right
whichever task sends the notifications: each collection (at most once a second) and a
background poll every POLL_INTERVAL seconds read the attempts stored since the last read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import psycopg
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serverlord.observability.exposition import add_empty_histograms
from serverlord.observability.logcontext import (
    check_unique_key,
    current_check,
    install_log_context,
)
from serverlord.observability.telemetry import LATENCY_BUCKETS, Telemetry
from serverlord.shardproc.service import Response, ShardService
from serverlord.shardproc.writer import Batch, FlipRow

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[Response]]

SIGNALS = frozenset({"success", "start", "fail", "log"})
PING_OUTCOMES = {
    200: "ok",
    400: "invalid",
    404: "not_found",
    421: "stale_route",
    500: "error",
    503: "unavailable",
}
TIMEOUT_REASONS = frozenset({"timeout", "run-timeout"})
CHECK_STATUSES = ("new", "up", "down", "paused")
ATTEMPT_OUTCOMES = ("sent", "failed", "timeout", "rejected")

# Changes in one transaction: from a lone ping up to the writer's queue limit.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
# Seconds from a deadline (or an event) to the commit of its flip or delivery.
DETECTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

DETECTION_HELP = "Time from a check's deadline to the commit of its down flip."
DELIVERY_HELP = "Time from the event to the end of the attempt that delivered it."

POLL_INTERVAL = 15.0
# Collections closer together than this reuse the last read of the notification tables.
POLL_MIN_INTERVAL = 1.0
POLL_TIMEOUT = 2.0
# Seconds a stopping process waits for its last export; the supervisor kills a shard
# process that takes longer than 15 s to stop.
CLOSE_TIMEOUT = 4.0
# Attempt ids are taken at insert but committed in any order, so each read looks this
# far back below the highest id seen and skips the ids it already counted.
ATTEMPT_ID_LOOKBACK = 1000
MAX_ATTEMPTS_PER_READ = 5000

_propagator = TraceContextTextMapPropagator()


class ShardTelemetry:
    def __init__(self, service: ShardService, telemetry: Telemetry) -> None:
        self.service = service
        self.telemetry = telemetry
        self.tracer = telemetry.tracer
        self._pool_name = f"shard{service.shard}"
        # Pings by (signal, outcome). A plain counter costs far less per ping than an
        # OpenTelemetry counter's add(); an observable counter reads it at collection.
        self.ping_counts: Counter[tuple[str, str]] = Counter()
        self._create_instruments()
        self._attempts_high = -1
        self._attempts_seen: set[int] = set()
        self._pending_notifications: int | None = None
        self._last_poll = 0.0
        self._poll_lock = asyncio.Lock()
        self._poll_disabled = False

    @classmethod
    def install(cls, service: ShardService) -> ShardTelemetry:
        """Set up this process's telemetry, hook it into `service` and serve `metrics`."""
        install_log_context(
            service.shard, os.environ.get("LOG_FORMAT", "").strip().lower() == "json"
        )
        shard_telemetry = cls(service, Telemetry("shard", service.shard))
        service.writer.on_commit = shard_telemetry.on_commit
        service.register("metrics", shard_telemetry.metrics)
        return shard_telemetry

    # -- instruments -------------------------------------------------------------------

    def _create_instruments(self) -> None:
        meter = self.telemetry.meter
        self.request_duration = self.telemetry.histogram(
            "serverlord.shard.request.duration",
            "s",
            "Time a shard process takes to handle a socket request, by op and status.",
            LATENCY_BUCKETS,
        )
        self.commit_duration = self.telemetry.histogram(
            "serverlord.commit.duration",
            "s",
            "Duration of a group-commit transaction, by outcome.",
            LATENCY_BUCKETS,
        )
        self.batch_size = self.telemetry.histogram(
            "serverlord.commit.batch.size",
            "{change}",
            "Changes (pings, flips, check writes) in one group-commit transaction.",
            BATCH_BUCKETS,
        )
        self.flips = meter.create_counter(
            "serverlord.flips",
            unit="{flip}",
            description="Status changes committed, by reason and new status.",
        )
        self.detection_latency = meter.create_histogram(
            "serverlord.detection.latency",
            unit="s",
            description=DETECTION_HELP,
            explicit_bucket_boundaries_advisory=DETECTION_BUCKETS,
        )
        self.attempts = meter.create_counter(
            "serverlord.notification.attempts",
            unit="{attempt}",
            description="Notification delivery attempts, by outcome and whether it was a retry.",
        )
        self.delivery_latency = meter.create_histogram(
            "serverlord.notification.delivery.latency",
            unit="s",
            description=DELIVERY_HELP,
            explicit_bucket_boundaries_advisory=DELIVERY_BUCKETS,
        )
        self._create_observable_instruments()
        self._initialize_series()

    def _create_observable_instruments(self) -> None:
        meter = self.telemetry.meter
        meter.create_observable_counter(
            "serverlord.shard.pings",
            [self._observe_pings],
            unit="{ping}",
            description="Pings handled by the shard process, by signal and outcome.",
        )
        meter.create_observable_gauge(
            "serverlord.checks",
            [self._observe_checks],
            unit="{check}",
            description="Checks in the shard process's memory, by stored status.",
        )
        meter.create_observable_gauge(
            "serverlord.wheel.size",
            [lambda options: [Observation(len(self.service.engine))]],
            unit="{deadline}",
            description="Deadlines armed in the timer wheel.",
        )
        meter.create_observable_counter(
            "serverlord.deadlines.fired",
            [lambda options: [Observation(self.service.engine.fired)]],
            unit="{deadline}",
            description="Deadlines that flipped a check since the process started.",
        )
        meter.create_observable_counter(
            "serverlord.commit.transactions",
            [lambda options: [Observation(self.service.writer.transactions)]],
            unit="{transaction}",
            description="Group-commit transactions committed.",
        )
        meter.create_observable_counter(
            "serverlord.commit.changes",
            [lambda options: [Observation(self.service.writer.changes)]],
            unit="{change}",
            description="Changes committed by the group-commit writer.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            [self._observe_pool_connections],
            unit="{connection}",
            description="Connections of the shard's database pool, by state (idle, used).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            [self._observe_pool_waiting],
            unit="{request}",
            description="Requests waiting for a connection of the shard's database pool.",
        )
        meter.create_observable_gauge(
            "serverlord.db.semaphore.waiting",
            [self._observe_semaphore_waiting],
            unit="{task}",
            description="Tasks waiting for the shard's database concurrency semaphore.",
        )
        meter.create_observable_gauge(
            "serverlord.notifications.pending",
            [self._observe_pending_notifications],
            unit="{notification}",
            description="Notifications of this shard waiting to be sent or retried.",
        )

    def _initialize_series(self) -> None:
        """Add zero to the counters' known series, so a dashboard shows 0 instead of nothing."""
        for signal in SIGNALS:
            for outcome in ("ok", "not_found", "unavailable"):
                self.ping_counts[signal, outcome] = 0
        for outcome in ATTEMPT_OUTCOMES:
            for retry in ("false", "true"):
                self.attempts.add(0, {"outcome": outcome, "retry": retry})
        for reason in ("success", "fail", "timeout"):
            new_status = "up" if reason == "success" else "down"
            self.flips.add(0, {"reason": reason, "new_status": new_status})

    def _observe_pings(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(count, {"signal": signal, "outcome": outcome})
            for (signal, outcome), count in list(self.ping_counts.items())
        ]

    def _observe_checks(self, options: CallbackOptions) -> Iterable[Observation]:
        counts: Counter[str] = Counter(check.status for check in self.service.checks.values())
        return [Observation(counts[status], {"status": status}) for status in CHECK_STATUSES]

    def _observe_pool_connections(self, options: CallbackOptions) -> Iterable[Observation]:
        stats = self.service.pool.get_stats()
        size = stats.get("pool_size", 0)
        idle = stats.get("pool_available", 0)
        pool = {"db.client.connection.pool.name": self._pool_name}
        return [
            Observation(size - idle, {**pool, "db.client.connection.state": "used"}),
            Observation(idle, {**pool, "db.client.connection.state": "idle"}),
        ]

    def _observe_pool_waiting(self, options: CallbackOptions) -> Iterable[Observation]:
        waiting = self.service.pool.get_stats().get("requests_waiting", 0)
        return [Observation(waiting, {"db.client.connection.pool.name": self._pool_name})]

    def _observe_semaphore_waiting(self, options: CallbackOptions) -> Iterable[Observation]:
        # NOTE: asyncio keeps the waiting tasks in a private deque; a Python release that
        # renames it makes this gauge read 0 instead of failing.
        waiters = getattr(self.service.semaphore, "_waiters", None) or ()
        return [Observation(len(waiters))]

    def _observe_pending_notifications(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._pending_notifications is None:
            return []
        return [Observation(self._pending_notifications)]

    # -- requests ----------------------------------------------------------------------

    def wrap(self, handler: Handler) -> Handler:
        """Return `handler` timed, counted and traced; the socket server calls the result."""

        async def handle(op: str, args: dict[str, Any]) -> Response:
            check_id = args.get("id")
            if isinstance(check_id, str):
                current_check.set(check_id)
            started = time.perf_counter()
            status = 500
            try:
                if self.tracer is None:
                    status, body = await handler(op, args)
                else:
                    status, body = await self._traced(handler, op, args)
                if status == 400 and _is_unknown_op(body):
                    op = "unknown"
                return status, body
            finally:
                self._record_request(op, args, status, time.perf_counter() - started)

        return handle

    async def _traced(self, handler: Handler, op: str, args: dict[str, Any]) -> Response:
        assert self.tracer is not None
        traceparent = args.get("traceparent")
        parent = (
            _propagator.extract({"traceparent": traceparent})
            if isinstance(traceparent, str)
            else None
        )
        attributes: dict[str, Any] = {"rpc.method": op, "serverlord.shard": self.service.shard}
        key = check_unique_key(args["id"]) if isinstance(args.get("id"), str) else None
        if key is not None:
            attributes["serverlord.check.unique_key"] = key
        with self.tracer.start_as_current_span(
            f"shard {op}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            status, body = await handler(op, args)
            span.set_attribute("serverlord.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, f"status {status}"))
            return status, body

    def _record_request(self, op: str, args: dict[str, Any], status: int, seconds: float) -> None:
        self.request_duration.record(seconds, {"op": op, "status": status})
        if op == "ping":
            signal = args.get("signal")
            signal = signal if signal in SIGNALS else "other"
            self.ping_counts[signal, PING_OUTCOMES.get(status, "error")] += 1

    async def metrics(self, args: dict[str, Any]) -> Response:
        """Serve the `metrics` operation: this process's metric families."""
        await self.poll_notifications(POLL_MIN_INTERVAL)
        families = self.telemetry.snapshot()
        labels = self.telemetry.labels
        add_empty_histograms(
            families,
            "serverlord_detection_latency_seconds",
            DETECTION_HELP,
            DETECTION_BUCKETS,
            [{**labels, "reason": reason} for reason in sorted(TIMEOUT_REASONS)],
        )
        add_empty_histograms(
            families,
            "serverlord_notification_delivery_latency_seconds",
            DELIVERY_HELP,
            DELIVERY_BUCKETS,
            [{**labels, "kind": kind} for kind in ("down", "up")],
        )
        return (200, {"families": families})

    # -- commits -----------------------------------------------------------------------

    def on_commit(self, batch: Batch, started: float, error: BaseException | None) -> None:
        """Record one transaction of the writer; `started` is its time.perf_counter().

        The writer calls this between its commit and the responses to the waiting
        requests, so an error here is logged and never raised into the writer.
        """
        try:
            self._record_commit(batch, started, error)
        except Exception:
            log.exception("shard %d could not record the metrics of a commit", self.service.shard)

    def _record_commit(self, batch: Batch, started: float, error: BaseException | None) -> None:
        finished = time.perf_counter()
        outcome = "ok" if error is None else "error"
        self.commit_duration.record(finished - started, {"outcome": outcome})
        self.batch_size.record(len(batch))
        if self.tracer is not None:
            self._commit_span(batch, started, finished, error)
        if error is not None:
            return
        committed_at = time.time()
        for flip in batch.flips:
            self.flips.add(1, {"reason": flip.reason, "new_status": flip.new_status})
            # A flip with hold_until is a deadline that passed while the shard process was
            # stopped; its delay measures the outage, not detection.
            if flip.reason in TIMEOUT_REASONS and flip.hold_until is None:
                delay = max(0.0, committed_at - flip.created)
                self.detection_latency.record(delay, {"reason": flip.reason})
            if self.tracer is not None:
                self._flip_span(flip, committed_at)

    def _commit_span(
        self, batch: Batch, started: float, finished: float, error: BaseException | None
    ) -> None:
        assert self.tracer is not None
        end_ns = time.time_ns()
        start_ns = end_ns - int((finished - started) * 1e9)
        span = self.tracer.start_span(
            "shard commit",
            start_time=start_ns,
            attributes={
                "serverlord.shard": self.service.shard,
                "serverlord.commit.changes": len(batch),
                "serverlord.commit.pings": len(batch.pings),
                "serverlord.commit.flips": len(batch.flips),
            },
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        span.end(end_time=end_ns)

    def _flip_span(self, flip: FlipRow, committed_at: float) -> None:
        """Record a span from the flip's instant (the deadline, for a timeout) to its commit."""
        assert self.tracer is not None
        attributes: dict[str, Any] = {
            "serverlord.shard": self.service.shard,
            "serverlord.flip.reason": flip.reason,
            "serverlord.flip.old_status": flip.old_status,
            "serverlord.flip.new_status": flip.new_status,
        }
        key = check_unique_key(flip.check_id)
        if key is not None:
            attributes["serverlord.check.unique_key"] = key
        span = self.tracer.start_span(
            "check flip",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            start_time=int(min(flip.created, committed_at) * 1e9),
            attributes=attributes,
        )
        span.end(end_time=int(committed_at * 1e9))

    # -- notifications -----------------------------------------------------------------

    async def run(self) -> None:
        """Read notification attempts every POLL_INTERVAL seconds; cancelled on shutdown."""
        while True:
            await self.poll_notifications(POLL_INTERVAL / 2)
            await asyncio.sleep(POLL_INTERVAL)

    async def poll_notifications(self, max_age: float) -> None:
        """Read the attempts stored since the last read, unless that read is recent."""
        if self._poll_disabled or time.monotonic() - self._last_poll < max_age:
            return
        async with self._poll_lock:
            if time.monotonic() - self._last_poll < max_age:
                return
            self._last_poll = time.monotonic()
            try:
                await asyncio.wait_for(self._read_attempts(), POLL_TIMEOUT)
            except psycopg.errors.UndefinedTable:
                log.warning(
                    "shard %d has no notification tables; delivery metrics stay empty",
                    self.service.shard,
                )
                self._poll_disabled = True
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning(
                    "shard %d could not read notification attempts for metrics: %s",
                    self.service.shard,
                    exc,
                )

    async def _read_attempts(self) -> None:
        service = self.service
        async with service.semaphore, service.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM notifications WHERE status = 'pending'"
            )
            row = await cursor.fetchone()
            self._pending_notifications = 0 if row is None else int(row[0])
            if self._attempts_high < 0:
                # The first read only finds where history ends: like every other counter of
                # this process, attempts count from the process start.
                cursor = await conn.execute(
                    "SELECT id FROM notification_attempts WHERE id >"
                    " (SELECT coalesce(max(id), 0) FROM notification_attempts) - %s",
                    (ATTEMPT_ID_LOOKBACK,),
                )
                self._attempts_seen = {int(row[0]) for row in await cursor.fetchall()}
                self._attempts_high = max(self._attempts_seen, default=0)
                return
            cursor = await conn.execute(
                "SELECT a.id, a.attempt, a.outcome, a.started, a.duration_s, a.status_code,"
                " n.event_time, n.check_id::text, n.kind"
                " FROM notification_attempts a JOIN notifications n ON n.id = a.notification_id"
                " WHERE a.id > %s ORDER BY a.id LIMIT %s",
                (self._attempts_high - ATTEMPT_ID_LOOKBACK, MAX_ATTEMPTS_PER_READ),
            )
            rows = await cursor.fetchall()
        for row in rows:
            self._count_attempt(*row)
        low = self._attempts_high - ATTEMPT_ID_LOOKBACK
        self._attempts_seen = {seen for seen in self._attempts_seen if seen > low}

    def _count_attempt(
        self,
        attempt_id: int,
        attempt: int,
        outcome: str,
        started: datetime,
        duration: float,
        status_code: int | None,
        event_time: datetime,
        check_id: str,
        kind: str,
    ) -> None:
        if attempt_id in self._attempts_seen:
            return
        self._attempts_seen.add(attempt_id)
        self._attempts_high = max(self._attempts_high, attempt_id)
        self.attempts.add(1, {"outcome": outcome, "retry": "true" if attempt > 1 else "false"})
        ended = started.timestamp() + duration
        if outcome == "sent":
            latency = max(0.0, ended - event_time.timestamp())
            self.delivery_latency.record(latency, {"kind": kind})
        if self.tracer is not None:
            self._delivery_span(attempt, outcome, started.timestamp(), ended, status_code, check_id)

    def _delivery_span(
        self,
        attempt: int,
        outcome: str,
        started: float,
        ended: float,
        status_code: int | None,
        check_id: str,
    ) -> None:
        """Record a span for one delivery attempt, rebuilt from its stored row."""
        assert self.tracer is not None
        attributes: dict[str, Any] = {
            "serverlord.shard": self.service.shard,
            "serverlord.notification.attempt": attempt,
            "serverlord.notification.outcome": outcome,
        }
        if status_code is not None:
            attributes["serverlord.notification.status_code"] = status_code
        key = check_unique_key(check_id)
        if key is not None:
            attributes["serverlord.check.unique_key"] = key
        span = self.tracer.start_span(
            "notification delivery",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            kind=SpanKind.CLIENT,
            start_time=int(started * 1e9),
            attributes=attributes,
        )
        if outcome != "sent":
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end(end_time=int(ended * 1e9))

    async def close(self) -> None:
        """Export what is still buffered, giving up after CLOSE_TIMEOUT seconds."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self.telemetry.shutdown), CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning(
                "shard %d stopped before its telemetry was exported (%g s)",
                self.service.shard,
                CLOSE_TIMEOUT,
            )


def _is_unknown_op(body: Any) -> bool:
    return isinstance(body, dict) and str(body.get("error", "")).startswith("unknown operation")
