from __future__ import annotations

import uuid

import psycopg
import pytest

from serverlord.config import ConfigError
from serverlord.storage.migrate import migrate
from serverlord.storage.topology import (
    SLOT_COUNT,
    SlotMap,
    load_or_create_slot_map,
    provision_shards,
    slot_of,
)


def test_slot_of_is_stable_for_a_uuid() -> None:
    check_id = uuid.UUID("6f1b7a52-3c1e-4f0e-9a57-1b2f7e0d9c11")
    assert slot_of(check_id) == slot_of(uuid.UUID(str(check_id).upper()))
    assert 0 <= slot_of(check_id) < SLOT_COUNT


def test_even_map_spreads_checks_over_shards() -> None:
    slot_map = SlotMap.even(4)
    counts = [0, 0, 0, 0]
    for _ in range(4000):
        counts[slot_map.shard_of(uuid.uuid4())] += 1
    assert min(counts) > 800


def test_slot_map_survives_reload(catalog_dsn: str) -> None:
    first = load_or_create_slot_map(catalog_dsn, 3)
    second = load_or_create_slot_map(catalog_dsn, 3)
    assert first == second
    check_id = uuid.uuid4()
    assert first.shard_of(check_id) == second.shard_of(check_id)


def test_contradicting_shard_count_is_rejected(catalog_dsn: str) -> None:
    load_or_create_slot_map(catalog_dsn, 4)
    with pytest.raises(ConfigError, match="SHARD_COUNT=2 contradicts the stored slot map"):
        load_or_create_slot_map(catalog_dsn, 2)


def test_migrations_are_idempotent(shard_dsn: str) -> None:
    assert migrate(shard_dsn, "shard") == []
    with psycopg.connect(shard_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert row is not None
    assert row[0] >= 1


def test_provision_creates_a_database_per_shard(catalog_dsn: str) -> None:
    dsns = provision_shards(catalog_dsn, 2, {})
    assert len(dsns) == 2
    for dsn in dsns:
        migrate(dsn, "shard")
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*) FROM checks").fetchone()
        assert row == (0,)
    assert provision_shards(catalog_dsn, 2, {}) == dsns
