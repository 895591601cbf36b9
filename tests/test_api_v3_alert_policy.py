"""The alert policy fields and the notification history, through the management API."""

from __future__ import annotations

import uuid

import pytest

from tests.server import Server

pytestmark = pytest.mark.e2e


def test_policy_fields_round_trip(server: Server) -> None:
    key = server.project.rw_key
    body = {
        "name": "p",
        "timeout": 600,
        "alert_after": 3,
        "recover_after": 2,
        "reminder": 3600,
        "late_notice": True,
        "max_runtime": 900,
    }
    answer = server.api("POST", "/api/v3/checks/", key, body)
    assert answer.status == 201, answer.text
    check = answer.json()
    assert check["alert_after"] == 3
    assert check["recover_after"] == 2
    assert check["reminder"] == 3600
    assert check["late_notice"] is True
    assert check["max_runtime"] == 900

    answer = server.api("POST", f"/api/v3/checks/{check['uuid']}", key, {"reminder": 0})
    assert answer.status == 200, answer.text
    assert answer.json()["reminder"] == 0
    assert answer.json()["alert_after"] == 3


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"alert_after": 0}, "alert_after is out of range"),
        ({"alert_after": "2"}, "alert_after is not a number"),
        ({"recover_after": 5000}, "recover_after is out of range"),
        ({"reminder": 30}, "reminder is too small"),
        ({"reminder": True}, "reminder is not a number"),
        ({"late_notice": 1}, "late_notice is not a boolean"),
        ({"max_runtime": -1}, "max_runtime is too small"),
    ],
)
def test_policy_fields_rejected(server: Server, body: dict[str, object], fragment: str) -> None:
    answer = server.api("POST", "/api/v3/checks/", server.project.rw_key, {"name": "x", **body})
    assert answer.status == 400
    assert fragment in answer.json()["error"]


def test_notification_history_hidden_from_others(server: Server) -> None:
    owner = server.project
    other = server.create_project("other")
    check = server.api("POST", "/api/v3/checks/", owner.rw_key, {"name": "mine"}).json()
    answer = server.api("GET", f"/api/v3/checks/{check['uuid']}/notifications/", other.rw_key)
    assert answer.status == 404
    missing = server.api("GET", f"/api/v3/checks/{uuid.uuid4()}/notifications/", other.rw_key)
    assert missing.status == 404
