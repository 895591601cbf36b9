"""from_env and load_dotenv_file: defaults, accepted forms and the messages of bad values.

Every test passes an explicit mapping, so the real environment cannot change a result.
Each rejected value must raise ConfigError with a message that names the variable and the
form it expects.
"""

from __future__ import annotations

import os
from ipaddress import ip_network
from pathlib import Path

import pytest

from serverlord.config import ConfigError, Settings, from_env, load_dotenv_file

URL = "postgresql://app:secret@db.example.com:5432/serverlord"


def rejection(env: dict[str, str]) -> str:
    """Return the message of the ConfigError that from_env raises for `env`."""
    with pytest.raises(ConfigError) as info:
        from_env(env)
    return str(info.value)


# -- defaults ---------------------------------------------------------------------------


def test_defaults_without_variables() -> None:
    settings = from_env({})

    assert settings.database_url is None
    assert settings.embedded is True
    assert settings.shard_count == 4
    assert settings.shard_dsns == {}
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.api_timeout == 10.0
    assert settings.web_workers == 2
    assert settings.runtime_dir == Path(f"/tmp/serverlord-{os.getuid()}-8080")
    assert settings.ping_body_limit == 100_000
    assert settings.shard_pool_size == 4
    assert settings.shard_db_concurrency == 3
    assert settings.commit_linger_ms == 5.0
    assert settings.otel_endpoint is None
    assert settings.log_level == "INFO"
    assert settings.startup_quiet_period is None
    assert settings.trusted_proxies == ()
    assert settings.ping_retention == 100
    assert settings.flip_retention_days == 93
    assert settings.auth_cache_ttl == 5.0
    assert settings.metrics_token is None


def test_blank_values_mean_defaults() -> None:
    names = [
        "DATABASE_URL",
        "DB_HOST",
        "SHARD_COUNT",
        "SHARD_1_DATABASE_URL",
        "PORT",
        "SERVER_PORT",
        "WEB_CONCURRENCY",
        "API_TIMEOUT",
        "PING_BODY_LIMIT",
        "SHARD_POOL_SIZE",
        "SHARD_DB_CONCURRENCY",
        "COMMIT_LINGER_MS",
        "STARTUP_QUIET_PERIOD",
        "PING_RETENTION",
        "FLIP_RETENTION_DAYS",
        "AUTH_CACHE_TTL",
        "TRUSTED_PROXIES",
        "LOG_LEVEL",
        "METRICS_TOKEN",
        "RUNTIME_DIR",
        "DATA_DIR",
    ]

    assert from_env(dict.fromkeys(names, "  ")) == from_env({})


def test_data_dir_default_for_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default data folder depends on the effective user, which this test fixes.
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    assert from_env({}).data_dir == Path("/var/lib/serverlord")


def test_data_dir_default_follows_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    # NOTE: the default reads XDG_DATA_HOME and HOME from os.environ, not from the mapping.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")

    assert from_env({}).data_dir == Path("/srv/data/serverlord")


# -- port -------------------------------------------------------------------------------


def test_port_wins_over_server_port() -> None:
    assert from_env({"PORT": "9000", "SERVER_PORT": "9100"}).port == 9000


def test_server_port_used_alone() -> None:
    assert from_env({"SERVER_PORT": "9100"}).port == 9100


def test_blank_port_falls_back_to_server_port() -> None:
    assert from_env({"PORT": " ", "SERVER_PORT": "9100"}).port == 9100


def test_bad_port_named_over_server_port() -> None:
    message = rejection({"PORT": "http", "SERVER_PORT": "9100"})

    assert message.startswith("PORT ")
    assert "from 1 to 65535" in message


def test_runtime_dir_default_follows_port() -> None:
    settings = from_env({"PORT": "9000"})

    assert settings.runtime_dir == Path(f"/tmp/serverlord-{os.getuid()}-9000")


def test_server_host_kept() -> None:
    assert from_env({"SERVER_HOST": "127.0.0.1"}).host == "127.0.0.1"


