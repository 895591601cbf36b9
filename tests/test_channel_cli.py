"""`serverlord channel create|list` and the channel's use by new checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.server import Server

pytestmark = pytest.mark.e2e


def test_channel_create_and_list(server: Server) -> None:
    project = server.create_project("channels")
    config = {"down": {"url": "https://hooks.example.com/down"}, "up": None}
    created = server.cli(
        "channel",
        "create",
        "--project",
        str(project.id),
        "--kind",
        "webhook",
        "--name",
        "ops hook",
        "--config",
        json.dumps(config),
    )
    assert created["kind"] == "webhook"
    listed = server.cli("channel", "list", "--project", str(project.id))
    assert listed["channels"] == [
        {"id": created["channel_id"], "name": "ops hook", "kind": "webhook"}
    ]

    api = server.api("GET", "/api/v3/channels/", project.rw_key).json()
    assert api["channels"][0]["id"] == created["channel_id"]
    check = server.api(
        "POST", "/api/v3/checks/", project.rw_key, {"name": "c", "channels": "*"}
    ).json()
    assert check["channels"] == created["channel_id"]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("{not json", "--config is not valid JSON"),
        ('{"down": {"url": "ftp://x"}, "up": null}', "down.url"),
        ('{"down": null, "up": null}', "both switched off"),
    ],
)
def test_channel_create_rejects_bad_config(server: Server, config: str, fragment: str) -> None:
    project = server.project
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "serverlord.cli",
            "channel",
            "create",
            "--project",
            str(project.id),
            "--kind",
            "webhook",
            "--config",
            config,
        ],
        env=server.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 1
    assert fragment in finished.stderr.decode()
