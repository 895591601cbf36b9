"""Retention: the latest N pings per check and 93 days of flips, pruned in the background."""

from __future__ import annotations

import psycopg

from serverlord.shardproc.retention import Retention
from tests.shardharness import Harness, harness, run, ts


async def count_pings(h: Harness, check_id: str) -> int:
    await h.settle()
    async with await psycopg.AsyncConnection.connect(h.dsn) as conn:
        cursor = await conn.execute("SELECT count(*) FROM pings WHERE check_id = %s", (check_id,))
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def test_pings_pruned_to_latest_n(shard_dsn: str) -> None:
    async def scenario() -> None:
        async with harness(shard_dsn) as h:
            busy = await h.create()
            quiet = await h.create()
            for _ in range(25):
                await h.ping(busy)
            for _ in range(5):
                await h.ping(quiet)
            retention = Retention(h.service, ping_retention=10, flip_days=93, batch_size=1)

            pings, _flips = await retention.prune_once()
            assert pings == 15
            assert await count_pings(h, busy) == 10
            assert await count_pings(h, quiet) == 5
            async with await psycopg.AsyncConnection.connect(h.dsn) as conn:
                cursor = await conn.execute(
                    "SELECT min(n), max(n) FROM pings WHERE check_id = %s", (busy,)
                )
                assert await cursor.fetchone() == (16, 25)

            assert await retention.prune_once() == (0, 0)

    run(scenario())


def test_flips_kept_93_days(shard_dsn: str) -> None:
    async def scenario() -> None:
        async with harness(shard_dsn, start="2024-01-01T00:00Z") as h:
            # A year-long period, so no timeout flip comes between the pings.
            check = await h.create(timeout_s=365 * 86400)
            await h.ping(check, "success")
            await h.ping(check, "fail", at="2024-02-01T00:00Z")
            await h.ping(check, "success", at="2024-04-01T00:00Z")
            retention = Retention(h.service, ping_retention=100, flip_days=93, batch_size=1)

            h.at("2024-04-15T00:00Z")
            assert await retention.prune_flips() == 1
            flips = await h.flips(check)
            assert [flip[0][:10] for flip in flips] == ["2024-02-01", "2024-04-01"]

            h.at(ts("2024-07-10T00:00Z"))
            assert await retention.prune_flips() == 2
            assert await h.flips(check) == []

    run(scenario())
