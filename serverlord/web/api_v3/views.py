"""JSON shapes of the management API, as healthchecks gives them.

The shard processes return epoch seconds and plain values. These functions turn them
into healthchecks' objects: ISO 8601 times in UTC with a `+00:00` offset, whole
seconds for checks and flips, microseconds for pings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from serverlord.web.auth import Access


def iso_seconds(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(int(epoch), UTC).isoformat()


def iso_micro(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


class Urls:
    """Absolute URLs of one request's API version, built from the request's own origin."""

    def __init__(self, origin: str, version: int, badge_key: str | None) -> None:
        self.origin = origin
        self.api = f"{origin}/api/v{version}"
        self.badge_key = badge_key

    def check(self, check_id: str) -> str:
        return f"{self.api}/checks/{check_id}"

    def ping(self, check_id: str) -> str:
        return f"{self.origin}/ping/{check_id}"

    def ping_body(self, check_id: str, n: int) -> str:
        return f"{self.api}/checks/{check_id}/pings/{n}/body"

    def check_badge(self, unique_key: str) -> str | None:
        if self.badge_key is None:
            return None
        return f"{self.origin}/b/3/{self.badge_key}/{unique_key}.svg"


def check_view(check: dict[str, Any], access: Access, urls: Urls) -> dict[str, Any]:
    """Return a check as healthchecks shows it; a read-only key gets no UUID or URLs."""
    view: dict[str, Any] = {
        "name": check["name"],
        "slug": check["slug"],
        "tags": check["tags"],
        "desc": check["desc"],
        "grace": check["grace"],
        "n_pings": check["n_pings"],
        "status": check["status"],
        "started": check["started"],
        "last_ping": iso_seconds(check["last_ping"]),
        "next_ping": iso_seconds(check["next_ping"]),
        "manual_resume": check["manual_resume"],
        "methods": check["methods"],
        "badge_url": urls.check_badge(check["unique_key"]),
    }
    if check["last_duration"] is not None:
        view["last_duration"] = int(check["last_duration"])
    # Server Lord's additions: a bound on runs and the alert policy.
    if check.get("max_runtime") is not None:
        view["max_runtime"] = check["max_runtime"]
    for name in ("alert_after", "recover_after", "reminder", "late_notice"):
        if name in check:
            view[name] = check[name]
    if access.readonly:
        view["unique_key"] = check["unique_key"]
    else:
        check_id = check["id"]
        view.update(
            uuid=check_id,
            ping_url=urls.ping(check_id),
            update_url=urls.check(check_id),
            pause_url=f"{urls.check(check_id)}/pause",
            resume_url=f"{urls.check(check_id)}/resume",
            channels=",".join(check["channels"]),
        )
    if check["kind"] == "simple":
        view["timeout"] = check["timeout"]
    else:
        view["schedule"] = check.get("schedule")
        view["tz"] = check.get("tz")
    return view


def ping_view(ping: dict[str, Any], check_id: str, urls: Urls) -> dict[str, Any]:
    view: dict[str, Any] = {
        "type": ping["type"],
        "date": iso_micro(ping["date"]),
        "n": ping["n"],
        "scheme": ping["scheme"],
        "remote_addr": ping["remote_addr"],
        "method": ping["method"],
        "ua": ping["ua"],
        "rid": ping["rid"],
        "exitstatus": ping["exitstatus"],
        "body_url": urls.ping_body(check_id, ping["n"]) if ping["has_body"] else None,
    }
    if ping["duration"] is not None:
        view["duration"] = ping["duration"]
    return view


def flip_view(flip: list[Any]) -> dict[str, Any]:
    created, new_status = flip
    return {"timestamp": iso_seconds(created), "up": 1 if new_status == "up" else 0}
