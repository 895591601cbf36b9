"""alert_settings_from_env: defaults, accepted forms, the messages of bad values, and the
check that `serverlord serve` runs before any shard starts.

Every unit test passes an explicit mapping, so the real environment cannot change a
result. Each rejected value must raise ConfigError with a message that names the variable
and the form it expects, and the SMTP password must never appear in a message or repr.
"""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest

from serverlord.alerting.settings import (
    DEFAULT_SITE_ROOT,
    AlertSettings,
    SmtpSettings,
    alert_settings_from_env,
    parse_networks,
)
from serverlord.config import ConfigError
from tests.conftest import create_database
from tests.server import Server, server_env

PASSWORD = "s3cret-Pa55word"
SMTP = {"SMTP_HOST": "smtp.example.com", "SMTP_FROM": "alerts@example.com"}


def rejection(env: dict[str, str]) -> str:
    """Return the message of the ConfigError that alert_settings_from_env raises."""
    with pytest.raises(ConfigError) as info:
        alert_settings_from_env(env)
    return str(info.value)


def smtp_of(env: dict[str, str]) -> SmtpSettings:
    smtp = alert_settings_from_env(env).smtp
    assert smtp is not None
    return smtp


# -- defaults ---------------------------------------------------------------------------


def test_defaults_without_variables() -> None:
    settings = alert_settings_from_env({})

    assert settings.site_root == DEFAULT_SITE_ROOT
    assert settings.site_root == "http://localhost:8080"
    assert settings.smtp is None
    assert settings.webhook_allowed_networks == ()
    assert settings == AlertSettings()


def test_blank_values_mean_defaults() -> None:
    names = [
        "SITE_ROOT",
        "SMTP_HOST",
        "SMTP_PORT",
        "SMTP_USER",
        "SMTP_PASSWORD",
        "SMTP_FROM",
        "SMTP_TLS",
        "SMTP_STARTTLS",
        "WEBHOOK_ALLOWED_NETWORKS",
    ]

    settings = alert_settings_from_env({name: "  " for name in names})

    assert settings == AlertSettings()


def test_smtp_defaults_with_host_and_sender() -> None:
    smtp = smtp_of(SMTP)

    assert smtp.host == "smtp.example.com"
    assert smtp.port == 25
    assert smtp.sender == "alerts@example.com"
    assert smtp.use_tls is False
    assert smtp.start_tls is None
    assert smtp.user is None
    assert smtp.password is None


def test_smtp_tls_defaults_to_port_465() -> None:
    smtp = smtp_of({**SMTP, "SMTP_TLS": "true"})

    assert smtp.use_tls is True
    assert smtp.start_tls is None
    assert smtp.port == 465


def test_smtp_starttls_defaults_to_port_587() -> None:
    smtp = smtp_of({**SMTP, "SMTP_STARTTLS": "true"})

    assert smtp.use_tls is False
    assert smtp.start_tls is True
    assert smtp.port == 587


def test_smtp_starttls_false_keeps_port_25() -> None:
    smtp = smtp_of({**SMTP, "SMTP_STARTTLS": "false"})

    assert smtp.start_tls is False
    assert smtp.port == 25


# -- good forms -------------------------------------------------------------------------


def test_site_root_drops_trailing_slash() -> None:
    settings = alert_settings_from_env({"SITE_ROOT": " https://cron.example.com/ "})

    assert settings.site_root == "https://cron.example.com"


@pytest.mark.parametrize(
    "value",
    [
        "http://127.0.0.1:8080",
        "https://cron.example.com/monitor",
        "http://[::1]:8080",
        "HTTPS://cron.example.com",
    ],
)
def test_site_root_accepts_http_urls(value: str) -> None:
    settings = alert_settings_from_env({"SITE_ROOT": value})

    assert settings.site_root == value


def test_smtp_full_settings() -> None:
    env = {
        **SMTP,
        "SMTP_PORT": " 2525 ",
        "SMTP_USER": " mailer ",
        "SMTP_PASSWORD": PASSWORD,
        "SMTP_STARTTLS": "yes",
    }

    smtp = smtp_of(env)

    assert smtp.port == 2525
    assert smtp.user == "mailer"
    assert smtp.password == PASSWORD
    assert smtp.start_tls is True


def test_smtp_user_without_password() -> None:
    smtp = smtp_of({**SMTP, "SMTP_USER": "mailer"})

    assert smtp.user == "mailer"
    assert smtp.password is None


def test_smtp_password_keeps_spaces() -> None:
    smtp = smtp_of({**SMTP, "SMTP_USER": "mailer", "SMTP_PASSWORD": " a b "})

    assert smtp.password == " a b "


@pytest.mark.parametrize("port", ["1", "465", "65535"])
def test_smtp_port_bounds_accepted(port: str) -> None:
    assert smtp_of({**SMTP, "SMTP_PORT": port}).port == int(port)


