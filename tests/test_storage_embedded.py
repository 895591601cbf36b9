"""Settings of the embedded PostgreSQL cluster."""

from __future__ import annotations

import os

import psycopg
import pytest

from serverlord.storage.embedded import SETTINGS


@pytest.mark.skipif(
    bool(os.environ.get("SERVERLORD_TEST_DSN")), reason="the tests run on an external server"
)
def test_embedded_cluster_applies_settings(pg_admin_dsn: str) -> None:
    with psycopg.connect(pg_admin_dsn) as conn:
        for name, value in SETTINGS.items():
            row = conn.execute(f"SHOW {name}").fetchone()
            assert row is not None
            assert row[0] == value, name
