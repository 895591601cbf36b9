"""Hostile pings against the JSON batch document that `write_batch` takes.

When a batch fails, every ping in it gets a 503 response, so one ping that the document
or the SQL function cannot take would cost other users their pings. Each test here puts
an unusual ping in the same batch as an ordinary one and checks that both get a 200
response and are stored exactly. The first tests drive a shard service in this process,
where a batch's contents are known exactly. The later ones send raw HTTP to a whole
server and hold a row lock so that the pings under test queue into one batch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from serverlord.alerting.channels import create_channel
from serverlord.shardproc.alerts import AlertEvent
from tests.conftest import create_database
from tests.server import Server, request, running_server, server_env
from tests.shardharness import CHECK_DEFAULTS, Harness, harness, run

# Bound on each wait, so that a writer that stalls fails the test instead of hanging it.
GIVE_UP = 60.0
# Polls (10 ms apart) before a test gives up waiting for a ping to reach the shard.
QUEUE_POLLS = 1000
# Ping body limit of the server under test, small so that tests cross it cheaply.
BODY_LIMIT = 1000
# The largest value of a PostgreSQL integer column, such as pings.body_size.
INTEGER_MAX = 2**31 - 1
CHANNEL = uuid.UUID("00000000-0000-4000-8000-00000000a11e")


def ping_args(check_id: str, signal: str = "success", **extra: Any) -> dict[str, Any]:
    return {"id": check_id, "signal": signal, "method": "POST", **extra}


async def fetch_all(dsn: str, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall()


# -- batches built in this process -------------------------------------------------------


def record_batches(h: Harness) -> list[int]:
    """Return a list that receives the size of each batch the writer commits or fails."""
    sizes: list[int] = []
    h.service.writer.on_commit = lambda batch, started, error: sizes.append(len(batch))
    return sizes


def test_body_size_over_integer_keeps_batch(shard_dsn: str) -> None:
    """A body of 2 GiB or more is read and counted; its size must not fail the batch."""

    async def body() -> None:
        async with harness(shard_dsn) as h:
            huge = await h.create()
            other = await h.create()
            batches = record_batches(h)
            results = await asyncio.gather(
                h.service.handle("ping", ping_args(huge, body_size=2**31 + 4096)),
                h.service.handle("ping", ping_args(other)),
            )
            assert results[0][0] == 200, results[0]
            assert results[1][0] == 200, results[1]
            assert batches == [2]
            rows = await fetch_all(
                shard_dsn, "SELECT body_size FROM pings WHERE check_id = %s", (huge,)
            )
            assert rows == [(INTEGER_MAX,)]

    run(body())


def test_batch_of_full_bodies_commits(shard_dsn: str) -> None:
    """2,100 pings with 100 kB bodies make a document larger than one jsonb value holds."""
    size = 100_000
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    encoded = base64.b64encode(payload).decode()
    count = 2100

    async def body() -> None:
        async with harness(shard_dsn) as h:
            check = await h.create()
            args = ping_args(check, body=encoded, body_size=size)
            results = await asyncio.wait_for(
                asyncio.gather(*(h.service.handle("ping", args) for _ in range(count))), GIVE_UP
            )
            statuses = {status for status, _ in results}
            assert statuses == {200}
            rows = await fetch_all(
                shard_dsn,
                "SELECT count(*), sum(length(body)), count(DISTINCT md5(body))"
                " FROM pings WHERE check_id = %s",
                (check,),
            )
            assert rows == [(count, count * size, 1)]
            first = await fetch_all(
                shard_dsn, "SELECT body FROM pings WHERE check_id = %s LIMIT 1", (check,)
            )
            assert bytes(first[0][0]) == payload
            state = await fetch_all(shard_dsn, "SELECT n_pings FROM checks WHERE id = %s", (check,))
            assert state == [(count,)]

    run(body())


async def with_channel(h: Harness, **fields: Any) -> str:
    check = await h.create(**fields)
    await h.settle()
    async with await psycopg.AsyncConnection.connect(h.dsn) as conn:
        await conn.execute("UPDATE checks SET channels = %s WHERE id = %s", ([CHANNEL], check))
    return check


def test_batch_with_check_writes_commits(shard_dsn: str) -> None:
    """Create, update, delete, pings and an alert share one transaction and all land."""

    async def body() -> None:
        async with harness(shard_dsn) as h:
            updated = await h.create(name="before")
            deleted = await h.create()
            pinged = await h.create()
            alerting = await with_channel(h)
            await h.ping(deleted)
            await h.settle()
            created = str(uuid.uuid4())
            fields = {**CHECK_DEFAULTS, "name": "made in the batch"}
            batches = record_batches(h)
            results = await asyncio.gather(
                h.service.handle("create", {"id": created, "fields": fields}),
                h.service.handle("update", {"id": updated, "fields": {"name": "after"}}),
                h.service.handle("delete", {"id": deleted}),
                h.service.handle("ping", ping_args(pinged, ua='"\\u0000" \U0001f600')),
                h.service.handle("ping", ping_args(alerting, "fail", body="Ym9vbQ==")),
            )
            assert [status for status, _ in results] == [201, 200, 200, 200, 200]
            assert batches == [5]

            names = await fetch_all(
                shard_dsn,
                "SELECT id::text, name FROM checks WHERE id IN (%s, %s, %s)",
                (created, updated, deleted),
            )
            assert sorted(names) == sorted([(created, "made in the batch"), (updated, "after")])
            leftovers = await fetch_all(
                shard_dsn, "SELECT count(*) FROM pings WHERE check_id = %s", (deleted,)
            )
            assert leftovers == [(0,)]
            ua = await fetch_all(shard_dsn, "SELECT ua FROM pings WHERE check_id = %s", (pinged,))
            assert ua == [('"\\u0000" \U0001f600',)]
            alerts = await fetch_all(
                shard_dsn,
                "SELECT kind, payload->>'body' FROM notifications WHERE check_id = %s",
                (alerting,),
            )
            assert alerts == [("down", "boom")]

    run(body())


def test_alerts_with_long_excerpts_commit(shard_dsn: str) -> None:
    """7,000 down alerts with 10,000-character excerpts of 4-byte characters pass 256 MiB."""
    count = 7000
    body = ("\U0001f600" * 10_000).encode()

    async def body_of_test() -> None:
        async with harness(shard_dsn) as h:
            checks = [await with_channel(h) for _ in range(7)]
            start = h.clock.time()
            events = [
                AlertEvent(
                    checks[index % 7], "down", start + index, "down", "fail", start, None, body
                )
                for index in range(count)
            ]
            await asyncio.wait_for(h.service.writer.alert(events), GIVE_UP)
            rows = await fetch_all(
                shard_dsn,
                "SELECT count(*), count(DISTINCT payload->>'body') FROM notifications",
                (),
            )
            assert rows == [(count, 1)]
            excerpt = await fetch_all(
                shard_dsn, "SELECT payload->>'body' FROM notifications LIMIT 1", ()
            )
            assert excerpt == [(body.decode(),)]

    run(body_of_test())


def test_flip_only_batches_commit(shard_dsn: str) -> None:
    """A timeout flip with an alert and a pause each commit in a batch without pings."""

    async def body() -> None:
        async with harness(shard_dsn) as h:
            late = await with_channel(h, timeout_s=60, grace_s=60)
            paused = await h.create()
            await h.ping(late)
            await h.ping(paused)
            await h.settle()
            pings_before = await fetch_all(shard_dsn, "SELECT count(*) FROM pings", ())

            h.at(h.clock.time() + 121)
            status, _ = await h.op("pause", paused)
            assert status == 200
            await asyncio.wait_for(h.settle(), GIVE_UP)

            flips = await fetch_all(
                shard_dsn,
                "SELECT check_id::text, new_status, reason FROM flips WHERE new_status <> 'up'",
                (),
            )
            assert sorted(flips) == sorted([(late, "down", "timeout"), (paused, "paused", "pause")])
            states = await fetch_all(
                shard_dsn,
                "SELECT id::text, status FROM checks WHERE id IN (%s, %s)",
                (late, paused),
            )
            assert sorted(states) == sorted([(late, "down"), (paused, "paused")])
            alerts = await fetch_all(
                shard_dsn, "SELECT kind FROM notifications WHERE check_id = %s", (late,)
            )
            assert alerts == [("down",)]
            pings_after = await fetch_all(shard_dsn, "SELECT count(*) FROM pings", ())
            assert pings_after == pings_before

    run(body())


# -- raw HTTP against a whole server -----------------------------------------------------


@pytest.fixture(scope="module")
def attack_server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shard, so that every check below shares its writer, and a 1000-byte body limit."""
    catalog = create_database(pg_admin_dsn, "attack")
    # Unix socket paths are limited to about 100 bytes, and pytest's tmp_path can be long.
    runtime = Path(tempfile.mkdtemp(prefix="sl-attack-", dir="/tmp"))
    env = server_env(
        catalog,
        runtime,
        shard_count=1,
        PING_BODY_LIMIT=str(BODY_LIMIT),
        WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
    )
    log_path = tmp_path_factory.mktemp("attack") / "server.log"
    with running_server(env, log_path) as server:
        server.extra["catalog"] = catalog
        yield server


