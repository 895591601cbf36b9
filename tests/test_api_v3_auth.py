"""API keys on the management API: missing, wrong, read-only, ping keys, and CORS."""

from __future__ import annotations

import json

import pytest

from tests.server import Project, Server, request

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(server: Server) -> Project:
    return server.create_project("auth")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v3/checks/"),
        ("POST", "/api/v3/checks/"),
        ("GET", "/api/v3/channels/"),
        ("GET", "/api/v3/badges/"),
        ("GET", "/api/v1/checks/"),
        ("GET", "/api/v2/checks/"),
    ],
)
def test_missing_key_is_401(server: Server, method: str, path: str) -> None:
    answer = server.api(method, path, body={} if method == "POST" else None)
    assert answer.status == 401
    assert answer.json() == {"error": "missing api key"}


def test_unknown_key_is_401(server: Server) -> None:
    for key in ("x" * 32, "short", "Z" * 40):
        answer = server.api("GET", "/api/v3/checks/", key)
        assert answer.status == 401
        assert answer.json() == {"error": "wrong api key"}


def test_read_only_key_cannot_write(server: Server, project: Project) -> None:
    answer = server.api("POST", "/api/v3/checks/", project.ro_key, {"name": "x"})
    assert answer.status == 401
    assert answer.json() == {"error": "wrong api key"}
    answer = server.api("GET", "/api/v3/channels/", project.ro_key)
    assert answer.status == 401
    assert server.api("GET", "/api/v3/checks/", project.ro_key).status == 200


def test_ping_key_cannot_manage(server: Server, project: Project) -> None:
    for method, path in (("GET", "/api/v3/checks/"), ("POST", "/api/v3/checks/")):
        answer = server.api(method, path, project.ping_key, {} if method == "POST" else None)
        assert answer.status == 401
        assert answer.json() == {"error": "wrong api key"}


def test_api_key_in_json_body(server: Server, project: Project) -> None:
    body = {"api_key": project.rw_key, "name": "from body"}
    answer = server.api("POST", "/api/v3/checks/", body=body)
    assert answer.status == 201
    assert answer.json()["name"] == "from body"


def test_tasks_create_needs_read_write_key(server: Server, project: Project) -> None:
    body = json.dumps({"name": "task", "interval": 60})
    answer = request("POST", f"{server.url}/api/tasks", body)
    assert answer.status == 401
    assert answer.json() == {"error": "missing api key"}
    answer = request("POST", f"{server.url}/api/tasks", body, {"X-Api-Key": project.ro_key})
    assert answer.status == 401
    answer = request("POST", f"{server.url}/api/tasks", body, {"X-Api-Key": project.rw_key})
    assert answer.status == 201


def test_keyless_status_shows_only_state(server: Server, project: Project) -> None:
    body = json.dumps({"name": "secret name", "interval": 60})
    created = request("POST", f"{server.url}/api/tasks", body, {"X-Api-Key": project.rw_key}).json()
    keyless = request("GET", f"{server.url}/api/tasks/{created['id']}/status").json()
    assert set(keyless) <= {
        "id",
        "status",
        "started",
        "last_ping",
        "next_ping",
        "last_duration",
        "n_pings",
    }
    assert keyless["status"] == "new"
    keyed = request(
        "GET",
        f"{server.url}/api/tasks/{created['id']}/status",
        headers={"X-Api-Key": project.ro_key},
    ).json()
    assert keyed["timeout"] == 60


def test_heartbeat_needs_no_key(server: Server) -> None:
    created = server.create_check()
    answer = request("POST", f"{server.url}/api/heartbeat/{created['id']}")
    assert answer.status == 200


def test_tasks_pause_needs_key(server: Server, project: Project) -> None:
    created = server.create_check()
    path = f"{server.url}/api/tasks/{created['id']}/pause"
    assert request("POST", path).status == 401
    other = request("POST", path, headers={"X-Api-Key": project.rw_key})
    assert other.status == 404


def test_preflight_answers_204(server: Server) -> None:
    answer = request(
        "OPTIONS",
        f"{server.url}/api/v3/checks/",
        headers={
            "Origin": "https://example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-Api-Key",
        },
    )
    assert answer.status == 204
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "X-Api-Key" in answer.headers["access-control-allow-headers"]


def test_errors_carry_cors_header(server: Server) -> None:
    answer = server.api("GET", "/api/v3/checks/")
    assert answer.status == 401
    assert answer.headers["access-control-allow-origin"] == "*"


def test_status_needs_no_key(server: Server) -> None:
    answer = server.api("GET", "/api/v3/status/")
    assert answer.status == 200
    assert answer.text == "OK"
