"""Bulk-load checks straight into the shard databases, for benchmarks.

Creating a million checks through the API would take minutes of the benchmark's time;
COPY into each shard takes seconds. The checks are placed by the catalog's slot map, as
the server would place them, so the server must have run `serverlord migrate` (or
`serve`) once against the catalog first.

Usage: python perf/seed.py CATALOG_DSN --checks 100000 [--due-from T --due-window S]
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from datetime import UTC, datetime

import psycopg
from psycopg import conninfo

from serverlord.storage.topology import SlotMap

COLUMNS = "id, kind, timeout_s, grace_s, status, last_ping, n_pings, name, created_at"


def shard_dsns(catalog: str) -> list[str]:
    name = conninfo.conninfo_to_dict(catalog)["dbname"]
    with psycopg.connect(catalog) as conn:
        rows = conn.execute("SELECT shard, layout FROM shards ORDER BY shard").fetchall()
    dsns = []
    for shard, layout in rows:
        shard_name = f"{name}_shard{shard}"
        if layout == "database":
            dsns.append(conninfo.make_conninfo(catalog, dbname=shard_name))
        else:
            dsns.append(conninfo.make_conninfo(catalog, options=f"-c search_path={shard_name}"))
    return dsns


def load_slot_map(catalog: str) -> SlotMap:
    with psycopg.connect(catalog) as conn:
        rows = conn.execute("SELECT shard FROM slot_map ORDER BY slot").fetchall()
    return SlotMap(tuple(row[0] for row in rows))


def seed(
    catalog: str,
    count: int,
    timeout: int,
    grace: int,
    due_from: float | None,
    due_window: float,
    rng: random.Random,
    deadlines: dict[str, float] | None = None,
) -> dict[int, list[str]]:
    """Insert `count` up checks; return their ids by shard.

    With `due_from`, each check's last ping is set so that its deadline falls at a
    uniformly random instant in [due_from, due_from + due_window); otherwise the last
    ping is now and the deadline is timeout + grace away. When `deadlines` is given, each
    check's deadline is stored in it by id.
    """
    slot_map = load_slot_map(catalog)
    dsns = shard_dsns(catalog)
    rows: dict[int, list[tuple[object, ...]]] = {shard: [] for shard in range(len(dsns))}
    now = time.time()
    created = datetime.fromtimestamp(now, UTC)
    for _ in range(count):
        check_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        if due_from is None:
            last_ping = now
        else:
            last_ping = due_from + rng.random() * due_window - timeout - grace
        if deadlines is not None:
            deadlines[str(check_id)] = last_ping + timeout + grace
        rows[slot_map.shard_of(check_id)].append(
            (
                check_id,
                "simple",
                timeout,
                grace,
                "up",
                datetime.fromtimestamp(last_ping, UTC),
                1,
                "seeded",
                created,
            )
        )
    for shard, shard_rows in rows.items():
        with (
            psycopg.connect(dsns[shard]) as conn,
            conn.cursor() as cursor,
            cursor.copy(f"COPY checks ({COLUMNS}) FROM STDIN") as copy,
        ):
            for row in shard_rows:
                copy.write_row(row)
    return {shard: [str(row[0]) for row in shard_rows] for shard, shard_rows in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("catalog_dsn")
    parser.add_argument("--checks", type=int, default=100_000)
    parser.add_argument("--timeout", type=int, default=3600, help="period in seconds")
    parser.add_argument("--grace", type=int, default=300, help="grace in seconds")
    parser.add_argument("--due-from", type=float, default=None, help="epoch seconds")
    parser.add_argument("--due-window", type=float, default=60.0, help="seconds")
    parser.add_argument("--ids-out", help="write the ids, one per line, to this file")
    args = parser.parse_args()
    started = time.monotonic()
    ids = seed(
        args.catalog_dsn,
        args.checks,
        args.timeout,
        args.grace,
        args.due_from,
        args.due_window,
        random.Random(1),
    )
    print(f"seeded {args.checks} checks in {time.monotonic() - started:.1f} s")
    if args.ids_out:
        with open(args.ids_out, "w") as out:
            for shard_ids in ids.values():
                out.writelines(f"{check_id}\n" for check_id in shard_ids)


if __name__ == "__main__":
    main()
