"""Project-wide endpoints of the management API: channels and service status."""

from __future__ import annotations

import asyncio

import falcon
import falcon.asgi

from serverlord.web.api_v3.checks import ApiContext
from serverlord.web.shards import ShardUnavailable

# Seconds the status endpoint waits for each shard process.
STATUS_TIMEOUT = 2.0


class Channels:
    """`GET /api/v3/channels/`: the project's channels as `{"id", "name", "kind"}`."""

    def __init__(self, context: ApiContext) -> None:
        self.context = context

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        access = await self.context.auth.require(req, write=True)
        resp.media = {"channels": await self.context.catalog.channels(access.project_id)}


class Status:
    """`GET /api/v3/status/`: `OK` when the catalog and every shard respond; no key needed."""

    def __init__(self, context: ApiContext) -> None:
        self.context = context

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        router = self.context.router
        await self.context.catalog.ping()
        try:
            await asyncio.gather(
                *(
                    asyncio.wait_for(router.request_shard(shard, "health", {}), STATUS_TIMEOUT)
                    for shard in range(len(router.connections))
                )
            )
        except (ShardUnavailable, TimeoutError) as exc:
            raise falcon.HTTPServiceUnavailable(
                title="Service Unavailable", description=f"a shard is not answering: {exc}"
            ) from None
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "OK"