def shard_dsn_of(server: Server) -> str:
    catalog = server.extra["catalog"]
    name = conninfo.conninfo_to_dict(catalog)["dbname"]
    return conninfo.make_conninfo(catalog, dbname=f"{name}_shard0")


def new_check(server: Server) -> str:
    check_id: str = server.create_check()["id"]
    return check_id


def n_pings(server: Server, check_id: str) -> int:
    """Return the check's ping count in the shard process's memory, committed or not."""
    headers = {"X-Api-Key": server.project.rw_key}
    answer = request("GET", f"{server.url}/api/tasks/{check_id}/status", headers=headers)
    assert answer.status == 200, answer.text
    count: int = answer.json()["n_pings"]
    return count


def raw_request(server: Server, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send one HTTP/1.1 request as given bytes; return the status and the response body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=GIVE_UP) as sock:
        sock.sendall(head + b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n" + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def ping_head(check_id: str, path: str = "", headers: dict[str, bytes] | None = None) -> bytes:
    lines = [f"POST /ping/{check_id}{path} HTTP/1.1".encode()]
    lines += [name.encode() + b": " + value for name, value in (headers or {}).items()]
    return b"\r\n".join(lines) + b"\r\n"


def wait_until_queued(server: Server, check_id: str, sent: Future[Any]) -> None:
    """Wait until the shard process applied a ping of `check_id`, or the request ended."""
    for _ in range(QUEUE_POLLS):
        if sent.done() or n_pings(server, check_id) > 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"no ping of check {check_id} reached the shard process")


