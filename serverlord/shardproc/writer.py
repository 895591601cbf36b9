"""Group commit: everything that arrives while a transaction runs goes into the next one.

One fsync costs milliseconds, so committing each ping alone caps a shard at a few hundred
pings a second. The writer instead takes every queued change at once, writes it in one
transaction and only then resolves each change's future, so a caller that responds after
awaiting its future responds for committed data. Each of the two lanes (pings, and
express flips) runs one transaction at a time, and a check's changes never commit in two
transactions at once, which keeps the database in the order the shard process made its
decisions.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from serverlord.alerting.notifications import BODY_EXCERPT_LIMIT, iso_time
from serverlord.alerting.outbox import cancel_pending, delete_for_checks
from serverlord.shardproc.alerts import AlertEvent
from serverlord.shardproc.checks import Check

log = logging.getLogger(__name__)


class WriterOverloaded(Exception):
    """More changes are queued than the writer accepts; the caller should retry later."""


class WriteFailed(Exception):
    """The transaction holding a change failed; the change is not stored."""


class OwnershipLost(WriteFailed):
    """Another process took over the shard; this one must stop writing."""


class PingRow(NamedTuple):
    """One ping as stored; the field order is the column order of `write_batch`."""

    check_id: str
    n: int
    created: float
    kind: str
    exitstatus: int | None
    rid: str | None
    scheme: str
    method: str
    remote_addr: str
    ua: str
    body: bytes | None
    body_size: int
    duration: float | None


class FlipRow(NamedTuple):
    """One change of status; the field order is the column order of `write_batch`."""

    check_id: str
    created: float
    old_status: str
    new_status: str
    reason: str
    hold_until: float | None = None


@dataclass(slots=True)
class NewCheck:
    check_id: str
    fields: dict[str, Any]


@dataclass(slots=True)
class Batch:
    """The changes of one transaction, in the order they were made."""

    new_checks: list[NewCheck] = field(default_factory=list)
    field_updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    pings: list[PingRow] = field(default_factory=list)
    flips: list[FlipRow] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    alerts: list[AlertEvent] = field(default_factory=list)
    cancel_held: set[str] = field(default_factory=set)
    alerts_inserted: int = 0
    """Notification rows the transaction inserted; the deliverer is woken only for some."""
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    barriers: list[asyncio.Future[None]] = field(default_factory=list)
    """Barrier futures of the express lane, resolved by the lane's next commit."""

    def __len__(self) -> int:
        return len(self.waiters)

    def is_plain(self) -> bool:
        """True when `write_batch` alone stores the batch, with no statement around it."""
        return not (self.new_checks or self.field_updates or self.cancel_held or self.deleted)


CheckLookup = Callable[[str], Check | None]


