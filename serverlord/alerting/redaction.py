"""Keep channel secrets out of logs and stored error messages.

Webhook URLs often carry their credential in the path or query (a Slack hook URL, a
`?token=` parameter), apprise URLs carry API keys, and webhook headers carry bearer
tokens. Log lines and stored errors therefore show a URL only as its origin (scheme, host
and port) and never show headers or passwords. HTTP libraries log full request URLs
(httpx at INFO, apprise and urllib3 at DEBUG), so their loggers get a filter that cuts
every URL in a message down to its origin and drops the path of request lines.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# A URL in free text: scheme, authority, then anything up to white space or a quote.
_URL_IN_TEXT = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://([^\s/?#'\"<>]*)([^\s'\"<>]*)")

# A request line as urllib3 logs it: "POST /hooks/T000/B000/XXXX HTTP/1.1".
_REQUEST_LINE = re.compile(r"\b([A-Z]{3,7}) /\S* (HTTP/[0-9.]+)")

# Schemes whose host part is a host name. Apprise URLs of other schemes often keep a
# token there (slack://TokenA/TokenB/TokenC), so only their scheme is shown.
_HOST_SCHEMES = frozenset({"http", "https", "ws", "wss"})

# Secrets shorter than this are not replaced in free text, because replacing every "ab"
# in a message would garble it without protecting anything.
_MIN_SECRET_LENGTH = 4

LIBRARY_LOGGERS = ("httpx", "apprise", "urllib3.connectionpool")


def redact_url(url: str) -> str:
    """Return the URL's scheme, host and port, without credentials, path or query.

    URLs of schemes other than http(s) and ws(s) keep only their scheme.
    """
    match = _URL_IN_TEXT.match(url.strip())
    if match is None:
        return "<invalid URL>"
    return _origin(match)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace each of `secrets` in `text` with ***, then cut URLs down to their origin.

    The path of an HTTP request line ("POST /path HTTP/1.1") is cut too.
    """
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LENGTH:
            text = text.replace(secret, "***")
    text = _REQUEST_LINE.sub(r"\1 /… \2", text)
    return _URL_IN_TEXT.sub(_origin, text)


def _origin(match: re.Match[str]) -> str:
    scheme, authority, rest = match.group(1), match.group(2), match.group(3)
    if scheme.lower() not in _HOST_SCHEMES:
        return f"{scheme}://…"
    host = authority.rsplit("@", 1)[-1]
    return f"{scheme}://{host}/…" if rest.strip("/") else f"{scheme}://{host}"


class RedactingFilter(logging.Filter):
    """Rewrite a record's message with every URL cut down to its origin (see redact_text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed record is the logging module's to report
        redacted = redact_text(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


_FILTER = RedactingFilter()


def install_log_redaction(names: Iterable[str] = LIBRARY_LOGGERS) -> None:
    """Attach the redacting filter to the loggers of the HTTP and SMTP libraries.

    A logger's filters apply only to records created on that exact logger, so each
    library logger that prints URLs is named here. Calling this again changes nothing.
    """
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
