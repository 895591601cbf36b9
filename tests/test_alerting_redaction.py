"""Secrets in channel configs never reach logs or stored errors."""

from __future__ import annotations

import asyncio
import logging

import pytest

from serverlord.alerting.deliverer import Deliverer
from serverlord.alerting.redaction import redact_text, redact_url
from serverlord.alerting.settings import SmtpSettings
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

SECRETS = ["pa55word", "SECRETPATH123", "SECRETQUERY456", "SECRETHEADER789", "APPRISEPW", "APPKEY"]


def test_url_is_cut_to_origin() -> None:
    url = "https://user:pa55word@hooks.example.com:8443/T0/B0/XXXX?token=abc"
    assert redact_url(url) == "https://hooks.example.com:8443/…"


def test_non_http_url_keeps_only_scheme() -> None:
    assert redact_url("slack://TokenA/TokenB/TokenC") == "slack://…"


def test_text_loses_secrets_and_paths() -> None:
    text = "POST /hooks/SECRETPATH123 HTTP/1.1 failed for http://x.io/a with key APPKEY1"
    redacted = redact_text(text, ["APPKEY1"])
    assert redacted == "POST /… HTTP/1.1 failed for http://x.io/… with key ***"


def test_smtp_password_is_not_in_repr() -> None:
    smtp = SmtpSettings("mail", 587, "a@example.com", False, True, "user", "pa55word")
    assert "pa55word" not in repr(smtp)


def test_failed_deliveries_log_no_secrets(shard_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        clock = FakeClock()
        book = ChannelBook()
        async with HttpReceiver("error") as receiver, open_pool(shard_dsn) as pool:
            webhook = book.add(
                "webhook",
                {
                    "down": {
                        "url": f"http://user:pa55word@127.0.0.1:{receiver.port}"
                        "/hooks/SECRETPATH123?token=SECRETQUERY456",
                        "headers": {"Authorization": "Bearer SECRETHEADER789"},
                    },
                    "up": None,
                },
            )
            apprise = book.add(
                "apprise",
                {"urls": [f"json://user:APPRISEPW@127.0.0.1:{receiver.port}/APPKEY/x"]},
            )
            rows = await enqueue_event(pool, [webhook, apprise], clock.time())
            deliverer = Deliverer(pool, clock, book, settings=ALLOW_LOOPBACK, max_attempts=1)

            await deliverer.deliver_due()
            await deliverer.close()

            assert len(receiver.requests) == 2
            for row in rows:
                stored = await fetch_notification(pool, row.id)
                attempts = await fetch_attempts(pool, row.id)
                assert stored["status"] == "failed"
                stored_text = " ".join([stored["last_error"], *(a["error"] for a in attempts)])
                for secret in SECRETS:
                    assert secret not in stored_text

    asyncio.run(scenario())

    assert any(record.name == "serverlord.alerting.webhook" for record in caplog.records)
    assert any(record.name == "apprise" for record in caplog.records)
    for record in caplog.records:
        message = record.getMessage()
        for secret in SECRETS:
            assert secret not in message, f"{record.name} logged a secret: {message}"
