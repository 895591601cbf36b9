"""A check's state in memory and the rules that move it.

The shard process keeps one `Check` per check of its shard and is the only writer of
their rows, so these objects are the source of truth and the database their durable copy. Times
are UTC epoch seconds (floats); the functions here never read a clock themselves.

Statuses stored: new, up, down, paused. `grace` (late) is derived from the time of the
question, and a run started by a start signal shows as `started`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Literal

from serverlord.schedules import Schedule, ScheduleError, parse_schedule

log = logging.getLogger(__name__)

Status = Literal["new", "up", "down", "paused"]
Signal = Literal["success", "start", "fail", "log", "ign"]

# Runs longer than this are not recorded as durations: the start was most likely
# left over from a run that never reported.
MAX_RECORDED_DURATION = 72 * 3600.0


class Check:
    """The part of a check that the ping path and the deadline engine need."""

    __slots__ = (
        "alerting",
        "grace",
        "id",
        "kind",
        "last_completed_rid",
        "last_duration",
        "last_ping",
        "last_start",
        "last_start_rid",
        "manual_resume",
        "max_runtime",
        "methods_post",
        "n_pings",
        "project_id",
        "schedule",
        "slug",
        "status",
        "timeout",
    )

    def __init__(
        self,
        id: str,
        *,
        project_id: int | None = None,
        slug: str = "",
        kind: str = "simple",
        timeout: float = 86400.0,
        grace: float = 3600.0,
        schedule: Schedule | None = None,
        max_runtime: float | None = None,
        manual_resume: bool = False,
        methods_post: bool = False,
        status: Status = "new",
        last_ping: float | None = None,
        last_start: float | None = None,
        last_start_rid: str | None = None,
        last_duration: float | None = None,
        n_pings: int = 0,
    ) -> None:
        self.id = id
        self.project_id = project_id
        # Kept in memory so a slug ping can be verified without a database read; most
        # checks have no slug and share the one empty string.
        self.slug = slug
        self.kind = kind
        self.timeout = timeout
        self.grace = grace
        self.schedule = schedule
        self.max_runtime = max_runtime
        self.manual_resume = manual_resume
        self.methods_post = methods_post
        self.status: Status = status
        self.last_ping = last_ping
        self.last_start = last_start
        self.last_start_rid = last_start_rid
        self.last_completed_rid: str | None = None
        self.last_duration = last_duration
        self.n_pings = n_pings
        # Per-check alert policy state, None until the check's policy needs any.
        self.alerting: object | None = None

    # -- deadlines ---------------------------------------------------------------------

    def next_expected(self) -> float | None:
        """Return when the next success is due, or None when nothing is expected."""
        if self.last_ping is None:
            return None
        if self.kind == "simple":
            return self.last_ping + self.timeout
        if self.schedule is None:
            return None
        return self.schedule.next_after(self.last_ping)

    def deadline(self) -> float | None:
        """Return the instant this check goes down if nothing arrives, or None.

        Only an `up` check can time out: a new check has no rhythm yet, a paused one is
        not watched, and a down one has already alerted. An open run goes down at its
        start plus `max_runtime` (or grace when unset), unless the schedule's own
        deadline comes first.
        """
        if self.status != "up":
            return None
        expected = self.next_expected()
        deadline = None if expected is None else expected + self.grace
        if self.last_start is not None:
            run_bound = self.last_start + (self.max_runtime or self.grace)
            deadline = run_bound if deadline is None else min(deadline, run_bound)
        return deadline

    def status_at(self, now: float) -> str:
        """Return the status shown to users at `now`: new, up, grace, down or paused."""
        if self.status != "up":
            return self.status
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            return "down"
        expected = self.next_expected()
        if expected is not None and now >= expected:
            return "grace"
        return "up"

    def reason_for_timeout(self) -> str:
        if self.last_start is not None:
            expected = self.next_expected()
            run_bound = self.last_start + (self.max_runtime or self.grace)
            if expected is None or run_bound < expected + self.grace:
                return "run-timeout"
        return "timeout"


@dataclass(frozen=True, slots=True)
class PingOutcome:
    """The effect of one ping: the signal logged, the flip it caused, the run it closed."""

    signal: Signal
    n: int
    old_status: str
    new_status: str
    duration: float | None = None
    late_start: bool = False

    @property
    def flipped(self) -> bool:
        return self.old_status != self.new_status


def apply_ping(
    check: Check, signal: Signal, now: float, rid: str | None, method: str
) -> PingOutcome:
    """Apply one ping to `check` in memory and describe what it did.

    A check with `methods = POST` logs other methods as ignored; a paused check with
    manual resume logs every ping as ignored. Neither changes state.
    """
    old_status = check.status
    if (check.methods_post and method != "POST") or (
        check.status == "paused" and check.manual_resume
    ):
        signal = "ign"

    check.n_pings += 1
    n = check.n_pings
    duration: float | None = None
    late_start = False

    if signal == "start":
        if rid is not None and rid == check.last_completed_rid:
            # The run already reported its end, so this start arrived late; opening a run
            # now would raise a false alarm when it never finishes.
            late_start = True
        else:
            check.last_start = now
            check.last_start_rid = rid
    elif signal in ("success", "fail"):
        duration = _close_run(check, signal, now, rid)
        check.last_ping = now
        check.status = "up" if signal == "success" else "down"

    return PingOutcome(signal, n, old_status, check.status, duration, late_start)


def _close_run(check: Check, signal: Signal, now: float, rid: str | None) -> float | None:
    if check.last_start is None:
        return None
    if signal == "success" and rid != check.last_start_rid:
        return None  # a success of another run leaves this run open
    duration = now - check.last_start
    check.last_completed_rid = check.last_start_rid
    check.last_start = None
    check.last_start_rid = None
    if duration > MAX_RECORDED_DURATION or duration < 0:
        return None
    check.last_duration = duration
    return duration


def schedule_for(kind: str, expression: str, tz: str) -> Schedule | None:
    if kind == "simple":
        return None
    return parse_schedule(expression, tz)


def check_from_row(row: dict[str, Any]) -> Check | None:
    """Build a Check from a database row; None when its schedule no longer parses.

    A schedule or time zone stored by an older version may be rejected by the current
    rules or time zone data. Skipping that one check keeps the shard serving the rest.
    """
    try:
        schedule = schedule_for(row["kind"], row["schedule"], row["tz"])
    except ScheduleError as exc:
        log.error("check %s skipped: its stored schedule is invalid: %s", row["id"], exc)
        return None
    return Check(
        str(row["id"]),
        project_id=_shared(row["project_id"]),
        slug=sys.intern(row["slug"]) if row["slug"] else "",
        kind=sys.intern(row["kind"]),
        timeout=_shared(float(row["timeout_s"])),
        grace=_shared(float(row["grace_s"])),
        schedule=schedule,
        max_runtime=None if row["max_runtime_s"] is None else float(row["max_runtime_s"]),
        manual_resume=row["manual_resume"],
        methods_post=row["methods"] == "POST",
        status=sys.intern(row["status"]),  # type: ignore[arg-type]
        last_ping=_epoch(row["last_ping"]),
        last_start=_epoch(row["last_start"]),
        last_start_rid=None if row["last_start_rid"] is None else str(row["last_start_rid"]),
        last_duration=row["last_duration_s"],
        n_pings=row["n_pings"],
    )


# Most checks share a handful of periods, graces and projects. One object per distinct
# value, instead of one per check, saves about 50 bytes per check at a million checks.
_SHARED_VALUES: dict[tuple[type, Any], Any] = {}
_MAX_SHARED = 100_000


def _shared(value: Any) -> Any:
    if value is None:
        return None
    # Keyed by type too: 3600 and 3600.0 are equal keys, but a period must stay a float.
    key = (type(value), value)
    found = _SHARED_VALUES.get(key)
    if found is not None:
        return found
    if len(_SHARED_VALUES) < _MAX_SHARED:
        _SHARED_VALUES[key] = value
    return value


def _epoch(value: Any) -> float | None:
    return None if value is None else float(value.timestamp())
