"""The Grafana dashboard's queries return data from a real Prometheus scraping a test server.

The server takes pings on checks of every shard, and one check goes down and alerts a
webhook on loopback, so every panel (throughput, latency, detection, delivery) has
something to show. Prometheus scrapes the server with deploy/prometheus/prometheus.yml,
only the target and interval changed, and every panel query runs as Grafana would.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from serverlord.alerting.channels import create_channel
from tests.conftest import create_database
from tests.receivers import HttpReceiver
from tests.server import Server, request, server_env

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="the prometheus binary is not installed (Debian: apt-get install prometheus),"
        " and the dashboard queries are only checked against a real Prometheus",
    ),
]

# Rate window for the queries: long enough to include the one flip and delivery.
RATE_INTERVAL = "1m"
PING_SECONDS = 12.0


def load_prover() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "prove_dashboard", ROOT / "deploy" / "prove_dashboard.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up by name while they are defined.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def alerting_server(pg_admin_dsn: str, runtime_dir: Path, tmp_path: Path) -> Server:
    catalog = create_database(pg_admin_dsn, "dash")
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


async def add_webhook(server: Server, project_id: int, url: str) -> None:
    hook = {"method": "POST", "url": url, "body": "$NAME is $STATUS", "headers": {}}
    async with await psycopg.AsyncConnection.connect(server.extra["catalog"]) as conn:
        await create_channel(conn, project_id, "hook", "webhook", {"down": hook, "up": hook})
        await conn.commit()


def create_check(server: Server, key: str, **fields: Any) -> str:
    answer = server.api("POST", "/api/v3/checks/", key, fields)
    assert answer.status == 201, answer.text
    check_id: str = answer.json()["uuid"]
    return check_id


def ping_for(server: Server, check_ids: list[str], seconds: float) -> None:
    """Ping the checks in turn with a mix of signals, for at most `seconds`."""
    suffixes = ["", "", "/start", "", "/log", ""]
    deadline = time.monotonic() + seconds
    for n in range(2000):
        if time.monotonic() > deadline:
            return
        check_id = check_ids[n % len(check_ids)]
        suffix = suffixes[n % len(suffixes)]
        assert request("GET", f"{server.url}/ping/{check_id}{suffix}").status == 200
        time.sleep(0.02)


def wait_for_scrapes(prover: ModuleType, url: str, count: int) -> None:
    deadline = time.monotonic() + 30.0
    while prover.scrapes_succeeded(url) < count:
        assert time.monotonic() < deadline, f"Prometheus made fewer than {count} scrapes in 30 s"
        time.sleep(0.5)


def test_dashboard_queries_return_data(alerting_server: Server, tmp_path: Path) -> None:
    prover = load_prover()
    server = alerting_server

    async def scenario() -> None:
        async with HttpReceiver("ok") as receiver:
            server.start()
            project = server.create_project("dashboard")
            await add_webhook(server, project.id, receiver.url())
            key = project.rw_key
            nightly = await asyncio.to_thread(
                create_check, server, key, name="nightly", timeout=1, grace=1, channels="*"
            )
            busy = [
                await asyncio.to_thread(create_check, server, key, name=f"job{n}", timeout=3600)
                for n in range(6)
            ]
            target = f"127.0.0.1:{server.port}"
            with prover.running_prometheus(target, "1s", tmp_path) as url:
                # Prometheus finds its targets a few seconds after it starts. A flip before
                # its first scrapes would be the first sample of a series, which no rate
                # can show.
                await asyncio.to_thread(wait_for_scrapes, prover, url, 2)
                assert request("GET", f"{server.url}/ping/{nightly}").status == 200
                await asyncio.to_thread(ping_for, server, busy, PING_SECONDS)
                await receiver.wait_for_requests(1)
                # A few more scrapes, so the delivery is in Prometheus too.
                await asyncio.sleep(4)
                # About one scrape a second; a loaded machine delays some of them.
                assert prover.scrapes_succeeded(url) >= PING_SECONDS / 2
                check_results(prover, url)

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def check_results(prover: ModuleType, url: str) -> None:
    rows = prover.evaluate(url, RATE_INTERVAL)
    assert len(rows) == len(prover.panel_queries())
    for query, values, series in rows:
        assert series > 0, f"{query.panel} [{query.ref}] returned no series: {query.expr}"
        assert values, f"{query.panel} [{query.ref}] has no finite value: {query.expr}"