@contextlib.contextmanager
def held_writer(server: Server) -> Iterator[None]:
    """Hold the shard's ping lane in a transaction until exit, so that pings queue behind it.

    The writer updates the state of a pinged check, and a row lock held here on that check
    makes the statement wait in PostgreSQL.
    """
    blocker = new_check(server)
    dsn = shard_dsn_of(server)
    with psycopg.connect(dsn) as conn, ThreadPoolExecutor(1) as pool:
        conn.execute("SELECT 1 FROM checks WHERE id = %s FOR UPDATE", (blocker,))
        blocked = pool.submit(request, "GET", f"{server.url}/ping/{blocker}")
        wait_for_lock_wait(dsn)
        try:
            yield
        finally:
            conn.rollback()
        assert blocked.result(GIVE_UP).status == 200


def wait_for_lock_wait(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(QUEUE_POLLS):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.01)
    raise AssertionError("the writer's statement never waited for the row lock")


Send = Callable[[], tuple[int, bytes]]


def in_one_batch(server: Server, sends: list[tuple[str, Send]]) -> list[tuple[int, bytes]]:
    """Run each (check id, send) so that every ping lands in one batch; return responses.

    An ordinary ping of a fresh check joins the batch too, and must get a 200 response.
    """
    bystander = new_check(server)
    everything = [*sends, (bystander, lambda: raw_request(server, ping_head(bystander)))]
    with ThreadPoolExecutor(len(everything)) as pool:
        with held_writer(server):
            futures = []
            for check_id, send in everything:
                future = pool.submit(send)
                wait_until_queued(server, check_id, future)
                futures.append(future)
        results = [future.result(GIVE_UP) for future in futures]
    assert results[-1][0] == 200, results[-1]
    assert len(transactions_of(server, [check_id for check_id, _ in everything])) == 1
    return results[:-1]


def transactions_of(server: Server, check_ids: list[str]) -> set[str]:
    """Return the ids of the transactions that inserted these checks' pings."""
    with psycopg.connect(shard_dsn_of(server)) as conn:
        rows = conn.execute(
            "SELECT DISTINCT xmin::text FROM pings WHERE check_id = ANY(%s::uuid[])", (check_ids,)
        ).fetchall()
    return {row[0] for row in rows}


