"""Delivery to chat and paging services through apprise's async API.

apprise implements each service's API (Slack, Discord, Teams, Telegram, Mattermost, Matrix,
ntfy, Gotify, Pushover, PagerDuty, Opsgenie and about 180 more), so no transport is
written by hand. Services that reach a host named in their URL (json://, ntfy://,
gotify:// ...) have that host checked with the AddressPolicy before each try.
"""

from __future__ import annotations

from typing import Any

from serverlord.alerting import apprise_loader
from serverlord.alerting.addresses import AddressPolicy, Resolver, TargetRejected
from serverlord.alerting.channels import Channel
from serverlord.alerting.messages import apprise_text
from serverlord.alerting.notifications import Notification
from serverlord.alerting.transports import AttemptResult, Outcome, skipped

_NOTIFY_TYPES = {
    "down": "failure",
    "up": "success",
    "late": "warning",
    "reminder": "failure",
    "flapping": "warning",
}


class AppriseTransport:
    def __init__(
        self,
        policy: AddressPolicy,
        site_root: str,
        timeout: float = 10.0,
        resolver: Resolver | None = None,
    ) -> None:
        self._policy = policy
        self._site_root = site_root
        self._timeout = timeout
        self._resolver = resolver
        self._asset = apprise_loader.new_asset()

    async def close(self) -> None:
        return None

    async def send(self, channel: Channel, notification: Notification) -> AttemptResult:
        if not channel.wants(notification.kind):
            return skipped(channel, notification.kind)
        import apprise

        sender = apprise.Apprise(asset=self._asset)
        for index, url in enumerate(channel.config["urls"]):
            service = apprise_loader.instantiate(url, self._asset)
            if service is None:
                return AttemptResult(
                    Outcome.REJECTED, error=f"urls[{index}]: apprise cannot use this URL"
                )
            try:
                await self._check_host(service)
            except TargetRejected as exc:
                return AttemptResult(Outcome.REJECTED, error=f"urls[{index}]: {exc}")
            except OSError as exc:
                return AttemptResult(Outcome.FAILED, error=f"urls[{index}]: {exc}")
            sender.add(service)

        title, body = apprise_text(notification, self._site_root)
        result = await sender.async_notify(
            body=body,
            title=title,
            notify_type=_NOTIFY_TYPES.get(notification.kind, "info"),
            timeout=self._timeout,
        )
        return _describe(result)

    async def _check_host(self, service: Any) -> None:
        # NOTE: apprise resolves the host again when it connects, so a DNS server that
        # answers differently the second time can still reach another address. Webhooks
        # connect to the checked address and have no such gap.
        if apprise_loader.takes_custom_host(service):
            port = service.port or (443 if service.secure else 80)
            await self._policy.resolve(str(service.host), int(port), self._resolver)


def _describe(result: Any) -> AttemptResult:
    import apprise

    if bool(result):
        return AttemptResult(Outcome.SENT)
    failed = [service_result.name for service_result in result if not bool(service_result)]
    names = ", ".join(failed) or "every service"
    # NOTE: a retry sends to every URL of the channel again, so services that accepted
    # the first try get the message twice. The outbox stores no per-URL progress.
    if result.status == apprise.AppriseResultStatus.TIMEOUT:
        return AttemptResult(Outcome.TIMEOUT, error=f"apprise timed out sending to {names}")
    return AttemptResult(Outcome.FAILED, error=f"apprise could not send to {names}")
