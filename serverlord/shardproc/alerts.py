"""The shard side of alerting: run each check's policy and queue its notifications.

Every success, failure and missed deadline goes through `serverlord.alerting.policy`.
The notifications it calls for are queued with the writer, so they are inserted into the
outbox in the same transaction as the ping or flip that caused them; the deliverer sends
them after the commit.

Timers of the policy live in the shard's timer wheel next to the check's deadline, under
keys with a suffix: `#late` (grace starts, for late notices), `#tick` (reminders and the
end of a flapping spell) and `#miss` (the next missed run of a check that is down but not
yet alerted, so that "alert after N misses" keeps counting).

A deadline that passed while the shard was not running is held: its down notification is
due at the end of the start-up quiet period, and a success before then cancels it and
sends no up notification, because nobody was told the check was down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from serverlord.alerting.policy import (
    DEFAULT_POLICY,
    NotificationKind,
    PolicyConfig,
    PolicyState,
    decide,
    next_wakeup,
)
from serverlord.shardproc.checks import Check

log = logging.getLogger(__name__)

TIMER_SUFFIXES = ("#late", "#tick", "#miss")


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """Notifications to insert for one event of one check, one per channel of the check."""

    check_id: str
    kind: NotificationKind
    event_time: float
    status: str
    reason: str
    due: float
    last_ping: float | None = None
    body: bytes | None = None
    exitstatus: int | None = None


class AlertSlot:
    """Alert policy data of one check; absent for checks on the default policy at rest."""

    __slots__ = ("config", "miss_at", "state")

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.state: PolicyState | None = None
        self.miss_at: float | None = None


def policy_config(row: dict[str, Any]) -> PolicyConfig:
    alert_after = row.get("alert_after") or 1
    recover_after = row.get("recover_after") or 1
    reminder = row.get("reminder_s")
    late = bool(row.get("late_notice"))
    if alert_after == 1 and recover_after == 1 and reminder is None and not late:
        return DEFAULT_POLICY
    return PolicyConfig(
        alert_after=alert_after,
        recover_after=recover_after,
        reminder_every=None if reminder is None else float(reminder),
        late_notice=late,
    )


def slot_of(check: Check) -> AlertSlot | None:
    slot = check.alerting
    return slot if isinstance(slot, AlertSlot) else None


def config_of(check: Check) -> PolicyConfig:
    slot = slot_of(check)
    return DEFAULT_POLICY if slot is None else slot.config


def set_config(check: Check, config: PolicyConfig) -> None:
    slot = slot_of(check)
    if slot is None:
        if config is not DEFAULT_POLICY:
            check.alerting = AlertSlot(config)
        return
    slot.config = config
    _compact(check, slot)


def restore(check: Check, now: float) -> None:
    """Rebuild the policy state after a load: a check stored down was already announced."""
    if check.status != "down":
        return
    config = config_of(check)
    slot = slot_of(check) or AlertSlot(config)
    state = PolicyState()
    state.alerted = "down"
    state.streak = -config.alert_after
    slot.state = state
    check.alerting = slot


def reset(check: Check) -> None:
    """Forget the policy state, as pause, resume and deletion do."""
    slot = slot_of(check)
    if slot is not None:
        slot.state = None
        slot.miss_at = None
        _compact(check, slot)


class AlertKeeper:
    """Decides the notifications of a shard's checks and keeps their policy timers."""

    def __init__(self) -> None:
        # Check id -> end of the start-up quiet period, for checks whose down notification
        # is held because their deadline passed while the shard was not running.
        self.held: dict[str, float] = {}

    def on_result(
        self,
        check: Check,
        success: bool,
        now: float,
        reason: str,
        body: bytes | None = None,
        exitstatus: int | None = None,
    ) -> tuple[list[AlertEvent], bool]:
        """Apply a success or failure; return the notifications and whether to cancel held ones."""
        kinds = self._decide(check, "success" if success else "fail", now)
        hold_until = self.held.get(check.id)
        if hold_until is not None:
            if success and now < hold_until:
                # The job reported within the quiet period: drop the held down notice, and
                # with it the up notice, because the down one never went out.
                del self.held[check.id]
                reset(check)
                return [], True
            if now >= hold_until:
                del self.held[check.id]
        events = [
            AlertEvent(
                check.id,
                kind,
                now,
                check.status,
                reason,
                now,
                check.last_ping,
                body if kind == "down" else None,
                exitstatus,
            )
            for kind in kinds
        ]
        return events, False

    def on_miss(
        self, check: Check, deadline: float, reason: str, hold_until: float | None
    ) -> list[AlertEvent]:
        kinds = self._decide(check, "miss", deadline)
        if hold_until is not None and kinds:
            self.held[check.id] = hold_until
        due = deadline if hold_until is None else hold_until
        slot = slot_of(check)
        if slot is not None and slot.state is not None and slot.state.alerted == "up":
            # Down but not yet announced: the next missed run counts too.
            slot.miss_at = self._next_miss(check, deadline)
        return [
            AlertEvent(check.id, kind, deadline, "down", reason, due, check.last_ping)
            for kind in kinds
        ]

    def on_timer(self, check: Check, suffix: str, when: float) -> list[AlertEvent]:
        if suffix == "#late":
            if check.status != "up":
                return []
            kinds = self._decide(check, "late", when)
            return [
                AlertEvent(check.id, k, when, "grace", "late", when, check.last_ping) for k in kinds
            ]
        if suffix == "#miss":
            slot = slot_of(check)
            if slot is None or check.status != "down":
                return []
            return self.on_miss(check, when, "timeout", None)
        kinds = self._decide(check, "tick", when)
        status = "down" if check.status == "down" else "up"
        return [AlertEvent(check.id, k, when, status, k, when, check.last_ping) for k in kinds]

    def timers(self, check: Check) -> dict[str, float | None]:
        """Return when each policy timer of the check should fire, or None to cancel it."""
        slot = slot_of(check)
        if slot is None:
            return dict.fromkeys(TIMER_SUFFIXES)
        late = None
        if slot.config.late_notice and check.status == "up":
            late = check.next_expected()
        miss = slot.miss_at if check.status == "down" else None
        return {
            "#late": late,
            "#tick": next_wakeup(slot.state, slot.config),
            "#miss": miss,
        }

    def _decide(self, check: Check, event: Any, now: float) -> list[NotificationKind]:
        slot = slot_of(check)
        config = DEFAULT_POLICY if slot is None else slot.config
        state = None if slot is None else slot.state
        decision = decide(state, config, event, now)
        if decision.state is not None or slot is not None:
            if slot is None:
                slot = AlertSlot(config)
                check.alerting = slot
            slot.state = decision.state
            if event == "success":
                slot.miss_at = None
            _compact(check, slot)
        return decision.kinds

    def _next_miss(self, check: Check, deadline: float) -> float | None:
        if check.kind == "simple":
            return deadline + check.timeout
        if check.schedule is None:
            return None
        expected = check.schedule.next_after(deadline - check.grace)
        return None if expected is None else expected + check.grace


def _compact(check: Check, slot: AlertSlot) -> None:
    if slot.state is None and slot.miss_at is None and slot.config is DEFAULT_POLICY:
        check.alerting = None
