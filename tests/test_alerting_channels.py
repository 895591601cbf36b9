"""Channel configs: validation errors name the field and the fix; the catalog loads them."""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from typing import Any

import pytest

from serverlord.alerting.addresses import AddressPolicy
from serverlord.alerting.channels import (
    CatalogChannelLoader,
    ChannelError,
    create_channel,
    validate_channel,
    validate_channel_name,
)
from serverlord.clock import FakeClock
from tests.receivers import open_pool


def test_webhook_config_is_normalized() -> None:
    config = validate_channel(
        "webhook",
        {
            "down": {"url": "https://hooks.example.com/a", "body": "$NAME", "method": "put"},
            "up": {"url": "https://hooks.example.com/b"},
        },
    )
    assert config["down"] == {
        "method": "PUT",
        "url": "https://hooks.example.com/a",
        "body": "$NAME",
        "headers": {},
    }
    assert config["up"]["method"] == "GET"
    assert config["late"] is None
    assert config["reminder"] is None
    assert config["flapping"] is None


def test_webhook_method_defaults_to_post_with_body() -> None:
    config = validate_channel(
        "webhook", {"down": {"url": "https://example.com/", "body": "x"}, "up": None}
    )
    assert config["down"]["method"] == "POST"


WEBHOOK_ERRORS: list[tuple[Any, str, str]] = [
    ("not an object", "config", "must be an object"),
    ({"down": None, "up": None}, "config", "both switched off"),
    ({"down": {"body": "x"}}, "down.url", "is missing"),
    ({"down": {"url": "ftp://example.com/"}}, "down.url", "http:// or https://"),
    ({"down": {"url": "https:///path"}}, "down.url", "has no host"),
    ({"down": {"url": "https://$SLUG.example.com/"}}, "down.url", "placeholder in its host"),
    ({"down": {"url": "https://example.com/a b"}}, "down.url", "white space"),
    ({"down": {"url": "https://example.com:99999/"}}, "down.url", "not a valid URL"),
    ({"down": {"url": "https://e.com/", "method": "TRACE"}}, "down.method", "must be one of"),
    ({"down": {"url": "https://e.com/", "method": "GET", "body": "x"}}, "down.body", "no body"),
    ({"down": {"url": "https://e.com/", "body": "x" * 10_001}}, "down.body", "at most 10000"),
    ({"down": {"url": "https://e.com/", "headers": {"Host": "x"}}}, "down.headers.Host", "itself"),
    ({"down": {"url": "https://e.com/", "headers": {"X": "a\nb"}}}, "down.headers.X", "line"),
    ({"down": {"url": "https://e.com/", "headers": {"X Y": "a"}}}, "down.headers.X Y", "name"),
    ({"down": {"url": "https://e.com/", "headers": {"X": 1}}}, "down.headers.X", "string"),
    ({"down": {"url": "https://e.com/", "verb": "GET"}}, "down.verb", "not a known field"),
    ({"sideways": {"url": "https://e.com/"}}, "config.sideways", "not a known field"),
]


@pytest.mark.parametrize(("config", "field", "message"), WEBHOOK_ERRORS)
def test_invalid_webhook_names_field(config: Any, field: str, message: str) -> None:
    with pytest.raises(ChannelError, match=message) as caught:
        validate_channel("webhook", config)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_private_webhook_literal_is_rejected() -> None:
    policy = AddressPolicy()
    with pytest.raises(ChannelError, match="WEBHOOK_ALLOWED_NETWORKS") as caught:
        validate_channel("webhook", {"down": {"url": "http://169.254.169.254/latest"}}, policy)
    assert caught.value.field == "down.url"


def test_allowed_network_literal_is_accepted() -> None:
    policy = AddressPolicy((ipaddress.ip_network("10.0.0.0/8"),))
    config = validate_channel("webhook", {"down": {"url": "http://10.1.2.3/hook"}}, policy)
    assert config["down"]["url"] == "http://10.1.2.3/hook"


