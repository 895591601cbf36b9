"""Alerts through the whole server: a check goes down, a webhook on loopback hears it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from serverlord.alerting.channels import create_channel
from serverlord.storage.topology import SlotMap
from tests.conftest import create_database
from tests.receivers import HttpReceiver, ReceivedRequest
from tests.server import Server, request, server_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def alert_server(pg_admin_dsn: str, runtime_dir: Path, tmp_path: Path) -> Server:
    catalog = create_database(pg_admin_dsn, "alerts")
    env = server_env(
        catalog,
        runtime_dir,
        shard_count=2,
        WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        SITE_ROOT="http://127.0.0.1",
    )
    server = Server(env, tmp_path / "server.log")
    server.extra["catalog"] = catalog
    return server


async def add_webhook(server: Server, project_id: int, url: str) -> str:
    config = {
        "down": {"method": "POST", "url": url, "body": "$NAME is $STATUS", "headers": {}},
        "up": {"method": "POST", "url": url, "body": "$NAME is $STATUS", "headers": {}},
    }
    async with await psycopg.AsyncConnection.connect(server.extra["catalog"]) as conn:
        channel = await create_channel(conn, project_id, "hook", "webhook", config)
        await conn.commit()
    return str(channel.id)


def create_check(server: Server, key: str, **fields: Any) -> dict[str, Any]:
    answer = server.api("POST", "/api/v3/checks/", key, {"channels": "*", **fields})
    assert answer.status == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def wait_for(receiver: HttpReceiver, count: int) -> list[ReceivedRequest]:
    return await receiver.wait_for_requests(count)


def test_webhook_hears_down_and_up(alert_server: Server) -> None:
    server = alert_server

    async def scenario() -> None:
        async with HttpReceiver("ok") as receiver:
            server.start()
            try:
                project = server.create_project("alerts")
                await add_webhook(server, project.id, receiver.url())
                check = await asyncio.to_thread(
                    create_check, server, project.rw_key, name="nightly", timeout=1, grace=1
                )
                assert request("GET", check["ping_url"]).status == 200
                down = (await wait_for(receiver, 1))[0]
                assert down.method == "POST"
                assert down.body == b"nightly is down"
                assert "idempotency-key" in down.headers

                assert request("GET", check["ping_url"]).status == 200
                up = (await wait_for(receiver, 2))[1]
                assert up.body == b"nightly is up"
                assert up.headers["idempotency-key"] != down.headers["idempotency-key"]

                history = await asyncio.to_thread(
                    _sent_history, server, project.rw_key, check["uuid"]
                )
                assert [item["kind"] for item in history] == ["up", "down"]
                assert {item["id"] for item in history} == {
                    down.headers["idempotency-key"],
                    up.headers["idempotency-key"],
                }
            finally:
                server.stop()

    asyncio.run(scenario())


def test_pending_alert_survives_shard_kill(alert_server: Server) -> None:
    server = alert_server

    async def scenario() -> None:
        async with HttpReceiver("hang") as receiver:
            server.start()
            try:
                project = server.create_project("alerts")
                await add_webhook(server, project.id, receiver.url())
                check = await asyncio.to_thread(
                    create_check, server, project.rw_key, name="kill", timeout=1, grace=1
                )
                shard = SlotMap.even(2).shard_of(uuid.UUID(check["uuid"]))
                assert request("GET", check["ping_url"]).status == 200
                first = (await wait_for(receiver, 1))[0]

                # The receiver hangs, so the notification is claimed but unfinished.
                os.kill(server.shard_pid(shard), signal.SIGKILL)
                receiver.release()
                receiver.mode = "ok"
                retried = await _wait_more(receiver, 2, seconds=30)
                assert retried[-1].headers["idempotency-key"] == first.headers["idempotency-key"]
            finally:
                server.stop()

    asyncio.run(scenario())


def _sent_history(server: Server, key: str, check_id: str) -> list[dict[str, Any]]:
    """Return the check's notification history once every entry is sent (at most 10 s)."""
    path = f"/api/v3/checks/{check_id}/notifications/"
    deadline = time.monotonic() + 10
    while True:
        answer = server.api("GET", path, key)
        assert answer.status == 200, answer.text
        items: list[dict[str, Any]] = answer.json()["notifications"]
        if all(item["status"] == "sent" for item in items) or time.monotonic() > deadline:
            return items
        time.sleep(0.2)


async def _wait_more(receiver: HttpReceiver, count: int, seconds: float) -> list[ReceivedRequest]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(receiver.requests) >= count:
            return list(receiver.requests)
        await asyncio.sleep(0.2)
    raise AssertionError(f"only {len(receiver.requests)} requests arrived in {seconds} s")
