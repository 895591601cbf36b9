"""Reading a shard's checks from its database into memory at start-up.

The shard process serves pings from memory only, so every check must be loaded and its
deadline armed before the shard reports ready. This runs once per start, over every
row of the shard, so its cost per row bounds how fast a restarted shard is back.

The query converts in SQL what Python would otherwise build objects for: ids and run ids
arrive as text, times as epoch floats, and rows come in binary format as plain tuples.
perf/bench_load.py measures the load, and docs/bench-load.md has the figures.
"""

from __future__ import annotations

import bisect
import logging
import math
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from serverlord.alerting.policy import DEFAULT_POLICY, PolicyConfig
from serverlord.schedules import Schedule, ScheduleError
from serverlord.shardproc import alerts
from serverlord.shardproc.checks import Check, Status, schedule_for

log = logging.getLogger(__name__)

# The columns a check in memory is built from; the descriptive ones stay in the database.
# date_part('epoch', t) returns float8 directly, and extract() returns numeric, which
# costs PostgreSQL more. tests/test_load_checks.py checks that a loaded time equals
# datetime.timestamp() of the same timestamptz, to the microsecond.
LOAD_QUERY = (
    "SELECT id::text, project_id, slug, kind, timeout_s::float8, grace_s::float8,"
    " schedule, tz, max_runtime_s::float8, manual_resume, methods = 'POST', status,"
    " date_part('epoch', last_ping), date_part('epoch', last_start),"
    " last_start_rid::text, last_duration_s, n_pings,"
    " alert_after, recover_after, reminder_s, late_notice"
    " FROM checks"
)

# Rows per round trip of the server-side cursor. Larger pages measured no faster, and
# each page is held in memory as tuples until its checks are built.
PAGE_ROWS = 2000

# One string object per status and kind, instead of one per check. The table's CHECK
# constraints allow no other values.
_STATUSES: dict[str, Status] = {"new": "new", "up": "up", "down": "down", "paused": "paused"}
_KINDS = {kind: sys.intern(kind) for kind in ("simple", "cron", "oncalendar")}


@dataclass(slots=True)
class LoadedPage:
    """Checks built from one page of rows, with what is needed to arm them."""

    checks: list[Check] = field(default_factory=list)
    # (check id, deadline) for every check of the page that has a deadline.
    deadlines: list[tuple[str, float]] = field(default_factory=list)
    # Checks with alert policy data, whose policy timers must be armed too.
    alerting: list[Check] = field(default_factory=list)


async def load_checks(
    pool: AsyncConnectionPool[Any], booted_at: float
) -> AsyncIterator[LoadedPage]:
    """Yield every loadable check of the shard, page by page, with its alert policy restored."""
    builder = _PageBuilder(booted_at)
    # A server-side cursor streams the rows in pages: reading a quarter of a million
    # rows at once would leave the process hundreds of MiB larger for good.
    async with pool.connection() as conn, conn.transaction():
        cursor = conn.cursor(name="load_checks", binary=True)
        await cursor.execute(LOAD_QUERY)
        while rows := await cursor.fetchmany(PAGE_ROWS):
            yield builder.build(rows)
        await cursor.close()


