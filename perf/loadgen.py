"""A small open-loop HTTP ping generator on asyncio, for benchmarks on 127.0.0.1.

Requests leave at a fixed rate whatever the server's latency (open loop), over a pool of
keep-alive connections, each to `/ping/<id>` with an id picked at random. Bounded by
`duration`; every request gets a timeout.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    port: int,
    ids: list[str],
    rate: float,
    duration: float,
    connections: int = 32,
    request_timeout: float = 10.0,
    seed: int = 7,
) -> LoadResult:
    result = LoadResult()
    rng = random.Random(seed)
    queue: asyncio.Queue[float] = asyncio.Queue()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                scheduled = await queue.get()
                path = f"/ping/{ids[rng.randrange(len(ids))]}"
                try:
                    status = await asyncio.wait_for(_request(reader, writer, path), request_timeout)
                except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
                    result.failed += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    result.ok += 1
                    # Latency counts from the scheduled send time, so queueing in the
                    # generator shows up instead of hiding (no coordinated omission).
                    result.latencies.append(time.perf_counter() - scheduled)
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    started = time.perf_counter()
    interval = 1.0 / rate
    next_send = started
    while next_send < started + duration:
        now = time.perf_counter()
        if now < next_send:
            await asyncio.sleep(next_send - now)
        queue.put_nowait(next_send)
        result.sent += 1
        next_send += interval
    # Let the queued requests finish, bounded by the request timeout.
    drain_deadline = time.perf_counter() + request_timeout
    while not queue.empty() and time.perf_counter() < drain_deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    for task in workers:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return result
