"""The shard process's API operations on a real shard database, without the web tier."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from serverlord.shardproc.api_ops import ApiOps
from serverlord.web.api_v3.spec import CREATE_DEFAULTS
from tests.shardharness import Harness, harness, run

PROJECT = 7
OTHER_PROJECT = 8


async def create(h: Harness, **fields: Any) -> str:
    check_id = str(uuid.uuid4())
    args = {"id": check_id, "fields": {**CREATE_DEFAULTS, "project_id": PROJECT, **fields}}
    status, body = await h.service.handle("create", args)
    assert status == 201, body
    return check_id


def test_create_stores_channels_with_row(shard_dsn: str) -> None:
    channel = str(uuid.uuid4())

    async def scenario() -> None:
        async with harness(shard_dsn) as h:
            ApiOps(h.service).install()
            check_id = await create(h, channels=[channel])
            async with await psycopg.AsyncConnection.connect(h.dsn) as conn:
                cursor = await conn.execute(
                    "SELECT channels FROM checks WHERE id = %s", (check_id,)
                )
                row = await cursor.fetchone()
            assert row == ([uuid.UUID(channel)],)
            status, view = await h.service.handle("view", {"id": check_id, "project_id": PROJECT})
            assert status == 200
            assert view["channels"] == [channel]

    run(scenario())


def test_other_project_gets_not_found(shard_dsn: str) -> None:
    async def scenario() -> None:
        async with harness(shard_dsn) as h:
            ApiOps(h.service).install()
            check_id = await create(h)
            await h.ping(check_id)
            requests: list[tuple[str, dict[str, Any]]] = [
                ("view", {}),
                ("status", {}),
                ("get", {}),
                ("update", {"fields": {"name": "x"}}),
                ("pause", {}),
                ("resume", {}),
                ("pings", {}),
                ("ping_body", {"n": 1}),
                ("flips", {}),
                ("delete", {}),
            ]
            for op, extra in requests:
                args = {"id": check_id, "project_id": OTHER_PROJECT, **extra}
                assert await h.service.handle(op, args) == (404, {"error": "not found"}), op
            assert h.service.checks[check_id].status == "up"

    run(scenario())


def test_slug_ping_checks_expected_route(shard_dsn: str) -> None:
    async def scenario() -> None:
        async with harness(shard_dsn) as h:
            ApiOps(h.service).install()
            check_id = await create(h, slug="nightly")
            ping = {"id": check_id, "signal": "success", "expect_project": PROJECT}
            status, _ = await h.service.handle("ping", {**ping, "expect_slug": "nightly"})
            assert status == 200
            status, body = await h.service.handle("ping", {**ping, "expect_slug": "weekly"})
            assert (status, body) == (421, {"error": "stale route"})
            other = {**ping, "expect_project": OTHER_PROJECT, "expect_slug": "nightly"}
            assert (await h.service.handle("ping", other))[0] == 421
            assert h.service.checks[check_id].n_pings == 1

    run(scenario())


def test_slug_index_follows_changes(shard_dsn: str) -> None:
    async def scenario() -> None:
        async with harness(shard_dsn) as h:
            ApiOps(h.service).install()
            check_id = await create(h, slug="alpha")

            async def find(slug: str, project: int = PROJECT) -> list[str]:
                status, body = await h.service.handle(
                    "find_slug", {"project_id": project, "slug": slug}
                )
                assert status == 200
                ids: list[str] = body["ids"]
                return ids

            assert await find("alpha") == [check_id]
            assert await find("alpha", OTHER_PROJECT) == []
            update = {"id": check_id, "project_id": PROJECT, "fields": {"slug": "beta"}}
            assert (await h.service.handle("update", update))[0] == 200
            assert await find("alpha") == []
            assert await find("beta") == [check_id]
            assert (await h.service.handle("delete", {"id": check_id}))[0] == 200
            assert await find("beta") == []

    run(scenario())


def test_slug_create_makes_one_check(shard_dsn: str) -> None:
    async def scenario() -> None:
        async with harness(shard_dsn) as h:
            ApiOps(h.service).install()
            fields = {**CREATE_DEFAULTS, "project_id": PROJECT, "slug": "auto", "name": "auto"}
            first = {"id": str(uuid.uuid4()), "fields": fields}
            second = {"id": str(uuid.uuid4()), "fields": fields}
            assert await h.service.handle("slug_create", first) == (201, {"ids": [first["id"]]})
            assert await h.service.handle("slug_create", second) == (200, {"ids": [first["id"]]})
            assert second["id"] not in h.service.checks

    run(scenario())


def test_list_pages_and_filters(shard_dsn: str) -> None:
    async def scenario() -> None:
        async with harness(shard_dsn) as h:
            ApiOps(h.service).install()
            ids = {await create(h, name=f"c{index}", tags="a b") for index in range(5)}
            await create(h, name="other", tags="c")
            found: set[str] = set()
            after = None
            pages = 0
            while pages < 10:
                args = {"project_id": PROJECT, "tags": ["a"], "limit": 2, "after": after}
                status, body = await h.service.handle("list", args)
                assert status == 200
                found |= {check["id"] for check in body["checks"]}
                pages += 1
                after = body["after"]
                if after is None:
                    break
            assert found == ids
            # Six rows of the project in pages of two; a full last page is followed by an
            # empty one.
            assert pages == 4
            match = {"project_id": PROJECT, "match": {"name": "other", "timeout": 86400}}
            status, body = await h.service.handle("list", match)
            assert [check["name"] for check in body["checks"]] == ["other"]

    run(scenario())
