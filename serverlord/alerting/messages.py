"""The words of a notification: webhook templates, emails and apprise messages.

Webhook templates may use these placeholders, as in healthchecks:

| placeholder   | value                                                             |
|---------------|-------------------------------------------------------------------|
| `$CODE`       | the check's UUID                                                  |
| `$STATUS`     | the check's status after the event: down, up or grace             |
| `$EVENT`      | the notification kind: down, up, late, reminder or flapping       |
| `$NOW`        | when the notification was created, ISO 8601 UTC                  |
| `$NAME`       | the check's name                                                  |
| `$SLUG`       | the check's slug                                                  |
| `$TAGS`       | the check's tags, space-separated; `$TAG1`, `$TAG2` ... each tag  |
| `$JSON`       | the whole snapshot as a JSON object, with `event_id` and `kind`   |
| `$BODY`       | the last ping's body (an excerpt of at most 10,000 characters)    |
| `$EXITSTATUS` | the last ping's exit status, or empty                             |

`$NOW` is the creation time rather than the send time, so that every retry of one event
sends the same bytes under the same Idempotency-Key. In a URL, every value is
percent-encoded, so a check name cannot add path segments, query parameters or change
the host. In a header, line breaks become spaces so a value cannot add a header.
Unknown placeholders are left as they are.
"""

from __future__ import annotations

import html
import re
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

import orjson

from serverlord.alerting.notifications import Notification, iso_time

_PLACEHOLDER = re.compile(r"\$([A-Z][A-Z0-9]*)")

_SUBJECT_LABELS = {
    "down": "DOWN",
    "up": "UP",
    "late": "LATE",
    "reminder": "STILL DOWN",
    "flapping": "FLAPPING",
}

_REASONS = {
    "fail": "the job reported a failure",
    "timeout": "no ping arrived before the deadline",
    "run-timeout": "a run started but did not finish in time",
}


def template_values(notification: Notification) -> dict[str, str]:
    """Return the value of each webhook placeholder for `notification`."""
    payload = notification.payload
    tags = str(payload.get("tags") or "").split()
    exitstatus = payload.get("exitstatus")
    values = {
        "CODE": str(notification.check_id),
        "STATUS": str(payload.get("status") or ""),
        "EVENT": notification.kind,
        "NOW": iso_time(notification.created),
        "NAME": str(payload.get("name") or ""),
        "SLUG": str(payload.get("slug") or ""),
        "TAGS": " ".join(tags),
        "JSON": orjson.dumps(
            {"event_id": str(notification.id), "kind": notification.kind, **payload}
        ).decode(),
        "BODY": str(payload.get("body") or ""),
        "EXITSTATUS": "" if exitstatus is None else str(exitstatus),
    }
    for index, tag in enumerate(tags, start=1):
        values[f"TAG{index}"] = tag
    return values


def render_template(template: str, values: dict[str, str], *, in_url: bool = False) -> str:
    """Replace each known `$PLACEHOLDER` in `template`, percent-encoding values in a URL."""

    def replace(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        if value is None:
            return match.group(0)
        return quote(value, safe="") if in_url else value

    return _PLACEHOLDER.sub(replace, template)


def render_header(template: str, values: dict[str, str]) -> str:
    """Render a header value with line breaks and NUL replaced by spaces."""
    rendered = render_template(template, values)
    return re.sub(r"[\r\n\0]+", " ", rendered)


def check_link(site_root: str, check_id: object) -> str:
    return f"{site_root.rstrip('/')}/checks/{check_id}/details/"


def subject(notification: Notification) -> str:
    name = str(notification.payload.get("name") or notification.check_id)
    label = _SUBJECT_LABELS.get(notification.kind, notification.kind.upper())
    return f"{label} | {_one_line(name)}"


def summary(notification: Notification) -> str:
    """Return one sentence saying what happened to the check."""
    payload = notification.payload
    name = str(payload.get("name") or notification.check_id)
    kind = notification.kind
    if kind == "down":
        reason = _REASONS.get(str(payload.get("reason")), "it reported a failure")
        return f'The check "{name}" is DOWN: {reason}.'
    if kind == "up":
        return f'The check "{name}" is UP again.'
    if kind == "late":
        return f'The check "{name}" is LATE: its ping is overdue and the grace period has started.'
    if kind == "reminder":
        return f'The check "{name}" is still DOWN.'
    return (
        f'The check "{name}" is FLAPPING: it changed status many times in the last 24 hours. '
        "Further notices are held back until its status holds steady."
    )


def _facts(notification: Notification) -> list[tuple[str, str]]:
    payload = notification.payload
    facts = [("When", _readable(payload.get("event_time")))]
    if payload.get("last_ping"):
        facts.append(("Last ping", _readable(payload["last_ping"])))
    if payload.get("exitstatus") is not None:
        facts.append(("Exit status", str(payload["exitstatus"])))
    if payload.get("tags"):
        facts.append(("Tags", str(payload["tags"])))
    return facts


def email_text(notification: Notification, site_root: str) -> str:
    lines = [summary(notification), ""]
    lines += [f"{label}: {value}" for label, value in _facts(notification)]
    body = notification.payload.get("body")
    if body:
        lines += ["", "Last ping body:", _excerpt(notification)]
    lines += ["", f"Details: {check_link(site_root, notification.check_id)}", ""]
    return "\n".join(lines)


def email_html(notification: Notification, site_root: str) -> str:
    rows = "".join(
        f"<tr><th align='left'>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
        for label, value in _facts(notification)
    )
    parts = [
        "<!DOCTYPE html><html><body>",
        f"<p><strong>{html.escape(summary(notification))}</strong></p>",
        f"<table>{rows}</table>",
    ]
    if notification.payload.get("body"):
        parts.append(f"<p>Last ping body:</p><pre>{html.escape(_excerpt(notification))}</pre>")
    link = html.escape(check_link(site_root, notification.check_id), quote=True)
    parts.append(f'<p><a href="{link}">Open the check</a></p></body></html>')
    return "".join(parts)


def email_message(
    notification: Notification, site_root: str, sender: str, recipients: list[str]
) -> EmailMessage:
    """Build the alert email with a plain-text and an HTML part.

    The Message-ID is derived from the event id, so a mail server or client that sees
    the same event twice (a retry after a lost reply) can tell it is a duplicate.
    """
    message = EmailMessage()
    message["Subject"] = subject(notification)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(notification.created, usegmt=True)
    domain = sender.rsplit("@", 1)[-1]
    message["Message-ID"] = f"<{notification.id}@{domain}>"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(email_text(notification, site_root))
    message.add_alternative(email_html(notification, site_root), subtype="html")
    return message


def apprise_text(notification: Notification, site_root: str) -> tuple[str, str]:
    """Return the title and plain-text body of an apprise notification."""
    return subject(notification), email_text(notification, site_root)


# Email and chat messages show this much of the ping body, while webhooks get the
# payload's full excerpt through $BODY.
_MESSAGE_BODY_LIMIT = 2000


def _excerpt(notification: Notification) -> str:
    body = str(notification.payload.get("body") or "")
    if len(body) > _MESSAGE_BODY_LIMIT or notification.payload.get("body_truncated"):
        return body[:_MESSAGE_BODY_LIMIT] + "\n[…]"
    return body


def _readable(iso: Any) -> str:
    if not iso:
        return "unknown"
    return str(iso).replace("T", " ").replace("+00:00", " UTC")


def _one_line(text: str) -> str:
    return " ".join(text.split())
