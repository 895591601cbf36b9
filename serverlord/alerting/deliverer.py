"""The deliverer: one task per shard process that sends the notifications of its outbox.

`run()` loops: claim due notifications (as many as there are free send slots), send each
in its own task, record the result, then sleep until the next notification falls due,
`wake()` is called or `poll_interval` passes. Claims carry a lease. If the process dies
mid-send, the lease expires and the next deliverer (after a restart) claims the row
again and sends it with the same event id.

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
from collections.abc import AsyncIterator, Mapping
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from serverlord.alerting import outbox
from serverlord.alerting.addresses import AddressPolicy
from serverlord.alerting.apprise_transport import AppriseTransport
from serverlord.alerting.channels import Channel, ChannelError, ChannelLoader
from serverlord.alerting.email_transport import EmailTransport
from serverlord.alerting.notifications import Notification
from serverlord.alerting.outbox import AttemptRecord
from serverlord.alerting.redaction import install_log_redaction, redact_text
from serverlord.alerting.settings import AlertSettings
from serverlord.alerting.transports import AttemptResult, Outcome, Transport
from serverlord.alerting.webhook import WebhookTransport
from serverlord.clock import Clock

log = logging.getLogger(__name__)

# Time a claim may take beyond the send timeout: loading the channel and writing the
# result. A lease shorter than a real send would let a second deliverer send it too.
_LEASE_MARGIN = 60.0
_MAX_ERROR_LENGTH = 500
_PRUNE_EVERY = 3600.0


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
        self._lease = lease if lease is not None else timeout + _LEASE_MARGIN
        self._poll_interval = poll_interval
        self._retention = retention
        self._transports = dict(
            transports or default_transports(settings or AlertSettings(), timeout)
        )
        self._db_semaphore = db_semaphore
        self._rng = rng or random.Random()
        self._name = "deliverer" if shard is None else f"shard {shard} deliverer"

        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
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
                    next_due = await self._claim_and_start()
                    await self._prune_now_and_then()
                except (psycopg.Error, OSError) as exc:
                    log.warning(
                        "%s cannot reach the shard database, retrying in %.0f s: %s",
                        self._name,
                        delay_after_error,
                        exc,
                    )
                    await self._sleep(delay_after_error)
                    delay_after_error = min(delay_after_error * 2, 30.0)
                    continue
                delay_after_error = 1.0
                await self._sleep(self._wait_time(next_due))
        except asyncio.CancelledError:
            await self._cancel_sends()
            raise
        finally:
            log.info("%s stopped", self._name)

    async def close(self, grace: float = 0.0) -> None:
        """Stop claiming, give running sends up to `grace` seconds, cancel the rest.

        A cancelled send keeps its lease, so the next deliverer retries it once the lease
        expires. Waits for `run` to return, then closes the transports.
        """
        self._closing = True
        self._wakeup.set()
        if self._tasks and grace > 0:
            await asyncio.wait(set(self._tasks), timeout=grace)
        await self._cancel_sends()
        run_task = self._run_task
        if run_task is not None and run_task is not asyncio.current_task():
            await asyncio.wait({run_task})
        for transport in self._transports.values():
            await transport.close()

    async def deliver_due(self) -> int:
        """Claim and send everything due now, wait for the results and return the count.

        Tests and tools use it to drive delivery step by step, while `run` does the same
        in a loop. A retry scheduled by this call is due later, so the call always ends.
        """
        total = 0
        while True:
            async with self._connection() as conn:
                token = uuid.uuid4()
                claimed = await outbox.claim(
                    conn, token, self._clock.time(), self._lease, self._concurrency
                )
            if not claimed:
                return total
            total += len(claimed)
            await asyncio.gather(*(self._deliver(notification, token) for notification in claimed))

    # -- claiming ----------------------------------------------------------------------

    async def _claim_and_start(self) -> float | None:
        """Start sends for as many due notifications as there are free slots.

        Returns when the next notification falls due, or None when none is pending.
        """
        free = self._concurrency - len(self._tasks)
        async with self._connection() as conn:
            if free > 0:
                token = uuid.uuid4()
                claimed = await outbox.claim(conn, token, self._clock.time(), self._lease, free)
                for notification in claimed:
                    task = asyncio.create_task(self._deliver(notification, token))
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
                if len(claimed) == free:
                    return self._clock.time()  # more may be due: look again at once
            return await outbox.next_due(conn)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wakeup.set()

    def _wait_time(self, next_due: float | None) -> float:
        if len(self._tasks) >= self._concurrency:
            return self._poll_interval  # a finishing send sets the wakeup
        if next_due is None:
            return self._poll_interval
        return max(0.0, min(self._poll_interval, next_due - self._clock.time()))

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

    # -- sending -----------------------------------------------------------------------

    async def _deliver(self, notification: Notification, token: uuid.UUID) -> None:
        """Send one claimed notification and store the result, logging any error (task boundary)."""
        async with self._slots:
            try:
                await self._deliver_claimed(notification, token)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The row keeps its lease and is retried when it expires, so one bad
                # row or a database hiccup cannot stop the other deliveries.
                log.exception(
                    "%s: delivering notification %s (check %s, channel %s) failed",
                    self._name,
                    notification.id,
                    notification.check_id,
                    notification.channel_id,
                )

    async def _deliver_claimed(self, notification: Notification, token: uuid.UUID) -> None:
        if notification.attempts > self._max_attempts:
            # The previous claim was the last attempt and never reported back: its
            # process died while sending.
            result = AttemptResult(
                Outcome.FAILED, error="the last attempt was interrupted by a stopped process"
            )
            await self._give_up(notification, token, result, None)
            return

        started = self._clock.time()
        started_monotonic = self._clock.monotonic()
        channel, result = await self._attempt(notification)
        duration = self._clock.monotonic() - started_monotonic
        result = _scrubbed(result, [] if channel is None else channel.secrets())
        record = AttemptRecord(notification.id, notification.attempts, started, duration, result)

        if result.outcome is Outcome.SENT:
            await self._finish(notification, token, "sent", result, record)
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
        elif result.outcome is Outcome.SKIPPED:
            await self._finish(notification, token, "skipped", result, None)
            self.skipped += 1
        elif result.retryable and notification.attempts < self._max_attempts:
            await self._retry_later(notification, token, result, record)
        else:
            await self._give_up(notification, token, result, record)

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

    async def _retry_later(
        self,
        notification: Notification,
        token: uuid.UUID,
        result: AttemptResult,
        record: AttemptRecord,
    ) -> None:
        delay = retry_delay(
            notification.attempts, self._backoff, self._max_backoff, self._rng, result.retry_after
        )
        due = self._clock.time() + delay
        async with self._connection() as conn:
            claim_held = await outbox.reschedule(
                conn, notification.id, token, due, result.error, record
            )
        self.retried += 1
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
            delay,
            result.error,
        )
        if not claim_held:
            self._log_lost_claim(notification)

    async def _give_up(
        self,
        notification: Notification,
        token: uuid.UUID,
        result: AttemptResult,
        record: AttemptRecord | None,
    ) -> None:
        error = result.error or result.outcome.value
        now = self._clock.time()
        async with self._connection() as conn, conn.transaction():
            claim_held = await outbox.finish(
                conn, notification.id, token, "failed", now, error, record
            )
            if claim_held:
                await outbox.record_channel_failure(
                    conn, notification.channel_id, notification.id, now, error
                )
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
            error,
        )
        if not claim_held:
            self._log_lost_claim(notification)

    async def _finish(
        self,
        notification: Notification,
        token: uuid.UUID,
        status: str,
        result: AttemptResult,
        record: AttemptRecord | None,
    ) -> None:
        async with self._connection() as conn:
            claim_held = await outbox.finish(
                conn, notification.id, token, status, self._clock.time(), result.error, record
            )
        if not claim_held:
            self._log_lost_claim(notification)

    def _log_lost_claim(self, notification: Notification) -> None:
        log.warning(
            "%s: the claim on notification %s (channel %s) expired before its result was"
            " stored, so another deliverer owns it now",
            self._name,
            notification.id,
            notification.channel_id,
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
    """Return `result` with `secrets` and URL paths removed from its error."""
    if result.error is None:
        return result
    error = redact_text(result.error, secrets)[:_MAX_ERROR_LENGTH]
    return AttemptResult(result.outcome, result.status_code, error, result.retry_after)