class _PageBuilder:
    """Builds checks from load rows, sharing schedules and policies across pages."""

    def __init__(self, booted_at: float) -> None:
        self.booted_at = booted_at
        # (kind, expression, tz) of a cron or OnCalendar check -> a next-fire memo of
        # the parsed schedule, or the message of the ScheduleError that parsing raised.
        self._schedules: dict[tuple[str, str, str], _NextFireMemo | str | None] = {}
        self._policies: dict[tuple[Any, ...], PolicyConfig] = {}
        # Most checks share a handful of periods, graces and projects, so each distinct
        # value is stored once instead of once per check.
        self._floats: dict[float, float] = {}
        self._projects: dict[int | None, int | None] = {}

    def build(self, rows: Sequence[tuple[Any, ...]]) -> LoadedPage:
        page = LoadedPage()
        floats = self._floats
        projects = self._projects
        for row in rows:
            (check_id, project_id, slug, kind, timeout, grace, expression, tz) = row[:8]
            memo = None if kind == "simple" else self._schedule(kind, expression, tz)
            if isinstance(memo, str):
                log.error("check %s skipped: its stored schedule is invalid: %s", check_id, memo)
                continue

            check = Check(
                check_id,
                project_id=projects.setdefault(project_id, project_id),
                slug=sys.intern(slug) if slug else "",
                kind=_KINDS[kind],
                timeout=floats.setdefault(timeout, timeout),
                grace=floats.setdefault(grace, grace),
                schedule=None if memo is None else memo.schedule,
                max_runtime=row[8],
                manual_resume=row[9],
                methods_post=row[10],
                status=_STATUSES[row[11]],
                last_ping=row[12],
                last_start=row[13],
                last_start_rid=row[14],
                last_duration=row[15],
                n_pings=row[16],
            )
            page.checks.append(check)
            self._restore_policy(check, row[17:])
            if check.alerting is not None:
                page.alerting.append(check)

            deadline = check.deadline() if memo is None else _deadline_by_memo(check, memo)
            if deadline is not None:
                page.deadlines.append((check_id, deadline))
        return page

    def _schedule(self, kind: str, expression: str, tz: str) -> _NextFireMemo | str | None:
        key = (kind, expression, tz)
        try:
            return self._schedules[key]
        except KeyError:
            pass
        found: _NextFireMemo | str | None
        try:
            schedule = schedule_for(kind, expression, tz)
            found = None if schedule is None else _NextFireMemo(schedule)
        except ScheduleError as exc:
            found = str(exc)
        self._schedules[key] = found
        return found

    def _restore_policy(self, check: Check, fields: tuple[Any, ...]) -> None:
        """Set the check's alert policy from (alert_after, recover_after, reminder_s,
        late_notice) and rebuild its policy state."""
        config = self._policies.get(fields)
        if config is None:
            alert_after, recover_after, reminder, late = fields
            row = {
                "alert_after": alert_after,
                "recover_after": recover_after,
                "reminder_s": reminder,
                "late_notice": late,
            }
            # PolicyConfig is frozen, so checks with the same settings can share one.
            config = self._policies[fields] = alerts.policy_config(row)
        if config is not DEFAULT_POLICY:
            alerts.set_config(check, config)
        if check.status == "down":
            alerts.restore(check, self.booted_at)


def _deadline_by_memo(check: Check, memo: _NextFireMemo) -> float | None:
    """Return check.deadline(), with the schedule's fire times looked up in `memo`.

    The rule stays Check's own, because only the schedule object it calls is swapped.
    """
    check.schedule = memo
    try:
        return check.deadline()
    finally:
        check.schedule = memo.schedule


class _NextFireMemo:
    """A schedule's next_after, memoized over the intervals between its fire times.

    Each fire time is stored with the lowest second `low` looked up so far whose next
    fire it is, which proves that no fire lies in (low, fire). So every second from
    `low` up to the fire has the same next fire. Checks that share a schedule and ran on time have
    their last pings in a few recent intervals, so most lookups skip the schedule.
    """

    __slots__ = ("_fires", "_lows", "expression", "schedule", "tz")

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.expression = schedule.expression
        self.tz = schedule.tz
        self._fires: list[float] = []
        self._lows: list[int] = []

    def next_after(self, epoch: float) -> float | None:
        # Schedule.next_after depends on the whole second only, so memoize on that.
        second = math.floor(epoch)
        fires = self._fires
        index = bisect.bisect_right(fires, second)
        if index < len(fires) and self._lows[index] <= second:
            return fires[index]

        fire = self.schedule.next_after(second)
        if fire is None:
            return None
        index = bisect.bisect_left(fires, fire)
        if index < len(fires) and fires[index] == fire:
            self._lows[index] = min(self._lows[index], second)
        else:
            fires.insert(index, fire)
            self._lows.insert(index, second)
        return fire
