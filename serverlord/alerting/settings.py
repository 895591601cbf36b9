"""Alert delivery settings read from the environment, validated at start.

Like `serverlord.config`, every error names the variable, the value it had and the form
it expects. The SMTP password is kept out of `repr` so that a logged settings object
cannot leak it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from serverlord.config import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_SITE_ROOT = "http://localhost:8080"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    """The From address of alert emails."""

    use_tls: bool
    """Connect with implicit TLS (SMTPS, usually port 465)."""

    start_tls: bool | None
    """Upgrade with STARTTLS: True requires it, False never tries, None uses it if offered."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AlertSettings:
    site_root: str = DEFAULT_SITE_ROOT
    """Base URL of the web interface for links in alerts, without a trailing slash."""

    smtp: SmtpSettings | None = None
    """None when SMTP_HOST is unset: email channels then fail with a message saying so."""

    webhook_allowed_networks: tuple[IPNetwork, ...] = ()
    """Networks that webhook and apprise targets may reach although they are not public."""


def alert_settings_from_env(env: Mapping[str, str] | None = None) -> AlertSettings:
    env = os.environ if env is None else env
    return AlertSettings(
        site_root=_site_root(env),
        smtp=_smtp(env),
        webhook_allowed_networks=parse_networks(
            env.get("WEBHOOK_ALLOWED_NETWORKS", ""), "WEBHOOK_ALLOWED_NETWORKS"
        ),
    )


def parse_networks(raw: str, name: str) -> tuple[IPNetwork, ...]:
    """Parse a comma-separated list of CIDR networks such as "127.0.0.0/8,::1/128"."""
    networks: list[IPNetwork] = []
    for item in raw.split(","):
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} must be a comma-separated list of networks such as "
                f"127.0.0.0/8,::1/128, got the invalid entry {text!r}"
            ) from None
    return tuple(networks)


def _site_root(env: Mapping[str, str]) -> str:
    raw = env.get("SITE_ROOT", "").strip()
    if not raw:
        return DEFAULT_SITE_ROOT
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"SITE_ROOT must be the http(s) URL of the web interface such as "
            f"https://cron.example.com, got {raw!r}"
        )
    return raw.rstrip("/")


def _smtp(env: Mapping[str, str]) -> SmtpSettings | None:
    host = env.get("SMTP_HOST", "").strip()
    if not host:
        for name in ("SMTP_PORT", "SMTP_USER", "SMTP_PASSWORD", "SMTP_FROM"):
            if env.get(name, "").strip():
                raise ConfigError(f"{name} is set but SMTP_HOST is missing; set SMTP_HOST too")
        return None

    use_tls = _bool(env, "SMTP_TLS") is True
    start_tls = _bool(env, "SMTP_STARTTLS")
    if use_tls and start_tls:
        raise ConfigError(
            "SMTP_TLS and SMTP_STARTTLS are both true; set SMTP_TLS for implicit TLS "
            "(port 465) or SMTP_STARTTLS for an upgrade on a plain connection, not both"
        )
    default_port = 25
    if use_tls:
        default_port = 465
    elif start_tls:
        default_port = 587
    sender = env.get("SMTP_FROM", "").strip()
    if "@" not in sender or any(char in sender for char in "\r\n"):
        raise ConfigError(
            f"SMTP_FROM must be the sender address of alert emails such as "
            f"alerts@example.com, got {sender!r}"
        )
    user = env.get("SMTP_USER", "").strip() or None
    password = env.get("SMTP_PASSWORD") or None
    if password is not None and user is None:
        raise ConfigError("SMTP_PASSWORD is set but SMTP_USER is missing; set SMTP_USER too")
    return SmtpSettings(
        host=host,
        port=_port(env, default_port),
        sender=sender,
        use_tls=use_tls,
        start_tls=None if use_tls else start_tls,
        user=user,
        password=password,
    )


def _port(env: Mapping[str, str], default: int) -> int:
    raw = env.get("SMTP_PORT", "").strip()
    if not raw:
        return default
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"SMTP_PORT must be a whole number from 1 to 65535, got {raw!r}")
    return int(raw)


def _bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")