@pytest.mark.parametrize("host", ["::", "::1", "localhost", "db-1.example.com", "10.0.0.5"])
def test_server_host_forms_accepted(host: str) -> None:
    assert from_env({"SERVER_HOST": f" {host} "}).host == host


def test_server_host_blank_means_default() -> None:
    assert from_env({"SERVER_HOST": " "}).host == "0.0.0.0"


def test_server_host_ipv6_brackets_removed() -> None:
    assert from_env({"SERVER_HOST": "[::1]"}).host == "::1"


@pytest.mark.parametrize(
    "host",
    ["999.1.1.1", "1.2.3", "bad host", "http://127.0.0.1", "host:8080", "-x.example", "[::1"],
)
def test_server_host_invalid_named(host: str) -> None:
    message = rejection({"SERVER_HOST": host})

    assert message.startswith("SERVER_HOST must be an IP address or a host name")
    assert repr(host) in message


# -- numeric settings -------------------------------------------------------------------

# variable, Settings attribute, minimum, maximum, unit named in the message
INTEGERS = [
    ("SHARD_COUNT", "shard_count", 1, 256, ""),
    ("PORT", "port", 1, 65535, ""),
    ("SERVER_PORT", "port", 1, 65535, ""),
    ("WEB_CONCURRENCY", "web_workers", 1, 64, ""),
    ("PING_BODY_LIMIT", "ping_body_limit", 0, 10_000_000, "bytes"),
    ("SHARD_POOL_SIZE", "shard_pool_size", 2, 100, ""),
    ("SHARD_DB_CONCURRENCY", "shard_db_concurrency", 1, 100, ""),
    ("PING_RETENTION", "ping_retention", 1, 100_000, ""),
    ("FLIP_RETENTION_DAYS", "flip_retention_days", 93, 36_500, "days"),
]

FLOATS = [
    ("API_TIMEOUT", "api_timeout", 0.1, 300.0, "seconds"),
    ("COMMIT_LINGER_MS", "commit_linger_ms", 0.0, 100.0, "milliseconds"),
    ("STARTUP_QUIET_PERIOD", "startup_quiet_period", 0.0, 86400.0 * 365, "seconds"),
    ("AUTH_CACHE_TTL", "auth_cache_ttl", 0.0, 300.0, "seconds"),
]

INTEGER_IDS = [f"{row[0]}" for row in INTEGERS]
FLOAT_IDS = [f"{row[0]}" for row in FLOATS]


def integer_form(low: int, high: int, unit: str) -> str:
    return f"whole number{f' of {unit}' if unit else ''} from {low} to {high}"


def float_form(low: float, high: float, unit: str) -> str:
    return f"number of {unit} from {low:g} to {high:.0f}"


@pytest.mark.parametrize(("name", "field", "low", "high", "unit"), INTEGERS, ids=INTEGER_IDS)
def test_integer_bounds_accepted(name: str, field: str, low: int, high: int, unit: str) -> None:
    assert getattr(from_env({name: str(low)}), field) == low
    assert getattr(from_env({name: str(high)}), field) == high
    assert getattr(from_env({name: f" {high} "}), field) == high


@pytest.mark.parametrize(("name", "field", "low", "high", "unit"), INTEGERS, ids=INTEGER_IDS)
def test_integer_bad_values_named(name: str, field: str, low: int, high: int, unit: str) -> None:
    bad_values = [str(high + 1), "-1", "9" * 5000, "1.5", "1e3", "ten", "0x10", "٣"]
    if low > 0:
        bad_values += [str(low - 1), "0"]

    for value in bad_values:
        message = rejection({name: value})

        assert message.startswith(f"{name} "), value
        assert integer_form(low, high, unit) in message, value
        assert len(message) < 200, value


