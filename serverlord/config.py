"""Settings read from the environment and an optional `.env` file, validated at start.

Every error names the variable, the value it had and the form it expects, so a typo in a
deployment fails at boot with a fix instead of later with a stack trace.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from urllib.parse import quote, urlsplit

DEFAULT_PORT = 8080
DEFAULT_SHARD_COUNT = 4
MAX_SHARD_COUNT = 256

# Linux keeps a Unix socket path in sockaddr_un.sun_path, 108 bytes with the final NUL.
MAX_SOCKET_PATH = 107
# The longest socket name under RUNTIME_DIR: a web worker's metrics socket, named after its
# PID. A PID has 7 digits or fewer, because pid_max is at most 4194304 on 64-bit Linux.
LONGEST_SOCKET_NAME = "web-metrics/4194304.sock"


class ConfigError(Exception):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    """DSN of the catalog database; None means: start the embedded PostgreSQL."""

    shard_count: int
    shard_dsns: dict[int, str]
    """Explicit DSNs for shards that live elsewhere, by shard number."""

    host: str
    port: int
    api_timeout: float
    """Seconds a web worker waits for its shard process before responding 503."""

    web_workers: int
    runtime_dir: Path
    """Folder for the shard processes' Unix sockets and the topology file."""

    data_dir: Path
    """Folder of the embedded PostgreSQL cluster, used only without a database URL."""

    ping_body_limit: int
    shard_pool_size: int
    shard_db_concurrency: int
    otel_endpoint: str | None
    log_level: str
    log_format: str = "text"
    """Form of log lines: "text", or "json" for one JSON object per line."""

    startup_quiet_period: float | None = None
    """Seconds alerts wait after a start for deadlines missed while the server was down;
    None means each check's own grace period."""

    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    """Networks of reverse proxies whose X-Forwarded-For header names the real client."""

    ping_retention: int = 100
    """Pings kept per check; older ones are pruned in the background."""

    flip_retention_days: int = 93
    """Days of flips kept; older ones are pruned in the background."""

    auth_cache_ttl: float = 5.0
    """Seconds a web worker remembers a key lookup, and so also how long a revoked key
    may still work."""

    metrics_token: str | None = None
    """Bearer token that `GET /metrics` requires. None serves the metrics to anyone."""

    commit_linger_ms: float = 5.0
    """Milliseconds a shard's next transaction may wait for more pings while the shard is
    busy; larger batches cost less CPU per ping."""

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def load_dotenv_file(path: Path | None = None) -> None:
    """Load `.env` from the working folder without overriding variables already set."""
    from dotenv import load_dotenv

    load_dotenv(path or Path.cwd() / ".env", override=False)


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    port = _port(env)
    shard_count = _int(env, "SHARD_COUNT", DEFAULT_SHARD_COUNT, 1, MAX_SHARD_COUNT)
    return Settings(
        database_url=_database_url(env),
        shard_count=shard_count,
        shard_dsns=_shard_dsns(env, shard_count),
        host=_host(env),
        port=port,
        api_timeout=_float(env, "API_TIMEOUT", 10.0, 0.1, 300.0, "seconds"),
        web_workers=_int(env, "WEB_CONCURRENCY", 2, 1, 64),
        runtime_dir=_runtime_dir(env, port),
        data_dir=_path(env, "DATA_DIR", _default_data_dir()),
        ping_body_limit=_int(env, "PING_BODY_LIMIT", 100_000, 0, 10_000_000, "bytes"),
        shard_pool_size=_int(env, "SHARD_POOL_SIZE", 4, 2, 100),
        shard_db_concurrency=_int(env, "SHARD_DB_CONCURRENCY", 3, 1, 100),
        commit_linger_ms=_float(env, "COMMIT_LINGER_MS", 5.0, 0.0, 100.0, "milliseconds"),
        otel_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_COLLECTOR_ENDPOINT"),
        log_level=_log_level(env),
        log_format=_log_format(env),
        startup_quiet_period=(
            _float(env, "STARTUP_QUIET_PERIOD", 0.0, 0.0, 86400.0 * 365, "seconds")
            if env.get("STARTUP_QUIET_PERIOD", "").strip()
            else None
        ),
        trusted_proxies=_networks(env, "TRUSTED_PROXIES"),
        ping_retention=_int(env, "PING_RETENTION", 100, 1, 100_000),
        flip_retention_days=_int(env, "FLIP_RETENTION_DAYS", 93, 93, 36_500, "days"),
        auth_cache_ttl=_float(env, "AUTH_CACHE_TTL", 5.0, 0.0, 300.0, "seconds"),
        metrics_token=env.get("METRICS_TOKEN", "").strip() or None,
    )


