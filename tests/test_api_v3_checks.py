"""Creating, listing, reading, updating and deleting checks through the management API."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.server import Project, Server, request

pytestmark = pytest.mark.e2e

# Fields of a check object, as the healthchecks API documents them.
COMMON_FIELDS = {
    "name",
    "slug",
    "tags",
    "desc",
    "grace",
    "n_pings",
    "status",
    "started",
    "last_ping",
    "next_ping",
    "manual_resume",
    "methods",
    "badge_url",
}
READ_WRITE_FIELDS = {"uuid", "ping_url", "update_url", "pause_url", "resume_url", "channels"}
# Server Lord's additions to the check object: the alert policy.
POLICY_FIELDS = {"alert_after", "recover_after", "reminder", "late_notice"}


@pytest.fixture(scope="module")
def project(server: Server) -> Project:
    return server.create_project("checks")


def create(server: Server, project: Project, **body: Any) -> dict[str, Any]:
    answer = server.api("POST", "/api/v3/checks/", project.rw_key, body)
    assert answer.status == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def test_create_answers_check_object(server: Server, project: Project) -> None:
    body = {"name": "Backups", "slug": "backups", "tags": "prod www", "timeout": 3600}
    created = create(server, project, **body, grace=60, desc="nightly")
    check_id = created["uuid"]
    assert set(created) == COMMON_FIELDS | READ_WRITE_FIELDS | POLICY_FIELDS | {"timeout"}
    assert created["name"] == "Backups"
    assert created["slug"] == "backups"
    assert created["tags"] == "prod www"
    assert created["desc"] == "nightly"
    assert created["timeout"] == 3600
    assert created["grace"] == 60
    assert created["n_pings"] == 0
    assert created["status"] == "new"
    assert created["started"] is False
    assert created["last_ping"] is None
    assert created["next_ping"] is None
    assert created["manual_resume"] is False
    assert created["methods"] == ""
    assert created["channels"] == ""
    assert created["ping_url"] == f"{server.url}/ping/{check_id}"
    assert created["update_url"] == f"{server.url}/api/v3/checks/{check_id}"
    assert created["pause_url"] == f"{server.url}/api/v3/checks/{check_id}/pause"
    assert created["resume_url"] == f"{server.url}/api/v3/checks/{check_id}/resume"
    assert created["badge_url"].startswith(f"{server.url}/b/3/")


def test_create_defaults_period_and_grace(server: Server, project: Project) -> None:
    created = create(server, project)
    assert created["timeout"] == 86400
    assert created["grace"] == 3600
    assert created["name"] == ""


def test_create_cron_check(server: Server, project: Project) -> None:
    created = create(server, project, schedule="15 5 * * *", tz="Europe/Riga", timeout=60)
    assert created["schedule"] == "15 5 * * *"
    assert created["tz"] == "Europe/Riga"
    assert "timeout" not in created


def test_ping_shows_in_check(server: Server, project: Project) -> None:
    created = create(server, project, timeout=60)
    assert request("GET", created["ping_url"]).status == 200
    answer = server.api("GET", f"/api/v3/checks/{created['uuid']}", project.rw_key)
    assert answer.status == 200
    check = answer.json()
    assert check["status"] == "up"
    assert check["n_pings"] == 1
    assert check["last_ping"].endswith("+00:00")
    assert check["next_ping"].endswith("+00:00")


def test_read_only_key_sees_unique_key(server: Server, project: Project) -> None:
    created = create(server, project, name="ro view")
    answer = server.api("GET", f"/api/v3/checks/{created['uuid']}", project.ro_key)
    assert answer.status == 200
    check = answer.json()
    assert set(check) == COMMON_FIELDS | POLICY_FIELDS | {"unique_key", "timeout"}
    assert len(check["unique_key"]) == 40

    by_key = server.api("GET", f"/api/v3/checks/{check['unique_key']}", project.ro_key)
    assert by_key.status == 200
    assert by_key.json()["name"] == "ro view"


def test_update_changes_only_fields_sent(server: Server, project: Project) -> None:
    created = create(server, project, name="before", tags="a b", timeout=600, grace=120)
    path = f"/api/v3/checks/{created['uuid']}"
    answer = server.api("POST", path, project.rw_key, {"name": "after", "grace": 300})
    assert answer.status == 200
    updated = answer.json()
    assert updated["name"] == "after"
    assert updated["grace"] == 300
    assert updated["tags"] == "a b"
    assert updated["timeout"] == 600

    answer = server.api("POST", path, project.rw_key, {"schedule": "0 3 * * *"})
    assert answer.status == 200
    assert answer.json()["schedule"] == "0 3 * * *"
    assert answer.json()["tz"] == "UTC"

    answer = server.api("POST", path, project.rw_key, {})
    assert answer.status == 200
    assert answer.json()["name"] == "after"


def test_delete_answers_deleted_check(server: Server, project: Project) -> None:
    created = create(server, project, name="doomed")
    path = f"/api/v3/checks/{created['uuid']}"
    answer = server.api("DELETE", path, project.rw_key)
    assert answer.status == 200
    assert answer.json()["name"] == "doomed"
    assert server.api("GET", path, project.rw_key).status == 404
    assert request("GET", created["ping_url"]).status == 404


def test_list_filters_by_tags_and_slug(server: Server) -> None:
    project = server.create_project("listing")
    first = create(server, project, name="one", slug="one", tags="prod db")
    second = create(server, project, name="two", slug="two", tags="prod www")
    create(server, project, name="three", slug="three", tags="staging")

    def names(query: str) -> list[str]:
        answer = server.api("GET", f"/api/v3/checks/{query}", project.ro_key)
        assert answer.status == 200
        return sorted(check["name"] for check in answer.json()["checks"])

    assert names("") == ["one", "three", "two"]
    assert names("?tag=prod") == ["one", "two"]
    assert names("?tag=prod&tag=db") == ["one"]
    assert names("?tag=pro") == []
    assert names("?slug=two") == ["two"]
    listed = server.api("GET", "/api/v3/checks/", project.rw_key).json()["checks"]
    assert {check["uuid"] for check in listed} >= {first["uuid"], second["uuid"]}


def test_unique_upserts_existing_check(server: Server) -> None:
    project = server.create_project("upsert")
    first = create(server, project, name="Backups", timeout=600, unique=["name"])
    answer = server.api(
        "POST",
        "/api/v3/checks/",
        project.rw_key,
        {"name": "Backups", "timeout": 900, "unique": ["name"]},
    )
    assert answer.status == 200
    assert answer.json()["uuid"] == first["uuid"]
    assert answer.json()["timeout"] == 900

    answer = server.api(
        "POST", "/api/v3/checks/", project.rw_key, {"name": "Other", "unique": ["name"]}
    )
    assert answer.status == 201
    listed = server.api("GET", "/api/v3/checks/", project.rw_key).json()["checks"]
    assert len(listed) == 2


def test_pause_and_resume(server: Server, project: Project) -> None:
    created = create(server, project, timeout=60)
    request("GET", created["ping_url"])
    path = f"/api/v3/checks/{created['uuid']}"
    answer = server.api("POST", f"{path}/pause", project.rw_key, "")
    assert answer.status == 200
    assert answer.json()["status"] == "paused"
    assert server.api("POST", f"{path}/pause", project.rw_key).json()["status"] == "paused"

    answer = server.api("POST", f"{path}/resume", project.rw_key)
    assert answer.status == 200
    assert answer.json()["status"] == "new"
    assert answer.json()["last_ping"] is None

    answer = server.api("POST", f"{path}/resume", project.rw_key)
    assert answer.status == 409
    assert answer.json() == {"error": "check is not paused"}


def test_v1_derives_slug_from_name(server: Server, project: Project) -> None:
    answer = server.api("POST", "/api/v1/checks/", project.rw_key, {"name": "Nightly Backup!"})
    assert answer.status == 201
    assert answer.json()["slug"] == "nightly-backup"
    assert answer.json()["update_url"].startswith(f"{server.url}/api/v1/checks/")

    answer = server.api("POST", "/api/v3/checks/", project.rw_key, {"name": "Nightly Backup"})
    assert answer.json()["slug"] == ""


def test_unknown_check_is_404(server: Server, project: Project) -> None:
    for path in (f"/api/v3/checks/{uuid.uuid4()}", "/api/v3/checks/not-a-uuid"):
        answer = server.api("GET", path, project.rw_key)
        assert answer.status == 404
        assert answer.json() == {"error": "not found"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "n" * 101}, "name is too long"),
        ({"name": 5}, "name is not a string"),
        ({"name": None}, "name is null"),
        ({"slug": "Upper"}, "slug does not match pattern"),
        ({"timeout": 0}, "timeout is too small"),
        ({"timeout": 31536001}, "timeout is too large"),
        ({"timeout": "60"}, "timeout is not a number"),
        ({"timeout": True}, "timeout is not a number"),
        ({"grace": 1.5}, "grace is not a number"),
        ({"schedule": "61 * * * *"}, "schedule is not a valid cron"),
        ({"schedule": "0 0 * * *", "tz": "Mars/Olympus"}, "tz is not a valid timezone"),
        ({"manual_resume": 1}, "manual_resume is not a boolean"),
        ({"methods": "PUT"}, "methods has an unexpected value"),
        ({"unique": "name"}, "unique is not an array"),
        ({"unique": ["desc"]}, "an item in 'unique'"),
        ({"channels": "nope"}, "invalid channel identifier: nope"),
        ({"channels": ",x"}, "empty channel identifier"),
        ({"colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_create_rejects_invalid_field(
    server: Server, project: Project, body: dict[str, Any], fragment: str
) -> None:
    answer = server.api("POST", "/api/v3/checks/", project.rw_key, body)
    assert answer.status == 400
    message = answer.json()["error"]
    assert message.startswith("json validation error: ")
    assert fragment in message


@pytest.mark.parametrize(("raw", "status"), [("{not json", 400), ("[1]", 400)])
def test_create_rejects_malformed_body(
    server: Server, project: Project, raw: str, status: int
) -> None:
    answer = request("POST", f"{server.url}/api/v3/checks/", raw, {"X-Api-Key": project.rw_key})
    assert answer.status == status
    assert "error" in answer.json()


def test_update_rejects_invalid_field(server: Server, project: Project) -> None:
    created = create(server, project)
    path = f"/api/v3/checks/{created['uuid']}"
    answer = server.api("POST", path, project.rw_key, {"grace": -1})
    assert answer.status == 400
    assert answer.json()["error"] == (
        "json validation error: grace is too small; use 1 to 31536000 seconds"
    )
    assert server.api("GET", path, project.rw_key).json()["grace"] == 3600


def test_email_keyword_fields_accepted(server: Server, project: Project) -> None:
    body = {"name": "kw", "success_kw": "", "filter_subject": False, "subject": ""}
    assert server.api("POST", "/api/v3/checks/", project.rw_key, body).status == 201
