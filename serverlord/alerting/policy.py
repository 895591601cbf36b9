"""Alert policy: which notifications a check's events call for.

The shard process keeps one `PolicyState | None` per check and calls `decide` on every
success, failure, missed deadline, start of the grace period and policy timer. `decide`
is pure: it reads the clock value passed in, never mutates the state given, and returns
the new state with the list of notification kinds to enqueue. None is the state of a
check with nothing to remember (the usual case), so most checks cost no memory here.

Semantics, for one check with config `PolicyConfig`:

- Alert status. Notifications report the *alert status*, which starts as up. It turns
  down after `alert_after` consecutive failures, where a failure is a fail ping or a
  missed deadline, and back up after `recover_after` consecutive successes. A success
  resets the failure count and a failure resets the success count. With the defaults
  (1 and 1) the alert status follows the check's status.
- down / up. A change of the alert status sends `down` or `up`. A check that was never
  announced down therefore never sends `up`, which keeps new->up and paused->up silent.
- reminder. With `reminder_every = R`, a `reminder` is sent R seconds after a `down`
  and every R seconds after that while the alert status stays down. Reminders that fell
  due while no event arrived are not sent in a burst: one is sent and the next comes R
  later.
- late. With `late_notice`, the `late` event (the check entered its grace period) sends
  one `late` notice, unless the alert status is already down.
- flapping. A flip here is a change of the alert status. Flips are counted over a
  sliding 24-hour window, estimated from two fixed 24-hour windows as
  `previous * (1 - elapsed / 24 h) + current`. When a flip makes the estimate exceed
  `flap_threshold`, the check starts flapping: one `flapping` notice is sent, and that
  flip's own down or up notice and any reminder are held back. Once the alert status
  has held for `flap_settle` seconds, it is sent (down or up) even if it equals the last
  status sent, because the user's last message was the flapping notice. Reminders then
  resume. Flapping ends at the first event after such a settle notice at which the
  estimate is `flap_threshold` or below. Until then each further flip is again held
  back until it settles, so a flapping check sends at most one state notice per
  `flap_settle` period and never a second flapping notice.

Pause, resume and deletion are not events here: the caller sets the state to None. The
caller also arms a timer at `next_wakeup(state, config)` and sends `tick` when it fires.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

Event = Literal["success", "fail", "miss", "late", "tick"]
NotificationKind = Literal["down", "up", "late", "reminder", "flapping"]
NOTIFICATION_KINDS: tuple[NotificationKind, ...] = get_args(NotificationKind)

FLAP_WINDOW = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    alert_after: int = 1
    """Consecutive failures (fail pings or missed deadlines) before a down notification."""

    recover_after: int = 1
    """Consecutive successes before an up notification."""

    reminder_every: float | None = None
    """Seconds between reminders while down, or None for no reminders."""

    late_notice: bool = False
    """Send a late notice when the check enters its grace period."""

    flap_threshold: int | None = 20
    """Flips per 24 hours above which a check is flapping, or None to never detect it."""

    flap_settle: float = 900.0
    """Seconds the alert status must hold during flapping before it is sent."""

    def __post_init__(self) -> None:
        if self.alert_after < 1:
            raise ValueError(f"alert_after must be 1 or more, got {self.alert_after}")
        if self.recover_after < 1:
            raise ValueError(f"recover_after must be 1 or more, got {self.recover_after}")
        if self.reminder_every is not None and self.reminder_every <= 0:
            raise ValueError(f"reminder_every must be positive seconds, got {self.reminder_every}")
        if self.flap_threshold is not None and self.flap_threshold < 1:
            raise ValueError(f"flap_threshold must be 1 or more, got {self.flap_threshold}")
        if self.flap_settle <= 0:
            raise ValueError(f"flap_settle must be positive seconds, got {self.flap_settle}")


DEFAULT_POLICY = PolicyConfig()


class PolicyState:
    """Policy memory of one check: alert status, result streak, flip counts and timers."""

    __slots__ = (
        "alerted",
        "flapping",
        "flips_current",
        "flips_previous",
        "last_change",
        "reminder_at",
        "settle_pending",
        "streak",
        "window_start",
    )

    def __init__(self) -> None:
        self.alerted: Literal["up", "down"] = "up"
        # Consecutive results: positive counts successes, negative counts failures.
        self.streak = 0
        self.window_start: float | None = None
        self.flips_current = 0
        self.flips_previous = 0
        self.last_change: float | None = None
        self.flapping = False
        self.settle_pending = False
        self.reminder_at: float | None = None

    def copy(self) -> PolicyState:
        clone = PolicyState()
        for name in PolicyState.__slots__:
            setattr(clone, name, getattr(self, name))
        return clone

    def flip_estimate(self, now: float) -> float:
        """Return the estimated number of flips in the 24 hours before `now`."""
        if self.window_start is None:
            return 0.0
        elapsed = now - self.window_start
        if elapsed >= 2 * FLAP_WINDOW:
            return 0.0
        if elapsed >= FLAP_WINDOW:
            weight = 1.0 - (elapsed - FLAP_WINDOW) / FLAP_WINDOW
            return self.flips_current * weight
        return self.flips_previous * (1.0 - elapsed / FLAP_WINDOW) + self.flips_current

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in PolicyState.__slots__)
        return f"PolicyState({fields})"


class Decision(NamedTuple):
    state: PolicyState | None
    kinds: list[NotificationKind]


def decide(state: PolicyState | None, config: PolicyConfig, event: Event, now: float) -> Decision:
    """Apply one event at `now` and return the new state and the notifications to send."""
    if state is None and event in ("success", "tick"):
        # The common case, a ping to a healthy check, changes nothing and allocates nothing.
        return Decision(None, [])
    current = PolicyState() if state is None else state.copy()
    kinds: list[NotificationKind] = []

    _end_settled_flapping(current, config, now)
    if event in ("success", "fail", "miss"):
        _count_result(current, config, event == "success", now, kinds)
    elif event == "late" and _wants_late_notice(current, config):
        kinds.append("late")
    _send_due_notices(current, config, now, kinds)

    return Decision(_compact(current, now), kinds)


def next_wakeup(state: PolicyState | None, config: PolicyConfig) -> float | None:
    """Return when `decide` should next get a `tick`, or None when nothing is due."""
    if state is None:
        return None
    times: list[float] = []
    if state.flapping and state.settle_pending and state.last_change is not None:
        times.append(state.last_change + config.flap_settle)
    if state.reminder_at is not None and not state.settle_pending:
        times.append(state.reminder_at)
    return min(times, default=None)


def _count_result(
    state: PolicyState,
    config: PolicyConfig,
    success: bool,
    now: float,
    kinds: list[NotificationKind],
) -> None:
    if success:
        state.streak = state.streak + 1 if state.streak > 0 else 1
    else:
        state.streak = state.streak - 1 if state.streak < 0 else -1

    if state.alerted == "up" and -state.streak >= config.alert_after:
        target: Literal["up", "down"] = "down"
    elif state.alerted == "down" and state.streak >= config.recover_after:
        target = "up"
    else:
        return

    state.alerted = target
    state.last_change = now
    state.reminder_at = None
    _count_flip(state, now)

    if state.flapping:
        state.settle_pending = True
        return
    threshold = config.flap_threshold
    if threshold is not None and state.flip_estimate(now) > threshold:
        state.flapping = True
        state.settle_pending = True
        kinds.append("flapping")
        return
    kinds.append(target)
    _schedule_reminder(state, config, now)


def _wants_late_notice(state: PolicyState, config: PolicyConfig) -> bool:
    return config.late_notice and state.alerted == "up" and not state.flapping


def _send_due_notices(
    state: PolicyState, config: PolicyConfig, now: float, kinds: list[NotificationKind]
) -> None:
    settled = state.last_change is not None and now - state.last_change >= config.flap_settle
    if state.flapping and state.settle_pending and settled:
        state.settle_pending = False
        kinds.append(state.alerted)
        _schedule_reminder(state, config, now)
        return

    reminder_at = state.reminder_at
    if reminder_at is None or now < reminder_at or state.settle_pending:
        return
    kinds.append("reminder")
    interval = config.reminder_every
    if interval is None:
        state.reminder_at = None
        return
    # Skip every reminder that fell due while no event arrived, in one step.
    state.reminder_at = reminder_at + (math.floor((now - reminder_at) / interval) + 1) * interval


def _end_settled_flapping(state: PolicyState, config: PolicyConfig, now: float) -> None:
    if not state.flapping or state.settle_pending:
        return
    threshold = config.flap_threshold
    if threshold is None or state.flip_estimate(now) <= threshold:
        state.flapping = False


def _schedule_reminder(state: PolicyState, config: PolicyConfig, now: float) -> None:
    if state.alerted == "down" and config.reminder_every is not None:
        state.reminder_at = now + config.reminder_every
    else:
        state.reminder_at = None


def _count_flip(state: PolicyState, now: float) -> None:
    _roll_window(state, now)
    if state.window_start is None:
        state.window_start = now
    state.flips_current += 1


def _roll_window(state: PolicyState, now: float) -> None:
    if state.window_start is None:
        return
    elapsed = now - state.window_start
    if elapsed < FLAP_WINDOW:
        return
    if elapsed < 2 * FLAP_WINDOW:
        state.flips_previous = state.flips_current
        state.window_start += FLAP_WINDOW
    else:
        state.flips_previous = 0
        state.window_start = now
    state.flips_current = 0


def _compact(state: PolicyState, now: float) -> PolicyState | None:
    """Return None when `state` remembers nothing that a fresh state would not."""
    _roll_window(state, now)
    if state.alerted == "down" or state.streak < 0 or state.flapping:
        return state
    if state.reminder_at is not None or state.flip_estimate(now) > 0:
        return state
    return None