def _default_data_dir() -> Path:
    # The embedded cluster runs as an unprivileged user when started by root, and the
    # wheel then makes every parent folder world-readable; /var/lib keeps it out of
    # private home folders.
    if os.geteuid() == 0:
        return Path("/var/lib/serverlord")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "serverlord"


def _database_url(env: Mapping[str, str]) -> str | None:
    url = env.get("DATABASE_URL", "").strip()
    if url:
        _check_dsn("DATABASE_URL", url)
        return url
    host = env.get("DB_HOST", "").strip()
    if not host:
        for name in ("DB_PORT", "DB_USER", "DB_PASS", "DB_NAME"):
            if env.get(name):
                raise ConfigError(f"{name} is set but DB_HOST is missing; set DB_HOST too")
        return None
    port = _int(env, "DB_PORT", 5432, 1, 65535)
    user = quote(env.get("DB_USER", "").strip() or "postgres", safe="")
    password = env.get("DB_PASS", "")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    name = quote(env.get("DB_NAME", "").strip() or "serverlord", safe="")
    if host.startswith("/"):
        # A socket folder cannot stand in a URL's host part, so libpq takes it as a query
        # parameter instead.
        return f"postgresql://{auth}@/{name}?host={quote(host, safe='')}&port={port}"
    return f"postgresql://{auth}@{_url_host(host)}:{port}/{name}"


def _url_host(host: str) -> str:
    """Return DB_HOST as a URL host part, with an IPv6 address in brackets."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if any(char.isspace() or char in "/@?#[]" for char in host):
        raise ConfigError(
            f"DB_HOST must be a host name, an IP address or the absolute path of a socket "
            f"folder such as db.example.com, 10.0.0.5, ::1 or /var/run/postgresql, got {host!r}"
        )
    return f"[{host}]" if ":" in host else host


def _shard_dsns(env: Mapping[str, str], shard_count: int) -> dict[int, str]:
    dsns: dict[int, str] = {}
    for key, raw in env.items():
        match = re.fullmatch(r"SHARD_(.+)_DATABASE_URL", key)
        value = raw.strip()
        if not match or not value:
            continue
        if not match.group(1).isascii() or not match.group(1).isdigit():
            raise ConfigError(
                f"{key} does not name a shard number; write the number in digits, such as "
                f"SHARD_0_DATABASE_URL, or remove it"
            )
        number = int(match.group(1))
        if number in dsns:
            raise ConfigError(
                f"{key} names shard {number}, which another SHARD_<n>_DATABASE_URL "
                "already names; keep one of them"
            )
        if number >= shard_count:
            raise ConfigError(
                f"{key} names shard {number}, but SHARD_COUNT={shard_count} makes shards "
                f"0..{shard_count - 1}; remove it or raise SHARD_COUNT"
            )
        _check_dsn(key, value)
        dsns[number] = value
    return dsns


def _check_dsn(name: str, value: str) -> None:
    """Accept a postgresql:// URL or a libpq `key=value` string, as psycopg does."""
    import psycopg
    from psycopg import conninfo

    if "://" in value and not re.match(r"^postgres(ql)?://", value):
        raise ConfigError(
            f"{name} must be a PostgreSQL URL such as "
            f"postgresql://user:password@host:5432/serverlord, got {_redact(value)!r}"
        )
    try:
        params = conninfo.conninfo_to_dict(value)
    except psycopg.ProgrammingError as exc:
        detail = _hide_password(str(exc).strip(), value)
        raise ConfigError(
            f"{name} is not a valid PostgreSQL connection string ({detail}); use the form "
            "postgresql://user:password@host:5432/serverlord"
        ) from None

    # conninfo_to_dict does not check ports, so a typo would otherwise show up only when
    # the server first connects.
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(
                f"{name} has the invalid port {port!r}; use a number from 1 to 65535, as in "
                "postgresql://user:password@host:5432/serverlord"
            )


