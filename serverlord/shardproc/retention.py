"""Background pruning of old pings and flips, one shard at a time.

Each pass keeps the latest `ping_retention` pings of every check and the flips of the
last `flip_days` days. It deletes in small batches, each in its own short transaction
under the shard's semaphore, so pings queue behind at most one batch, and nothing runs
on the ping path itself. Between passes a busy check may hold more pings than the limit.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import psycopg

from serverlord.shardproc.service import ShardService

log = logging.getLogger(__name__)

# Seconds between passes, and before the first one, so a start-up is not slowed.
PASS_INTERVAL = 600.0
FIRST_PASS_DELAY = 60.0
# Checks, or flips, handled by one DELETE statement.
BATCH_SIZE = 500


class Retention:
    def __init__(
        self,
        service: ShardService,
        ping_retention: int,
        flip_days: int,
        interval: float = PASS_INTERVAL,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.service = service
        self.ping_retention = ping_retention
        self.flip_days = flip_days
        self.interval = interval
        self.batch_size = batch_size
        self.pings_deleted = 0
        self.flips_deleted = 0

    async def run(self, first_delay: float = FIRST_PASS_DELAY) -> None:
        """Prune every `interval` seconds until cancelled; a failed pass is logged and retried."""
        await asyncio.sleep(first_delay)
        while True:
            try:
                await self.prune_once()
            except (psycopg.Error, OSError) as exc:
                log.warning("shard %d retention pass failed: %s", self.service.shard, exc)
            except Exception:
                log.exception("shard %d retention pass failed", self.service.shard)
            await asyncio.sleep(self.interval)

    async def prune_once(self) -> tuple[int, int]:
        """Run one pass; return how many pings and flips it deleted."""
        pings = await self.prune_pings()
        flips = await self.prune_flips()
        if pings or flips:
            log.info("shard %d pruned %d pings and %d flips", self.service.shard, pings, flips)
        return pings, flips

    async def prune_pings(self) -> int:
        deleted = 0
        batch_ids: list[str] = []
        batch_limits: list[int] = []
        for index, (check_id, check) in enumerate(list(self.service.checks.items())):
            if check.n_pings > self.ping_retention:
                batch_ids.append(check_id)
                batch_limits.append(check.n_pings - self.ping_retention)
            if len(batch_ids) >= self.batch_size:
                deleted += await self._delete_pings(batch_ids, batch_limits)
                batch_ids, batch_limits = [], []
            elif index % 10_000 == 9_999:
                await asyncio.sleep(0)  # let pings run between slices of a large shard
        if batch_ids:
            deleted += await self._delete_pings(batch_ids, batch_limits)
        self.pings_deleted += deleted
        return deleted

    async def _delete_pings(self, check_ids: list[str], limits: list[int]) -> int:
        service = self.service
        async with service.semaphore, service.pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM pings AS p USING unnest(%s::uuid[], %s::int[]) AS t(id, n)"
                " WHERE p.check_id = t.id AND p.n <= t.n",
                (check_ids, limits),
            )
            return int(cursor.rowcount)

    async def prune_flips(self) -> int:
        cutoff = datetime.fromtimestamp(self.service.clock.time(), UTC) - timedelta(
            days=self.flip_days
        )
        deleted = 0
        while True:
            service = self.service
            async with service.semaphore, service.pool.connection() as conn:
                cursor = await conn.execute(
                    "DELETE FROM flips WHERE id IN"
                    " (SELECT id FROM flips WHERE created < %s LIMIT %s)",
                    (cutoff, self.batch_size),
                )
                count = int(cursor.rowcount)
            deleted += count
            if count < self.batch_size:
                break
        self.flips_deleted += deleted
        return deleted
