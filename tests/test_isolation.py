"""Two users' projects: a key of one can neither read nor change nor detect the other's checks."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.server import Project, Server, request

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def alice(server: Server) -> Project:
    return server.create_project("alice")


@pytest.fixture(scope="module")
def mallory(server: Server) -> Project:
    return server.create_project("mallory")


@pytest.fixture
def target(server: Server, alice: Project) -> dict[str, Any]:
    """One of alice's checks, pinged once so it has a ping, a body and a flip."""
    body = {"name": "payroll", "slug": "payroll", "tags": "finance", "timeout": 3600}
    created: dict[str, Any] = server.api("POST", "/api/v3/checks/", alice.rw_key, body).json()
    assert request("POST", created["ping_url"], b"secret output").status == 200
    return created


def not_found_like_missing(answer_status: int, missing_status: int) -> None:
    assert answer_status == missing_status
    assert answer_status == 404


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("POST", "", {"name": "hijacked"}),
        ("DELETE", "", None),
        ("POST", "/pause", ""),
        ("POST", "/resume", ""),
        ("GET", "/pings/", None),
        ("GET", "/pings/1/body", None),
        ("GET", "/flips/", None),
    ],
)
def test_other_project_check_answers_like_missing(
    server: Server,
    mallory: Project,
    target: dict[str, Any],
    method: str,
    suffix: str,
    body: Any,
) -> None:
    other = server.api(method, f"/api/v3/checks/{target['uuid']}{suffix}", mallory.rw_key, body)
    missing = server.api(method, f"/api/v3/checks/{uuid.uuid4()}{suffix}", mallory.rw_key, body)
    not_found_like_missing(other.status, missing.status)
    assert other.json() == missing.json()


def test_other_project_check_unchanged(
    server: Server, alice: Project, mallory: Project, target: dict[str, Any]
) -> None:
    path = f"/api/v3/checks/{target['uuid']}"
    server.api("POST", path, mallory.rw_key, {"name": "hijacked"})
    server.api("POST", f"{path}/pause", mallory.rw_key)
    server.api("DELETE", path, mallory.rw_key)
    check = server.api("GET", path, alice.rw_key).json()
    assert check["name"] == "payroll"
    assert check["status"] == "up"


def test_unique_key_of_other_project_is_404(
    server: Server, alice: Project, mallory: Project, target: dict[str, Any]
) -> None:
    unique_key = server.api("GET", f"/api/v3/checks/{target['uuid']}", alice.ro_key).json()[
        "unique_key"
    ]
    for suffix in ("", "/flips/"):
        answer = server.api("GET", f"/api/v3/checks/{unique_key}{suffix}", mallory.ro_key)
        assert answer.status == 404


def test_lists_hold_only_own_checks(
    server: Server, alice: Project, mallory: Project, target: dict[str, Any]
) -> None:
    for query in ("", "?tag=finance", "?slug=payroll"):
        listed = server.api("GET", f"/api/v3/checks/{query}", mallory.rw_key).json()["checks"]
        assert all(check["uuid"] != target["uuid"] for check in listed)
        assert all(check["name"] != "payroll" for check in listed)
    badges = server.api("GET", "/api/v3/badges/", mallory.ro_key).json()["badges"]
    assert "finance" not in badges


def test_unique_upsert_never_takes_other_project_check(
    server: Server, mallory: Project, target: dict[str, Any]
) -> None:
    body = {"name": "payroll", "unique": ["name"]}
    answer = server.api("POST", "/api/v3/checks/", mallory.rw_key, body)
    assert answer.status == 201
    assert answer.json()["uuid"] != target["uuid"]


def test_slug_ping_stays_in_project(
    server: Server, alice: Project, mallory: Project, target: dict[str, Any]
) -> None:
    answer = request("GET", f"{server.url}/ping/{mallory.ping_key}/payroll")
    assert answer.status == 404
    check = server.api("GET", f"/api/v3/checks/{target['uuid']}", alice.rw_key).json()
    assert check["n_pings"] == 1


def test_other_project_badge_signature_fails(
    server: Server, alice: Project, mallory: Project, target: dict[str, Any]
) -> None:
    alice_url = server.api("GET", "/api/v3/badges/", alice.ro_key).json()["badges"]["finance"]
    mallory_badges = server.api("GET", "/api/v3/badges/", mallory.ro_key).json()["badges"]
    mallory_key = mallory_badges["*"]["svg"].split("/")[4]
    alice_key = alice_url["svg"].split("/")[4]
    assert request("GET", alice_url["svg"].replace(alice_key, mallory_key)).status == 404


def test_tasks_endpoints_respect_project(
    server: Server, alice: Project, mallory: Project, target: dict[str, Any]
) -> None:
    check_id = target["uuid"]
    for action in ("pause", "resume"):
        answer = request(
            "POST",
            f"{server.url}/api/tasks/{check_id}/{action}",
            headers={"X-Api-Key": mallory.rw_key},
        )
        assert answer.status == 404
    status = request(
        "GET",
        f"{server.url}/api/tasks/{check_id}/status",
        headers={"X-Api-Key": mallory.rw_key},
    ).json()
    assert "timeout" not in status
    assert "name" not in status
    created = request(
        "POST",
        f"{server.url}/api/tasks",
        json.dumps({"name": "m", "interval": 60}),
        {"X-Api-Key": mallory.rw_key},
    ).json()
    assert server.api("GET", f"/api/v3/checks/{created['id']}", alice.rw_key).status == 404
    assert server.api("GET", f"/api/v3/checks/{created['id']}", mallory.rw_key).status == 200
