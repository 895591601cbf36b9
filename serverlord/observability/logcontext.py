"""Shard, check and trace ids on JSON log lines.

`install_log_context` wraps the JSON formatter that serverlord.logs installs
(LOG_FORMAT=json), so each line also carries the shard number, the trace and span ids of
the active span and the check of the request being served. A check is named by its
unique key, never by its UUID, because the UUID is the secret part of its ping URL. Plain
text logs are left as they are.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

import orjson
from opentelemetry import trace

from serverlord.shardproc.api_ops import unique_key

# The check of the request that the current task serves. Each shard request runs in a
# task of its own, so setting it never leaks into other requests.
current_check: ContextVar[str | None] = ContextVar("serverlord_current_check", default=None)


def check_unique_key(check_id: str) -> str | None:
    """Return the read-only id of a check, or None when `check_id` is no UUID."""
    try:
        return unique_key(check_id)
    except ValueError:
        return None


class ContextJsonFormatter(logging.Formatter):
    """Adds `shard`, `trace_id`, `span_id` and `check` to another formatter's JSON object."""

    def __init__(self, base: logging.Formatter, shard: int | None) -> None:
        super().__init__()
        self._base = base
        self._shard = shard

    def format(self, record: logging.LogRecord) -> str:
        line = self._base.format(record)
        fields = self.context_fields()
        if not fields or not line.endswith("}"):
            return line
        # Splicing the extra keys into the closing brace costs far less than a parse.
        extra = orjson.dumps(fields).decode()
        return f"{line[:-1]},{extra[1:]}" if line != "{}" else extra

    def context_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self._shard is not None:
            fields["shard"] = self._shard
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            fields["trace_id"] = format(context.trace_id, "032x")
            fields["span_id"] = format(context.span_id, "016x")
        check_id = current_check.get()
        if check_id is not None:
            key = check_unique_key(check_id)
            if key is not None:
                fields["check"] = key
        return fields


def install_log_context(shard: int | None, json_lines: bool) -> None:
    """Wrap the root handlers' formatters when logs are JSON lines."""
    if not json_lines:
        return
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if formatter is None or isinstance(formatter, ContextJsonFormatter):
            continue
        handler.setFormatter(ContextJsonFormatter(formatter, shard))