def test_email_recipients_are_normalized() -> None:
    config = validate_channel("email", {"to": "ops@example.com, dev@example.org"})
    assert config["to"] == ["ops@example.com", "dev@example.org"]
    assert config["events"] == ["down", "up", "late", "reminder", "flapping"]


def test_email_events_are_filtered() -> None:
    config = validate_channel("email", {"to": ["ops@example.com"], "events": ["up", "down"]})
    assert config["events"] == ["down", "up"]


EMAIL_ERRORS: list[tuple[Any, str, str]] = [
    ({"to": []}, "to", "is empty"),
    ({"to": ["ops@example.com", "not-an-address"]}, "to[1]", "not an email address"),
    ({"to": ["a@example.com"] * 21}, "to", "at most 20"),
    ({"to": ["ops@example.com"], "events": ["down", "sideways"]}, "events", "unknown kind"),
    ({"to": ["ops@example.com"], "cc": []}, "config.cc", "not a known field"),
]


@pytest.mark.parametrize(("config", "field", "message"), EMAIL_ERRORS)
def test_invalid_email_names_field(config: Any, field: str, message: str) -> None:
    with pytest.raises(ChannelError, match=message) as caught:
        validate_channel("email", config)
    assert caught.value.field == field


def test_apprise_urls_are_accepted() -> None:
    urls = ["slack://TokenA/TokenB/TokenC", "ntfys://ntfy.example.com/alerts"]
    config = validate_channel("apprise", {"urls": urls})
    assert config["urls"] == urls


def test_unknown_apprise_url_is_rejected() -> None:
    with pytest.raises(ChannelError, match="apprise cannot use this nosuch:// URL") as caught:
        validate_channel("apprise", {"urls": ["slack://TokenA/TokenB/TokenC", "nosuch://s3cret"]})
    assert caught.value.field == "urls[1]"
    assert "s3cret" not in str(caught.value)


def test_private_apprise_host_is_rejected() -> None:
    with pytest.raises(ChannelError, match="WEBHOOK_ALLOWED_NETWORKS") as caught:
        validate_channel("apprise", {"urls": ["json://127.0.0.1:8080/hook"]}, AddressPolicy())
    assert caught.value.field == "urls[0]"


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ChannelError, match="use one of webhook, email, apprise") as caught:
        validate_channel("pigeon", {})
    assert caught.value.field == "kind"


def test_long_name_is_rejected() -> None:
    with pytest.raises(ChannelError, match="at most 100"):
        validate_channel_name("n" * 101)


def test_catalog_loader_reads_channels(catalog_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        async with open_pool(catalog_dsn) as pool:
            async with pool.connection() as conn:
                created = await create_channel(
                    conn, 7, " Ops mail ", "email", {"to": "ops@example.com"}
                )
            loader = CatalogChannelLoader(pool, clock, ttl=30.0)

            loaded = await loader(created.id)
            missing = await loader(uuid.uuid4())

            assert loaded is not None
            assert loaded.id == created.id
            assert loaded.project_id == 7
            assert loaded.name == "Ops mail"
            assert loaded.kind == "email"
            assert loaded.config["to"] == ["ops@example.com"]
            assert missing is None

    asyncio.run(scenario())


def test_catalog_loader_sees_changes_after_ttl(catalog_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        async with open_pool(catalog_dsn) as pool:
            async with pool.connection() as conn:
                created = await create_channel(conn, 7, "ops", "email", {"to": "a@example.com"})
            loader = CatalogChannelLoader(pool, clock, ttl=30.0)
            await loader(created.id)
            async with pool.connection() as conn:
                await conn.execute("DELETE FROM channels WHERE id = %s", (created.id,))

            cached = await loader(created.id)
            clock.advance(30)
            reloaded = await loader(created.id)

            assert cached is not None
            assert reloaded is None

    asyncio.run(scenario())