class Writer:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        semaphore: asyncio.BoundedSemaphore,
        lookup: CheckLookup,
        on_failure: Callable[[set[str]], None],
        owner_token: str,
        max_pending: int = 20_000,
        linger: float = 0.0,
        linger_batch: int = 64,
    ) -> None:
        self._pool = pool
        self._semaphore = semaphore
        self._lookup = lookup
        self._on_failure = on_failure
        self._max_pending = max_pending
        self._owner_token = owner_token
        self.ownership_lost = asyncio.Event()
        # Called after a commit that inserted notifications, to wake the deliverer.
        self.on_alerts_committed: Callable[[], None] | None = None
        # Called after every transaction with the batch, its start (time.perf_counter())
        # and the error that failed it or None; the observability layer records it.
        self.on_commit: Callable[[Batch, float, BaseException | None], None] | None = None
        # Under load, a batch may wait up to `linger` seconds for more changes, until it
        # contains `linger_batch` of them. Each transaction costs the shard process and the
        # database about as much CPU as several pings do, so fewer, larger transactions
        # leave more of the machine for pings. A batch never lingers after a batch of one
        # (a quiet shard) or when it contains a flip, whose alert must not wait.
        self._linger = linger
        self._linger_batch = linger_batch
        self._last_size = 0
        self._urgent = asyncio.Event()
        self._batch = Batch()
        self._wakeup = asyncio.Event()
        # Flips take an express lane: their own transactions, committed beside the ping
        # transactions instead of behind them, so detection does not wait for a commit of
        # pings. A check's changes never commit in two transactions at once, because the
        # later snapshot must be the one that lands. So a flip of a check that the ping
        # lane has in flight or queued joins the ping lane instead. A ping batch waits for
        # an express transaction that contains one of its checks.
        self._express = Batch()
        self._express_wakeup = asyncio.Event()
        self._express_idle = asyncio.Event()
        self._express_idle.set()
        self._inflight: set[str] = set()
        self._express_inflight: set[str] = set()
        self._closing = False
        self.transactions = 0
        self.changes = 0

    # -- queueing ----------------------------------------------------------------------

    def _enqueue(self, bounded: bool = True) -> asyncio.Future[None]:
        if self._closing:
            raise WriterOverloaded("the shard process is shutting down")
        if bounded and len(self._batch) >= self._max_pending:
            raise WriterOverloaded(f"{len(self._batch)} changes already wait for a commit")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._batch.waiters
        waiters.append(waiter)
        if len(waiters) == 1:
            self._wakeup.set()
        elif len(waiters) >= self._linger_batch:
            self._urgent.set()
        return waiter

    def check_capacity(self) -> None:
        """Raise WriterOverloaded now, before any state changes, if a change would not fit."""
        if self._closing:
            raise WriterOverloaded("the shard process is shutting down")
        queued = len(self._batch) + len(self._express)
        if queued >= self._max_pending:
            raise WriterOverloaded(f"{queued} changes already wait for a commit")

    def ping(
        self,
        row: PingRow,
        flip: FlipRow | None,
        touched: bool = True,
        alerts: list[AlertEvent] | None = None,
        cancel_held: bool = False,
    ) -> asyncio.Future[None]:
        waiter = self._enqueue()
        self._batch.pings.append(row)
        if flip is not None:
            self._urgent.set()
            self._batch.flips.append(flip)
        if alerts:
            self._batch.alerts += alerts
        if cancel_held:
            self._batch.cancel_held.add(row.check_id)
        if touched:
            self._batch.touched.add(row.check_id)
        return waiter

    def flip(self, flip: FlipRow, alerts: list[AlertEvent] | None = None) -> asyncio.Future[None]:
        """Queue a flip that memory already holds.

        The deadline engine calls this from its loop, where an exception would stop it and
        a 503 reaches no one, so a full queue never rejects a flip. After `close`
        the returned future fails with WriteFailed instead.
        """
        if self._closing:
            return _failed("the shard process is shutting down, the flip is not stored")
        check_id = flip.check_id
        if check_id not in self._inflight and check_id not in self._batch.touched:
            return self._express_flip(flip, alerts)
        waiter = self._enqueue(bounded=False)
        self._urgent.set()
        self._batch.flips.append(flip)
        self._batch.touched.add(flip.check_id)
        if alerts:
            self._batch.alerts += alerts
        return waiter

    def _express_flip(self, flip: FlipRow, alerts: list[AlertEvent] | None) -> asyncio.Future[None]:
        batch = self._express
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        batch.flips.append(flip)
        batch.touched.add(flip.check_id)
        if alerts:
            batch.alerts += alerts
        self._express_wakeup.set()
        return waiter

    def alert(self, alerts: list[AlertEvent]) -> asyncio.Future[None]:
        """Queue the alert events of a timer. Like `flip`, a full queue never rejects them."""
        if self._closing:
            return _failed("the shard process is shutting down, the alerts are not stored")
        waiter = self._enqueue(bounded=False)
        self._urgent.set()
        self._batch.alerts += alerts
        return waiter

    def touch(self, check_id: str) -> asyncio.Future[None]:
        """Queue a write of the check's state as it is in memory at commit time."""
        waiter = self._enqueue()
        self._batch.touched.add(check_id)
        return waiter

    def barrier(self) -> asyncio.Future[None]:
        """Return a future that resolves once everything queued before it is committed."""
        pings = self._enqueue()
        self._urgent.set()
        if self._express_idle.is_set() and not self._express.waiters:
            return pings
        # An empty change in the express lane resolves after the flips queued there and
        # the express transaction in flight.
        express: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._express.barriers.append(express)
        self._express_wakeup.set()
        both: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle(_: asyncio.Future[None]) -> None:
            if both.done() or not (pings.done() and express.done()):
                return
            failed = pings.exception() or express.exception()
            if failed is not None:
                both.set_exception(failed)
            else:
                both.set_result(None)

        pings.add_done_callback(settle)
        express.add_done_callback(settle)
        return both

    def create(self, check_id: str, fields: dict[str, Any]) -> asyncio.Future[None]:
        waiter = self._enqueue()
        self._batch.new_checks.append(NewCheck(check_id, fields))
        return waiter

    def update_fields(self, check_id: str, fields: dict[str, Any]) -> asyncio.Future[None]:
        waiter = self._enqueue()
        self._batch.field_updates.append((check_id, fields))
        self._batch.touched.add(check_id)
        return waiter

    def delete(self, check_id: str) -> asyncio.Future[None]:
        waiter = self._enqueue()
        self._batch.deleted.add(check_id)
        # As a touched check, the deletion waits for an express flip of the check in
        # flight and takes over one still queued, so no flip lands after the delete. A
        # failed delete also marks the check stale, which reloads it into memory.
        self._batch.touched.add(check_id)
        return waiter

    # -- committing --------------------------------------------------------------------

    async def run(self) -> None:
        """Commit batches until `close` is called and the queue is empty."""
        express = asyncio.create_task(self._run_express())
        try:
            await self._run_pings()
        finally:
            self._express_wakeup.set()
            await express

    async def _run_pings(self) -> None:
        while True:
            if not self._batch.waiters:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._should_linger():
                await self._linger_wait()
            while not self._batch.touched.isdisjoint(self._express_inflight):
                await self._express_idle.wait()
            if not self._batch.touched.isdisjoint(self._express.touched):
                pending, self._express = self._express, Batch()
                # Barriers stay in the express lane, because they must also wait for the
                # express transaction in flight, which this ping batch does not wait for.
                self._express.barriers, pending.barriers = pending.barriers, []
                if self._express.barriers:
                    self._express_wakeup.set()
                self._merge_into_pings(pending)
            batch, self._batch = self._batch, Batch()
            self._urgent.clear()
            self._last_size = len(batch)
            self._inflight = batch.touched
            try:
                await self._commit(batch)
            finally:
                self._inflight = set()

    async def _run_express(self) -> None:
        while True:
            if not (self._express.waiters or self._express.barriers):
                if self._closing and not self._batch.waiters:
                    return
                self._express_wakeup.clear()
                await self._express_wakeup.wait()
                continue
            batch, self._express = self._express, Batch()
            if not batch.touched.isdisjoint(self._inflight) or not batch.touched.isdisjoint(
                self._batch.touched
            ):
                # The ping lane contains one of these checks: commit the flips there, after it.
                self._merge_into_pings(batch)
                continue
            self._express_inflight = batch.touched
            self._express_idle.clear()
            try:
                await self._commit(batch)
            finally:
                self._express_inflight = set()
                self._express_idle.set()

    def _merge_into_pings(self, batch: Batch) -> None:
        """Move an express batch into the ping lane's queue, keeping the flips in order.

        A timeout flip is stamped with its deadline and a ping's flip with the ping's
        time, so ordering by that stamp (stably, express flips first on a tie) restores
        the order in which the shard process made them.
        """
        target = self._batch
        target.flips = sorted(batch.flips + target.flips, key=_flip_time)
        target.alerts = batch.alerts + target.alerts
        target.touched |= batch.touched
        target.waiters += batch.waiters + batch.barriers
        self._urgent.set()
        self._wakeup.set()

    def _should_linger(self) -> bool:
        batch = self._batch
        return (
            self._linger > 0
            and self._last_size > 1
            and not self._closing
            and not batch.flips
            and len(batch) < self._linger_batch
        )

    async def _linger_wait(self) -> None:
        if self._urgent.is_set():
            return
        timer = asyncio.get_running_loop().call_later(self._linger, self._urgent.set)
        try:
            await self._urgent.wait()
        finally:
            timer.cancel()

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        self._urgent.set()
        self._express_wakeup.set()

    async def _commit(self, batch: Batch) -> None:
        # The snapshot of each touched check is taken here, synchronously, so it includes
        # every change queued into this batch and nothing queued after it.
        states = self._snapshot(batch.touched - batch.deleted)
        started = time.perf_counter()
        try:
            documents = batch_documents(batch.pings, states, batch.flips)
            alerts = alert_documents(batch.alerts)
            async with self._semaphore, self._pool.connection() as conn:
                if batch.is_plain() and len(documents) == 1 and len(alerts) <= 1:
                    await _write_plain(conn, self._owner_token, batch, documents[0], alerts)
                else:
                    async with conn.transaction():
                        await self._check_owner(conn)
                        await _write(conn, self._owner_token, batch, documents, alerts)
        except (psycopg.Error, OSError, OwnershipLost, orjson.JSONEncodeError) as exc:
            log.error("commit of %d changes failed, the callers get an error: %s", len(batch), exc)
            self._report_commit(batch, started, exc)
            self._on_failure(batch.touched | {row.check_id for row in batch.new_checks})
            for waiter in batch.waiters + batch.barriers:
                if not waiter.done():
                    waiter.set_exception(WriteFailed(str(exc)))
            if isinstance(exc, OwnershipLost):
                self.ownership_lost.set()
            return
        self.transactions += 1
        self.changes += len(batch)
        self._report_commit(batch, started, None)
        for waiter in batch.waiters + batch.barriers:
            if not waiter.done():
                waiter.set_result(None)

    def _report_commit(self, batch: Batch, started: float, error: BaseException | None) -> None:
        """Call the commit hooks; an error in one is logged, because the waiters must resolve."""
        try:
            if self.on_commit is not None:
                self.on_commit(batch, started, error)
        except Exception:
            log.exception("the on_commit hook failed after a batch of %d changes", len(batch))
        try:
            if error is None and batch.alerts_inserted and self.on_alerts_committed is not None:
                self.on_alerts_committed()
        except Exception:
            log.exception("the on_alerts_committed hook failed after %d alerts", len(batch.alerts))

    async def _check_owner(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cursor = await conn.execute("SELECT token FROM shard_owner WHERE id = 1 FOR SHARE")
        row = await cursor.fetchone()
        if row is None or str(row[0]) != self._owner_token:
            raise OwnershipLost("another process has taken over this shard")

    def _snapshot(self, check_ids: Iterable[str]) -> list[tuple[Any, ...]]:
        rows = []
        for check_id in check_ids:
            check = self._lookup(check_id)
            if check is None:
                continue
            rows.append(
                (
                    check_id,
                    check.status,
                    check.last_ping,
                    check.last_start,
                    check.last_start_rid,
                    check.last_duration,
                    check.n_pings,
                )
            )
        return rows


def _failed(message: str) -> asyncio.Future[None]:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiter.set_exception(WriteFailed(message))
    return waiter


def _flip_time(flip: FlipRow) -> float:
    return flip.created


# Columns of a state row from `_snapshot`.
STATE_WIDTH = 7


NEW_CHECK_COLUMNS = (
    "project_id",
    "name",
    "slug",
    "tags",
    "description",
    "kind",
    "timeout_s",
    "grace_s",
    "schedule",
    "tz",
    "max_runtime_s",
    "manual_resume",
    "methods",
    "status",
    "created_at",
)


# The batch travels as one JSON document, [pings, states, flips], each a list of rows in
# its named tuple's field order (sql/shard/0009_write_batch_document.sql).
WRITE_BATCH = "SELECT write_batch(%s::uuid, %s::jsonb)"
# SQLSTATE that write_batch raises when the owner token is no longer the stored one.
OWNERSHIP_LOST_STATE = "SL001"


# PostgreSQL (18 here) rejects a jsonb array whose elements take more than 268,435,455
# bytes, and 2,100 pings with 100 kB bodies, base64-encoded, take more. A document
# longer than this many characters is split. A character takes at most 4 bytes in UTF-8,
# so the text of a document takes at most half of PostgreSQL's limit, which leaves room
# for the overhead that jsonb adds to each value.
DOCUMENT_LIMIT = 32 * 1024 * 1024


def batch_documents(
    pings: Sequence[PingRow], states: Sequence[tuple[Any, ...]], flips: Sequence[FlipRow]
) -> list[str]:
    """Return the documents that store these rows, in order, each within DOCUMENT_LIMIT.

    Usually this is one document. Only the last one carries the states and flips. A single
    ping longer than the limit stays one document, which the web tier's frame limit of
    16 MiB makes impossible.
    """
    document = batch_document(pings, states, flips)
    if len(document) <= DOCUMENT_LIMIT or len(pings) < 2:
        return [document]
    half = len(pings) // 2
    return batch_documents(pings[:half], [], []) + batch_documents(pings[half:], states, flips)


def batch_document(
    pings: Sequence[PingRow], states: Sequence[tuple[Any, ...]], flips: Sequence[FlipRow]
) -> str:
    """Return the JSON document that `write_batch` takes for these rows."""
    return orjson.dumps([pings, states, flips], default=_json_value).decode()


def _json_value(value: Any) -> Any:
    # orjson serializes plain tuples itself and hands named tuples and bytes to this.
    if isinstance(value, tuple):
        return tuple(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot store a {type(value).__name__} in a batch")


async def _write_plain(
    conn: psycopg.AsyncConnection[Any],
    owner_token: str,
    batch: Batch,
    document: str,
    alerts: list[str],
) -> None:
    """Store a batch of pings, flips, states and alerts with one statement, which commits.

    `alerts` contains at most one document.
    """
    params: list[Any] = [owner_token, document]
    query = WRITE_BATCH
    if alerts:
        query = WRITE_BATCH_AND_ALERTS
        params += alerts
    await conn.set_autocommit(True)
    try:
        cursor = await conn.execute(query, params)
        if alerts:
            row = await cursor.fetchone()
            batch.alerts_inserted = 0 if row is None else int(row[1])
    except psycopg.Error as exc:
        if exc.sqlstate == OWNERSHIP_LOST_STATE:
            raise OwnershipLost("another process has taken over this shard") from exc
        raise
    finally:
        if not conn.closed:
            await conn.set_autocommit(False)


async def _write(
    conn: psycopg.AsyncConnection[Any],
    owner_token: str,
    batch: Batch,
    documents: list[str],
    alerts: list[str],
) -> None:
    async with conn.cursor() as cursor:
        if batch.new_checks:
            columns = ", ".join(NEW_CHECK_COLUMNS)
            placeholders = ", ".join(["%s"] * (len(NEW_CHECK_COLUMNS) + 1))
            await cursor.executemany(
                f"INSERT INTO checks (id, {columns}) VALUES ({placeholders})",
                [
                    (new.check_id, *(new.fields[name] for name in NEW_CHECK_COLUMNS))
                    for new in batch.new_checks
                ],
            )

        for check_id, fields in batch.field_updates:
            assignments = sql.SQL(", ").join(
                sql.SQL("{} = %s").format(sql.Identifier(name)) for name in fields
            )
            await cursor.execute(
                sql.SQL("UPDATE checks SET {} WHERE id = %s").format(assignments),
                (*fields.values(), check_id),
            )

        for document in documents:
            await cursor.execute(WRITE_BATCH, (owner_token, document))

        for document in alerts:
            await cursor.execute(INSERT_ALERTS, [document])
            row = await cursor.fetchone()
            batch.alerts_inserted += 0 if row is None else int(row[0])

        # After the inserts, so that a held notice queued in this same batch is cancelled.
        if batch.cancel_held:
            for check_id in batch.cancel_held:
                await cancel_pending(cursor, check_id, time.time(), "check reported in time")

        if batch.deleted:
            ids = list(batch.deleted)
            await delete_for_checks(cursor, ids)
            await cursor.execute("DELETE FROM pings WHERE check_id = ANY(%s::uuid[])", (ids,))
            await cursor.execute("DELETE FROM flips WHERE check_id = ANY(%s::uuid[])", (ids,))
            await cursor.execute("DELETE FROM checks WHERE id = ANY(%s::uuid[])", (ids,))


# insert_alerts stores one notification per channel of each alerting check. It takes the
# whole batch in one call, because a burst of thousands of flips must not cost thousands
# of round trips.
INSERT_ALERTS = "SELECT insert_alerts(%s::jsonb)"
WRITE_BATCH_AND_ALERTS = WRITE_BATCH + ", insert_alerts(%s::jsonb)"


def alert_documents(alerts: Sequence[AlertEvent]) -> list[str]:
    """Return the documents that store these alerts, each within DOCUMENT_LIMIT, or none."""
    if not alerts:
        return []
    document = alert_document(alerts)
    if len(document) <= DOCUMENT_LIMIT or len(alerts) < 2:
        return [document]
    half = len(alerts) // 2
    return alert_documents(alerts[:half]) + alert_documents(alerts[half:])


def alert_document(alerts: Sequence[AlertEvent]) -> str:
    """Return the JSON document that `insert_alerts` takes for `alerts`, one row each."""
    rows = []
    for alert in alerts:
        text = None
        if alert.body is not None:
            # PostgreSQL text cannot hold NUL, which UTF-16 bodies are full of.
            text = alert.body.decode("utf-8", "replace").replace("\x00", "\ufffd")
        rows.append(
            (
                alert.check_id,
                repr(alert.event_time),
                alert.kind,
                alert.event_time,
                alert.status,
                alert.reason,
                iso_time(alert.event_time),
                None if alert.last_ping is None else iso_time(alert.last_ping),
                None if text is None else text[:BODY_EXCERPT_LIMIT],
                text is not None and len(text) > BODY_EXCERPT_LIMIT,
                alert.exitstatus,
                alert.due,
            )
        )
    return orjson.dumps(rows).decode()
