"""Slug pings: `/ping/<ping-key>/<slug>` with its suffixes and `?create=1`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server import Project, Server, request

pytestmark = pytest.mark.e2e


@pytest.fixture
def project(server: Server) -> Project:
    return server.create_project("slugs")


def create(server: Server, project: Project, **body: Any) -> dict[str, Any]:
    answer = server.api("POST", "/api/v3/checks/", project.rw_key, body)
    assert answer.status == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def check_of(server: Server, project: Project, check_id: str) -> dict[str, Any]:
    answer = server.api("GET", f"/api/v3/checks/{check_id}", project.rw_key)
    assert answer.status == 200
    found: dict[str, Any] = answer.json()
    return found


def test_slug_ping_reaches_check(server: Server, project: Project) -> None:
    created = create(server, project, slug="backup", timeout=60)
    answer = request("GET", f"{server.url}/ping/{project.ping_key}/backup")
    assert answer.status == 200
    assert answer.text == "OK"
    assert answer.headers["access-control-allow-origin"] == "*"
    assert check_of(server, project, created["uuid"])["status"] == "up"


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [("/fail", "down"), ("/1", "down"), ("/0", "up"), ("/log", "new"), ("/start", "new")],
)
def test_slug_suffixes(server: Server, project: Project, suffix: str, expected: str) -> None:
    created = create(server, project, slug="job", timeout=60)
    answer = request("POST", f"{server.url}/ping/{project.ping_key}/job{suffix}", b"out")
    assert answer.status == 200
    check = check_of(server, project, created["uuid"])
    assert check["status"] == expected
    assert check["n_pings"] == 1


def test_slug_exit_status_above_255(server: Server, project: Project) -> None:
    create(server, project, slug="job")
    answer = request("GET", f"{server.url}/ping/{project.ping_key}/job/256")
    assert answer.status == 400
    assert answer.text == "invalid url format"


def test_unknown_slug_is_404(server: Server, project: Project) -> None:
    answer = request("GET", f"{server.url}/ping/{project.ping_key}/nothing-here")
    assert answer.status == 404
    assert answer.text == "not found"


def test_unknown_ping_key_is_404(server: Server, project: Project) -> None:
    create(server, project, slug="job")
    for key in ("a" * 32, project.rw_key, "short"):
        answer = request("GET", f"{server.url}/ping/{key}/job")
        assert answer.status == 404


def test_upper_case_slug_is_400(server: Server, project: Project) -> None:
    for query in ("", "?create=1"):
        answer = request("GET", f"{server.url}/ping/{project.ping_key}/Backup{query}")
        assert answer.status == 400
        assert "slug" in answer.text
    listed = server.api("GET", "/api/v3/checks/", project.rw_key).json()["checks"]
    assert listed == []


def test_create_param_creates_check(server: Server, project: Project) -> None:
    answer = request("GET", f"{server.url}/ping/{project.ping_key}/new-job?create=1")
    assert answer.status == 201
    assert answer.text == "Created"
    listed = server.api("GET", "/api/v3/checks/", project.rw_key).json()["checks"]
    assert len(listed) == 1
    check = listed[0]
    assert check["name"] == "new-job"
    assert check["slug"] == "new-job"
    assert check["timeout"] == 86400
    assert check["grace"] == 3600
    assert check["n_pings"] == 1
    assert check["status"] == "up"

    again = request("GET", f"{server.url}/ping/{project.ping_key}/new-job?create=1")
    assert again.status == 200
    assert again.text == "OK"
    assert len(server.api("GET", "/api/v3/checks/", project.rw_key).json()["checks"]) == 1


def test_create_param_start_opens_run(server: Server, project: Project) -> None:
    answer = request("GET", f"{server.url}/ping/{project.ping_key}/runner/start?create=1")
    assert answer.status == 201
    check = server.api("GET", "/api/v3/checks/", project.rw_key).json()["checks"][0]
    assert check["status"] == "new"
    assert check["started"] is True


def test_shared_slug_is_ambiguous(server: Server, project: Project) -> None:
    create(server, project, slug="twin")
    create(server, project, slug="twin")
    answer = request("GET", f"{server.url}/ping/{project.ping_key}/twin")
    assert answer.status == 409
    assert answer.text == "ambiguous slug"


def test_renamed_slug_routes_to_new_check(server: Server, project: Project) -> None:
    first = create(server, project, slug="moving", timeout=60)
    assert request("GET", f"{server.url}/ping/{project.ping_key}/moving").status == 200

    # The worker's cached route for "moving" now points at a check with another slug.
    path = f"/api/v3/checks/{first['uuid']}"
    assert server.api("POST", path, project.rw_key, {"slug": "moved"}).status == 200
    second = create(server, project, slug="moving", timeout=60)
    for _ in range(4):  # reach every web worker's cache
        assert request("GET", f"{server.url}/ping/{project.ping_key}/moving").status == 200
    assert check_of(server, project, first["uuid"])["n_pings"] == 1
    assert check_of(server, project, second["uuid"])["n_pings"] == 4

    assert request("GET", f"{server.url}/ping/{project.ping_key}/moved").status == 200
    assert check_of(server, project, first["uuid"])["n_pings"] == 2


def test_deleted_slug_check_is_404(server: Server, project: Project) -> None:
    created = create(server, project, slug="gone")
    assert request("GET", f"{server.url}/ping/{project.ping_key}/gone").status == 200
    assert server.api("DELETE", f"/api/v3/checks/{created['uuid']}", project.rw_key).status == 200
    for _ in range(4):
        assert request("GET", f"{server.url}/ping/{project.ping_key}/gone").status == 404


def test_slug_ping_head_has_empty_body(server: Server, project: Project) -> None:
    create(server, project, slug="quiet")
    answer = request("HEAD", f"{server.url}/ping/{project.ping_key}/quiet")
    assert answer.status == 200
    assert answer.body == b""
