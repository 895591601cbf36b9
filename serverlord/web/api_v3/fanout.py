"""Requests that go to every shard at once, because a project's checks live on all of them."""

from __future__ import annotations

import asyncio
from typing import Any

from serverlord.web.shards import ShardRouter, ShardUnavailable


def _require_ok(shard: int, status: int, body: Any) -> None:
    if status != 200:
        reason = body.get("error", f"status {status}") if isinstance(body, dict) else status
        raise ShardUnavailable(shard, str(reason))


async def project_checks(
    router: ShardRouter, project_id: int, **filters: Any
) -> list[dict[str, Any]]:
    """Return every check of the project that passes `filters`, oldest first.

    Each shard responds in pages, so that no response outgrows a frame, and all shards
    are queried in parallel. `filters` are the `list` operation's: tags, slug and match.
    """

    async def from_shard(shard: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = None
        while True:
            args = {"project_id": project_id, "after": after, **filters}
            status, body = await router.request_shard(shard, "list", args)
            _require_ok(shard, status, body)
            found.extend(body["checks"])
            after = body["after"]
            if after is None:
                return found

    pages = await asyncio.gather(*(from_shard(s) for s in range(len(router.connections))))
    checks = [check for page in pages for check in page]
    checks.sort(key=lambda check: (check["created"], check["id"]))
    return checks


async def find_on_shards(router: ShardRouter, op: str, args: dict[str, Any]) -> list[Any]:
    """Send `op` to every shard and return the bodies of the 200 responses.

    404 responses are skipped, and any other status raises ShardUnavailable.
    """

    async def ask(shard: int) -> Any:
        status, body = await router.request_shard(shard, op, args)
        if status == 404:
            return None
        _require_ok(shard, status, body)
        return body

    bodies = await asyncio.gather(*(ask(s) for s in range(len(router.connections))))
    return [body for body in bodies if body is not None]
