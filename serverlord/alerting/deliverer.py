"""The deliverer: one task per shard process that sends the notifications of its outbox.

`run()` loops over rounds. A round is one transaction that stores the results of the
sends finished since the last round and claims due notifications. It claims enough to
fill every free send slot and to queue as many again, so that the slots stay busy while
the next round runs. Each claimed notification is sent in its own task, and its result
waits in memory for the next round. Storing many results per transaction, as the
shard's writer does for pings, costs one WAL flush per round instead of two per
notification. Between rounds the loop sleeps until a send finishes, the next
notification falls due, `wake()` is called or `poll_interval` passes.

Claims carry a lease, and a notification stays claimed until its result is committed.
If the process dies mid-send or before the next round, the lease expires and the next
deliverer (after a restart) claims the row again and sends it with the same event id,
so every notification is sent at least once.

A failed try that may pass (timeout, 5xx, refused connection) is retried after an
exponential backoff with jitter: `backoff * 2**(n-1)` seconds after try n, scaled by a
random factor from 0.5 to 1.0 and capped at `max_backoff`. A Retry-After header can
lengthen the wait up to that cap. After `max_attempts` tries, or at once for a failure
that a retry cannot fix (4xx, forbidden address), the notification is marked failed and
the failure is recorded for its channel in `channel_failures`. The deliverer never
changes a check's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from serverlord.alerting import outbox
from serverlord.alerting.addresses import AddressPolicy
from serverlord.alerting.apprise_transport import AppriseTransport
from serverlord.alerting.channels import Channel, ChannelError, ChannelLoader
from serverlord.alerting.email_transport import EmailTransport
from serverlord.alerting.notifications import Notification
from serverlord.alerting.outbox import AttemptRecord, NotificationUpdate, UpdateStatus
from serverlord.alerting.redaction import install_log_redaction, redact_text
from serverlord.alerting.settings import AlertSettings
from serverlord.alerting.transports import AttemptResult, Outcome, Transport
from serverlord.alerting.webhook import WebhookTransport
from serverlord.clock import Clock

log = logging.getLogger(__name__)

# Time a claim may take beyond its sends' timeouts: loading the channel and waiting for
# the round that stores the result. A lease shorter than a real send would let a second
# deliverer send it too.
_LEASE_MARGIN = 60.0
_MAX_ERROR_LENGTH = 500
_PRUNE_EVERY = 3600.0

# Errors after which the same transaction may well succeed later: the connection, the
# server or a lock conflict. Any other database error may come from one stored value.
_TRANSIENT_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, OSError)

# Claimed notifications waiting for a send slot, per slot. They keep the slots busy
# while a round runs. A waiting notification starts within one send timeout, as the
# running sends end, so the default lease covers one send timeout more.
# NOTE: a queued claim counts an attempt before it is made. If the process dies first,
# a notification claimed for its last attempt is failed as interrupted, never sent.
_QUEUED_PER_SLOT = 1

# A finished send: the claimed notification and the result to store for it.
_Finished = tuple[Notification, NotificationUpdate]


def default_transports(settings: AlertSettings, timeout: float) -> dict[str, Transport]:
    """Return the webhook, email and apprise transports configured from `settings`."""
    policy = AddressPolicy(settings.webhook_allowed_networks)
    return {
        "webhook": WebhookTransport(policy, timeout),
        "email": EmailTransport(settings.smtp, settings.site_root, timeout),
        "apprise": AppriseTransport(policy, settings.site_root, timeout),
    }


class Deliverer:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        clock: Clock,
        channel_loader: ChannelLoader,
        *,
        settings: AlertSettings | None = None,
        concurrency: int = 10,
        timeout: float = 10.0,
        max_attempts: int = 4,
        backoff: float = 2.0,
        max_backoff: float = 300.0,
        lease: float | None = None,
        poll_interval: float = 30.0,
        retention: float = 30 * 86400.0,
        transports: Mapping[str, Transport] | None = None,
        db_semaphore: asyncio.Semaphore | None = None,
        rng: random.Random | None = None,
        shard: int | None = None,
    ) -> None:
        if concurrency < 1 or max_attempts < 1 or timeout <= 0 or backoff <= 0:
            raise ValueError(
                "concurrency and max_attempts must be 1 or more, timeout and backoff positive"
            )
        self._pool = pool
        self._clock = clock
        self._load_channel = channel_loader
        self._concurrency = concurrency
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        if lease is None:
            lease = timeout * (1 + _QUEUED_PER_SLOT) + _LEASE_MARGIN
        self._lease = lease
        self._poll_interval = poll_interval
        self._retention = retention
        self._transports = dict(
            transports or default_transports(settings or AlertSettings(), timeout)
        )
        self._db_semaphore = db_semaphore
        self._rng = rng or random.Random()
        self._name = "deliverer" if shard is None else f"shard {shard} deliverer"

        self._slots = asyncio.Semaphore(concurrency)
        self._capacity = concurrency * (1 + _QUEUED_PER_SLOT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: list[_Finished] = []
        # Claims of notifications whose task was cancelled before it could send.
        self._unsent: list[tuple[uuid.UUID, uuid.UUID]] = []
        self._round_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        # Whether the next round with a free slot claims before `_next_due`. `wake` sets
        # it, and so does a claim that filled every slot, because more may be due.
        self._look = True
        self._last_look = clock.monotonic()
        self._next_due: float | None = None
        self._closing = False
        self._run_task: asyncio.Task[Any] | None = None
        self._last_prune: float | None = None
        self.sent = 0
        self.failed = 0
        self.retried = 0
        self.skipped = 0
        install_log_redaction()

    # -- control -----------------------------------------------------------------------

    def wake(self) -> None:
        """Make `run` look for due notifications now, e.g. after an enqueue committed."""
        self._look = True
        self._wakeup.set()

    async def run(self) -> None:
        """Deliver notifications until `close` is called. Cancelling the task stops it at once."""
        self._run_task = asyncio.current_task()
        log.info("%s started: %d send slots", self._name, self._concurrency)
        delay_after_error = 1.0
        try:
            while not self._closing:
                self._wakeup.clear()
                try:
                    await self._store_and_claim()
                    await self._prune_now_and_then()
                except (psycopg.Error, OSError) as exc:
                    log.warning(
                        "%s cannot reach the shard database, retrying in %.0f s: %s",
                        self._name,
                        delay_after_error,
                        exc,
                    )
                except Exception:
                    # Task boundary: the results of this round are dropped, so their rows
                    # are sent again when their leases expire, and delivery goes on.
                    log.exception(
                        "%s: a delivery round failed, retrying in %.0f s",
                        self._name,
                        delay_after_error,
                    )
                else:
                    delay_after_error = 1.0
                    await self._sleep(self._wait_time())
                    continue
                await self._sleep(delay_after_error)
                delay_after_error = min(delay_after_error * 2, 30.0)
        except asyncio.CancelledError:
            await self._cancel_sends()
            raise
        finally:
            log.info("%s stopped", self._name)

    async def close(self, grace: float = 0.0) -> None:
        """Stop claiming, give running sends up to `grace` seconds, cancel the rest.

        Stores the results of the finished sends. A cancelled send keeps its lease, so
        the next deliverer retries it once the lease expires. Waits for `run` to return,
        then closes the transports.
        """
        self._closing = True
        self._wakeup.set()
        if self._tasks and grace > 0:
            await asyncio.wait(set(self._tasks), timeout=grace)
        await self._cancel_sends()
        run_task = self._run_task
        if run_task is not None and run_task is not asyncio.current_task():
            await asyncio.wait({run_task})
        await self._store_remaining()
        for transport in self._transports.values():
            await transport.close()

    async def deliver_due(self) -> int:
        """Claim and send everything due now, store the results and return the count.

        Tests and tools use it to drive delivery step by step, while `run` does the same
        in a loop. A retry scheduled by this call is due later, so the call always ends.
        """
        total = 0
        while True:
            self._look = True
            claimed = await self._store_and_claim()
            total += claimed
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            elif claimed == 0 and not self._finished:
                return total

    # -- rounds ------------------------------------------------------------------------

    async def _store_and_claim(self) -> int:
        """Store finished results and claim for free slots in one round; return the claim count.

        On a database error the results stay queued for the next round. When the error
        may come from one stored value, each result is stored on its own instead.
        """
        async with self._round_lock:
            finished, self._finished = self._finished, []
            limit = self._claim_limit()
            if not finished and limit == 0:
                return 0
            if limit:
                self._look = False
                self._last_look = self._clock.monotonic()
            token = uuid.uuid4()
            try:
                stored_ids, claimed = await self._commit_round(finished, token, limit)
            except _TRANSIENT_ERRORS:
                self._finished[:0] = finished
                self._look = self._look or limit > 0
                raise
            except psycopg.Error as exc:
                self._look = self._look or limit > 0
                if not finished:
                    raise
                stored_ids, finished = await self._store_one_by_one(finished, exc)
                claimed = []

            self._report(finished, stored_ids)
            self._note_retries(finished, stored_ids)
            self._start_sends(claimed, token)
            if limit and len(claimed) == limit:
                self._look = True  # more may be due
            elif limit:
                # Looked up after the sends started, so that it does not delay them.
                await self._update_next_due()
            return len(claimed)

    def _start_sends(self, claimed: Sequence[Notification], token: uuid.UUID) -> None:
        for notification in claimed:
            task = asyncio.create_task(self._deliver(notification, token))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    async def _commit_round(
        self, finished: Sequence[_Finished], token: uuid.UUID, limit: int
    ) -> tuple[set[uuid.UUID], list[Notification]]:
        updates = [update for _, update in finished]
        now = self._clock.time()
        async with self._connection() as conn:
            return await outbox.store_and_claim(conn, updates, token, now, self._lease, limit)

    async def _update_next_due(self) -> None:
        try:
            async with self._connection() as conn:
                self._next_due = await outbox.next_due(conn)
        except (psycopg.Error, OSError):
            self._look = True  # unknown, so the next round looks anyway
            raise

    def _note_retries(self, finished: Sequence[_Finished], stored_ids: set[uuid.UUID]) -> None:
        """Move `_next_due` up to the earliest retry that this round stored."""
        for _, update in finished:
            if update.status == "pending" and update.notification_id in stored_ids:
                due = self._next_due
                self._next_due = update.at if due is None else min(due, update.at)

    async def _store_one_by_one(
        self, finished: Sequence[_Finished], error: psycopg.Error
    ) -> tuple[set[uuid.UUID], list[_Finished]]:
        """Store each result in its own transaction, dropping those that fail.

        Returns the ids of the rows it changed and the results that were processed. On a
        transient error the rest wait for the next round.
        """
        log.warning(
            "%s could not store %d delivery results together, storing them one by one: %s",
            self._name,
            len(finished),
            error,
        )
        stored_ids: set[uuid.UUID] = set()
        processed: list[_Finished] = []
        for index, (notification, update) in enumerate(finished):
            try:
                async with self._connection() as conn, conn.transaction():
                    stored_ids |= await outbox.store_results(conn, [update])
            except _TRANSIENT_ERRORS:
                self._finished[:0] = finished[index:]
                break
            except psycopg.Error as exc:
                # The row keeps its claim, so it is sent again once the lease expires.
                log.error(
                    "%s: storing the result of notification %s (channel %s) failed, it will"
                    " be sent again after its lease: %s",
                    self._name,
                    notification.id,
                    notification.channel_id,
                    exc,
                )
                continue
            processed.append((notification, update))
        return stored_ids, processed

    async def _store_remaining(self) -> None:
        """Store the results of finished sends and release the claims never sent."""
        count = len(self._finished) + len(self._unsent)
        if not count:
            return
        try:
            await self._store_and_claim()
            async with self._connection() as conn:
                await outbox.release(conn, self._unsent)
            self._unsent = []
        except (psycopg.Error, OSError) as exc:
            log.warning(
                "%s could not store %d delivery results and unsent claims before stopping,"
                " so those notifications are sent again after their leases expire: %s",
                self._name,
                count,
                exc,
            )

    def _claim_limit(self) -> int:
        """Return how many notifications this round claims: 0 unless it should look."""
        free = self._capacity - len(self._tasks)
        if self._closing or free <= 0:
            return 0
        now = self._clock.monotonic()
        due = self._next_due is not None and self._clock.time() >= self._next_due
        if self._look or due or now - self._last_look >= self._poll_interval:
            return free
        return 0

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wakeup.set()

    def _wait_time(self) -> float:
        free = self._capacity - len(self._tasks)
        if self._finished or (free > 0 and self._look):
            return 0.0
        if free <= 0 or self._next_due is None:
            return self._poll_interval  # a finishing send or `wake` sets the wakeup
        return max(0.0, min(self._poll_interval, self._next_due - self._clock.time()))

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)

    async def _cancel_sends(self) -> None:
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _prune_now_and_then(self) -> None:
        now = self._clock.time()
        if self._last_prune is not None and now - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = now
        async with self._connection() as conn:
            deleted = await outbox.prune(conn, now - self._retention)
        if deleted:
            log.info("%s pruned %d finished notifications", self._name, deleted)

    # -- reporting ---------------------------------------------------------------------

    def _report(self, finished: Sequence[_Finished], stored_ids: set[uuid.UUID]) -> None:
        """Count and log the results that a round stored."""
        for notification, update in finished:
            if update.status == "sent":
                self.sent += 1
                log.info(
                    "%s sent %s notification %s for check %s to channel %s (attempt %d)",
                    self._name,
                    notification.kind,
                    notification.id,
                    notification.check_id,
                    notification.channel_id,
                    notification.attempts,
                )
            elif update.status == "skipped":
                self.skipped += 1
            elif update.status == "pending":
                self.retried += 1
                self._log_retry(notification, update)
            else:
                self.failed += 1
                log.error(
                    "%s: %s notification %s for check %s to channel %s failed for good after"
                    " attempt %d: %s",
                    self._name,
                    notification.kind,
                    notification.id,
                    notification.check_id,
                    notification.channel_id,
                    notification.attempts,
                    update.error,
                )
            if update.notification_id not in stored_ids:
                self._log_lost_claim(notification)

    def _log_retry(self, notification: Notification, update: NotificationUpdate) -> None:
        log.warning(
            "%s: %s notification %s for check %s to channel %s failed on attempt %d of %d,"
            " retrying in %.1f s: %s",
            self._name,
            notification.kind,
            notification.id,
            notification.check_id,
            notification.channel_id,
            notification.attempts,
            self._max_attempts,
            max(0.0, update.at - self._clock.time()),
            update.error,
        )

    def _log_lost_claim(self, notification: Notification) -> None:
        log.warning(
            "%s: the claim on notification %s (channel %s) expired before its result was"
            " stored, so another deliverer owns it now",
            self._name,
            notification.id,
            notification.channel_id,
        )

    # -- sending -----------------------------------------------------------------------

    async def _deliver(self, notification: Notification, token: uuid.UUID) -> None:
        """Send one claimed notification and queue its result, logging any error (task boundary)."""
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:
            self._unsent.append((notification.id, token))
            raise
        try:
            update = await self._deliver_claimed(notification, token)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The row keeps its lease and is retried when it expires, so one bad row
            # cannot stop the other deliveries.
            log.exception(
                "%s: delivering notification %s (check %s, channel %s) failed",
                self._name,
                notification.id,
                notification.check_id,
                notification.channel_id,
            )
            return
        finally:
            self._slots.release()
        self._finished.append((notification, update))
        self._wakeup.set()

    async def _deliver_claimed(
        self, notification: Notification, token: uuid.UUID
    ) -> NotificationUpdate:
        """Make one try and return the update that records it."""
        if notification.attempts > self._max_attempts:
            # The previous claim was the last attempt and never reported back: its
            # process died while sending.
            error = "the last attempt was interrupted by a stopped process"
            return self._update(notification, token, "failed", self._clock.time(), error, None)

        started = self._clock.time()
        started_monotonic = self._clock.monotonic()
        channel, result = await self._attempt(notification)
        duration = self._clock.monotonic() - started_monotonic
        result = _scrubbed(result, [] if channel is None else channel.secrets())
        record = AttemptRecord(notification.id, notification.attempts, started, duration, result)
        now = self._clock.time()

        if result.outcome is Outcome.SENT:
            return self._update(notification, token, "sent", now, result.error, record)
        if result.outcome is Outcome.SKIPPED:
            return self._update(notification, token, "skipped", now, result.error, None)
        if result.retryable and notification.attempts < self._max_attempts:
            delay = retry_delay(
                notification.attempts,
                self._backoff,
                self._max_backoff,
                self._rng,
                result.retry_after,
            )
            return self._update(notification, token, "pending", now + delay, result.error, record)
        error = result.error or result.outcome.value
        return self._update(notification, token, "failed", now, error, record)

    @staticmethod
    def _update(
        notification: Notification,
        token: uuid.UUID,
        status: UpdateStatus,
        at: float,
        error: str | None,
        record: AttemptRecord | None,
    ) -> NotificationUpdate:
        return NotificationUpdate(
            notification.id, notification.channel_id, token, status, at, error, record
        )

    async def _attempt(self, notification: Notification) -> tuple[Channel | None, AttemptResult]:
        try:
            channel = await self._load_channel(notification.channel_id)
        except ChannelError as exc:
            return None, AttemptResult(Outcome.REJECTED, error=f"the channel is invalid: {exc}")
        except (psycopg.Error, OSError) as exc:
            return None, AttemptResult(Outcome.FAILED, error=f"loading the channel failed: {exc}")
        if channel is None:
            return None, AttemptResult(Outcome.SKIPPED, error="the channel no longer exists")

        transport = self._transports.get(channel.kind)
        if transport is None:
            return channel, AttemptResult(
                Outcome.REJECTED, error=f"no transport for channel kind {channel.kind!r}"
            )
        try:
            async with asyncio.timeout(self._timeout):
                return channel, await transport.send(channel, notification)
        except TimeoutError:
            return channel, AttemptResult(
                Outcome.TIMEOUT, error=f"no answer within {self._timeout:g} s"
            )

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        semaphore = self._db_semaphore or contextlib.nullcontext()
        async with semaphore, self._pool.connection() as conn:
            yield conn


def retry_delay(
    attempt: int,
    backoff: float,
    max_backoff: float,
    rng: random.Random,
    retry_after: float | None = None,
) -> float:
    """Return the seconds to wait after failed try number `attempt` (1 for the first)."""
    delay = min(max_backoff, backoff * 2.0 ** (attempt - 1))
    # Jitter spreads the retries of many notifications that failed together.
    delay *= rng.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_backoff))
    return delay


def _scrubbed(result: AttemptResult, secrets: list[str]) -> AttemptResult:
    """Return `result` with `secrets` and URL paths removed from its error.

    NUL characters become U+FFFD and lone surrogates "?", because PostgreSQL text cannot
    store them and one such error would fail the whole round that stores it.
    """
    if result.error is None:
        return result
    error = redact_text(result.error, secrets)[:_MAX_ERROR_LENGTH].replace("\x00", "\ufffd")
    error = error.encode("utf-8", "replace").decode("utf-8")
    return AttemptResult(result.outcome, result.status_code, error, result.retry_after)
