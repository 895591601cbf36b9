"""The Falcon ASGI application that gunicorn's workers serve.

Routes only: each request is parsed and validated here, then sent to the shard process
that owns the check. A web worker keeps no check state and no deadline.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi
import orjson

from serverlord.config import from_env
from serverlord.observability.web import install_web_telemetry
from serverlord.web import api_v3, errors
from serverlord.web.api_v3.checks import ApiContext
from serverlord.web.api_v3.slug_pings import SlugPings
from serverlord.web.auth import Authenticator, Catalog
from serverlord.web.pings import PingResource, PingSettings
from serverlord.web.shards import ShardRouter, ShardUnavailable
from serverlord.web.tasks import Heartbeat, TaskAction, TaskCollection, TaskStatus

# How long the health check waits for each shard process.
HEALTH_TIMEOUT = 2.0

# The HTTP versions that Falcon's ASGI app serves. Falcon 4.4 raises on any other, and
# uvicorn turns that into a 500. uvicorn 0.55 reports a request line without a version as "0.9", and
# "HTTP/2.0" sent in HTTP/1 framing as "2.0".
SUPPORTED_HTTP_VERSIONS = frozenset({"1.0", "1.1", "2", "3"})


class App(falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]):
    """Falcon's ASGI app, which responds 400 to a request in an HTTP version it cannot serve."""

    async def __call__(  # type: ignore[override]
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        version = scope.get("http_version", "1.1")
        if scope["type"] == "http" and version not in SUPPORTED_HTTP_VERSIONS:
            await _reject_http_version(version, send)
            return
        await super().__call__(scope, receive, send)


async def _reject_http_version(version: str, send: Callable[[Any], Awaitable[None]]) -> None:
    body = orjson.dumps({"error": f"HTTP version {version[:10]!r} is not supported; send HTTP/1.1"})
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Health:
    def __init__(self, router: ShardRouter) -> None:
        self.router = router

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        async def probe(shard: int) -> str | None:
            try:
                await asyncio.wait_for(
                    self.router.request_shard(shard, "health", {}), HEALTH_TIMEOUT
                )
            except (ShardUnavailable, TimeoutError) as exc:
                return f"shard {shard}: {exc}"
            return None

        problems = [
            p
            for p in await asyncio.gather(*(probe(s) for s in range(len(self.router.connections))))
            if p
        ]
        resp.status = 503 if problems else 200
        resp.media = {"status": "unavailable" if problems else "ok", "problems": problems}

    on_head = on_get


def create_app(
    router: ShardRouter | None = None,
) -> falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]:
    settings = from_env()
    if router is None:
        topology = Path(
            os.environ.get("SERVERLORD_TOPOLOGY", settings.runtime_dir / "topology.json")
        )
        router = ShardRouter.from_file(topology, settings.api_timeout)

    app = App()
    # A trailing slash means the same on every path, so `/ping/<uuid>/start/` is a start.
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)

    catalog = Catalog(os.environ.get("SERVERLORD_CATALOG_DSN"), settings.auth_cache_ttl)
    install_web_telemetry(app, router, settings, catalog)
    auth = Authenticator(catalog)
    ping_settings = PingSettings(settings.ping_body_limit, settings.trusted_proxies)
    pings = PingResource(router, ping_settings, SlugPings(router, auth, catalog, ping_settings))
    app.add_route("/ping/{code}", pings)
    app.add_route("/ping/{code}/{suffix}", pings)
    app.add_route("/ping/{code}/{suffix}/{action}", pings)
    app.add_route("/api/tasks", TaskCollection(router, auth))
    app.add_route("/api/tasks/{id}/status", TaskStatus(router, auth))
    app.add_route("/api/tasks/{id}/pause", TaskAction(router, "pause", auth))
    app.add_route("/api/tasks/{id}/resume", TaskAction(router, "resume", auth))
    app.add_route("/api/heartbeat/{id}", Heartbeat(router))
    app.add_route("/healthz", Health(router))
    api_v3.install(app, ApiContext(router, auth, catalog, settings.ping_retention))
    return app
