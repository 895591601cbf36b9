"""Drop-in use: healthchecks' documented shell lines and a PyPI client, changing only the host.

The shell lines take the forms of the "Shell Scripts" page of the healthchecks
documentation (healthchecks.io/docs/bash/): `curl -fsS -m 10 --retry 5 -o /dev/null URL`,
with `/start`, `/$?` and `--data-raw "$output"`. bash runs them with the real curl
against the test server.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from tests.server import Project, Server

pytestmark = pytest.mark.e2e

CURL = "curl -fsS -m 10 --retry 5 -o /dev/null"


@pytest.fixture
def project(server: Server) -> Project:
    return server.create_project("drop-in")


def run_shell(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(
        ["bash", "-c", script],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def pings_of(server: Server, project: Project, check_id: str) -> list[dict[str, Any]]:
    answer = server.api("GET", f"/api/v3/checks/{check_id}/pings/", project.rw_key)
    assert answer.status == 200
    pings: list[dict[str, Any]] = answer.json()["pings"]
    return list(reversed(pings))


def create(server: Server, project: Project, **body: Any) -> dict[str, Any]:
    answer = server.api("POST", "/api/v3/checks/", project.rw_key, body)
    assert answer.status == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def test_crontab_success_line(server: Server, project: Project) -> None:
    check = create(server, project, timeout=86400)
    line = f"true && {CURL} {check['ping_url']}"
    assert run_shell(line).returncode == 0
    assert [ping["type"] for ping in pings_of(server, project, check["uuid"])] == ["success"]


def test_start_and_exit_status_lines(server: Server, project: Project) -> None:
    check = create(server, project, timeout=86400)
    script = f"""
{CURL} {check["ping_url"]}/start
(exit 3)
{CURL} {check["ping_url"]}/$?
"""
    assert run_shell(script).returncode == 0
    pings = pings_of(server, project, check["uuid"])
    assert [ping["type"] for ping in pings] == ["start", "fail"]
    assert pings[1]["exitstatus"] == 3
    assert "duration" in pings[1]
    state = server.api("GET", f"/api/v3/checks/{check['uuid']}", project.rw_key).json()
    assert state["status"] == "down"


def test_sending_logs_line(server: Server, project: Project) -> None:
    check = create(server, project, timeout=86400)
    script = f"""
m=$(printf 'renewed 2 certificates\\nall done' 2>&1)
curl -fsS -m 10 --retry 5 --data-raw "$m" {check["ping_url"]}
"""
    finished = run_shell(script)
    assert finished.returncode == 0
    assert finished.stdout == "OK"
    pings = pings_of(server, project, check["uuid"])
    body = server.api(
        "GET", f"/api/v3/checks/{check['uuid']}/pings/{pings[0]['n']}/body", project.rw_key
    )
    assert body.text == "renewed 2 certificates\nall done"


def test_slug_lines_with_ping_key(server: Server, project: Project) -> None:
    base = f"{server.url}/ping/{project.ping_key}"
    script = f"""
{CURL} "{base}/nightly-backup/start?create=1"
true
{CURL} {base}/nightly-backup/$?
"""
    assert run_shell(script).returncode == 0
    listed = server.api("GET", "/api/v3/checks/?slug=nightly-backup", project.rw_key).json()
    check = listed["checks"][0]
    assert check["status"] == "up"
    assert check["n_pings"] == 2


def test_curl_fails_on_unknown_check(server: Server) -> None:
    finished = run_shell(f"{CURL} {server.url}/ping/00000000-0000-4000-8000-000000000000")
    assert finished.returncode == 22


# The client (healthchecks-io 0.4.4) still calls pydantic's deprecated `.dict()`.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_python_client_manages_checks(server: Server, project: Project) -> None:
    healthchecks_io = pytest.importorskip("healthchecks_io")
    client = healthchecks_io.Client(
        api_key=project.rw_key,
        ping_key=project.ping_key,
        api_url=f"{server.url}/api/",
        ping_url=f"{server.url}/ping/",
        api_version=3,
    )
    with client:
        created = client.create_check(
            healthchecks_io.CheckCreate(name="client", tags="py", timeout=3600, grace=60)
        )
        assert created.uuid is not None
        assert client.success_ping(uuid=created.uuid)[0] is True
        fetched = client.get_check(created.uuid)
        assert fetched.status == "up"
        assert [check.name for check in client.get_checks(tags=["py"])] == ["client"]
        assert len(client.get_check_pings(created.uuid)) == 1
        assert client.pause_check(created.uuid).status == "paused"
        assert client.delete_check(created.uuid).name == "client"
