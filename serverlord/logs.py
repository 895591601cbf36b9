"""Logging set-up shared by the supervisor, shard processes and web workers."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str, process_name: str) -> None:
    """Send records to stderr, one line each, naming the process they come from.

    `LOG_FORMAT=json` writes one JSON object per line instead, for log shippers.
    """
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(_JsonFormatter(process_name))
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s [{process_name} %(process)d] %(name)s: %(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # psycopg_pool logs every reconnection attempt at INFO; warnings are enough here.
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))


class _JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__()
        self._process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        event = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "process": self._process_name,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(event).decode()