@pytest.mark.parametrize("host", ["smtp.example.com", "mail_relay", "127.0.0.1", "::1"])
def test_smtp_host_accepts_names_and_addresses(host: str) -> None:
    assert smtp_of({**SMTP, "SMTP_HOST": host}).host == host


def test_smtp_from_accepts_display_name() -> None:
    sender = "Server Lord <alerts@example.com>"

    assert smtp_of({**SMTP, "SMTP_FROM": sender}).sender == sender


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("OFF", False),
    ],
)
def test_boolean_forms_accepted(value: str, expected: bool) -> None:
    assert smtp_of({**SMTP, "SMTP_STARTTLS": value}).start_tls is expected


def test_tls_with_starttls_false_accepted() -> None:
    smtp = smtp_of({**SMTP, "SMTP_TLS": "true", "SMTP_STARTTLS": "false"})

    assert smtp.use_tls is True
    assert smtp.start_tls is None


def test_false_tls_flags_without_host_accepted() -> None:
    settings = alert_settings_from_env({"SMTP_TLS": "false", "SMTP_STARTTLS": "false"})

    assert settings.smtp is None


def test_networks_parsed_in_order() -> None:
    raw = " 10.0.0.0/8 , ,::1/128,192.168.1.7"

    networks = alert_settings_from_env({"WEBHOOK_ALLOWED_NETWORKS": raw}).webhook_allowed_networks

    assert networks == (
        ip_network("10.0.0.0/8"),
        ip_network("::1/128"),
        ip_network("192.168.1.7/32"),
    )


def test_networks_host_bits_allowed() -> None:
    networks = parse_networks("10.1.2.3/8", "WEBHOOK_ALLOWED_NETWORKS")

    assert networks == (ip_network("10.0.0.0/8"),)


# -- bad forms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "cron.example.com",
        "ftp://cron.example.com",
        "https://",
        "https:///path",
        "http://[::1",
        "http://cron.example.com:99999",
        "http://cron.example.com:port",
        "http://cron.example.com:0",
    ],
)
def test_site_root_rejects_non_url(value: str) -> None:
    message = rejection({"SITE_ROOT": value})

    assert message.startswith("SITE_ROOT must be the http(s) URL of the web interface")
    assert "such as https://cron.example.com" in message
    assert repr(value) in message


@pytest.mark.parametrize("value", ["https://cron.example .com", "https://cron.exa\nmple.com"])
def test_site_root_rejects_spaces(value: str) -> None:
    message = rejection({"SITE_ROOT": value})

    assert message.startswith("SITE_ROOT must be")
    assert "without spaces or control characters" in message
    assert repr(value) in message


@pytest.mark.parametrize("value", ["https://cron.example.com/?a=1", "https://cron.example.com/#x"])
def test_site_root_rejects_query_and_fragment(value: str) -> None:
    message = rejection({"SITE_ROOT": value})

    assert message.startswith("SITE_ROOT must be")
    assert "without a query or fragment" in message


def test_site_root_credentials_not_shown() -> None:
    message = rejection({"SITE_ROOT": f"https://admin:{PASSWORD}@cron.example.com"})

    assert message.startswith("SITE_ROOT must be")
    assert "without a user name or password" in message
    assert PASSWORD not in message
    assert "admin" not in message


@pytest.mark.parametrize("port", ["0", "65536", "99999999", "abc", "-25", "25.0", "٢٥", "9" * 5000])
def test_smtp_port_rejects_bad_values(port: str) -> None:
    message = rejection({**SMTP, "SMTP_PORT": port})

    assert message.startswith("SMTP_PORT must be a whole number from 1 to 65535")
    assert "such as 587" in message
    assert repr(port) in message


@pytest.mark.parametrize("name", ["SMTP_TLS", "SMTP_STARTTLS"])
def test_boolean_rejects_bad_value(name: str) -> None:
    message = rejection({**SMTP, name: "Maybe"})

    assert message.startswith(f"{name} must be true or false")
    assert "1/0, yes/no, on/off" in message
    assert "'Maybe'" in message


@pytest.mark.parametrize("name", ["SMTP_TLS", "SMTP_STARTTLS"])
def test_boolean_rejected_without_host(name: str) -> None:
    message = rejection({name: "maybe"})

    assert message.startswith(f"{name} must be true or false")


def test_tls_and_starttls_both_true_rejected() -> None:
    message = rejection({**SMTP, "SMTP_TLS": "true", "SMTP_STARTTLS": "1"})

    assert message.startswith("SMTP_TLS and SMTP_STARTTLS are both true")
    assert "set SMTP_TLS for implicit TLS (port 465)" in message
    assert "or SMTP_STARTTLS for an upgrade on a plain connection, not both" in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SMTP_PORT", "587"),
        ("SMTP_USER", "mailer"),
        ("SMTP_PASSWORD", PASSWORD),
        ("SMTP_FROM", "alerts@example.com"),
        ("SMTP_TLS", "true"),
        ("SMTP_STARTTLS", "true"),
    ],
)
def test_smtp_variable_without_host_rejected(name: str, value: str) -> None:
    message = rejection({name: value})

    assert message.startswith(f"{name} is set but SMTP_HOST is missing")
    assert "set SMTP_HOST to the mail server such as smtp.example.com" in message
    assert f"or unset {name}" in message
    assert PASSWORD not in message


