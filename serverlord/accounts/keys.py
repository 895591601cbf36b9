"""API keys and ping keys: how they are made, stored and recognized.

A key is `secrets.token_urlsafe(24)`, 32 characters from 192 random bits, shown once when
it is created. The catalog stores only its SHA-256 hash and its first characters for
display. A fast hash is right here because the keys are random: there is no password
list to try against a stolen hash, and a slow hash would only slow every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Literal, get_args

KeyKind = Literal["rw", "ro", "ping"]
KEY_KINDS: tuple[KeyKind, ...] = get_args(KeyKind)
KEY_KIND_NAMES: dict[KeyKind, str] = {
    "rw": "read-write API key",
    "ro": "read-only API key",
    "ping": "ping key",
}

KEY_BYTES = 24
KEY_LENGTH = 32
PREFIX_LENGTH = 6
_KEY_RE = re.compile(r"[A-Za-z0-9_-]{32}")


def generate_key() -> str:
    return secrets.token_urlsafe(KEY_BYTES)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_prefix(key: str) -> str:
    return key[:PREFIX_LENGTH]


def is_key_shaped(value: str) -> bool:
    """Return whether `value` has the length and alphabet of a key this module makes."""
    return _KEY_RE.fullmatch(value) is not None


def hashes_match(stored: bytes, key: str) -> bool:
    """Compare a stored hash with a presented key in constant time."""
    return hmac.compare_digest(stored, hash_key(key))
