"""API key and ping key checks of the web workers, against the catalog database.

Each web worker keeps a small connection pool to the catalog and remembers each lookup,
found or not, for `ttl` seconds (AUTH_CACHE_TTL, 5 by default). A revoked key therefore
keeps working for up to that long in a worker that saw it just before.

Error bodies are healthchecks'. A request without a key gets 401
`{"error": "missing api key"}`. A key that is unknown, revoked, or of a kind that may not
make the request (a read-only key on a write, a ping key on any management call) gets
401 `{"error": "wrong api key"}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import falcon
import falcon.asgi
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from serverlord.accounts import store
from serverlord.accounts.store import BadgeProject, KeyMatch

log = logging.getLogger(__name__)

# Entries a worker keeps per cache before it drops the expired ones.
MAX_CACHED = 10_000
POOL_SIZE = 4
# Seconds a request waits for a catalog connection before it fails with 503.
CATALOG_TIMEOUT = 5.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Access:
    """The rights of an authenticated management request."""

    project_id: int
    readonly: bool


def missing_key() -> falcon.HTTPUnauthorized:
    return falcon.HTTPUnauthorized(title="Unauthorized", description="missing api key")


def wrong_key() -> falcon.HTTPUnauthorized:
    return falcon.HTTPUnauthorized(title="Unauthorized", description="wrong api key")


class TtlCache:
    """A dict whose entries expire `ttl` seconds after they were stored."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> tuple[bool, Any]:
        """Return (True, value) for a live entry, else (False, None)."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            return False, None
        return True, entry[1]

    def put(self, key: Any, value: Any) -> None:
        now = self._clock()
        if len(self._entries) >= MAX_CACHED:
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
            if len(self._entries) >= MAX_CACHED:
                self._entries.clear()
        self._entries[key] = (now + self.ttl, value)

    def drop(self, key: Any) -> None:
        self._entries.pop(key, None)


class Catalog:
    """The catalog as a web worker reads it: keys, badge keys and channels, cached."""

    def __init__(self, dsn: str | None, ttl: float) -> None:
        self._dsn = dsn
        self._pool: AsyncConnectionPool[Any] | None = None
        self._opening = asyncio.Lock()
        self._keys = TtlCache(ttl)
        self._badges = TtlCache(ttl)
        self._channels = TtlCache(ttl)

    async def find_key(self, key: str) -> KeyMatch | None:
        # Cached by hash, so a worker's memory contains no plain keys either.
        cache_key = hashlib.sha256(key.encode()).digest()
        hit, match = self._keys.get(cache_key)
        if not hit:
            match = await self._query(lambda conn: store.lookup_key(conn, key))
            self._keys.put(cache_key, match)
        result: KeyMatch | None = match
        return result

    async def badge_project(
        self, *, project_id: int | None = None, badge_key: str = ""
    ) -> BadgeProject | None:
        cache_key = (project_id, badge_key)
        hit, found = self._badges.get(cache_key)
        if not hit:
            found = await self._query(
                lambda conn: store.badge_project(conn, project_id=project_id, badge_key=badge_key)
            )
            self._badges.put(cache_key, found)
        result: BadgeProject | None = found
        return result

    async def channels(self, project_id: int) -> list[dict[str, str]]:
        hit, found = self._channels.get(project_id)
        if not hit:
            found = await self._query(lambda conn: store.project_channels(conn, project_id))
            self._channels.put(project_id, found)
        result: list[dict[str, str]] = found
        return result

    async def ping(self) -> None:
        """Raise falcon.HTTPServiceUnavailable unless the catalog responds to a query."""

        async def select_one(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("SELECT 1")

        await self._query(select_one)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _query(self, query: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        pool = await self._opened()
        try:
            async with pool.connection(timeout=CATALOG_TIMEOUT) as conn:
                return await query(conn)
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            log.warning("catalog query failed: %s", exc)
            raise falcon.HTTPServiceUnavailable(
                title="Service Unavailable",
                description="the account database is not responding; retry shortly",
                retry_after=2,
            ) from None

    async def _opened(self) -> AsyncConnectionPool[Any]:
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                if not self._dsn:
                    raise falcon.HTTPServiceUnavailable(
                        title="Service Unavailable",
                        description="the web worker has no catalog database configured "
                        "(SERVERLORD_CATALOG_DSN); start it with `serverlord serve`",
                    )
                pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                    self._dsn, min_size=1, max_size=POOL_SIZE, open=False, name="catalog"
                )
                await pool.open()
                self._pool = pool
                log.info("opened the catalog pool of this web worker")
        return self._pool


class Authenticator:
    """Turns the key of a request into an Access, or raises the 401 healthchecks gives."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def require(
        self, req: falcon.asgi.Request, body: dict[str, Any] | None = None, write: bool = False
    ) -> Access:
        """Authenticate `req` by its X-Api-Key header or the `api_key` field of `body`.

        With `write`, only a read-write key is accepted.
        """
        key = req.get_header("X-Api-Key")
        if not key and body is not None and isinstance(body.get("api_key"), str):
            key = body["api_key"]
        if not key:
            raise missing_key()
        match = await self.catalog.find_key(key)
        if match is None or match.kind == "ping" or (write and match.kind != "rw"):
            raise wrong_key()
        return Access(match.project_id, readonly=match.kind == "ro")

    async def optional(self, req: falcon.asgi.Request) -> Access | None:
        """Return the Access of a request's API key, or None when it has no valid one."""
        key = req.get_header("X-Api-Key")
        if not key:
            return None
        match = await self.catalog.find_key(key)
        if match is None or match.kind == "ping":
            return None
        return Access(match.project_id, readonly=match.kind == "ro")

    async def ping_project(self, ping_key: str) -> int | None:
        """Return the project of a ping key, or None when it is no valid ping key."""
        match = await self.catalog.find_key(ping_key)
        if match is None or match.kind != "ping":
            return None
        return match.project_id
