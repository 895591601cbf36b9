"""The per-project Prometheus endpoint that healthchecks offers, for users who alert from it.

`GET /projects/<project id>/metrics/<read-only key>`, or `GET /projects/<project id>/metrics`
with the key in `Authorization: Bearer <key>`, returns one series per check of the
project and a few totals, under healthchecks' names, so existing scrape jobs and alert
rules keep working:

    hc_check_up, hc_check_started, hc_check_grace, hc_check_paused   per check
    hc_tag_up                                                        per tag
    hc_checks_total, hc_checks_down_total

Check series carry the labels `name`, `tags` and `unique_key`, never the check's UUID,
which is the secret of its ping URL. Only a read-only key is accepted, as in
healthchecks, so that a Prometheus configuration never contains a key that can
change checks. The project in the path must be the key's project.
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi

from serverlord.accounts.keys import is_key_shaped
from serverlord.observability.exposition import CONTENT_TYPE, Family, render
from serverlord.web.api_v3 import fanout
from serverlord.web.auth import Catalog
from serverlord.web.shards import ShardRouter

CHECK_GAUGES = (
    ("hc_check_up", "Whether the check is currently up (1 for yes, 0 for no)."),
    ("hc_check_started", "Whether the check is currently started (1 for yes, 0 for no)."),
    ("hc_check_grace", "Whether the check is currently in its grace period (1 for yes, 0 for no)."),
    ("hc_check_paused", "Whether the check is currently paused (1 for yes, 0 for no)."),
)


class ProjectMetrics:
    def __init__(self, router: ShardRouter, catalog: Catalog) -> None:
        self.router = router
        self.catalog = catalog

    async def on_get(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        project: str,
        key: str | None = None,
    ) -> None:
        project_id = await self._authorize(req, project, key)
        checks = await fanout.project_checks(self.router, project_id)
        resp.content_type = CONTENT_TYPE
        resp.text = render(project_families(checks))

    async def _authorize(self, req: falcon.asgi.Request, project: str, key: str | None) -> int:
        """Return the project's id, or raise an error that names the wrong part of the request."""
        if key is None:
            scheme, _, credentials = (req.get_header("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise falcon.HTTPUnauthorized(
                    title="Unauthorized",
                    description="missing api key; put the project's read-only API key in the"
                    " URL (/projects/<id>/metrics/<key>) or in 'Authorization: Bearer <key>'",
                    challenges=["Bearer"],
                )
            key = credentials.strip()
        if not is_key_shaped(key):
            raise falcon.HTTPBadRequest(
                title="Bad Request",
                description="invalid api key: a key is 32 characters of A-Z, a-z, 0-9, - and _",
            )
        match = await self.catalog.find_key(key)
        if match is None or match.kind != "ro":
            raise falcon.HTTPForbidden(
                title="Forbidden",
                description="wrong api key; use the project's read-only API key",
            )
        if project != str(match.project_id):
            raise falcon.HTTPNotFound(
                title="Not Found",
                description=f"project {project[:40]!r} not found for this key; use the id of"
                " the key's own project in the URL",
            )
        return match.project_id


def project_families(checks: list[dict[str, Any]]) -> list[Family]:
    """Return healthchecks' metric families for a project's checks, as the API lists them."""
    check_series: dict[str, list[list[Any]]] = {name: [] for name, _ in CHECK_GAUGES}
    all_tags: set[str] = set()
    down_tags: set[str] = set()
    down = 0
    for check in checks:
        labels = {"name": check["name"], "tags": check["tags"], "unique_key": check["unique_key"]}
        status = check["status"]
        check_series["hc_check_up"].append([labels, 0 if status == "down" else 1])
        check_series["hc_check_started"].append([labels, 1 if check["started"] else 0])
        check_series["hc_check_grace"].append([labels, 1 if status == "grace" else 0])
        check_series["hc_check_paused"].append([labels, 1 if status == "paused" else 0])
        tags = set(check["tags"].split())
        all_tags |= tags
        if status == "down":
            down += 1
            down_tags |= tags

    families: list[Family] = [
        {"name": name, "type": "gauge", "help": help_text, "series": check_series[name]}
        for name, help_text in CHECK_GAUGES
    ]
    families.append(
        {
            "name": "hc_tag_up",
            "type": "gauge",
            "help": "Whether all checks with this tag are up (1 for yes, 0 for no).",
            "series": [[{"tag": tag}, 0 if tag in down_tags else 1] for tag in sorted(all_tags)],
        }
    )
    families.append(_total("hc_checks_total", "The total number of checks.", len(checks)))
    families.append(_total("hc_checks_down_total", "The number of checks currently down.", down))
    return families


def _total(name: str, help_text: str, value: int) -> Family:
    return {"name": name, "type": "gauge", "help": help_text, "series": [[{}, value]]}
