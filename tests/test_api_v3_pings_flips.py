"""A check's pings, ping bodies and flips through the management API."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.server import Project, Server, request

pytestmark = pytest.mark.e2e

PING_FIELDS = {
    "type",
    "date",
    "n",
    "scheme",
    "remote_addr",
    "method",
    "ua",
    "rid",
    "body_url",
    "exitstatus",
}


@pytest.fixture(scope="module")
def project(server: Server) -> Project:
    return server.create_project("pings")


def create(server: Server, project: Project, **body: Any) -> dict[str, Any]:
    answer = server.api("POST", "/api/v3/checks/", project.rw_key, body)
    assert answer.status == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def test_pings_newest_first(server: Server, project: Project) -> None:
    created = create(server, project)
    run = str(uuid.uuid4())
    request("GET", f"{created['ping_url']}/start?rid={run}", headers={"User-Agent": "cron/1"})
    request("POST", f"{created['ping_url']}?rid={run}", b"backup done")
    request("GET", f"{created['ping_url']}/3")

    answer = server.api("GET", f"/api/v3/checks/{created['uuid']}/pings/", project.rw_key)
    assert answer.status == 200
    pings = answer.json()["pings"]
    assert [ping["n"] for ping in pings] == [3, 2, 1]
    assert [ping["type"] for ping in pings] == ["fail", "success", "start"]
    for ping in pings:
        assert set(ping) - {"duration"} == PING_FIELDS
        assert ping["scheme"] == "http"
        assert ping["remote_addr"] == "127.0.0.1"
        assert ping["date"].endswith("+00:00")
    assert pings[0]["exitstatus"] == 3
    assert pings[0]["method"] == "GET"
    assert pings[1]["method"] == "POST"
    assert pings[1]["rid"] == run
    assert isinstance(pings[1]["duration"], float)
    assert "duration" not in pings[0]
    assert pings[2]["ua"] == "cron/1"
    assert pings[2]["body_url"] is None
    assert pings[1]["body_url"] == (f"{server.url}/api/v3/checks/{created['uuid']}/pings/2/body")


def test_ping_body_as_text(server: Server, project: Project) -> None:
    created = create(server, project)
    request("POST", created["ping_url"], bytes.fromhex("41424344E9E9"))
    answer = server.api("GET", f"/api/v3/checks/{created['uuid']}/pings/1/body", project.rw_key)
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text == "ABCD\ufffd\ufffd"


def test_missing_ping_body_is_404(server: Server, project: Project) -> None:
    created = create(server, project)
    request("GET", created["ping_url"])
    base = f"/api/v3/checks/{created['uuid']}/pings"
    for n in ("1", "2", "0", "abc", "99999999999"):
        assert server.api("GET", f"{base}/{n}/body", project.rw_key).status == 404


def test_pings_need_read_write_key(server: Server, project: Project) -> None:
    created = create(server, project)
    path = f"/api/v3/checks/{created['uuid']}/pings/"
    assert server.api("GET", path, project.ro_key).status == 401


def test_flips_in_order_with_filters(server: Server, project: Project) -> None:
    created = create(server, project)
    request("GET", created["ping_url"])
    request("GET", f"{created['ping_url']}/fail")
    request("GET", created["ping_url"])

    path = f"/api/v3/checks/{created['uuid']}/flips/"
    answer = server.api("GET", path, project.ro_key)
    assert answer.status == 200
    flips = answer.json()["flips"]
    assert [flip["up"] for flip in flips] == [1, 0, 1]
    for flip in flips:
        assert set(flip) == {"timestamp", "up"}
        assert flip["timestamp"].endswith("+00:00")

    now = int(time.time())
    assert len(server.api("GET", f"{path}?seconds=3600", project.ro_key).json()["flips"]) == 3
    assert server.api("GET", f"{path}?start={now + 60}", project.ro_key).json()["flips"] == []
    assert server.api("GET", f"{path}?end={now - 3600}", project.ro_key).json()["flips"] == []
    both = f"{path}?start={now - 3600}&end={now + 60}"
    assert len(server.api("GET", both, project.ro_key).json()["flips"]) == 3


def test_flips_by_unique_key(server: Server, project: Project) -> None:
    created = create(server, project)
    request("GET", created["ping_url"])
    check = server.api("GET", f"/api/v3/checks/{created['uuid']}", project.ro_key).json()
    answer = server.api("GET", f"/api/v3/checks/{check['unique_key']}/flips/", project.ro_key)
    assert answer.status == 200
    assert len(answer.json()["flips"]) == 1


@pytest.mark.parametrize("query", ["seconds=abc", "start=-5", "end=1.5", "seconds="])
def test_flips_reject_bad_query(server: Server, project: Project, query: str) -> None:
    created = create(server, project)
    answer = server.api("GET", f"/api/v3/checks/{created['uuid']}/flips/?{query}", project.ro_key)
    assert answer.status == 400
    assert "error" in answer.json()
