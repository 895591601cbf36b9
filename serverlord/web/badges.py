"""Status badges: SVG images and JSON for a project's tags and for single checks.

Badge URLs need no API key, so they can go into a README. A tag badge URL contains the
project's public badge key and a signature of the tag made with the project's private
badge secret: a viewer of one badge cannot forge the URL of another tag's badge.

- `/badge/<badge_key>/<signature>/<tag>.<fmt>`, and `/badge/<badge_key>/<signature>.<fmt>`
  for all checks of the project. A signature ending in `-2` makes a 2-state badge (up,
  down); without it the badge has 3 states (up, late, down).
- `/b/<2|3>/<badge_key>/<unique_key>.<fmt>` for one check.

`fmt` is `svg`, `json` (status and counts) or `shields` (the shields.io endpoint form).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

import falcon
import falcon.asgi

from serverlord.web.api_v3 import fanout
from serverlord.web.api_v3.checks import ApiContext
from serverlord.web.auth import Catalog
from serverlord.web.shards import ShardRouter

FORMATS = ("svg", "json", "shields")
SIGNATURE_LENGTH = 8
ALL_CHECKS_LABEL = "Server Lord"
COLORS = {"up": "#4c1", "late": "#fe7d37", "down": "#e05d44"}
SHIELDS_COLORS = {"up": "success", "late": "important", "down": "critical"}


def tag_signature(secret: bytes, tag: str) -> str:
    digest = hmac.new(secret, tag.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:SIGNATURE_LENGTH]


def badge_urls(origin: str, badge_key: str, secret: bytes, tag: str) -> dict[str, str]:
    """Return the six badge URLs of one tag ("*" for all checks), as healthchecks lists them."""
    signature = tag_signature(secret, tag)
    urls = {}
    for fmt in FORMATS:
        urls[fmt] = _tag_url(origin, badge_key, f"{signature}-2", tag, fmt)
        urls[f"{fmt}3"] = _tag_url(origin, badge_key, signature, tag, fmt)
    return urls


def _tag_url(origin: str, badge_key: str, signature: str, tag: str, fmt: str) -> str:
    if tag == "*":
        return f"{origin}/badge/{badge_key}/{signature}.{fmt}"
    return f"{origin}/badge/{badge_key}/{signature}/{quote(tag, safe='')}.{fmt}"


def summarize(statuses: list[str], three_states: bool) -> dict[str, Any]:
    """Return the badge status and counts of a set of check statuses."""
    down = statuses.count("down")
    grace = statuses.count("grace")
    status = "up"
    if down:
        status = "down"
    elif grace and three_states:
        status = "late"
    return {"status": status, "total": len(statuses), "grace": grace, "down": down}


def render_svg(label: str, status: str) -> str:
    """Draw a flat badge: the label on grey, the status on its colour."""
    label_width = 10 + 7 * len(label)
    status_width = 10 + 7 * len(status)
    width = label_width + status_width
    label_text = escape(label)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20"'
        f' role="img" aria-label="{label_text}: {status}">'
        f"<title>{label_text}: {status}</title>"
        f'<rect width="{label_width}" height="20" fill="#555"/>'
        f'<rect x="{label_width}" width="{status_width}" height="20" fill="{COLORS[status]}"/>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,sans-serif"'
        ' font-size="11">'
        f'<text x="{label_width / 2}" y="14">{label_text}</text>'
        f'<text x="{label_width + status_width / 2}" y="14">{status}</text>'
        "</g></svg>"
    )


def _respond(resp: falcon.asgi.Response, fmt: str, label: str, summary: dict[str, Any]) -> None:
    resp.set_header("Cache-Control", "no-cache, no-store, must-revalidate")
    if fmt == "svg":
        resp.content_type = "image/svg+xml"
        resp.text = render_svg(label, summary["status"])
    elif fmt == "shields":
        resp.media = {
            "schemaVersion": 1,
            "label": label,
            "message": summary["status"],
            "color": SHIELDS_COLORS[summary["status"]],
        }
    else:
        resp.media = summary


def _split_format(name: str) -> tuple[str, str]:
    stem, _, fmt = name.rpartition(".")
    if fmt not in FORMATS or not stem:
        raise falcon.HTTPNotFound(title="Not Found", description="not found")
    return stem, fmt


class TagBadge:
    """`/badge/<badge_key>/<signature>[/<tag>].<fmt>`."""

    def __init__(self, router: ShardRouter, catalog: Catalog) -> None:
        self.router = router
        self.catalog = catalog

    async def on_get(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        badge_key: str,
        signature: str,
        tag: str | None = None,
    ) -> None:
        if tag is None:
            signature, fmt = _split_format(signature)
            tag = "*"
        else:
            tag, fmt = _split_format(tag)
        three_states = not signature.endswith("-2")
        signature = signature.removesuffix("-2")

        project = await self.catalog.badge_project(badge_key=badge_key)
        expected = tag_signature(project.badge_secret, tag) if project else ""
        if project is None or not hmac.compare_digest(expected, signature):
            raise falcon.HTTPNotFound(title="Not Found", description="not found")

        filters = {} if tag == "*" else {"tags": [tag]}
        checks = await fanout.project_checks(self.router, project.project_id, **filters)
        summary = summarize([check["status"] for check in checks], three_states)
        _respond(resp, fmt, ALL_CHECKS_LABEL if tag == "*" else tag, summary)


class CheckBadge:
    """`/b/<2|3>/<badge_key>/<unique_key>.<fmt>`."""

    def __init__(self, router: ShardRouter, catalog: Catalog) -> None:
        self.router = router
        self.catalog = catalog

    async def on_get(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        states: str,
        badge_key: str,
        check: str,
    ) -> None:
        unique_key, fmt = _split_format(check)
        project = await self.catalog.badge_project(badge_key=badge_key)
        if states not in ("2", "3") or project is None:
            raise falcon.HTTPNotFound(title="Not Found", description="not found")
        args = {"project_id": project.project_id, "unique_key": unique_key}
        found = await fanout.find_on_shards(self.router, "find_unique_key", args)
        if not found:
            raise falcon.HTTPNotFound(title="Not Found", description="not found")
        status, view = await self.router.request(
            uuid.UUID(found[0]["id"]),
            "view",
            {"id": found[0]["id"], "project_id": project.project_id},
        )
        if status != 200:
            raise falcon.HTTPNotFound(title="Not Found", description="not found")
        summary = summarize([view["status"]], states == "3")
        _respond(resp, fmt, view["name"] or view["unique_key"][:8], summary)


class BadgeList:
    """`GET /api/v3/badges/`: the badge URLs of every tag of the project, and of "*"."""

    def __init__(self, context: ApiContext) -> None:
        self.context = context

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        context = self.context
        access = await context.auth.require(req)
        project = await context.catalog.badge_project(project_id=access.project_id)
        if project is None:
            raise falcon.HTTPNotFound(title="Not Found", description="not found")
        checks = await fanout.project_checks(context.router, access.project_id)
        tags = {"*"}
        for check in checks:
            tags.update(check["tags"].split())
        key = str(project.badge_key)
        badges = {
            tag: badge_urls(req.prefix, key, project.badge_secret, tag) for tag in sorted(tags)
        }
        resp.media = {"badges": badges}