def test_smtp_without_host_lists_every_set_variable() -> None:
    message = rejection({"SMTP_PORT": "587", "SMTP_FROM": "alerts@example.com"})

    assert "or unset SMTP_PORT, SMTP_FROM" in message


def test_smtp_host_without_from_rejected() -> None:
    message = rejection({"SMTP_HOST": "smtp.example.com"})

    assert message.startswith("SMTP_FROM is missing")
    assert "set it to the sender address of alert emails such as alerts@example.com" in message
    assert "because SMTP_HOST is set" in message


@pytest.mark.parametrize("sender", ["alerts", "alerts@example.com\r\nBcc: x@example.com"])
def test_smtp_from_rejects_bad_address(sender: str) -> None:
    message = rejection({**SMTP, "SMTP_FROM": sender})

    assert message.startswith("SMTP_FROM must be the sender address of alert emails")
    assert "such as alerts@example.com" in message
    assert repr(sender) in message


@pytest.mark.parametrize(
    ("host", "fix"),
    [
        ("smtp://smtp.example.com", "not a URL or email address"),
        ("alerts@example.com", "not a URL or email address"),
        ("smtp.example.com:587", "without a port (set the port in SMTP_PORT)"),
        ("[::1]", "with an IPv6 address written without brackets such as ::1"),
        ("[::1]:25", "without a port (set the port in SMTP_PORT)"),
        ("smtp example.com", "without spaces or control characters"),
    ],
)
def test_smtp_host_rejects_bad_values(host: str, fix: str) -> None:
    message = rejection({**SMTP, "SMTP_HOST": host})

    assert message.startswith("SMTP_HOST must be the host name or IP address of the mail")
    assert "such as smtp.example.com" in message
    assert fix in message
    assert repr(host) in message


def test_smtp_password_without_user_rejected() -> None:
    message = rejection({**SMTP, "SMTP_PASSWORD": PASSWORD})

    assert message == "SMTP_PASSWORD is set but SMTP_USER is missing; set SMTP_USER too"


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "example.com", "10.0.0.256", "::1/129"])
def test_networks_reject_invalid_entry(entry: str) -> None:
    message = rejection({"WEBHOOK_ALLOWED_NETWORKS": f"127.0.0.0/8,{entry}"})

    assert message.startswith("WEBHOOK_ALLOWED_NETWORKS must be a comma-separated list")
    assert "such as 127.0.0.0/8,::1/128" in message
    assert f"the invalid entry {entry!r}" in message


# -- the password stays secret ----------------------------------------------------------


def test_password_absent_from_repr() -> None:
    env = {**SMTP, "SMTP_USER": "mailer", "SMTP_PASSWORD": PASSWORD}

    settings = alert_settings_from_env(env)

    assert settings.smtp is not None
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in repr(settings.smtp)
    assert PASSWORD not in str(settings)
    assert "mailer" in repr(settings.smtp)


@pytest.mark.parametrize(
    "bad",
    [
        {"SMTP_PORT": "0"},
        {"SMTP_TLS": "maybe"},
        {"SMTP_TLS": "1", "SMTP_STARTTLS": "1"},
        {"SMTP_FROM": ""},
        {"SMTP_HOST": "smtp.example.com:25"},
        {"SITE_ROOT": "example.com"},
        {"WEBHOOK_ALLOWED_NETWORKS": "nowhere"},
    ],
)
def test_password_absent_from_messages(bad: dict[str, str]) -> None:
    env = {**SMTP, "SMTP_USER": "mailer", "SMTP_PASSWORD": PASSWORD, **bad}

    message = rejection(env)

    assert PASSWORD not in message


# -- `serverlord serve` -----------------------------------------------------------------


@pytest.mark.e2e
def test_server_rejects_bad_smtp_port_at_start(
    pg_admin_dsn: str, runtime_dir: Path, tmp_path: Path
) -> None:
    env = server_env(
        create_database(pg_admin_dsn, "smtpport"),
        runtime_dir,
        shard_count=1,
        SMTP_HOST="127.0.0.1",
        SMTP_FROM="alerts@example.com",
        SMTP_USER="mailer",
        SMTP_PASSWORD=PASSWORD,
        SMTP_PORT="70000",
    )
    server = Server(env, tmp_path / "server.log")
    try:
        with pytest.raises(RuntimeError, match="server exited with 2"):
            server.start()
    finally:
        server.stop()

    log = server.log()
    assert "serverlord: invalid configuration: SMTP_PORT must be a whole number" in log
    assert "got '70000'" in log
    assert PASSWORD not in log
    assert "shard 0" not in log