def stored_pings(server: Server, check_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(shard_dsn_of(server)) as conn:
        cursor = conn.execute(
            "SELECT kind, exitstatus, rid::text, method, ua, body, body_size FROM pings"
            " WHERE check_id = %s ORDER BY n",
            (check_id,),
        )
        names = [column.name for column in cursor.description or []]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# ASGI passes header values as bytes, and falcon reads them as ISO-8859-1, as HTTP allows
# for bytes above 0x7f. So the stored user agent is the latin-1 reading of the bytes sent,
# cut to 200 characters.
USER_AGENTS = {
    "latin-1": b"\xff\xfe caf\xe9",
    "utf-8 beyond the BMP": "agent \U0001f600".encode(),
    "utf-8 of a surrogate": b"\xed\xa0\x80 lone",
    "json escapes": b'"\\u0000" \\ "quoted" \\ud800',
    "tab": b"a\tb",
    "very long": b"x" * 5000,
}


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(USER_AGENTS))
def test_user_agent_stored_as_read(attack_server: Server, name: str) -> None:
    server = attack_server
    raw = USER_AGENTS[name]
    check = new_check(server)
    head = ping_head(check, headers={"User-Agent": raw})

    [(status, _)] = in_one_batch(server, [(check, lambda: raw_request(server, head))])

    assert status == 200
    [row] = stored_pings(server, check)
    assert row["ua"] == raw.decode("latin-1")[:200]


@pytest.mark.e2e
@pytest.mark.parametrize("raw", [b"a\x00b", b"a\x01b", b"a\x1fb"])
def test_control_character_user_agent_rejected(attack_server: Server, raw: bytes) -> None:
    """The HTTP parser rejects these header bytes; the batch beside them still commits."""
    server = attack_server
    check = new_check(server)
    head = ping_head(check, headers={"User-Agent": raw})

    [(status, _)] = in_one_batch(server, [(check, lambda: raw_request(server, head))])

    assert status == 400
    assert stored_pings(server, check) == []


