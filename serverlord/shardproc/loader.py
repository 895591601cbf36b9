"""Reading a shard's checks from its database into memory at start-up.

The shard process answers pings from memory only, so every check must be loaded and its
deadline armed before the shard reports ready. This runs once per start, over every
row of the shard, so its cost per row bounds how fast a restarted shard is back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from serverlord.shardproc import alerts
from serverlord.shardproc.checks import Check, check_from_row

# The columns a check in memory is built from; the descriptive ones stay in the database.
LOAD_COLUMNS = (
    "SELECT id, project_id, slug, kind, timeout_s, grace_s, schedule, tz, max_runtime_s,"
    " manual_resume, methods, status, last_ping, last_start, last_start_rid,"
    " last_duration_s, n_pings, alert_after, recover_after, reminder_s, late_notice"
    " FROM checks"
)


async def load_checks(pool: AsyncConnectionPool[Any], booted_at: float) -> AsyncIterator[Check]:
    """Yield every loadable check of the shard, with its alert policy restored."""
    # A server-side cursor streams the rows in small pages: reading a quarter of a
    # million rows at once would leave the process hundreds of MiB larger for good.
    async with pool.connection() as conn, conn.transaction():
        cursor = conn.cursor(name="load_checks", row_factory=dict_row)
        cursor.itersize = 2000
        await cursor.execute(LOAD_COLUMNS)
        async for row in cursor:
            check = check_from_row(row)
            if check is not None:
                alerts.set_config(check, alerts.policy_config(row))
                alerts.restore(check, booted_at)
                yield check
        await cursor.close()
