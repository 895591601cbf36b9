"""GET /metrics on a running server: counters of every process move after pings and flips."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from serverlord.storage.topology import SlotMap
from tests.conftest import create_database
from tests.server import Server, request, running_server, server_env

pytestmark = pytest.mark.e2e

SHARDS = 3
WEB_WORKERS = 2
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(server: Server) -> Samples:
    """Return every sample of GET /metrics, by metric name."""
    response = request("GET", f"{server.url}/metrics")
    assert response.status == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = defaultdict(list)
    for line in response.text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match is not None, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        samples[name].append((dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def scrape_all_workers(server: Server) -> Samples:
    """Scrape until every web worker is included: the last one may still be starting."""
    deadline = time.monotonic() + 15.0
    samples = scrape(server)
    while total(samples, "serverlord_web_workers") < WEB_WORKERS and time.monotonic() < deadline:
        time.sleep(0.2)
        samples = scrape(server)
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Return the sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(key) == wanted for key, wanted in labels.items())
    )


def checks_on_every_shard(server: Server) -> dict[int, str]:
    """Create checks until each shard has one; return a check id per shard."""
    slot_map = SlotMap.even(SHARDS)
    by_shard: dict[int, str] = {}
    for _ in range(60):
        check_id = server.create_check(interval="1h", grace_period="5m")["id"]
        by_shard.setdefault(slot_map.shard_of(uuid.UUID(check_id)), check_id)
        if len(by_shard) == SHARDS:
            return by_shard
    raise AssertionError(f"60 checks covered only shards {sorted(by_shard)}")


def test_metrics_cover_every_process(server: Server) -> None:
    samples = scrape_all_workers(server)
    assert total(samples, "serverlord_web_workers") == WEB_WORKERS
    for shard in range(SHARDS):
        assert total(samples, "serverlord_shard_up", shard=str(shard)) == 1
        assert total(samples, "process_memory_usage_bytes", role="shard", shard=str(shard)) > 0
    assert total(samples, "process_memory_usage_bytes", role="web") > 0


def test_ping_counters_move_on_every_shard(server: Server) -> None:
    by_shard = checks_on_every_shard(server)
    before = scrape_all_workers(server)

    for check_id in by_shard.values():
        assert request("GET", f"{server.url}/ping/{check_id}").status == 200
        assert request("GET", f"{server.url}/ping/{check_id}/fail").status == 200
    after = scrape(server)

    for shard in by_shard:

        def moved(name: str, shard: int = shard, **labels: str) -> float:
            labels["shard"] = str(shard)
            return total(after, name, **labels) - total(before, name, **labels)

        assert moved("serverlord_shard_pings_total", signal="success", outcome="ok") == 1
        assert moved("serverlord_shard_pings_total", signal="fail", outcome="ok") == 1
        assert moved("serverlord_flips_total", reason="success", new_status="up") == 1
        assert moved("serverlord_flips_total", reason="fail", new_status="down") == 1
        assert moved("serverlord_commit_transactions_total") >= 1
        assert moved("serverlord_commit_duration_seconds_count", outcome="ok") >= 1
        assert moved("serverlord_shard_request_duration_seconds_count", op="ping") == 2

    # Pings reach both web workers at random; the scrape must add up all of them.
    web_moved = 0.0
    for route in ("/ping/{code}", "/ping/{code}/{suffix}"):
        labels = {"http_route": route, "http_response_status_code": "200"}
        web_moved += total(after, "http_server_request_duration_seconds_count", **labels)
        web_moved -= total(before, "http_server_request_duration_seconds_count", **labels)
    assert web_moved == 2 * SHARDS


_runtime_ids = count()


@pytest.fixture(scope="module")
def quiet_server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Run a server for this module alone, so other tests' flips cannot move its counters."""
    runtime = Path(f"/tmp/sl-metrics-{os.getpid()}-{next(_runtime_ids)}")
    env = server_env(create_database(pg_admin_dsn, "metrics"), runtime, shard_count=SHARDS)
    with running_server(env, tmp_path_factory.mktemp("metrics") / "server.log") as running:
        yield running


def test_timeout_flip_records_detection_latency(quiet_server: Server) -> None:
    server = quiet_server
    check_id = server.create_check(interval=1, grace_period=1)["id"]
    shard = str(SlotMap.even(SHARDS).shard_of(uuid.UUID(check_id)))
    before = scrape(server)
    assert request("GET", f"{server.url}/ping/{check_id}").status == 200

    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        state = request("GET", f"{server.url}/api/tasks/{check_id}/status").json()
        if state["status"] == "down":
            break
        time.sleep(0.2)
    after = scrape(server)

    latency = "serverlord_detection_latency_seconds_count"
    assert total(after, latency, shard=shard) - total(before, latency, shard=shard) == 1
    fired = "serverlord_deadlines_fired_total"
    assert total(after, fired, shard=shard) - total(before, fired, shard=shard) == 1
    timeouts = total(after, "serverlord_flips_total", shard=shard, reason="timeout")
    assert timeouts - total(before, "serverlord_flips_total", shard=shard, reason="timeout") == 1
