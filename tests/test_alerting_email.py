"""Email delivery end to end: outbox row -> Deliverer -> aiosmtpd sink on loopback."""

from __future__ import annotations

import asyncio

from serverlord.alerting.deliverer import Deliverer
from serverlord.alerting.settings import AlertSettings, SmtpSettings
from serverlord.clock import FakeClock
from tests.receivers import (
    ChannelBook,
    SmtpSink,
    enqueue_event,
    fetch_attempts,
    fetch_notification,
    open_pool,
)


def smtp_settings(port: int) -> AlertSettings:
    smtp = SmtpSettings(
        host="127.0.0.1", port=port, sender="alerts@example.com", use_tls=False, start_tls=False
    )
    return AlertSettings(site_root="https://cron.example.com", smtp=smtp)


def test_down_email_reaches_recipients(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with SmtpSink() as sink, open_pool(shard_dsn) as pool:
            channel = book.add("email", {"to": ["ops@example.com", "dev@example.com"]})
            rows = await enqueue_event(pool, [channel], clock.time())
            deliverer = Deliverer(pool, clock, book, settings=smtp_settings(sink.port))

            await deliverer.deliver_due()
            await deliverer.close()

            assert (await fetch_notification(pool, rows[0].id))["status"] == "sent"
            assert len(sink.messages) == 1
            mail = sink.messages[0]
            assert mail.sender == "alerts@example.com"
            assert mail.recipients == ["ops@example.com", "dev@example.com"]
            assert mail.message["Subject"] == "DOWN | nightly backup"
            assert mail.message["Message-ID"] == f"<{rows[0].id}@example.com>"
            text_part = mail.message.get_body(("plain",))
            html_part = mail.message.get_body(("html",))
            assert text_part is not None
            assert html_part is not None
            assert "rsync: connection refused" in text_part.get_content()
            assert "https://cron.example.com/checks/" in html_part.get_content()

    asyncio.run(scenario())


def test_email_event_filter_skips_kind(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with SmtpSink() as sink, open_pool(shard_dsn) as pool:
            channel = book.add("email", {"to": ["ops@example.com"], "events": ["down"]})
            rows = await enqueue_event(pool, [channel], clock.time(), kind="up")
            deliverer = Deliverer(pool, clock, book, settings=smtp_settings(sink.port))

            await deliverer.deliver_due()
            await deliverer.close()

            assert (await fetch_notification(pool, rows[0].id))["status"] == "skipped"
            assert sink.messages == []

    asyncio.run(scenario())


def test_refused_recipient_fails_without_retry(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with SmtpSink(reject=("gone@example.com",)) as sink, open_pool(shard_dsn) as pool:
            channel = book.add("email", {"to": ["gone@example.com"]})
            rows = await enqueue_event(pool, [channel], clock.time())
            deliverer = Deliverer(pool, clock, book, settings=smtp_settings(sink.port))

            await deliverer.deliver_due()
            await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            attempts = await fetch_attempts(pool, rows[0].id)
            assert stored["status"] == "failed"
            assert "refused every recipient" in stored["last_error"]
            assert [(a["outcome"], a["status_code"]) for a in attempts] == [("rejected", 550)]

    asyncio.run(scenario())


def test_missing_smtp_settings_fail_clearly(shard_dsn: str) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with open_pool(shard_dsn) as pool:
            channel = book.add("email", {"to": ["ops@example.com"]})
            rows = await enqueue_event(pool, [channel], clock.time())
            deliverer = Deliverer(pool, clock, book, settings=AlertSettings())

            await deliverer.deliver_due()
            await deliverer.close()

            stored = await fetch_notification(pool, rows[0].id)
            assert stored["status"] == "failed"
            assert "set SMTP_HOST and SMTP_FROM" in stored["last_error"]

    asyncio.run(scenario())
