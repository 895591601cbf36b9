"""Badges, channels, and channel assignment through the management API."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.server import Project, Server, request

pytestmark = pytest.mark.e2e


def add_channel(server: Server, project: Project, name: str) -> str:
    channel_id = str(uuid.uuid4())
    config = {"down": {"url": "http://127.0.0.1:9/down"}, "up": None}
    with psycopg.connect(server.extra["catalog"]) as conn:
        conn.execute(
            "INSERT INTO channels (id, project_id, name, kind, config)"
            " VALUES (%s, %s, %s, 'webhook', %s)",
            (channel_id, project.id, name, json.dumps(config)),
        )
    return channel_id


def create(server: Server, project: Project, **body: Any) -> dict[str, Any]:
    answer = server.api("POST", "/api/v3/checks/", project.rw_key, body)
    assert answer.status == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def test_channels_listed(server: Server) -> None:
    project = server.create_project("channels")
    first = add_channel(server, project, "Email to Alice")
    second = add_channel(server, project, "Pager")
    answer = server.api("GET", "/api/v3/channels/", project.rw_key)
    assert answer.status == 200
    assert answer.json() == {
        "channels": [
            {"id": first, "name": "Email to Alice", "kind": "webhook"},
            {"id": second, "name": "Pager", "kind": "webhook"},
        ]
    }


def test_channels_assigned_by_id_name_and_star(server: Server) -> None:
    project = server.create_project("assign")
    first = add_channel(server, project, "alpha")
    second = add_channel(server, project, "beta")

    assert create(server, project, channels="*")["channels"] == ",".join(sorted([first, second]))
    assert create(server, project, channels="beta")["channels"] == second
    assert create(server, project, channels=f"{first},beta")["channels"] == ",".join(
        sorted([first, second])
    )
    created = create(server, project, channels="alpha")
    path = f"/api/v3/checks/{created['uuid']}"
    answer = server.api("POST", path, project.rw_key, {"channels": ""})
    assert answer.json()["channels"] == ""


def test_ambiguous_channel_name_rejected(server: Server) -> None:
    project = server.create_project("dupes")
    add_channel(server, project, "same")
    add_channel(server, project, "same")
    answer = server.api("POST", "/api/v3/checks/", project.rw_key, {"channels": "same"})
    assert answer.status == 400
    assert "non-unique channel identifier: same" in answer.json()["error"]


def test_slug_create_assigns_every_channel(server: Server) -> None:
    project = server.create_project("slug channels")
    channel = add_channel(server, project, "ops")
    answer = request("GET", f"{server.url}/ping/{project.ping_key}/auto?create=1")
    assert answer.status == 201
    listed = server.api("GET", "/api/v3/checks/", project.rw_key).json()["checks"]
    assert listed[0]["channels"] == channel


def test_badges_listed_per_tag(server: Server) -> None:
    project = server.create_project("badges")
    create(server, project, tags="prod db")
    answer = server.api("GET", "/api/v3/badges/", project.ro_key)
    assert answer.status == 200
    badges = answer.json()["badges"]
    assert set(badges) == {"*", "prod", "db"}
    for urls in badges.values():
        assert set(urls) == {"svg", "svg3", "json", "json3", "shields", "shields3"}
    assert badges["prod"]["svg"].endswith("/prod.svg")
    assert "-2/" in badges["prod"]["svg"]
    assert "-2/" not in badges["prod"]["svg3"]


def test_tag_badge_reports_status(server: Server) -> None:
    project = server.create_project("badge status")
    up = create(server, project, tags="prod", timeout=3600)
    down = create(server, project, tags="prod db", timeout=3600)
    request("GET", up["ping_url"])
    request("GET", f"{down['ping_url']}/fail")
    badges = server.api("GET", "/api/v3/badges/", project.ro_key).json()["badges"]

    answer = request("GET", badges["prod"]["json"])
    assert answer.status == 200
    assert answer.json() == {"status": "down", "total": 2, "grace": 0, "down": 1}
    svg = request("GET", badges["prod"]["svg"])
    assert svg.headers["content-type"] == "image/svg+xml"
    assert svg.text.startswith("<svg")
    assert "down" in svg.text
    shields = request("GET", badges["*"]["shields3"]).json()
    assert shields == {
        "schemaVersion": 1,
        "label": "Server Lord",
        "message": "down",
        "color": "critical",
    }


def test_forged_badge_signature_is_404(server: Server) -> None:
    project = server.create_project("forged")
    create(server, project, tags="public secret")
    url = server.api("GET", "/api/v3/badges/", project.ro_key).json()["badges"]["public"]["svg"]
    forged = url.replace("/public.svg", "/secret.svg")
    assert request("GET", forged).status == 404
    assert request("GET", url.replace(url.split("/")[-2], "AAAAAAAA-2")).status == 404


def test_check_badge_from_check(server: Server) -> None:
    project = server.create_project("check badge")
    created = create(server, project, name="db backup", timeout=3600)
    request("GET", created["ping_url"])
    answer = request("GET", created["badge_url"])
    assert answer.status == 200
    assert "db backup" in answer.text
    assert "up" in answer.text
    as_json = request("GET", created["badge_url"].replace(".svg", ".json")).json()
    assert as_json == {"status": "up", "total": 1, "grace": 0, "down": 0}
