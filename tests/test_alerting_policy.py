"""Alert policy: thresholds, reminders, late notices and the per-check state size."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from serverlord.alerting.policy import (
    DEFAULT_POLICY,
    Event,
    NotificationKind,
    PolicyConfig,
    PolicyState,
    decide,
    next_wakeup,
)

T0 = 1_700_000_000.0
HOUR = 3600.0


def run_events(
    config: PolicyConfig, events: list[tuple[float, Event]], state: PolicyState | None = None
) -> tuple[PolicyState | None, list[list[NotificationKind]]]:
    """Feed events in order; return the final state and each event's notifications."""
    sent = []
    for when, event in events:
        state, kinds = decide(state, config, event, when)
        sent.append(kinds)
    return state, sent


def test_first_failure_alerts_by_default() -> None:
    state, sent = run_events(DEFAULT_POLICY, [(T0, "fail"), (T0 + 60, "success")])
    assert sent == [["down"], ["up"]]
    assert state is not None  # the two flips are still counted


def test_new_check_success_is_silent() -> None:
    state, kinds = decide(None, DEFAULT_POLICY, "success", T0)
    assert kinds == []
    assert state is None


def test_missed_deadline_counts_as_failure() -> None:
    _, sent = run_events(DEFAULT_POLICY, [(T0, "miss")])
    assert sent == [["down"]]


def test_down_alert_waits_for_threshold() -> None:
    config = PolicyConfig(alert_after=3)
    _, sent = run_events(config, [(T0, "fail"), (T0 + 1, "miss"), (T0 + 2, "fail")])
    assert sent == [[], [], ["down"]]


def test_success_resets_failure_count() -> None:
    config = PolicyConfig(alert_after=3)
    events: list[tuple[float, Event]] = [
        (T0, "fail"),
        (T0 + 1, "fail"),
        (T0 + 2, "success"),
        (T0 + 3, "fail"),
        (T0 + 4, "fail"),
    ]
    _, sent = run_events(config, events)
    assert sent == [[], [], [], [], []]


def test_silent_failures_send_no_up() -> None:
    config = PolicyConfig(alert_after=2)
    state, sent = run_events(config, [(T0, "fail"), (T0 + 1, "success")])
    assert sent == [[], []]
    assert state is None


def test_up_alert_waits_for_recovery_threshold() -> None:
    config = PolicyConfig(recover_after=2)
    events: list[tuple[float, Event]] = [
        (T0, "fail"),
        (T0 + 1, "success"),
        (T0 + 2, "fail"),
        (T0 + 3, "success"),
        (T0 + 4, "success"),
    ]
    _, sent = run_events(config, events)
    assert sent == [["down"], [], [], [], ["up"]]


def test_reminders_repeat_while_down() -> None:
    config = PolicyConfig(reminder_every=HOUR)
    state, sent = run_events(config, [(T0, "fail")])
    assert next_wakeup(state, config) == T0 + HOUR

    state, sent = run_events(config, [(T0 + HOUR, "tick")], state)
    assert sent == [["reminder"]]
    assert next_wakeup(state, config) == T0 + 2 * HOUR

    state, sent = run_events(config, [(T0 + HOUR + 10, "tick")], state)
    assert sent == [[]]


def test_missed_reminders_are_not_sent_in_a_burst() -> None:
    config = PolicyConfig(reminder_every=HOUR)
    state, _ = run_events(config, [(T0, "fail")])
    state, sent = run_events(config, [(T0 + 5 * HOUR + 5, "tick")], state)
    assert sent == [["reminder"]]
    assert next_wakeup(state, config) == T0 + 6 * HOUR


def test_reminders_stop_when_up() -> None:
    config = PolicyConfig(reminder_every=HOUR)
    state, sent = run_events(config, [(T0, "fail"), (T0 + 60, "success")])
    assert sent == [["down"], ["up"]]
    assert next_wakeup(state, config) is None
    _, sent = run_events(config, [(T0 + HOUR, "tick")], state)
    assert sent == [[]]


def test_late_notice_when_grace_starts() -> None:
    config = PolicyConfig(late_notice=True)
    _, sent = run_events(config, [(T0, "late")])
    assert sent == [["late"]]


def test_late_notice_is_off_by_default() -> None:
    _, sent = run_events(DEFAULT_POLICY, [(T0, "late")])
    assert sent == [[]]


def test_late_notice_skipped_while_down() -> None:
    config = PolicyConfig(late_notice=True)
    _, sent = run_events(config, [(T0, "fail"), (T0 + 60, "late")])
    assert sent == [["down"], []]


def test_state_is_dropped_when_quiet() -> None:
    state, _ = run_events(DEFAULT_POLICY, [(T0, "fail"), (T0 + 60, "success")])
    state, sent = run_events(DEFAULT_POLICY, [(T0 + 49 * HOUR, "tick")], state)
    assert sent == [[]]
    assert state is None


def test_decide_leaves_given_state_unchanged() -> None:
    state, _ = run_events(DEFAULT_POLICY, [(T0, "fail")])
    assert state is not None
    before = repr(state)
    decide(state, DEFAULT_POLICY, "success", T0 + 60)
    assert repr(state) == before


def test_policy_state_is_small() -> None:
    state, _ = run_events(PolicyConfig(reminder_every=HOUR), [(T0, "fail")])
    assert state is not None
    # The object with its slots; floats add 24 bytes each when not shared.
    assert sys.getsizeof(state) <= 120


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alert_after", 0),
        ("recover_after", 0),
        ("reminder_every", 0.0),
        ("flap_threshold", 0),
        ("flap_settle", -1.0),
    ],
)
def test_invalid_config_names_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        PolicyConfig(**{field: value})
