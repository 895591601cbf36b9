"""The operations a shard process serves: pings, and creating and reading checks.

Every operation changes memory first, queues the change for the writer and responds only
after the commit, so a 2xx from the web tier always stands for stored data. A check whose
commit failed is marked stale and reloaded from the database before it takes more pings,
because its memory state may then hold a change the database does not.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from serverlord.clock import Clock
from serverlord.schedules import ScheduleError
from serverlord.shardproc import alerts
from serverlord.shardproc.alerts import TIMER_SUFFIXES
from serverlord.shardproc.checks import Check, Signal, apply_ping, check_from_row, schedule_for
from serverlord.shardproc.engine import DeadlineEngine
from serverlord.shardproc.loader import load_checks
from serverlord.shardproc.writer import (
    NEW_CHECK_COLUMNS,
    FlipRow,
    PingRow,
    WriteFailed,
    Writer,
    WriterOverloaded,
)

log = logging.getLogger(__name__)

Response = tuple[int, Any]
# Per-check alert policy columns that create and update accept.
POLICY_FIELDS = ("alert_after", "recover_after", "reminder_s", "late_notice")
OpHandler = Callable[[dict[str, Any]], Awaitable[Response]]

NOT_FOUND: Response = (404, {"error": "not found"})
SIGNALS: frozenset[str] = frozenset({"success", "start", "fail", "log"})
# pings.body_size is a PostgreSQL integer, but the web tier reads and counts bodies of any
# length, and a size beyond the column would fail the whole batch. NOTE: a stored size of
# BODY_SIZE_MAX means "at least that many bytes".
BODY_SIZE_MAX = 2**31 - 1


def unavailable(reason: str) -> Response:
    return (503, {"error": f"shard unavailable: {reason}"})


class ShardService:
    def __init__(
        self,
        shard: int,
        pool: AsyncConnectionPool[Any],
        clock: Clock,
        db_concurrency: int,
        owner_token: str,
        body_limit: int = 100_000,
        quiet_period: float | None = None,
        commit_linger: float = 0.0,
    ) -> None:
        self.shard = shard
        self.clock = clock
        self.pool = pool
        self.body_limit = body_limit
        self.checks: dict[str, Check] = {}
        self.stale: set[str] = set()
        self.semaphore = asyncio.BoundedSemaphore(db_concurrency)
        self.writer = Writer(
            pool,
            self.semaphore,
            self.checks.get,
            self._mark_stale,
            owner_token,
            linger=commit_linger,
        )
        self.engine = DeadlineEngine(
            clock, self.checks.get, self._on_timeout, on_timer=self._on_alert_timer
        )
        self.alerts = alerts.AlertKeeper()
        self._reload_wakeup = asyncio.Event()
        # Deadlines before this instant passed while the shard process was not running.
        self.booted_at = clock.time()
        self.quiet_period = quiet_period
        self._ops: dict[str, OpHandler] = {
            "ping": self.ping,
            "status": self.status,
            "create": self.create,
            "get": self.get,
            "update": self.update,
            "delete": self.delete,
            "pause": self.pause,
            "resume": self.resume,
            "health": self.health,
        }

    # -- loading -----------------------------------------------------------------------

    async def load(self) -> int:
        """Load every check of the shard into memory and arm its deadline."""
        started = time.monotonic()
        # Every object the load makes lives as long as the process, and its garbage
        # (rows, pages) has no reference cycles. Cyclic collections during the load
        # would only walk the growing set of checks again and again, and at 250,000
        # checks they doubled the time to build them. process.py collects once after.
        collecting = gc.isenabled()
        gc.disable()
        try:
            async for page in load_checks(self.pool, self.booted_at):
                for check in page.checks:
                    self.checks[check.id] = check
                # A page's deadlines go into the wheel at once instead of through one
                # rearm() per check. Only checks with alert policy data can have policy
                # timers, and the wheel is empty before the load, so none need cancelling.
                self.engine.arm_loaded(page.deadlines)
                for check in page.alerting:
                    for suffix, when in self.alerts.timers(check).items():
                        if when is not None:
                            self.engine.set_timer(check.id, suffix, when)
        finally:
            if collecting:
                gc.enable()
        log.info(
            "shard %d loaded %d checks in %.2f s",
            self.shard,
            len(self.checks),
            time.monotonic() - started,
        )
        return len(self.checks)

    def rearm(self, check: Check) -> None:
        """Arm the check's deadline and its alert policy timers for its current state."""
        self.engine.rearm(check)
        for suffix, when in self.alerts.timers(check).items():
            self.engine.set_timer(check.id, suffix, when)

    def forget(self, check_id: str) -> None:
        self.engine.forget(check_id)
        for suffix in TIMER_SUFFIXES:
            self.engine.set_timer(check_id, suffix, None)
        self.alerts.held.pop(check_id, None)

    def _mark_stale(self, check_ids: set[str]) -> None:
        self.stale |= check_ids
        self._reload_wakeup.set()

    async def reload_stale(self) -> None:
        """Reload checks whose last commit failed, retrying until the database is reachable."""
        delay = 0.1
        # Time to wait before reloading again after a reload. A commit that fails the same
        # way every time (a bad statement, a full disk) would otherwise make each reloaded
        # check fire and fail again at once, in a hot loop.
        pause = 0.0
        transactions_at_reload = self.writer.transactions
        while True:
            await self._reload_wakeup.wait()
            if self.writer.transactions > transactions_at_reload:
                pause = 0.0  # commits succeed again
            await asyncio.sleep(pause)
            pause = min(max(pause * 2, 0.1), 30.0)
            transactions_at_reload = self.writer.transactions
            ids = list(self.stale)
            try:
                rows = await self._fetch_checks(ids)
            except (psycopg.Error, OSError) as exc:
                log.warning(
                    "shard %d could not reload %d checks yet: %s", self.shard, len(ids), exc
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            for check_id in ids:
                self.checks.pop(check_id, None)
                self.forget(check_id)
                row = rows.get(check_id)
                check = None if row is None else check_from_row(row)
                if check is not None and row is not None:
                    alerts.set_config(check, alerts.policy_config(row))
                    alerts.restore(check, self.clock.time())
                    self.checks[check_id] = check
                    self.rearm(check)
                self.stale.discard(check_id)
            log.info("shard %d reloaded %d checks after a failed commit", self.shard, len(ids))
            if not self.stale:
                self._reload_wakeup.clear()

    async def _fetch_checks(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute("SELECT * FROM checks WHERE id = ANY(%s::uuid[])", (ids,))
            return {str(row["id"]): row async for row in cursor}

    # -- dispatch ----------------------------------------------------------------------

    def register(self, op: str, handler: OpHandler) -> None:
        """Serve `op` with `handler`; modules that add operations call this at start."""
        self._ops[op] = handler

    async def handle(self, op: str, args: dict[str, Any]) -> Response:
        handler = self._ops.get(op)
        if handler is None:
            return (400, {"error": f"unknown operation {op!r}"})
        try:
            return await handler(args)
        except WriterOverloaded as exc:
            return unavailable(str(exc))
        except WriteFailed:
            # The writer has logged the database's error. Clients get no SQL text, which
            # can name tables, columns and values of other checks in the same batch.
            return unavailable(
                "the database write failed, so nothing was stored. Retry the request."
            )
        except (psycopg.Error, OSError) as exc:
            log.warning("shard %d database error on %s: %s", self.shard, op, exc)
            return unavailable("the database is not answering")

    async def health(self, args: dict[str, Any]) -> Response:
        return (200, self.stats())

    # -- pings -------------------------------------------------------------------------

    async def ping(self, args: dict[str, Any]) -> Response:
        check_id: str = args["id"]
        check = self.checks.get(check_id)
        if check is None:
            return NOT_FOUND
        if check_id in self.stale:
            return unavailable("the check is being reloaded after a failed write")
        self.writer.check_capacity()

        now = self.clock.time()
        signal: Signal = args["signal"]
        exitstatus: int | None = args.get("exitstatus")
        rid: str | None = args.get("rid")
        outcome = apply_ping(check, signal, now, rid, args.get("method", ""))

        body = _decode_body(args.get("body"))
        ua: str = args.get("ua", "")[:200]
        if "\x00" in ua:
            # PostgreSQL text cannot contain NUL, and one such ping must not fail its batch.
            ua = ua.replace("\x00", "\ufffd")
        row = PingRow(
            check_id=check_id,
            n=outcome.n,
            created=now,
            kind=outcome.signal,
            exitstatus=exitstatus,
            rid=rid,
            scheme=args.get("scheme", "http"),
            method=args.get("method", ""),
            remote_addr=args.get("remote_addr", ""),
            ua=ua,
            body=body,
            body_size=min(args.get("body_size", 0 if body is None else len(body)), BODY_SIZE_MAX),
            duration=outcome.duration,
        )
        flip = None
        if outcome.flipped:
            flip = FlipRow(check_id, now, outcome.old_status, outcome.new_status, outcome.signal)
        events: list[alerts.AlertEvent] = []
        cancel_held = False
        if outcome.signal in ("success", "fail"):
            events, cancel_held = self.alerts.on_result(
                check, outcome.signal == "success", now, outcome.signal, body, exitstatus
            )
        self.rearm(check)
        await self.writer.ping(row, flip, alerts=events, cancel_held=cancel_held)
        return (200, {"n": outcome.n, "signal": outcome.signal, "late_start": outcome.late_start})

    def _on_timeout(self, check: Check, deadline: float) -> None:
        old_status = check.status
        reason = check.reason_for_timeout()
        check.status = "down"
        hold_until = None
        if deadline < self.booted_at:
            # The deadline passed while this shard was not running: keep the true time in
            # history, but give the job a quiet period to report before anyone is paged.
            quiet = check.grace if self.quiet_period is None else self.quiet_period
            hold_until = self.booted_at + quiet
        flip = FlipRow(check.id, deadline, old_status, "down", reason, hold_until)
        events = self.alerts.on_miss(check, deadline, reason, hold_until)
        self.rearm(check)
        waiter = self.writer.flip(flip, events)
        waiter.add_done_callback(_log_flip_failure)
        # DEBUG, not INFO: a burst of thousands of flips would otherwise cost a log line each.
        log.debug("check %s went down at its deadline %.3f (%s)", check.id, deadline, reason)

    def _on_alert_timer(self, check: Check, suffix: str, when: float) -> None:
        events = self.alerts.on_timer(check, suffix, when)
        self.rearm(check)
        if events:
            self.writer.alert(events).add_done_callback(_log_flip_failure)

    # -- checks ------------------------------------------------------------------------

    async def create(self, args: dict[str, Any]) -> Response:
        check_id: str = args["id"]
        fields: dict[str, Any] = args["fields"]
        if check_id in self.checks:
            return (409, {"error": f"check {check_id} already exists"})
        try:
            schedule = schedule_for(fields["kind"], fields["schedule"], fields["tz"])
        except ScheduleError as exc:
            return (400, {"error": f"schedule: {exc}"})
        self.writer.check_capacity()

        now = self.clock.time()
        fields = {**fields, "status": "new", "created_at": datetime.fromtimestamp(now, UTC)}
        missing = [name for name in NEW_CHECK_COLUMNS if name not in fields]
        if missing:
            return (400, {"error": f"missing fields: {', '.join(missing)}"})
        check = Check(
            check_id,
            project_id=fields["project_id"],
            slug=fields["slug"],
            kind=fields["kind"],
            timeout=float(fields["timeout_s"]),
            grace=float(fields["grace_s"]),
            schedule=schedule,
            max_runtime=fields["max_runtime_s"],
            manual_resume=fields["manual_resume"],
            methods_post=fields["methods"] == "POST",
        )
        policy_fields = {name: fields.pop(name) for name in POLICY_FIELDS if name in fields}
        if policy_fields:
            alerts.set_config(check, alerts.policy_config(policy_fields))
        self.checks[check_id] = check
        self.rearm(check)
        waiter = self.writer.create(check_id, fields)
        if policy_fields:
            waiter = self.writer.update_fields(check_id, policy_fields)
        await waiter
        return (201, self.describe(check))

    async def update(self, args: dict[str, Any]) -> Response:
        """Change a check's settings; only the fields sent change."""
        check = self.checks.get(args["id"])
        if check is None:
            return NOT_FOUND
        if check.id in self.stale:
            return unavailable("the check is being reloaded after a failed write")
        fields: dict[str, Any] = args["fields"]
        kind = fields.get("kind", check.kind)
        schedule = check.schedule
        if "schedule" in fields or "tz" in fields or "kind" in fields:
            expression = fields.get("schedule", check.schedule.expression if check.schedule else "")
            tz = fields.get("tz", check.schedule.tz if check.schedule else "UTC")
            try:
                schedule = schedule_for(kind, expression, tz)
            except ScheduleError as exc:
                return (400, {"error": f"schedule: {exc}"})
        self.writer.check_capacity()

        check.kind = kind
        check.schedule = schedule
        if "timeout_s" in fields:
            check.timeout = float(fields["timeout_s"])
        if "grace_s" in fields:
            check.grace = float(fields["grace_s"])
        if "max_runtime_s" in fields:
            value = fields["max_runtime_s"]
            check.max_runtime = None if value is None else float(value)
        if "manual_resume" in fields:
            check.manual_resume = bool(fields["manual_resume"])
        if "slug" in fields:
            check.slug = fields["slug"]
        if any(name in fields for name in POLICY_FIELDS):
            current = alerts.config_of(check)
            merged = {
                "alert_after": current.alert_after,
                "recover_after": current.recover_after,
                "reminder_s": current.reminder_every,
                "late_notice": current.late_notice,
                **{name: fields[name] for name in POLICY_FIELDS if name in fields},
            }
            alerts.set_config(check, alerts.policy_config(merged))
        if "methods" in fields:
            check.methods_post = fields["methods"] == "POST"
        self.rearm(check)
        await self.writer.update_fields(check.id, fields)
        return (200, self.describe(check))

    async def delete(self, args: dict[str, Any]) -> Response:
        check = self.checks.get(args["id"])
        if check is None:
            return NOT_FOUND
        self.writer.check_capacity()
        described = self.describe(check)
        del self.checks[check.id]
        self.forget(check.id)
        await self.writer.delete(check.id)
        return (200, described)

    async def pause(self, args: dict[str, Any]) -> Response:
        """Stop watching a check; a no-op when it is already paused."""
        check = self.checks.get(args["id"])
        if check is None:
            return NOT_FOUND
        if check.status == "paused":
            return (200, self.describe(check))
        self.writer.check_capacity()
        old_status = check.status
        check.status = "paused"
        check.last_start = None
        check.last_start_rid = None
        alerts.reset(check)
        self.alerts.held.pop(check.id, None)
        self.rearm(check)
        await self.writer.flip(FlipRow(check.id, self.clock.time(), old_status, "paused", "pause"))
        return (200, self.describe(check))

    async def resume(self, args: dict[str, Any]) -> Response:
        """Make a paused check new again: it waits for its first ping, with no deadline."""
        check = self.checks.get(args["id"])
        if check is None:
            return NOT_FOUND
        if check.status != "paused":
            return (409, {"error": "check is not paused"})
        self.writer.check_capacity()
        check.status = "new"
        alerts.reset(check)
        check.last_ping = None
        check.last_start = None
        check.last_start_rid = None
        self.rearm(check)
        await self.writer.flip(FlipRow(check.id, self.clock.time(), "paused", "new", "resume"))
        return (200, self.describe(check))

    def stats(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "checks": len(self.checks),
            "armed": len(self.engine),
            "transactions": self.writer.transactions,
            "changes": self.writer.changes,
            "fired": self.engine.fired,
        }

    async def status(self, args: dict[str, Any]) -> Response:
        check = self.checks.get(args["id"])
        if check is None:
            return NOT_FOUND
        return (200, self.describe(check))

    async def get(self, args: dict[str, Any]) -> Response:
        check = self.checks.get(args["id"])
        if check is None:
            return NOT_FOUND
        async with self.semaphore, self.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT name, slug, tags, description, schedule, tz, created_at"
                " FROM checks WHERE id = %s",
                (check.id,),
            )
            row = await cursor.fetchone()
        if row is None:
            return NOT_FOUND
        described = self.describe(check)
        described.update(
            name=row["name"],
            slug=row["slug"],
            tags=row["tags"],
            desc=row["description"],
            created=_iso(row["created_at"].timestamp()),
        )
        if check.kind != "simple":
            described.update(schedule=row["schedule"], tz=row["tz"])
        return (200, described)

    def describe(self, check: Check) -> dict[str, Any]:
        """Return the check's state as JSON-ready values, read from memory only."""
        now = self.clock.time()
        described: dict[str, Any] = {
            "id": check.id,
            "status": check.status_at(now),
            "started": check.last_start is not None,
            "last_ping": _iso(check.last_ping),
            "next_ping": _iso(check.next_expected()),
            "last_duration": check.last_duration,
            "n_pings": check.n_pings,
            "grace": int(check.grace),
            "manual_resume": check.manual_resume,
            "methods": "POST" if check.methods_post else "",
        }
        if check.kind == "simple":
            described["timeout"] = int(check.timeout)
        elif check.schedule is not None:
            described["schedule"] = check.schedule.expression
            described["tz"] = check.schedule.tz
        if check.max_runtime is not None:
            described["max_runtime"] = int(check.max_runtime)
        policy = alerts.config_of(check)
        described.update(
            alert_after=policy.alert_after,
            recover_after=policy.recover_after,
            reminder=0 if policy.reminder_every is None else int(policy.reminder_every),
            late_notice=policy.late_notice,
        )
        return described


def _decode_body(encoded: str | None) -> bytes | None:
    if not encoded:
        return None
    return base64.b64decode(encoded)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _log_flip_failure(waiter: asyncio.Future[None]) -> None:
    if not waiter.cancelled() and waiter.exception() is not None:
        log.error("a timeout flip was not stored: %s", waiter.exception())