@pytest.mark.parametrize(("name", "field", "low", "high", "unit"), FLOATS, ids=FLOAT_IDS)
def test_float_bounds_accepted(name: str, field: str, low: float, high: float, unit: str) -> None:
    assert getattr(from_env({name: str(low)}), field) == low
    assert getattr(from_env({name: str(high)}), field) == high
    assert getattr(from_env({name: "2.5"}), field) == 2.5


@pytest.mark.parametrize(("name", "field", "low", "high", "unit"), FLOATS, ids=FLOAT_IDS)
def test_float_bad_values_named(name: str, field: str, low: float, high: float, unit: str) -> None:
    bad_values = [str(low - 0.05), "-1", str(high + 1), "1e400", "inf", "nan", "ten", "10s"]
    bad_values.append("9" * 5000)

    for value in bad_values:
        message = rejection({name: value})

        assert message.startswith(f"{name} "), value
        assert float_form(low, high, unit) in message, value
        assert len(message) < 200, value


def test_api_timeout_zero_rejected() -> None:
    message = rejection({"API_TIMEOUT": "0"})

    assert "API_TIMEOUT" in message
    assert "from 0.1 to 300" in message


def test_commit_linger_zero_turns_off() -> None:
    assert from_env({"COMMIT_LINGER_MS": "0"}).commit_linger_ms == 0.0


def test_ping_body_limit_zero_accepted() -> None:
    assert from_env({"PING_BODY_LIMIT": "0"}).ping_body_limit == 0


def test_startup_quiet_period_zero_kept() -> None:
    # Zero means no quiet period at all, which differs from unset (each check's grace).
    assert from_env({"STARTUP_QUIET_PERIOD": "0"}).startup_quiet_period == 0.0


# -- catalog database -------------------------------------------------------------------


def test_database_url_kept_stripped() -> None:
    settings = from_env({"DATABASE_URL": f"  {URL}\n"})

    assert settings.database_url == URL
    assert settings.embedded is False


def test_database_url_libpq_form_accepted() -> None:
    dsn = "host=db.example.com port=5432 dbname=serverlord user=app"

    assert from_env({"DATABASE_URL": dsn}).database_url == dsn


def test_database_url_postgres_scheme_accepted() -> None:
    url = "postgres://app@db.example.com/serverlord"

    assert from_env({"DATABASE_URL": url}).database_url == url


def test_database_url_other_scheme_rejected() -> None:
    message = rejection({"DATABASE_URL": "mysql://app:secret@db.example.com/serverlord"})

    assert message.startswith("DATABASE_URL ")
    assert "postgresql://user:password@host:5432/serverlord" in message
    assert "mysql://app:***@db.example.com" in message
    assert "secret" not in message


@pytest.mark.parametrize(
    "value",
    [
        "not a url",
        "postgresql://app:secret@db.example.com/serverlord?bogus=1",
        "postgresql://app:secret@[::1/serverlord",
        "host=db.example.com password='secret",
    ],
)
def test_database_url_invalid_named(value: str) -> None:
    message = rejection({"DATABASE_URL": value})

    assert message.startswith("DATABASE_URL is not a valid PostgreSQL connection string")
    assert "postgresql://user:password@host:5432/serverlord" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "value",
    [
        "postgresql://app:se%zzcret@db.example.com/serverlord",
        "postgresql://app:se cret@db.example.com/serverlord",
        "postgresql://app:secret@[::1/serverlord",
    ],
)
def test_database_url_error_hides_password(value: str) -> None:
    message = rejection({"DATABASE_URL": value})

    assert "DATABASE_URL" in message
    assert "secret" not in message
    assert "cret" not in message


@pytest.mark.parametrize(
    "value",
    [
        "postgresql://app@db.example.com:notaport/serverlord",
        "postgresql://app@db.example.com:70000/serverlord",
        "postgresql://app@db1:5432,db2:x/serverlord",
        "host=db.example.com port=abc",
    ],
)
def test_database_url_bad_port_rejected(value: str) -> None:
    message = rejection({"DATABASE_URL": value})

    assert message.startswith("DATABASE_URL has the invalid port")
    assert "from 1 to 65535" in message


