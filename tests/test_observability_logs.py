"""JSON log lines carry the shard, the check's unique key and the trace ids."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from serverlord.logs import setup_logging
from serverlord.observability.logcontext import current_check, install_log_context
from serverlord.shardproc.api_ops import unique_key


@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Route the root logger's JSON lines into a buffer, and restore the root logger after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    monkeypatch.setenv("LOG_FORMAT", "json")
    setup_logging("INFO", "shard2")
    buffer = io.StringIO()
    for handler in root.handlers:
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_json_lines_carry_context_ids(json_log: io.StringIO) -> None:
    install_log_context(2, json_lines=True)
    check_id = str(uuid.uuid4())
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("test")

    token = current_check.set(check_id)
    try:
        with tracer.start_as_current_span("shard ping") as span:
            logging.getLogger("serverlord.test").warning("commit failed for %s", "a batch")
    finally:
        current_check.reset(token)

    event = json.loads(json_log.getvalue().splitlines()[-1])
    assert event["message"] == "commit failed for a batch"
    assert event["process"] == "shard2"
    assert event["shard"] == 2
    assert event["check"] == unique_key(check_id)
    assert event["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert event["span_id"] == format(span.get_span_context().span_id, "016x")
    assert check_id not in json_log.getvalue()


def test_json_lines_without_context_stay_plain(json_log: io.StringIO) -> None:
    install_log_context(None, json_lines=True)

    logging.getLogger("serverlord.test").warning("no request here")

    event = json.loads(json_log.getvalue().splitlines()[-1])
    assert event["message"] == "no request here"
    assert "shard" not in event
    assert "trace_id" not in event
    assert "check" not in event
