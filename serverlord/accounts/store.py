"""Catalog queries for users, projects, members and keys.

The command line uses the synchronous functions, the web workers the asynchronous ones.
Keys are looked up by the SHA-256 hash of the presented key, and the stored hash is then
compared in constant time, so neither the database nor the comparison handles a plain key.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from serverlord.accounts.keys import (
    KeyKind,
    generate_key,
    hash_key,
    hashes_match,
    is_key_shaped,
    key_prefix,
)

MAX_PROJECT_NAME = 100
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")


class AccountError(ValueError):
    """A user, project or key request that cannot be carried out; the message gives the reason."""


@dataclass(frozen=True, slots=True)
class Project:
    id: int
    owner_id: int
    name: str
    badge_key: uuid.UUID


@dataclass(frozen=True, slots=True)
class KeyMatch:
    """The project a presented key belongs to, and what the key may do there."""

    project_id: int
    kind: KeyKind


@dataclass(frozen=True, slots=True)
class BadgeProject:
    project_id: int
    badge_key: uuid.UUID
    badge_secret: bytes


# -- command line (synchronous) -----------------------------------------------------------


def create_user(conn: psycopg.Connection[Any], email: str) -> int:
    email = email.strip()
    if not _EMAIL_RE.fullmatch(email) or len(email) > 254:
        raise AccountError(f"{email[:60]!r} is not an email address such as ops@example.com")
    try:
        row = conn.execute(
            "INSERT INTO users (email) VALUES (%s) RETURNING id", (email,)
        ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise AccountError(f"a user with the email {email} already exists") from None
    assert row is not None
    return int(row[0])


def find_user(conn: psycopg.Connection[Any], email: str) -> int:
    row = conn.execute(
        "SELECT id FROM users WHERE lower(email) = lower(%s)", (email.strip(),)
    ).fetchone()
    if row is None:
        raise AccountError(
            f"no user with the email {email}; create one with `serverlord user create {email}`"
        )
    return int(row[0])


def create_project(conn: psycopg.Connection[Any], owner_id: int, name: str) -> Project:
    if len(name) > MAX_PROJECT_NAME:
        raise AccountError(f"the project name has {len(name)} characters; use at most 100")
    badge_key = uuid.uuid4()
    row = conn.execute(
        "INSERT INTO projects (owner_id, name, badge_key, badge_secret) VALUES (%s, %s, %s, %s)"
        " RETURNING id",
        (owner_id, name, badge_key, secrets.token_bytes(32)),
    ).fetchone()
    assert row is not None
    return Project(int(row[0]), owner_id, name, badge_key)


def find_project(conn: psycopg.Connection[Any], project_id: int) -> Project:
    row = conn.execute(
        "SELECT id, owner_id, name, badge_key FROM projects WHERE id = %s", (project_id,)
    ).fetchone()
    if row is None:
        raise AccountError(f"no project with id {project_id}")
    return Project(int(row[0]), int(row[1]), row[2], row[3])


def create_key(conn: psycopg.Connection[Any], project_id: int, kind: KeyKind) -> str:
    """Store a new key's hash and return the key itself, which is not stored anywhere."""
    key = generate_key()
    conn.execute(
        "INSERT INTO project_keys (project_id, kind, key_hash, prefix) VALUES (%s, %s, %s, %s)",
        (project_id, kind, hash_key(key), key_prefix(key)),
    )
    return key


def revoke_key(conn: psycopg.Connection[Any], project_id: int, prefix: str) -> int:
    """Revoke the project's keys that start with `prefix`; return how many."""
    cursor = conn.execute(
        "UPDATE project_keys SET revoked = now()"
        " WHERE project_id = %s AND prefix = %s AND revoked IS NULL",
        (project_id, prefix),
    )
    return cursor.rowcount


def add_member(conn: psycopg.Connection[Any], project_id: int, user_id: int, role: str) -> None:
    if role not in ("ro", "rw"):
        raise AccountError(f"role must be ro or rw, got {role!r}")
    conn.execute(
        "INSERT INTO project_members (project_id, user_id, role) VALUES (%s, %s, %s)"
        " ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
        (project_id, user_id, role),
    )


# -- web workers (asynchronous) -----------------------------------------------------------


async def lookup_key(conn: psycopg.AsyncConnection[Any], key: str) -> KeyMatch | None:
    """Return the project and kind of an unrevoked key, or None for an unknown key."""
    if not is_key_shaped(key):
        return None
    cursor = await conn.execute(
        "SELECT key_hash, project_id, kind FROM project_keys"
        " WHERE key_hash = %s AND revoked IS NULL",
        (hash_key(key),),
    )
    row = await cursor.fetchone()
    if row is None or not hashes_match(bytes(row[0]), key):
        return None
    return KeyMatch(int(row[1]), row[2])


async def badge_project(
    conn: psycopg.AsyncConnection[Any], *, project_id: int | None = None, badge_key: str = ""
) -> BadgeProject | None:
    """Return a project's badge key and secret, found by project id or by badge key."""
    if project_id is not None:
        cursor = await conn.execute(
            "SELECT id, badge_key, badge_secret FROM projects WHERE id = %s", (project_id,)
        )
    else:
        try:
            parsed = uuid.UUID(badge_key)
        except ValueError:
            return None
        cursor = await conn.execute(
            "SELECT id, badge_key, badge_secret FROM projects WHERE badge_key = %s", (parsed,)
        )
    row = await cursor.fetchone()
    if row is None:
        return None
    return BadgeProject(int(row[0]), row[1], bytes(row[2]))


async def project_channels(
    conn: psycopg.AsyncConnection[Any], project_id: int
) -> list[dict[str, str]]:
    """Return the project's channels as `{"id", "name", "kind"}`, oldest first."""
    cursor = await conn.execute(
        "SELECT id, name, kind FROM channels WHERE project_id = %s ORDER BY created, id",
        (project_id,),
    )
    return [{"id": str(row[0]), "name": row[1], "kind": row[2]} for row in await cursor.fetchall()]
