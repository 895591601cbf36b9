"""Users, projects and keys made with the command line, and how keys are stored."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import psycopg
import pytest

from serverlord.accounts.keys import generate_key, hash_key, hashes_match, is_key_shaped
from tests.server import Server, request

pytestmark = pytest.mark.e2e


def run_cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serverlord.cli", *args],
        env=server.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def catalog_text(server: Server) -> str:
    """Return every row of every account table as text, for searching."""
    with psycopg.connect(server.extra["catalog"]) as conn:
        rows = []
        for table in ("users", "projects", "project_members", "project_keys"):
            rows += [str(row) for row in conn.execute(f"SELECT * FROM {table}").fetchall()]
    return "\n".join(rows)


def test_keys_stored_only_as_hashes(server: Server) -> None:
    project = server.create_project("hashing")
    stored = catalog_text(server)
    with psycopg.connect(server.extra["catalog"]) as conn:
        hashes = {
            bytes(row[0])
            for row in conn.execute(
                "SELECT key_hash FROM project_keys WHERE project_id = %s", (project.id,)
            ).fetchall()
        }
    for key in (project.rw_key, project.ro_key, project.ping_key):
        assert key not in stored
        assert key[6:] not in stored
        assert hashlib.sha256(key.encode()).digest() in hashes


def test_key_helpers() -> None:
    key = generate_key()
    assert len(key) == 32
    assert is_key_shaped(key)
    assert not is_key_shaped(key[:-1])
    assert not is_key_shaped(key[:-1] + "!")
    assert hashes_match(hash_key(key), key)
    assert not hashes_match(hash_key(key), generate_key())


def test_project_create_prints_next_steps(server: Server) -> None:
    email = "next-steps@example.com"
    created = run_cli(server, "user", "create", email)
    assert created.returncode == 0, created.stderr
    assert "serverlord project create --owner next-steps@example.com" in created.stdout

    made = run_cli(server, "project", "create", "--owner", email, "--name", "Docs")
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    keys = {line.split(":")[0].strip(): line.split()[-1] for line in lines if "key:" in line}
    assert set(keys) == {"read-write API key", "read-only API key", "ping key"}
    assert f"X-Api-Key: {keys['read-write API key']}" in made.stdout
    assert f"/ping/{keys['ping key']}/backup" in made.stdout
    answer = server.api("GET", "/api/v3/checks/", keys["read-only API key"])
    assert answer.status == 200


def test_duplicate_user_refused(server: Server) -> None:
    assert run_cli(server, "user", "create", "twice@example.com").returncode == 0
    again = run_cli(server, "user", "create", "TWICE@example.com")
    assert again.returncode == 1
    assert "already exists" in again.stderr


def test_unknown_owner_refused(server: Server) -> None:
    made = run_cli(server, "project", "create", "--owner", "nobody@example.com")
    assert made.returncode == 1
    assert "no user with the email nobody@example.com" in made.stderr
    assert "serverlord user create" in made.stderr


def test_invalid_email_refused(server: Server) -> None:
    made = run_cli(server, "user", "create", "not-an-email")
    assert made.returncode == 1
    assert "not an email address" in made.stderr


def test_extra_key_works_until_revoked(server: Server) -> None:
    project = server.create_project("rotation")
    created = server.cli("key", "create", "--project", str(project.id), "--kind", "ro")
    key = created["key"]
    revoked = server.cli("key", "revoke", "--project", str(project.id), key[:6])
    assert revoked["revoked"] == 1
    # Never used before its revocation, so no web worker has it cached.
    answer = server.api("GET", "/api/v3/checks/", key)
    assert answer.status == 401
    assert answer.json() == {"error": "wrong api key"}

    fresh = server.cli("key", "create", "--project", str(project.id), "--kind", "rw")
    assert server.api("GET", "/api/v3/checks/", fresh["key"]).status == 200


def test_new_ping_key_reaches_slug(server: Server) -> None:
    project = server.create_project("ping keys")
    extra = server.cli("key", "create", "--project", str(project.id), "--kind", "ping")["key"]
    answer = request("GET", f"{server.url}/ping/{extra}/fresh?create=1")
    assert answer.status == 201


def test_member_added(server: Server) -> None:
    project = server.create_project("members")
    server.cli("user", "create", "member@example.com")
    added = server.cli(
        "project",
        "add-member",
        "--project",
        str(project.id),
        "--email",
        "member@example.com",
        "--role",
        "ro",
    )
    assert added["role"] == "ro"
    with psycopg.connect(server.extra["catalog"]) as conn:
        row = conn.execute(
            "SELECT role FROM project_members WHERE project_id = %s", (project.id,)
        ).fetchone()
    assert row == ("ro",)
