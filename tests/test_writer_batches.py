"""How the writer groups changes into transactions, on a real shard database."""

from __future__ import annotations

import asyncio
import base64

import psycopg
import pytest

from serverlord.shardproc.writer import PingRow, WriteFailed
from tests.shardharness import Harness, harness, run

# A linger this long would stall any batch that waited for it; the tests below finish
# only if the writer commits without waiting.
LONG_LINGER = 60.0
# Bound on each wait below, so that a writer that stalls fails the test instead of
# hanging it.
GIVE_UP = 20.0


async def stored_pings(dsn: str, check_id: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute("SELECT count(*) FROM pings WHERE check_id = %s", (check_id,))
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def stored_state(dsn: str, check_id: str) -> tuple[str, int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute("SELECT status, n_pings FROM checks WHERE id = %s", (check_id,))
        row = await cursor.fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def ping_args(check_id: str, signal: str = "success") -> dict[str, object]:
    return {"id": check_id, "signal": signal, "method": "GET"}


def test_concurrent_pings_share_transactions(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn, commit_linger=0.005) as h:
            check = await h.create()
            before = h.service.writer.transactions
            results = await asyncio.gather(
                *(h.service.handle("ping", ping_args(check)) for _ in range(200))
            )
            assert all(status == 200 for status, _ in results)
            assert h.service.writer.transactions - before < 200
            assert await stored_pings(shard_dsn, check) == 200
            assert await stored_state(shard_dsn, check) == ("up", 200)

    run(body())


async def busy(h: Harness, check: str) -> None:
    """Commit one batch of several pings, so that the next batch would linger."""
    await asyncio.gather(*(h.service.handle("ping", ping_args(check)) for _ in range(5)))


def test_fail_ping_commits_without_linger(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn, commit_linger=LONG_LINGER) as h:
            check = await h.create()
            await asyncio.wait_for(busy(h, check), GIVE_UP)
            status, _ = await asyncio.wait_for(
                h.service.handle("ping", ping_args(check, "fail")), GIVE_UP
            )
            assert status == 200
            assert await stored_state(shard_dsn, check) == ("down", 6)

    run(body())


def test_timeout_flip_commits_without_linger(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn, commit_linger=LONG_LINGER) as h:
            check = await h.create(timeout_s=60, grace_s=60)
            await asyncio.wait_for(busy(h, check), GIVE_UP)
            h.at(h.clock.time() + 121)
            await asyncio.wait_for(h.settle(), GIVE_UP)
            assert await stored_state(shard_dsn, check) == ("down", 5)

    run(body())


def test_ping_after_takeover_is_refused(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn) as h:
            check = await h.create()
            await h.ping(check)
            async with await psycopg.AsyncConnection.connect(shard_dsn, autocommit=True) as conn:
                await conn.execute("UPDATE shard_owner SET token = gen_random_uuid()")
            status, body = await h.service.handle("ping", ping_args(check))
            assert status == 503
            # The message names no database detail: the writer logs that instead.
            assert body["error"] == (
                "shard unavailable: the database write failed, so nothing was stored."
                " Retry the request."
            )
            assert h.service.writer.ownership_lost.is_set()
            assert await stored_pings(shard_dsn, check) == 1

    run(body())


def test_flip_of_queued_check_keeps_order(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn) as h:
            check = await h.create(timeout_s=60, grace_s=60)
            await h.ping(check)
            log_ping = asyncio.ensure_future(h.service.handle("ping", ping_args(check, "log")))
            await asyncio.sleep(0)
            h.at(h.clock.time() + 121)
            assert (await asyncio.wait_for(log_ping, GIVE_UP))[0] == 200
            await asyncio.wait_for(h.settle(), GIVE_UP)
            assert await stored_state(shard_dsn, check) == ("down", 2)
            assert await stored_pings(shard_dsn, check) == 2

    run(body())


def test_flips_commit_beside_busy_pings(shard_dsn: str) -> None:
    async def body() -> None:
        async with harness(shard_dsn) as h:
            busy_check = await h.create()
            silent = [await h.create(timeout_s=60, grace_s=60) for _ in range(20)]
            for check in silent:
                await h.ping(check)
            pings = [
                asyncio.ensure_future(h.service.handle("ping", ping_args(busy_check)))
                for _ in range(300)
            ]
            await asyncio.sleep(0)
            h.at(h.clock.time() + 121)
            results = await asyncio.wait_for(asyncio.gather(*pings), GIVE_UP)
            assert all(status == 200 for status, _ in results)
            await asyncio.wait_for(h.settle(), GIVE_UP)
            for check in silent:
                assert await stored_state(shard_dsn, check) == ("down", 1)
            assert await stored_pings(shard_dsn, busy_check) == 300

    run(body())


def test_batch_document_keeps_every_field(shard_dsn: str) -> None:
    """Pings of one batch keep their fields, bytes and times through the JSON document."""
    payload = bytes(range(256))
    rid = "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"

    async def body() -> None:
        async with harness(shard_dsn, commit_linger=0.005) as h:
            check = await h.create()
            other = await h.create()
            pings = [
                {
                    "id": check,
                    "signal": "start",
                    "rid": rid,
                    "method": "POST",
                    "scheme": "https",
                    "remote_addr": "2001:db8::1",
                    "ua": 'curl\x00/8 \u00e9\u4e2d "quoted" \\ back',
                    "body": base64.b64encode(payload).decode(),
                    "body_size": 999999,
                },
                {"id": other, "signal": "fail", "exitstatus": 255, "method": "GET"},
            ]
            results = await asyncio.gather(*(h.service.handle("ping", p) for p in pings))
            assert [status for status, _ in results] == [200, 200]
            started = h.service.checks[check].last_start
            async with await psycopg.AsyncConnection.connect(shard_dsn) as conn:
                cursor = await conn.execute(
                    "SELECT kind, exitstatus, rid::text, scheme, method, remote_addr, ua, body,"
                    " body_size, extract(epoch FROM created)::float8"
                    " FROM pings WHERE check_id IN (%s, %s) ORDER BY check_id = %s DESC",
                    (check, other, check),
                )
                rows = await cursor.fetchall()
                cursor = await conn.execute(
                    "SELECT status, last_start_rid::text, extract(epoch FROM last_start)::float8"
                    " FROM checks WHERE id = %s",
                    (check,),
                )
                state = await cursor.fetchone()
            assert rows[0][:7] == (
                "start",
                None,
                rid,
                "https",
                "POST",
                "2001:db8::1",
                'curl\ufffd/8 \u00e9\u4e2d "quoted" \\ back',
            )
            assert bytes(rows[0][7]) == payload
            assert rows[0][8] == 999999
            assert started is not None and abs(rows[0][9] - started) < 1e-5
            assert rows[1][:2] == ("fail", 255)
            assert state is not None and state[1] == rid
            assert state[2] is not None and abs(state[2] - started) < 1e-5

    run(body())


def test_unserializable_row_fails_only_its_batch(shard_dsn: str) -> None:
    """A row that JSON cannot carry fails its batch, and the writer keeps committing."""

    async def body() -> None:
        async with harness(shard_dsn, commit_linger=0.0) as h:
            check = await h.create()
            other = await h.create()
            row = PingRow(
                check, 1, h.clock.time(), "fail", 2**70, None, "http", "GET", "", "", None, 0, None
            )
            with pytest.raises(WriteFailed):
                await asyncio.wait_for(h.service.writer.ping(row, None), GIVE_UP)

            status, _ = await asyncio.wait_for(h.service.handle("ping", ping_args(other)), GIVE_UP)
            assert status == 200
            assert await stored_pings(shard_dsn, other) == 1
            assert await stored_pings(shard_dsn, check) == 0

    run(body())
