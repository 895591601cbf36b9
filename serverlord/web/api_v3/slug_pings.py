"""Slug pings: `/ping/<ping-key>/<slug>[/start|/fail|/log|/<exit-status>]`.

The ping key names the project (looked up in the catalog, cached), and the slug a check
of that project. A check's shard follows from its UUID, not its slug, so on a cache miss
the worker queries every shard in parallel, then remembers (project, slug) -> check ids for
ROUTE_TTL seconds. The ping carries the project and slug it expects, and the shard
returns 421 when the check no longer has them (renamed, deleted, moved to another
slug), so a stale route costs one more lookup, never a ping on the wrong check.

`?create=1` creates a missing check (name and slug from the URL, period 1 day, grace
1 hour, every channel of the project) and counts the request as its first ping: 201
`Created`.
"""

from __future__ import annotations

import logging
import re
import uuid
import zlib
from typing import Any

import falcon
import falcon.asgi

from serverlord.web.api_v3 import fanout
from serverlord.web.api_v3.spec import CREATE_DEFAULTS
from serverlord.web.auth import Authenticator, Catalog, TtlCache
from serverlord.web.pings import PingSettings, read_ping, respond_to_ping, text
from serverlord.web.shards import ShardRouter, ShardUnavailable

log = logging.getLogger(__name__)

# Seconds a worker trusts a (project, slug) -> check ids lookup. The shard's 421 response
# corrects a stale one at once, so this only bounds how often a worker queries all shards.
ROUTE_TTL = 30.0
SLUG_RE = re.compile(r"[a-z0-9_-]+")
MAX_SLUG = 100
STALE_ROUTE = 421


class SlugPings:
    def __init__(
        self,
        router: ShardRouter,
        auth: Authenticator,
        catalog: Catalog,
        settings: PingSettings,
    ) -> None:
        self.router = router
        self.auth = auth
        self.catalog = catalog
        self.settings = settings
        self.routes = TtlCache(ROUTE_TTL)

    async def ping(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        ping_key: str,
        slug: str,
        suffix: str | None,
    ) -> None:
        if not SLUG_RE.fullmatch(slug) or len(slug) > MAX_SLUG:
            text(resp, 400, "invalid slug format; use only a-z, 0-9, '-' and '_'")
            return
        args = await read_ping(req, resp, suffix, self.settings)
        if args is None:
            return
        project_id = await self.auth.ping_project(ping_key)
        if project_id is None:
            text(resp, 404, "not found")
            return

        created = False
        ids = await self.resolve(project_id, slug)
        if not ids and req.get_param("create") == "1":
            ids, created = await self.create(project_id, slug)
        if not ids:
            text(resp, 404, "not found")
            return
        if len(ids) > 1:
            text(resp, 409, "ambiguous slug")
            return

        status, answer = await self.send(ids[0], project_id, slug, args)
        if status == STALE_ROUTE:
            ids = await self.resolve(project_id, slug, fresh=True)
            if len(ids) != 1:
                text(resp, 409 if ids else 404, "ambiguous slug" if ids else "not found")
                return
            status, answer = await self.send(ids[0], project_id, slug, args)
        if status == STALE_ROUTE:
            status, answer = 404, None
        if status == 200 and created:
            text(resp, 201, "Created" if req.method != "HEAD" else "")
            return
        respond_to_ping(req, resp, status, answer)

    async def send(
        self, check_id: str, project_id: int, slug: str, args: dict[str, Any]
    ) -> tuple[int, Any]:
        routed = {**args, "id": check_id, "expect_project": project_id, "expect_slug": slug}
        return await self.router.request(uuid.UUID(check_id), "ping", routed)

    async def resolve(self, project_id: int, slug: str, fresh: bool = False) -> list[str]:
        """Return the ids of the project's checks with this slug, from cache or all shards."""
        key = (project_id, slug)
        if not fresh:
            hit, ids = self.routes.get(key)
            if hit:
                result: list[str] = ids
                return result
        bodies = await fanout.find_on_shards(
            self.router, "find_slug", {"project_id": project_id, "slug": slug}
        )
        found = sorted(check_id for body in bodies for check_id in body["ids"])
        if found:
            self.routes.put(key, found)
        else:
            # An unknown slug is not cached, so a check created for it is found at once.
            self.routes.drop(key)
        return found

    async def create(self, project_id: int, slug: str) -> tuple[list[str], bool]:
        """Create the slug's check; return its ids and whether this request created it.

        Every create of one (project, slug) goes to the same shard, which creates the
        check only when it has none with that slug, so concurrent first pings from
        several workers make one check.
        """
        shard = zlib.crc32(f"{project_id}/{slug}".encode()) % len(self.router.connections)
        check_id = self._new_id_on(shard)
        channels = [channel["id"] for channel in await self.catalog.channels(project_id)]
        fields = {
            **CREATE_DEFAULTS,
            "project_id": project_id,
            "name": slug,
            "slug": slug,
            "channels": channels,
        }
        status, body = await self.router.request(
            check_id, "slug_create", {"id": str(check_id), "fields": fields}
        )
        if status not in (200, 201):
            raise ShardUnavailable(shard, str(body.get("error", status)))
        ids: list[str] = body["ids"]
        if status == 201:
            log.info("created check %s for slug %s of project %d", check_id, slug, project_id)
            self.routes.put((project_id, slug), ids)
        return ids, status == 201

    def _new_id_on(self, shard: int) -> uuid.UUID:
        # A UUID's shard is fixed by its hash; drawing until one lands on `shard` takes
        # about as many draws as there are shards.
        while True:
            candidate = uuid.uuid4()
            if self.router.shard_of(candidate) == shard:
                return candidate
