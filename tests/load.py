"""A bounded ping load for fault tests: threads that ping and record every response."""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class PingLoad:
    """Pings `check_ids` round-robin from `threads` threads until stopped or `max_seconds`.

    Each thread keeps one keep-alive connection and reconnects after an error, as a
    crontab's curl with --retry would. Every response is recorded per check.
    """

    port: int
    check_ids: list[str]
    threads: int = 4
    max_seconds: float = 30.0
    max_pings: int = 200_000
    timeout: float = 10.0
    acked: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sent: int = 0

    def start(self) -> None:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)

    def total_acked(self) -> int:
        return sum(self.acked.values())

    def _run(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        conn: http.client.HTTPConnection | None = None
        position = index
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self._sent >= self.max_pings:
                    return
                self._sent += 1
            check_id = self.check_ids[position % len(self.check_ids)]
            position += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                conn.request("POST", f"/ping/{check_id}", body=b"load")
                answer = conn.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.errors[type(exc).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
                continue
            with self._lock:
                self.statuses[answer.status] += 1
                if 200 <= answer.status < 300:
                    self.acked[check_id] += 1
            if answer.status >= 500:
                time.sleep(0.01)
        if conn is not None:
            conn.close()