def test_db_parts_build_url() -> None:
    env = {
        "DB_HOST": "db.example.com",
        "DB_PORT": "6432",
        "DB_USER": "app",
        "DB_PASS": "secret",
        "DB_NAME": "crons",
    }

    assert from_env(env).database_url == "postgresql://app:secret@db.example.com:6432/crons"


def test_db_host_alone_uses_defaults() -> None:
    url = from_env({"DB_HOST": "db.example.com"}).database_url

    assert url == "postgresql://postgres@db.example.com:5432/serverlord"


def test_db_parts_blank_use_defaults() -> None:
    env = {"DB_HOST": "db.example.com", "DB_USER": " ", "DB_NAME": ""}

    assert from_env(env).database_url == "postgresql://postgres@db.example.com:5432/serverlord"


def test_db_parts_percent_encoded() -> None:
    env = {"DB_HOST": "db", "DB_USER": "a@b", "DB_PASS": "p:/@ ss", "DB_NAME": "my db"}

    assert from_env(env).database_url == "postgresql://a%40b:p%3A%2F%40%20ss@db:5432/my%20db"


def test_db_host_ipv6_bracketed() -> None:
    url = from_env({"DB_HOST": "::1"}).database_url

    assert url == "postgresql://postgres@[::1]:5432/serverlord"


def test_db_host_socket_folder() -> None:
    url = from_env({"DB_HOST": "/var/run/postgresql", "DB_PORT": "5433"}).database_url

    assert url == "postgresql://postgres@/serverlord?host=%2Fvar%2Frun%2Fpostgresql&port=5433"


def test_db_host_bracketed_ipv6_kept() -> None:
    url = from_env({"DB_HOST": "[fd00::5]"}).database_url

    assert url == "postgresql://postgres@[fd00::5]:5432/serverlord"


@pytest.mark.parametrize("host", ["db host", "db/x", "app@db", "db?x", "[::1", "[db]x"])
def test_db_host_invalid_named(host: str) -> None:
    message = rejection({"DB_HOST": host})

    assert message.startswith("DB_HOST must be a host name, an IP address or")
    assert "/var/run/postgresql" in message


def test_db_port_invalid_named() -> None:
    message = rejection({"DB_HOST": "db", "DB_PORT": "0"})

    assert message.startswith("DB_PORT ")
    assert "from 1 to 65535" in message


@pytest.mark.parametrize("name", ["DB_PORT", "DB_USER", "DB_PASS", "DB_NAME"])
def test_db_part_without_host_rejected(name: str) -> None:
    message = rejection({name: "5432"})

    assert message.startswith(f"{name} is set but DB_HOST is missing")
    assert "set DB_HOST" in message


def test_database_url_wins_over_parts() -> None:
    env = {"DATABASE_URL": URL, "DB_HOST": "other.example.com", "DB_NAME": "other"}

    assert from_env(env).database_url == URL


# -- shard databases --------------------------------------------------------------------


def test_shard_urls_by_number() -> None:
    env = {
        "SHARD_COUNT": "3",
        "SHARD_0_DATABASE_URL": "postgresql://a.example.com/s0",
        "SHARD_2_DATABASE_URL": " postgresql://b.example.com/s2 ",
    }

    assert from_env(env).shard_dsns == {
        0: "postgresql://a.example.com/s0",
        2: "postgresql://b.example.com/s2",
    }


def test_shard_url_blank_ignored() -> None:
    assert from_env({"SHARD_1_DATABASE_URL": "  "}).shard_dsns == {}


def test_shard_url_leading_zero_accepted() -> None:
    env = {"SHARD_01_DATABASE_URL": "postgresql://a.example.com/s1"}

    assert from_env(env).shard_dsns == {1: "postgresql://a.example.com/s1"}