BODIES: dict[str, tuple[dict[str, bytes], bytes]] = {
    "every byte": ({}, bytes(range(256)) * 3),
    "NUL bytes": ({}, b"\x00" * 10),
    "invalid utf-8": ({}, b"\xc3\x28 \xff\xfe"),
    "json with a NUL escape": ({"Content-Type": b"application/json"}, b'{"a": "\\u0000"}'),
    "form": ({"Content-Type": b"application/x-www-form-urlencoded"}, b"a=1&b=%00%ff"),
    "multipart": (
        {"Content-Type": b"multipart/form-data; boundary=zz"},
        b"--zz\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--zz--\r\n",
    ),
    "gzip encoding": ({"Content-Encoding": b"gzip"}, b"\x1f\x8b\x08\x00 not gzip"),
    "utf-16 text": ({"Content-Type": b"text/plain; charset=utf-16"}, "log".encode("utf-16")),
    "at the limit": ({}, b"L" * BODY_LIMIT),
    "above the limit": ({}, b"A" * BODY_LIMIT + b"B"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(BODIES))
def test_body_stored_byte_exact(attack_server: Server, name: str) -> None:
    server = attack_server
    headers, body = BODIES[name]
    check = new_check(server)
    head = ping_head(check, headers={**headers, "Content-Length": str(len(body)).encode()})

    [(status, _)] = in_one_batch(server, [(check, lambda: raw_request(server, head, body))])

    assert status == 200
    [row] = stored_pings(server, check)
    assert bytes(row["body"]) == body[:BODY_LIMIT]
    assert row["body_size"] == len(body)


@pytest.mark.e2e
def test_empty_and_chunked_bodies_stored(attack_server: Server) -> None:
    server = attack_server
    empty = new_check(server)
    chunked = new_check(server)
    empty_head = ping_head(empty, headers={"Content-Length": b"0"})
    chunked_head = ping_head(chunked, headers={"Transfer-Encoding": b"chunked"})
    chunks = b"5\r\nhello\r\n3\r\n\x00\xff\x01\r\n0\r\n\r\n"

    results = in_one_batch(
        server,
        [
            (empty, lambda: raw_request(server, empty_head)),
            (chunked, lambda: raw_request(server, chunked_head, chunks)),
        ],
    )

    assert [status for status, _ in results] == [200, 200]
    [empty_row] = stored_pings(server, empty)
    assert empty_row["body"] is None
    assert empty_row["body_size"] == 0
    [chunked_row] = stored_pings(server, chunked)
    assert bytes(chunked_row["body"]) == b"hello\x00\xff\x01"
    assert chunked_row["body_size"] == 8


@pytest.mark.e2e
def test_exit_status_edges_stored(attack_server: Server) -> None:
    server = attack_server
    cases = {"0": 0, "000": 0, "1": 1, "007": 7, "255": 255}
    checks = {suffix: new_check(server) for suffix in cases}

    def send(suffix: str) -> Send:
        head = ping_head(checks[suffix], f"/{suffix}")
        return lambda: raw_request(server, head)

    results = in_one_batch(server, [(checks[suffix], send(suffix)) for suffix in cases])

    assert [status for status, _ in results] == [200] * len(cases)
    for suffix, code in cases.items():
        [row] = stored_pings(server, checks[suffix])
        assert row["exitstatus"] == code, suffix
        assert row["kind"] == ("success" if code == 0 else "fail"), suffix


@pytest.mark.e2e
@pytest.mark.parametrize(("path", "status"), [("/256", 400), ("/-1", 404), ("/1000", 404)])
def test_exit_status_out_of_range_rejected(attack_server: Server, path: str, status: int) -> None:
    server = attack_server
    check = new_check(server)
    head = ping_head(check, path)

    [(answered, _)] = in_one_batch(server, [(check, lambda: raw_request(server, head))])

    assert answered == status
    assert stored_pings(server, check) == []


RUN_ID = "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.mark.e2e
@pytest.mark.parametrize(
    "written",
    [RUN_ID.upper(), "{" + RUN_ID + "}", "urn:uuid:" + RUN_ID, RUN_ID.replace("-", "")],
)
def test_run_id_stored_canonical(attack_server: Server, written: str) -> None:
    server = attack_server
    check = new_check(server)
    head = ping_head(check, f"/start?rid={written}")

    [(status, _)] = in_one_batch(server, [(check, lambda: raw_request(server, head))])

    assert status == 200
    [row] = stored_pings(server, check)
    assert row["rid"] == RUN_ID
    assert row["kind"] == "start"


@pytest.mark.e2e
def test_invalid_run_id_rejected(attack_server: Server) -> None:
    server = attack_server
    check = new_check(server)
    head = ping_head(check, "/start?rid=6f1c2a8e-%00")

    [(status, body)] = in_one_batch(server, [(check, lambda: raw_request(server, head))])

    assert status == 400
    assert body == b"invalid uuid format"
    assert stored_pings(server, check) == []


@pytest.mark.e2e
def test_fail_ping_alert_shares_batch(attack_server: Server) -> None:
    """A fail ping that queues a notification commits beside other users' pings."""
    server = attack_server
    project = server.create_project("alerting")
    # Port 9 (discard) on loopback refuses, so delivery fails, but the row is stored.
    config = {"down": {"method": "POST", "url": "http://127.0.0.1:9/", "body": "$NAME"}}
    asyncio.run(_add_channel(server.extra["catalog"], project.id, config))
    created = server.api("POST", "/api/v3/checks/", project.rw_key, {"channels": "*"})
    assert created.status == 201, created.text
    check = created.json()["uuid"]
    body = b"disk full \x00\xff"
    head = ping_head(check, "/fail", {"Content-Length": str(len(body)).encode()})

    [(status, _)] = in_one_batch(server, [(check, lambda: raw_request(server, head, body))])

    assert status == 200
    with psycopg.connect(shard_dsn_of(server)) as conn:
        rows = conn.execute(
            "SELECT kind, payload->>'body' FROM notifications WHERE check_id = %s", (check,)
        ).fetchall()
    assert rows == [("down", "disk full \ufffd\ufffd")]


async def _add_channel(dsn: str, project_id: int, config: dict[str, Any]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await create_channel(conn, project_id, "hook", "webhook", config)
        await conn.commit()


@pytest.mark.e2e
def test_body_within_largest_limit_stored(
    pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    catalog = create_database(pg_admin_dsn, "biglimit")
    env = server_env(
        catalog,
        Path(tempfile.mkdtemp(prefix="sl-big-", dir="/tmp")),
        shard_count=1,
        PING_BODY_LIMIT="10000000",
    )
    body = b"z" * 10_000_000
    with running_server(env, tmp_path_factory.mktemp("big") / "server.log") as server:
        server.extra["catalog"] = catalog
        check = new_check(server)
        head = ping_head(check, headers={"Content-Length": str(len(body)).encode()})
        status, _ = raw_request(server, head, body)
        stored = stored_pings(server, check) if status == 200 else []

    assert status == 200
    assert [bytes(row["body"]) for row in stored] == [body]
