"""Fixtures shared by the test suite: a real PostgreSQL cluster and fresh databases.

The cluster is the embedded PostgreSQL that `pip install` brings, started once per test
session in a temporary folder. `SERVERLORD_TEST_DSN` points the suite at another server
instead; each test still gets databases of its own.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo, sql

from serverlord.storage.embedded import EmbeddedPostgres
from serverlord.storage.migrate import migrate
from tests.server import Server, running_server, server_env

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a maintenance database on a running cluster, for creating test databases."""
    external = os.environ.get("SERVERLORD_TEST_DSN")
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    dsn = server.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_connections = 300")
        conn.execute("ALTER SYSTEM SET fsync = on")
        conn.execute("ALTER SYSTEM SET synchronous_commit = on")
    server.stop()
    dsn = server.start()
    try:
        yield dsn
    finally:
        server.stop()


def create_database(admin_dsn: str, prefix: str = "t") -> str:
    name = f"{prefix}{os.getpid()}_{next(_counter)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return conninfo.make_conninfo(admin_dsn, dbname=name)


@pytest.fixture
def catalog_dsn(pg_admin_dsn: str) -> str:
    """A new, migrated catalog database."""
    dsn = create_database(pg_admin_dsn, "cat")
    migrate(dsn, "catalog")
    return dsn


@pytest.fixture
def shard_dsn(pg_admin_dsn: str) -> str:
    """A new, migrated shard database."""
    dsn = create_database(pg_admin_dsn, "shard")
    migrate(dsn, "shard")
    return dsn


@pytest.fixture(scope="session")
def server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `serverlord serve` with three shards, shared by tests that do not hurt it."""
    catalog = create_database(pg_admin_dsn, "e2e")
    runtime = Path(f"/tmp/sl-e2e-{os.getpid()}")
    log_path = tmp_path_factory.mktemp("e2e") / "server.log"
    with running_server(server_env(catalog, runtime, shard_count=3), log_path) as running:
        running.extra["catalog"] = catalog
        yield running


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    # Unix socket paths are limited to about 100 bytes, and pytest's tmp_path can be long.
    short = Path(f"/tmp/sl-{os.getpid()}-{next(_counter)}")
    short.mkdir()
    return short
