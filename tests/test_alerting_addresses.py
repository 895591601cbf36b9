"""Address policy: webhooks never reach private addresses unless the operator allows them."""

from __future__ import annotations

import asyncio
import ipaddress
import re

import pytest

from serverlord.alerting.addresses import AddressPolicy, TargetRejected
from serverlord.alerting.deliverer import Deliverer
from serverlord.alerting.settings import AlertSettings
from serverlord.alerting.webhook import WebhookTransport
from serverlord.clock import FakeClock
from tests.receivers import (
    ALLOW_LOOPBACK,
    ChannelBook,
    HttpReceiver,
    enqueue_event,
    fetch_attempts,
    fetch_notification,
    open_pool,
)

FORBIDDEN = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "64:ff9b::7f00:1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_private_address_is_forbidden(address: str) -> None:
    assert not AddressPolicy().is_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_address_is_allowed(address: str) -> None:
    assert AddressPolicy().is_allowed(ipaddress.ip_address(address))


def test_allowed_network_admits_private_address() -> None:
    policy = AddressPolicy((ipaddress.ip_network("10.0.0.0/8"),))
    assert policy.is_allowed(ipaddress.ip_address("10.9.8.7"))
    assert not policy.is_allowed(ipaddress.ip_address("192.168.1.1"))


def test_name_with_any_private_address_is_rejected() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.5"]

    with pytest.raises(TargetRejected, match=re.escape("10.0.0.5")):
        asyncio.run(AddressPolicy().resolve("mixed.example.com", 443, resolver))


def test_loopback_webhook_is_refused_by_default(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver() as receiver, open_pool(shard_dsn) as pool:
            channel = book.add("webhook", {"down": {"url": receiver.url()}, "up": None})
            rows = await enqueue_event(pool, [channel], clock.time())
            deliverer = Deliverer(pool, clock, book, settings=AlertSettings())

            await deliverer.deliver_due()
            await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            attempts = await fetch_attempts(pool, rows[0].id)
            assert stored["status"] == "failed"
            assert "WEBHOOK_ALLOWED_NETWORKS" in stored["last_error"]
            assert [attempt["outcome"] for attempt in attempts] == ["rejected"]
            assert receiver.requests == []

    asyncio.run(scenario())


def test_webhook_connects_to_checked_address(shard_dsn: str) -> None:
    """The request goes to the address that was checked, with the URL's own Host."""
    resolved: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver() as receiver, open_pool(shard_dsn) as pool:
            url = f"http://hooks.example.test:{receiver.port}/hook"
            channel = book.add("webhook", {"down": {"url": url}, "up": None})
            rows = await enqueue_event(pool, [channel], clock.time())
            policy = AddressPolicy(ALLOW_LOOPBACK.webhook_allowed_networks)
            transport = WebhookTransport(policy, timeout=5.0, resolver=resolver)
            deliverer = Deliverer(pool, clock, book, transports={"webhook": transport})

            await deliverer.deliver_due()
            await deliverer.close()

            assert (await fetch_notification(pool, rows[0].id))["status"] == "sent"
            assert resolved == ["hooks.example.test"]
            assert receiver.requests[0].headers["host"] == f"hooks.example.test:{receiver.port}"

    asyncio.run(scenario())
