"""The per-project Prometheus endpoint: healthchecks' hc_* series behind a read-only key."""

from __future__ import annotations

import pytest

from serverlord.shardproc.api_ops import unique_key
from tests.server import Server, request

pytestmark = pytest.mark.e2e


def test_project_metrics_show_each_check(server: Server) -> None:
    project = server.create_project("prometheus")
    up = server.api("POST", "/api/v3/checks/", project.rw_key, {"name": "backup", "tags": "db"})
    down = server.api("POST", "/api/v3/checks/", project.rw_key, {"name": "etl", "tags": "db x"})
    assert up.status == 201
    assert down.status == 201
    up_id, down_id = up.json()["uuid"], down.json()["uuid"]
    assert request("GET", f"{server.url}/ping/{up_id}").status == 200
    assert request("GET", f"{server.url}/ping/{down_id}/fail").status == 200

    response = request("GET", f"{server.url}/projects/{project.id}/metrics/{project.ro_key}")

    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    up_key, down_key = unique_key(up_id), unique_key(down_id)
    assert f'hc_check_up{{name="backup",tags="db",unique_key="{up_key}"}} 1' in lines
    assert f'hc_check_up{{name="etl",tags="db x",unique_key="{down_key}"}} 0' in lines
    assert f'hc_check_paused{{name="backup",tags="db",unique_key="{up_key}"}} 0' in lines
    assert 'hc_tag_up{tag="db"} 0' in lines
    assert 'hc_tag_up{tag="x"} 0' in lines
    assert "hc_checks_total 2" in lines
    assert "hc_checks_down_total 1" in lines
    # The UUIDs are the ping URLs' secrets.
    assert up_id not in response.text
    assert down_id not in response.text


def test_project_metrics_accept_bearer_key(server: Server) -> None:
    project = server.create_project("bearer")
    headers = {"Authorization": f"Bearer {project.ro_key}"}

    response = request("GET", f"{server.url}/projects/{project.id}/metrics", headers=headers)

    assert response.status == 200
    assert "hc_checks_total 0" in response.text.splitlines()


def test_project_metrics_reject_wrong_keys(server: Server) -> None:
    project = server.create_project("keys")
    other = server.create_project("other")
    base = f"{server.url}/projects/{project.id}/metrics"

    missing = request("GET", base)
    assert missing.status == 401
    assert "read-only API key" in missing.json()["error"]

    malformed = request("GET", f"{base}/short")
    assert malformed.status == 400
    assert "32 characters" in malformed.json()["error"]

    read_write = request("GET", f"{base}/{project.rw_key}")
    assert read_write.status == 403
    assert read_write.json()["error"] == "wrong api key; use the project's read-only API key"

    ping_key = request("GET", f"{base}/{project.ping_key}")
    assert ping_key.status == 403

    other_project = request("GET", f"{base}/{other.ro_key}")
    assert other_project.status == 404
    assert "not found for this key" in other_project.json()["error"]
