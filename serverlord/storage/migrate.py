"""Versioned, idempotent schema migrations from the `sql/` folder.

`sql/catalog/` contains the catalog database's files and `sql/shard/` every shard's. Files
run in name order, each in its own transaction, and `schema_migrations` records which ran,
so running the migrator again applies only what is new. An advisory lock makes two
migrators started at once take turns instead of racing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import psycopg

log = logging.getLogger(__name__)

Kind = Literal["catalog", "shard"]

# An arbitrary constant shared by every migrator, so they serialize on one lock.
MIGRATION_LOCK_KEY = 0x5E1D0001


def sql_dir() -> Path:
    override = os.environ.get("SERVERLORD_SQL_DIR")
    if override:
        return Path(override)
    # NOTE: the SQL files live beside the package in a source checkout; an install from a
    # built wheel must set SERVERLORD_SQL_DIR.
    return Path(__file__).resolve().parents[2] / "sql"


def migration_files(kind: Kind) -> list[Path]:
    folder = sql_dir() / kind
    if not folder.is_dir():
        raise FileNotFoundError(f"migration folder {folder} not found; set SERVERLORD_SQL_DIR")
    return sorted(folder.glob("*.sql"))


def migrate(dsn: str, kind: Kind) -> list[str]:
    """Apply the pending migrations of `kind` to the database at `dsn`; return their names."""
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for path in migration_files(kind):
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
                row = conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (path.name,)
                ).fetchone()
                if row is not None:
                    continue
                conn.execute(path.read_text())
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.name,))
            log.info("applied %s migration %s", kind, path.name)
            applied.append(path.name)
    return applied
