"""The healthchecks-compatible management API, served under /api/v1/, /api/v2/ and /api/v3/.

The three versions share every route. Versions 1 and 2 differ only in deriving a check's
slug from its name.
"""

from __future__ import annotations

import falcon
import falcon.asgi

from serverlord.web.api_v3.checks import (
    ApiContext,
    CheckAction,
    CheckFlips,
    CheckNotifications,
    CheckPings,
    CheckResource,
    ChecksCollection,
    PingBody,
)
from serverlord.web.api_v3.project import Channels, Status
from serverlord.web.badges import BadgeList, CheckBadge, TagBadge

VERSIONS = (1, 2, 3)
CORS_PREFIXES = ("/api/", "/badge/", "/b/")


class Cors:
    """Lets browser code call the API from any origin, as healthchecks does.

    Every API response, errors included, carries `Access-Control-Allow-Origin: *`, and a
    preflight OPTIONS request gets 204 with the methods and headers the API accepts.
    """

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        if not req.path.startswith(CORS_PREFIXES):
            return
        resp.set_header("Access-Control-Allow-Origin", "*")
        if req.method == "OPTIONS" and resource is not None:
            resp.status = 204
            resp.text = None
            resp.set_header("Access-Control-Allow-Headers", "X-Api-Key, Content-Type")
            resp.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
            resp.set_header("Access-Control-Max-Age", "600")


def install(
    app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response], context: ApiContext
) -> None:
    """Add the API's routes, the badge routes and the CORS middleware to `app`."""
    app.add_middleware(Cors())
    for version in VERSIONS:
        api = f"/api/v{version}"
        app.add_route(f"{api}/checks", ChecksCollection(context))
        app.add_route(f"{api}/checks/{{code}}", CheckResource(context))
        app.add_route(f"{api}/checks/{{code}}/pause", CheckAction(context, "pause"))
        app.add_route(f"{api}/checks/{{code}}/resume", CheckAction(context, "resume"))
        app.add_route(f"{api}/checks/{{code}}/pings", CheckPings(context))
        app.add_route(f"{api}/checks/{{code}}/pings/{{n}}/body", PingBody(context))
        app.add_route(f"{api}/checks/{{code}}/flips", CheckFlips(context))
        app.add_route(f"{api}/checks/{{code}}/notifications", CheckNotifications(context))
        app.add_route(f"{api}/channels", Channels(context))
        app.add_route(f"{api}/badges", BadgeList(context))
        app.add_route(f"{api}/status", Status(context))
    tag_badge = TagBadge(context.router, context.catalog)
    app.add_route("/badge/{badge_key}/{signature}", tag_badge)
    app.add_route("/badge/{badge_key}/{signature}/{tag}", tag_badge)
    app.add_route("/b/{states}/{badge_key}/{check}", CheckBadge(context.router, context.catalog))
