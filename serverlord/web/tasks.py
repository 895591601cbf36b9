"""The first management endpoints: create a check, send it a heartbeat, read its status.

Creating, pausing and resuming need a read-write API key of the project. A heartbeat and
a status read need none, because the check's UUID is itself the secret. Without a key,
the status shows only the status, its times and the ping count, none of the settings.
"""

from __future__ import annotations

import uuid
from typing import Any

import falcon
import falcon.asgi

from serverlord.web.auth import Authenticator
from serverlord.web.shards import ShardRouter
from serverlord.web.validation import parse_uuid, read_json_object, task_fields

# Fields of a status response to a request without a key.
KEYLESS_STATUS_FIELDS = (
    "id",
    "status",
    "started",
    "last_ping",
    "next_ping",
    "last_duration",
    "n_pings",
)


def _answer(resp: falcon.asgi.Response, status: int, body: Any) -> None:
    resp.status = status
    resp.media = body
    if status == 503:
        resp.set_header("Retry-After", "2")


class TaskCollection:
    def __init__(self, router: ShardRouter, auth: Authenticator) -> None:
        self.router = router
        self.auth = auth

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        body = await read_json_object(req)
        access = await self.auth.require(req, body, write=True)
        body.pop("api_key", None)
        fields = task_fields(body)
        fields["project_id"] = access.project_id
        check_id = uuid.uuid4()
        status, body = await self.router.request(
            check_id, "create", {"id": str(check_id), "fields": fields}
        )
        if status == 201:
            body = _task_view(body, fields, req.prefix)
        _answer(resp, status, body)


class TaskStatus:
    def __init__(self, router: ShardRouter, auth: Authenticator) -> None:
        self.router = router
        self.auth = auth

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, id: str) -> None:
        check_id = parse_uuid(id, "id")
        access = await self.auth.optional(req)
        args: dict[str, Any] = {"id": str(check_id)}
        if access is not None:
            args["project_id"] = access.project_id
        status, body = await self.router.request(check_id, "status", args)
        if status == 404 and access is not None:
            # The key belongs to another project, so respond as to a request without one.
            status, body = await self.router.request(check_id, "status", {"id": str(check_id)})
            access = None
        if status == 200 and access is None:
            body = {name: body[name] for name in KEYLESS_STATUS_FIELDS if name in body}
        _answer(resp, status, body)


class Heartbeat:
    def __init__(self, router: ShardRouter) -> None:
        self.router = router

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, id: str) -> None:
        check_id = parse_uuid(id, "id")
        args = {
            "id": str(check_id),
            "signal": "success",
            "method": req.method,
            "scheme": req.scheme,
            "remote_addr": req.remote_addr or "",
            "ua": req.user_agent or "",
        }
        status, body = await self.router.request(check_id, "ping", args)
        if status == 200:
            body = {"id": str(check_id), "n": body["n"]}
        _answer(resp, status, body)


def _task_view(check: dict[str, Any], fields: dict[str, Any], prefix: str) -> dict[str, Any]:
    view = {
        "id": check["id"],
        "name": fields["name"],
        "ping_url": f"{prefix}/ping/{check['id']}",
        "status": check["status"],
        "grace_period": fields["grace_s"],
        "last_ping": check["last_ping"],
        "next_ping": check["next_ping"],
    }
    if fields["kind"] == "simple":
        view["interval"] = fields["timeout_s"]
    else:
        view["schedule"] = fields["schedule"]
        view["tz"] = fields["tz"]
    if fields["max_runtime_s"] is not None:
        view["max_runtime"] = fields["max_runtime_s"]
    return view


class TaskAction:
    """`POST /api/tasks/{id}/pause` and `/resume`."""

    def __init__(self, router: ShardRouter, op: str, auth: Authenticator) -> None:
        self.router = router
        self.op = op
        self.auth = auth

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, id: str) -> None:
        access = await self.auth.require(req, write=True)
        check_id = parse_uuid(id, "id")
        args = {"id": str(check_id), "project_id": access.project_id}
        status, body = await self.router.request(check_id, self.op, args)
        _answer(resp, status, body)