def _hide_password(message: str, dsn: str) -> str:
    """Remove the DSN's password from a libpq message, which may quote the bad token."""
    secrets: list[str] = []
    # urlsplit raises ValueError on an unclosed IPv6 bracket, and _redact then masks the
    # password in the URL instead.
    with contextlib.suppress(ValueError):
        secrets.append(urlsplit(dsn).password or "")
    for quoted, bare in re.findall(r"password\s*=\s*(?:'((?:[^'\\]|\\.)*)'?|(\S+))", dsn):
        secrets.append(quoted or bare)
    # libpq may quote only the part of a value after a space.
    pieces = {piece for secret in secrets for piece in [secret, *secret.split()] if piece}

    def hide(match: re.Match[str]) -> str:
        return '"***"' if any(piece in match.group(1) for piece in pieces) else match.group(0)

    return re.sub(r'"([^"]*)"', hide, _redact(message))


def _port(env: Mapping[str, str]) -> int:
    if env.get("PORT", "").strip():
        return _int(env, "PORT", DEFAULT_PORT, 1, 65535)
    return _int(env, "SERVER_PORT", DEFAULT_PORT, 1, 65535)


def _int(
    env: Mapping[str, str], name: str, default: int, low: int, high: int, unit: str = ""
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    form = f"a whole number{f' of {unit}' if unit else ''} from {low} to {high}"
    # int() raises ValueError above 4300 digits (Python 3.11 default), and text that long
    # is out of range anyway, even with a few leading zeros.
    if not raw.isascii() or not raw.isdigit() or len(raw) > len(str(high)) + 10:
        raise ConfigError(f"{name} must be {form}, got {_shorten(raw)!r}")
    value = int(raw)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be {form}, got {value}")
    return value


def _float(
    env: Mapping[str, str], name: str, default: float, low: float, high: float, unit: str
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    form = f"a number of {unit} from {low:g} to {high:.0f}"
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {form}, got {_shorten(raw)!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be {form}, got {_shorten(raw)!r}")
    return value


def _shorten(raw: str) -> str:
    """Cut a long bad value so that the message stays readable."""
    return raw if len(raw) <= 40 else f"{raw[:37]}..."


def _runtime_dir(env: Mapping[str, str], port: int) -> Path:
    path = _path(env, "RUNTIME_DIR", Path(f"/tmp/serverlord-{os.getuid()}-{port}"))
    longest = len(os.fsencode(path / LONGEST_SOCKET_NAME))
    if longest > MAX_SOCKET_PATH:
        limit = MAX_SOCKET_PATH - len(LONGEST_SOCKET_NAME) - 1
        raise ConfigError(
            f"RUNTIME_DIR must be at most {limit} bytes long because the Unix socket paths "
            f"inside it are limited to {MAX_SOCKET_PATH} bytes, got {len(os.fsencode(path))} "
            "bytes; choose a shorter folder such as /run/serverlord"
        )
    return path


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    path = Path(raw)
    if not path.is_absolute():
        raise ConfigError(f"{name} must be an absolute path, got {raw!r}")
    return path


def _log_level(env: Mapping[str, str]) -> str:
    level = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    return level


def _log_format(env: Mapping[str, str]) -> str:
    log_format = env.get("LOG_FORMAT", "").strip().lower() or "text"
    if log_format not in {"text", "json"}:
        raise ConfigError(f"LOG_FORMAT must be text or json, got {env['LOG_FORMAT']!r}")
    return log_format


# One label of a host name (RFC 1123): letters, digits and inner hyphens.
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _host(env: Mapping[str, str]) -> str:
    """Return SERVER_HOST as an IP address without brackets or a host name."""
    raw = env.get("SERVER_HOST", "").strip()
    if not raw:
        return "0.0.0.0"
    host = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    with contextlib.suppress(ValueError):
        return str(ip_address(host))
    labels = host.rstrip(".").split(".")
    # A name whose last label is all digits would be read as a malformed IPv4 address.
    if (
        len(host) <= 253
        and all(_HOST_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        return host
    raise ConfigError(
        "SERVER_HOST must be an IP address or a host name to bind, such as 0.0.0.0, "
        f"127.0.0.1, :: or localhost, got {raw!r}"
    )


def _redact(url: str) -> str:
    """Hide the password of a URL before it goes into a message."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _networks(env: Mapping[str, str], name: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """Parse a comma-separated list of addresses or networks such as 10.0.0.0/8,::1."""
    networks = []
    for raw in env.get(name, "").split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            networks.append(ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"{name} must list IP addresses or networks separated by commas, such as "
                f"127.0.0.1,10.0.0.0/8; {item!r} is neither"
            ) from None
    return tuple(networks)