@pytest.mark.parametrize("number", ["4", "99", "12345678901234567890"])
def test_shard_url_number_out_of_range(number: str) -> None:
    name = f"SHARD_{number}_DATABASE_URL"
    message = rejection({name: URL})

    assert message.startswith(f"{name} names shard {int(number)}")
    assert "SHARD_COUNT=4 makes shards 0..3" in message
    assert "raise SHARD_COUNT" in message


def test_shard_url_range_follows_shard_count() -> None:
    env = {"SHARD_COUNT": "8", "SHARD_7_DATABASE_URL": URL}

    assert from_env(env).shard_dsns == {7: URL}


@pytest.mark.parametrize("name", ["SHARD_ONE_DATABASE_URL", "SHARD_-1_DATABASE_URL"])
def test_shard_url_without_number_rejected(name: str) -> None:
    message = rejection({name: URL})

    assert message.startswith(f"{name} does not name a shard number")
    assert "SHARD_0_DATABASE_URL" in message


def test_shard_url_duplicate_number_rejected() -> None:
    env = {"SHARD_1_DATABASE_URL": URL, "SHARD_01_DATABASE_URL": URL}
    message = rejection(env)

    assert "names shard 1, which another SHARD_<n>_DATABASE_URL already names" in message


@pytest.mark.parametrize(
    "value",
    ["mysql://app:secret@db/s1", "not a url", "postgresql://app:secret@db:port/s1"],
)
def test_shard_url_malformed_named(value: str) -> None:
    message = rejection({"SHARD_1_DATABASE_URL": value})

    assert message.startswith("SHARD_1_DATABASE_URL ")
    assert "postgresql://user:password@host:5432/serverlord" in message
    assert "secret" not in message


# -- trusted proxies --------------------------------------------------------------------


def test_trusted_proxies_parsed() -> None:
    settings = from_env({"TRUSTED_PROXIES": " 10.0.0.0/8, 192.168.1.7 ,,::1,fd00::/8,"})

    assert settings.trusted_proxies == (
        ip_network("10.0.0.0/8"),
        ip_network("192.168.1.7/32"),
        ip_network("::1/128"),
        ip_network("fd00::/8"),
    )


