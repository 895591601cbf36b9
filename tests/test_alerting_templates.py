"""Message text: webhook placeholders, email parts and apprise titles."""

from __future__ import annotations

import json
import uuid

from serverlord.alerting.messages import (
    apprise_text,
    email_message,
    render_header,
    render_template,
    template_values,
)
from serverlord.alerting.notifications import (
    BODY_EXCERPT_LIMIT,
    Notification,
    build_payload,
    event_id,
)
from serverlord.alerting.policy import NotificationKind

CHECK_ID = uuid.UUID("6f1b7a52-3c1e-4f0e-9a57-1b2f7e0d9c11")
T0 = 1_717_477_200.0  # 2024-06-04T05:00:00Z


def notification(
    kind: NotificationKind = "down", name: str = "nightly backup", **payload: object
) -> Notification:
    fields: dict[str, object] = {
        "check_id": str(CHECK_ID),
        "name": name,
        "status": "down" if kind != "up" else "up",
        "event_time": T0,
        "slug": "nightly-backup",
        "tags": "prod db",
        "reason": "timeout",
        "last_ping": T0 - 86400,
        "body": b"rsync: connection refused\n",
        "exitstatus": 23,
    }
    fields.update(payload)
    return Notification(
        id=uuid.UUID("11111111-2222-4333-8444-555555555555"),
        check_id=CHECK_ID,
        channel_id=uuid.uuid4(),
        kind=kind,
        payload=build_payload(**fields),  # type: ignore[arg-type]
        created=T0 + 5,
        attempts=1,
    )


def test_placeholders_are_replaced() -> None:
    values = template_values(notification())
    rendered = render_template(
        "$CODE $STATUS $EVENT $NOW $NAME $SLUG $TAGS $TAG1 $TAG2 $EXITSTATUS $BODY", values
    )
    assert rendered == (
        f"{CHECK_ID} down down 2024-06-04T05:00:05+00:00 nightly backup nightly-backup"
        " prod db prod db 23 rsync: connection refused\n"
    )


def test_unknown_placeholder_is_kept() -> None:
    values = template_values(notification())
    assert render_template("$NAMEX costs $5 and $TAG9", values) == "$NAMEX costs $5 and $TAG9"


def test_url_values_are_percent_encoded() -> None:
    values = template_values(notification(name="a/b?c=d&e#f @host"))
    rendered = render_template("https://example.com/$NAME?s=$STATUS", values, in_url=True)
    assert rendered == "https://example.com/a%2Fb%3Fc%3Dd%26e%23f%20%40host?s=down"


def test_header_values_lose_line_breaks() -> None:
    values = template_values(notification(name="x\r\nX-Injected: yes"))
    assert render_header("Check $NAME", values) == "Check x X-Injected: yes"


def test_json_placeholder_holds_snapshot() -> None:
    item = notification()
    snapshot = json.loads(template_values(item)["JSON"])
    assert snapshot["event_id"] == str(item.id)
    assert snapshot["kind"] == "down"
    assert snapshot["name"] == "nightly backup"
    assert snapshot["exitstatus"] == 23
    assert snapshot["last_ping"] == "2024-06-03T05:00:00+00:00"


def test_payload_body_is_cut_and_decoded() -> None:
    payload = build_payload(
        check_id=str(CHECK_ID),
        name="x",
        status="down",
        event_time=T0,
        body=b"\xe9\xe9" + b"a" * (BODY_EXCERPT_LIMIT + 10),
    )
    assert payload["body"].startswith("\ufffd\ufffda")
    assert len(payload["body"]) == BODY_EXCERPT_LIMIT
    assert payload["body_truncated"] is True


def test_event_id_is_stable() -> None:
    channel = uuid.uuid4()
    first = event_id(str(CHECK_ID), T0, "down", channel)
    again = event_id(str(CHECK_ID).upper(), T0, "down", channel)
    other = event_id(str(CHECK_ID), T0, "up", channel)
    assert first == again
    assert first != other


def test_email_has_text_and_html_parts() -> None:
    item = notification(name="backup <prod>")
    message = email_message(item, "https://cron.example.com", "alerts@example.com", ["ops@x.io"])

    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None
    assert html_part is not None
    text = text_part.get_content()
    html = html_part.get_content()
    assert message["Subject"] == "DOWN | backup <prod>"
    assert message["To"] == "ops@x.io"
    assert message["Message-ID"] == f"<{item.id}@example.com>"
    assert 'The check "backup <prod>" is DOWN: no ping arrived before the deadline.' in text
    assert "When: 2024-06-04 05:00:00 UTC" in text
    assert "Last ping: 2024-06-03 05:00:00 UTC" in text
    assert "Exit status: 23" in text
    assert "rsync: connection refused" in text
    assert f"https://cron.example.com/checks/{CHECK_ID}/details/" in text
    assert "backup &lt;prod&gt;" in html
    assert "backup <prod>" not in html
    assert f'href="https://cron.example.com/checks/{CHECK_ID}/details/"' in html


def test_subjects_name_each_kind() -> None:
    kinds: list[NotificationKind] = ["down", "up", "late", "reminder", "flapping"]
    titles = [apprise_text(notification(kind), "https://x")[0] for kind in kinds]
    assert titles == [
        "DOWN | nightly backup",
        "UP | nightly backup",
        "LATE | nightly backup",
        "STILL DOWN | nightly backup",
        "FLAPPING | nightly backup",
    ]
