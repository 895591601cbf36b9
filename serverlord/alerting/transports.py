"""The transport interface that the deliverer calls, and the result of one try."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from serverlord.alerting.channels import Channel
from serverlord.alerting.notifications import Notification


class Outcome(StrEnum):
    SENT = "sent"
    FAILED = "failed"
    """A failure that may pass: a 5xx or 429 response, a refused or reset connection."""

    TIMEOUT = "timeout"
    REJECTED = "rejected"
    """A failure that a retry cannot fix: a 4xx response, a forbidden address, bad config."""

    SKIPPED = "skipped"
    """Nothing was sent because the channel does not take this kind of notification."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    """Seconds the receiver asked us to wait (HTTP Retry-After), if it did."""

    @property
    def retryable(self) -> bool:
        return self.outcome in (Outcome.FAILED, Outcome.TIMEOUT)


class Transport(Protocol):
    async def send(self, channel: Channel, notification: Notification) -> AttemptResult:
        """Make one delivery try and return its result. A failed send is returned, not raised."""
        ...

    async def close(self) -> None: ...


def skipped(channel: Channel, kind: str) -> AttemptResult:
    return AttemptResult(
        Outcome.SKIPPED, error=f"the {channel.kind} channel does not take {kind} notifications"
    )