def test_trusted_proxies_host_bits_masked() -> None:
    settings = from_env({"TRUSTED_PROXIES": "10.1.2.3/8"})

    assert settings.trusted_proxies == (ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize("item", ["proxy.example.com", "10.0.0.0/33", "300.1.1.1", "10.0.0.0/x"])
def test_trusted_proxies_invalid_named(item: str) -> None:
    message = rejection({"TRUSTED_PROXIES": f"127.0.0.1,{item}"})

    assert message.startswith("TRUSTED_PROXIES must list IP addresses or networks")
    assert "127.0.0.1,10.0.0.0/8" in message
    assert repr(item) in message


# -- logging, telemetry, metrics and folders --------------------------------------------


@pytest.mark.parametrize("value", ["debug", "INFO", " Warning ", "error"])
def test_log_level_any_case(value: str) -> None:
    assert from_env({"LOG_LEVEL": value}).log_level == value.strip().upper()


@pytest.mark.parametrize("value", ["verbose", "CRITICAL", "10"])
def test_log_level_invalid_named(value: str) -> None:
    message = rejection({"LOG_LEVEL": value})

    assert message.startswith("LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
    assert repr(value.upper()) in message


@pytest.mark.parametrize("value", ["json", "JSON", " text ", ""])
def test_log_format_forms_accepted(value: str) -> None:
    assert from_env({"LOG_FORMAT": value}).log_format == (value.strip().lower() or "text")


@pytest.mark.parametrize("value", ["xml", "jsonl", "1"])
def test_log_format_invalid_named(value: str) -> None:
    message = rejection({"LOG_FORMAT": value})

    assert message.startswith("LOG_FORMAT must be text or json")
    assert repr(value) in message


def test_otlp_endpoint_wins_over_collector() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_COLLECTOR_ENDPOINT": "http://127.0.0.1:4317",
    }

    assert from_env(env).otel_endpoint == "http://127.0.0.1:4318"


def test_collector_endpoint_used_alone() -> None:
    env = {"OTEL_COLLECTOR_ENDPOINT": "http://127.0.0.1:4317"}

    assert from_env(env).otel_endpoint == "http://127.0.0.1:4317"


def test_metrics_token_stripped() -> None:
    assert from_env({"METRICS_TOKEN": " s3cret \n"}).metrics_token == "s3cret"


def test_folders_absolute_kept() -> None:
    settings = from_env({"RUNTIME_DIR": "/run/serverlord", "DATA_DIR": "/srv/pg"})

    assert settings.runtime_dir == Path("/run/serverlord")
    assert settings.data_dir == Path("/srv/pg")


@pytest.mark.parametrize("name", ["RUNTIME_DIR", "DATA_DIR"])
def test_folder_relative_rejected(name: str) -> None:
    message = rejection({name: "run/serverlord"})

    assert message.startswith(f"{name} must be an absolute path")
    assert "'run/serverlord'" in message


def test_runtime_dir_at_socket_limit() -> None:
    # 82 bytes leave room for "/web-metrics/<7-digit pid>.sock" within 107 bytes.
    folder = "/" + "r" * 81

    assert from_env({"RUNTIME_DIR": folder}).runtime_dir == Path(folder)


def test_runtime_dir_too_long_rejected() -> None:
    message = rejection({"RUNTIME_DIR": "/" + "r" * 82})

    assert message.startswith("RUNTIME_DIR must be at most 82 bytes long")
    assert "got 83 bytes" in message


# -- .env file --------------------------------------------------------------------------


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Remove the variables the .env tests write, and restore them afterwards."""
    for name in ("SHARD_COUNT", "LOG_LEVEL", "PORT", "API_TIMEOUT"):
        # setenv records the original value, so the teardown also removes what the
        # .env file adds; delenv alone records nothing for an unset variable.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


def settings_from_environ(names: tuple[str, ...]) -> Settings:
    return from_env({name: os.environ[name] for name in names if name in os.environ})


def test_dotenv_file_loaded(tmp_path: Path, clean_environ: pytest.MonkeyPatch) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SHARD_COUNT=8\n# a comment\nLOG_LEVEL='debug'\nexport PORT=9000\n")

    load_dotenv_file(dotenv)
    settings = settings_from_environ(("SHARD_COUNT", "LOG_LEVEL", "PORT"))

    assert settings.shard_count == 8
    assert settings.log_level == "DEBUG"
    assert settings.port == 9000


def test_environment_wins_over_dotenv(tmp_path: Path, clean_environ: pytest.MonkeyPatch) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SHARD_COUNT=8\nLOG_LEVEL=DEBUG\n")
    clean_environ.setenv("SHARD_COUNT", "2")

    load_dotenv_file(dotenv)
    settings = settings_from_environ(("SHARD_COUNT", "LOG_LEVEL"))

    assert settings.shard_count == 2
    assert settings.log_level == "DEBUG"


def test_dotenv_from_working_folder(tmp_path: Path, clean_environ: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("API_TIMEOUT=2.5\n")
    clean_environ.chdir(tmp_path)

    load_dotenv_file()

    assert settings_from_environ(("API_TIMEOUT",)).api_timeout == 2.5


def test_dotenv_missing_file_ignored(tmp_path: Path, clean_environ: pytest.MonkeyPatch) -> None:
    load_dotenv_file(tmp_path / ".env")

    assert "SHARD_COUNT" not in os.environ


def test_dotenv_bad_value_named(tmp_path: Path, clean_environ: pytest.MonkeyPatch) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("SHARD_COUNT=four\n")

    load_dotenv_file(dotenv)
    with pytest.raises(ConfigError) as info:
        settings_from_environ(("SHARD_COUNT",))

    assert str(info.value) == "SHARD_COUNT must be a whole number from 1 to 256, got 'four'"
