"""Placement of checks: hash slots, the stored slot map, and each shard's database.

A check's UUID hashes into one of `SLOT_COUNT` slots; the catalog's slot map assigns each
slot to a shard. The map is written once, when the catalog is new, and later starts only
read it, so a check never moves because a setting changed.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from uuid import UUID

import orjson
import psycopg
from psycopg import conninfo, sql

from serverlord.config import ConfigError

log = logging.getLogger(__name__)

SLOT_COUNT = 4096

Layout = Literal["database", "schema"]


def slot_of(check_id: UUID) -> int:
    return zlib.crc32(check_id.bytes) % SLOT_COUNT


@dataclass(frozen=True)
class SlotMap:
    shard_by_slot: tuple[int, ...]

    @property
    def shard_count(self) -> int:
        return max(self.shard_by_slot) + 1

    def shard_of(self, check_id: UUID) -> int:
        return self.shard_by_slot[slot_of(check_id)]

    @classmethod
    def even(cls, shard_count: int) -> SlotMap:
        return cls(tuple(slot % shard_count for slot in range(SLOT_COUNT)))


def load_or_create_slot_map(catalog_dsn: str, shard_count: int) -> SlotMap:
    """Read the stored slot map, or store an even one when the catalog has none.

    Raises ConfigError when `shard_count` contradicts the stored map: re-homing checks
    silently would orphan every check on a shard that disappeared.
    """
    with psycopg.connect(catalog_dsn) as conn:
        conn.execute("LOCK TABLE slot_map IN EXCLUSIVE MODE")
        rows = conn.execute("SELECT slot, shard FROM slot_map ORDER BY slot").fetchall()
        if not rows:
            slot_map = SlotMap.even(shard_count)
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO slot_map (slot, shard) VALUES (%s, %s)",
                    list(enumerate(slot_map.shard_by_slot)),
                )
            log.info("created a slot map of %d slots over %d shards", SLOT_COUNT, shard_count)
            return slot_map

    if len(rows) != SLOT_COUNT or [slot for slot, _ in rows] != list(range(SLOT_COUNT)):
        raise ConfigError(
            f"the stored slot map has {len(rows)} slots, expected {SLOT_COUNT}; "
            "the catalog database is damaged or from another program"
        )
    stored = SlotMap(tuple(shard for _, shard in rows))
    if stored.shard_count != shard_count:
        raise ConfigError(
            f"SHARD_COUNT={shard_count} contradicts the stored slot map, which places "
            f"checks on {stored.shard_count} shards; set SHARD_COUNT={stored.shard_count} "
            "(changing the shard count needs a rebalance, which moves slots explicitly)"
        )
    return stored


def shard_database_name(catalog_dsn: str, shard: int) -> str:
    catalog_db = conninfo.conninfo_to_dict(catalog_dsn).get("dbname") or "postgres"
    return f"{catalog_db}_shard{shard}"


def provision_shards(catalog_dsn: str, shard_count: int, explicit: dict[int, str]) -> list[str]:
    """Create each shard's database (or schema) when missing and return every shard's DSN.

    Shards without an explicit DSN get their own database on the catalog's server. Where
    the role may not create databases, as on many hosted PostgreSQL plans, they get a
    schema of the catalog database instead; the choice is stored so it never flips later.
    """
    dsns: list[str] = []
    with psycopg.connect(catalog_dsn, autocommit=True) as conn:
        for shard in range(shard_count):
            if shard in explicit:
                dsns.append(explicit[shard])
                continue
            layout = _stored_layout(conn, shard) or _create_shard_home(conn, catalog_dsn, shard)
            dsns.append(_shard_dsn(catalog_dsn, shard, layout))
    return dsns


def _stored_layout(conn: psycopg.Connection[tuple[str]], shard: int) -> Layout | None:
    row = conn.execute("SELECT layout FROM shards WHERE shard = %s", (shard,)).fetchone()
    if row is None:
        return None
    return "schema" if row[0] == "schema" else "database"


def _create_shard_home(
    conn: psycopg.Connection[tuple[str]], catalog_dsn: str, shard: int
) -> Layout:
    name = shard_database_name(catalog_dsn, shard)
    layout: Layout = "database"
    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists is None:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log.info("created database %s for shard %d", name, shard)
        except psycopg.errors.InsufficientPrivilege:
            layout = "schema"
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name)))
            log.warning(
                "the database role may not create databases; shard %d lives in schema %s "
                "of the catalog database",
                shard,
                name,
            )
        except psycopg.errors.DuplicateDatabase:
            pass
    conn.execute(
        "INSERT INTO shards (shard, layout) VALUES (%s, %s) ON CONFLICT (shard) DO NOTHING",
        (shard, layout),
    )
    return layout


def _shard_dsn(catalog_dsn: str, shard: int, layout: Layout) -> str:
    name = shard_database_name(catalog_dsn, shard)
    if layout == "database":
        return conninfo.make_conninfo(catalog_dsn, dbname=name)
    return conninfo.make_conninfo(catalog_dsn, options=f"-c search_path={name}")


@dataclass(frozen=True)
class Topology:
    """The routing data of a web worker: the slot map and each shard's socket."""

    slot_map: SlotMap
    sockets: tuple[str, ...]

    def write(self, path: Path) -> None:
        data = {"slots": list(self.slot_map.shard_by_slot), "sockets": list(self.sockets)}
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(data))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> Topology:
        data = orjson.loads(path.read_bytes())
        return cls(SlotMap(tuple(data["slots"])), tuple(data["sockets"]))
