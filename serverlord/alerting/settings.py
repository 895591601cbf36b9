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
    expected = "the http(s) URL of the web interface such as https://cron.example.com"
    # urlsplit silently drops tabs and newlines inside a URL, but the raw value goes
    # verbatim into every alert's links, so check the raw text first.
    if any(char.isspace() or not char.isprintable() for char in raw):
        raise ConfigError(
            f"SITE_ROOT must be {expected}, without spaces or control characters, got {raw!r}"
        )
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"SITE_ROOT must be {expected}, got {raw!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(f"SITE_ROOT must be {expected}, got {raw!r}")
    if parts.username is not None or parts.password is not None:
        # The value is not shown because it contains credentials.
        raise ConfigError(
            f"SITE_ROOT must be {expected}, without a user name or password, because "
            "alert emails show it to every recipient"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"SITE_ROOT must be {expected}, without a query or fragment, got {raw!r}")
    return raw.rstrip("/")


def _smtp(env: Mapping[str, str]) -> SmtpSettings | None:
    use_tls = _bool(env, "SMTP_TLS") is True
    start_tls = _bool(env, "SMTP_STARTTLS")
    host = env.get("SMTP_HOST", "").strip()
    if not host:
        _reject_smtp_without_host(env, use_tls, start_tls)
        return None

    _check_host(host)
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
    user = env.get("SMTP_USER", "").strip() or None
    password = env.get("SMTP_PASSWORD") or None
    if password is not None and user is None:
        raise ConfigError("SMTP_PASSWORD is set but SMTP_USER is missing; set SMTP_USER too")
    return SmtpSettings(
        host=host,
        port=_port(env, default_port),
        sender=_sender(env),
        use_tls=use_tls,
        start_tls=None if use_tls else start_tls,
        user=user,
        password=password,
    )


def _reject_smtp_without_host(
    env: Mapping[str, str], use_tls: bool, start_tls: bool | None
) -> None:
    """Raise when SMTP variables are set without SMTP_HOST, so email is not silently off.

    SMTP_TLS and SMTP_STARTTLS set to false are allowed, because they turn nothing on.
    """
    names = ["SMTP_PORT", "SMTP_USER", "SMTP_PASSWORD", "SMTP_FROM"]
    set_names = [name for name in names if env.get(name, "").strip()]
    if use_tls:
        set_names.append("SMTP_TLS")
    if start_tls:
        set_names.append("SMTP_STARTTLS")
    if set_names:
        raise ConfigError(
            f"{set_names[0]} is set but SMTP_HOST is missing; set SMTP_HOST to the mail "
            f"server such as smtp.example.com, or unset {', '.join(set_names)}"
        )


def _check_host(host: str) -> None:
    # A URL, an email address or "host:port" here would only fail at the first alert, as a
    # DNS error, so reject them at start.
    expected = "the host name or IP address of the mail server such as smtp.example.com"
    if any(char.isspace() or not char.isprintable() for char in host):
        raise ConfigError(
            f"SMTP_HOST must be {expected}, without spaces or control characters, got {host!r}"
        )
    if "/" in host or "@" in host:
        raise ConfigError(f"SMTP_HOST must be {expected}, not a URL or email address, got {host!r}")
    if host.startswith("[") and _is_ip_address(host.strip("[]")):
        raise ConfigError(
            f"SMTP_HOST must be {expected}, with an IPv6 address written without brackets "
            f"such as ::1, got {host!r}"
        )
    if ":" in host and not _is_ip_address(host):
        raise ConfigError(
            f"SMTP_HOST must be {expected}, without a port (set the port in SMTP_PORT), "
            f"got {host!r}"
        )


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _sender(env: Mapping[str, str]) -> str:
    sender = env.get("SMTP_FROM", "").strip()
    expected = "the sender address of alert emails such as alerts@example.com"
    if not sender:
        raise ConfigError(f"SMTP_FROM is missing; set it to {expected}, because SMTP_HOST is set")
    # A line break would let the value add headers to every alert email.
    if "@" not in sender or any(char in sender for char in "\r\n"):
        raise ConfigError(f"SMTP_FROM must be {expected}, got {sender!r}")
    return sender


def _port(env: Mapping[str, str], default: int) -> int:
    raw = env.get("SMTP_PORT", "").strip()
    if not raw:
        return default
    # The length check comes first because int() in Python 3.11 raises ValueError on
    # more than 4300 digits by default.
    if len(raw) > 5 or not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(
            f"SMTP_PORT must be a whole number from 1 to 65535 such as 587, got {raw!r}"
        )
    return int(raw)


def _bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false (or 1/0, yes/no, on/off), got {raw!r}")
