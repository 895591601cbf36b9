"""Shard operations of the management API, and the project checks on the existing ones.

Every request that carries `project_id` acts only on checks of that project. A check of
another project gets 404 exactly like a missing one, so a key of one project cannot
even confirm that another project's check exists.

Slug pings find their check through `slug_index`, a dict (project_id, slug) -> check ids
that holds only checks with a slug. The index is a hint: every lookup verifies each id
against the check in memory and drops entries that no longer match. A ping sent by slug
carries `expect_project` and `expect_slug`; when the check no longer matches them, the
response is 421 `stale route`, and the web worker drops its cached route and looks again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from serverlord.shardproc import alerts
from serverlord.shardproc.checks import Check
from serverlord.shardproc.service import NOT_FOUND, OpHandler, Response, ShardService
from serverlord.shardproc.writer import WriteFailed

log = logging.getLogger(__name__)

STALE_ROUTE: Response = (421, {"error": "stale route"})

# Upper bounds on one response, so that a frame stays far below protocol.MAX_FRAME.
MAX_PAGE = 2000
MAX_FLIPS = 10_000
MAX_PINGS = 1000
MAX_NOTIFICATIONS = 100

SlugKey = tuple[int, str]


def unique_key(check_id: str) -> str:
    """Return the read-only id of a check, as healthchecks derives it from the UUID.

    It is the SHA-1 of the first 16 hex digits of the UUID, so it names the check without
    revealing the UUID, which is the secret of its ping URL.
    """
    return hashlib.sha1(uuid.UUID(check_id).hex[:16].encode()).hexdigest()


class ApiOps:
    """Serves the management API's operations for one shard service."""

    def __init__(self, service: ShardService) -> None:
        self.service = service
        self.slug_index: dict[SlugKey, set[str]] = {}
        # Checks whose last change failed to commit: the service reloads them from the
        # database, which may restore an old slug, so they are indexed again later.
        self._suspects: set[str] = set()

    def install(self) -> None:
        """Index the loaded checks' slugs and register the operations."""
        for check in self.service.checks.values():
            self._index(check)
        service = self.service
        service.register("status", self._guard(service.status))
        service.register("get", self._guard(service.get))
        service.register("pause", self._guard(service.pause, viewed=True))
        service.register("resume", self._guard(service.resume, viewed=True))
        service.register("ping", self.ping)
        service.register("create", self.create)
        service.register("update", self.update)
        service.register("delete", self.delete)
        service.register("view", self.view)
        service.register("list", self.list_checks)
        service.register("find_slug", self.find_slug)
        service.register("slug_create", self.slug_create)
        service.register("find_unique_key", self.find_unique_key)
        service.register("pings", self.pings)
        service.register("ping_body", self.ping_body)
        service.register("flips", self.flips)
        service.register("notifications", self.notifications)
        log.info(
            "shard %d serves the API operations; %d slugs indexed",
            service.shard,
            len(self.slug_index),
        )

    # -- project checks ----------------------------------------------------------------

    def _owned(self, args: dict[str, Any]) -> Check | None:
        """Return the check named by `args`, or None when it is missing or not the project's.

        Requests without `project_id` are the keyless ones, whose UUID is the secret.
        """
        check = self.service.checks.get(args["id"])
        if check is None:
            return None
        if "project_id" in args and check.project_id != args["project_id"]:
            return None
        return check

    def _guard(self, handler: OpHandler, viewed: bool = False) -> OpHandler:
        """Wrap `handler` so it refuses another project's checks.

        With `viewed`, a request that sets `view` gets the check as the management API
        shows it instead of the handler's response.
        """

        async def guarded(args: dict[str, Any]) -> Response:
            check = self._owned(args)
            if check is None:
                return NOT_FOUND
            status, body = await handler(args)
            if viewed and status == 200 and args.get("view"):
                body = await self._view_one(check)
            return status, body

        return guarded

    async def ping(self, args: dict[str, Any]) -> Response:
        if "expect_project" in args:
            check = self.service.checks.get(args["id"])
            if (
                check is None
                or check.project_id != args["expect_project"]
                or check.slug != args.get("expect_slug")
            ):
                return STALE_ROUTE
        return await self.service.ping(args)

    async def create(self, args: dict[str, Any]) -> Response:
        """Create a check; its `channels` are written in the same transaction as its row."""
        fields = dict(args["fields"])
        channels = fields.pop("channels", None)
        check_id: str = args["id"]
        if channels and check_id not in self.service.checks:
            # The writer commits everything queued before its next transaction starts,
            # and inserts new rows before it applies field updates. Queuing the channels
            # now, with no await before the create queues its row, puts both into one
            # transaction: the check never exists without its channels.
            self.service.writer.update_fields(check_id, {"channels": _uuids(channels)})
        try:
            return await self.service.create({**args, "fields": fields})
        except WriteFailed:
            self._suspects.add(check_id)
            raise
        finally:
            self._reindex(check_id, None)

    async def update(self, args: dict[str, Any]) -> Response:
        check = self._owned(args)
        if check is None:
            return NOT_FOUND
        if not args["fields"]:
            return (200, await self._view_one(check))
        old_key = self._key_of(check)
        fields = dict(args["fields"])
        if "channels" in fields:
            fields["channels"] = _uuids(fields["channels"])
        try:
            status, body = await self.service.update({**args, "fields": fields})
        except WriteFailed:
            self._suspects.add(check.id)
            raise
        finally:
            self._reindex(check.id, old_key)
        if status == 200:
            body = await self._view_one(self.service.checks.get(check.id))
        return status, body

    async def delete(self, args: dict[str, Any]) -> Response:
        check = self._owned(args)
        if check is None:
            return NOT_FOUND
        old_key = self._key_of(check)
        described = await self._view_one(check)
        try:
            status, body = await self.service.delete(args)
        except WriteFailed:
            self._suspects.add(check.id)
            raise
        finally:
            self._reindex(check.id, old_key)
        return status, described if status == 200 else body

    async def view(self, args: dict[str, Any]) -> Response:
        """Return one check with its stored settings, as the API shows it."""
        check = self._owned(args)
        if check is None:
            return NOT_FOUND
        described = await self._view_one(check)
        return NOT_FOUND if described is None else (200, described)

    # -- listing -----------------------------------------------------------------------

    async def list_checks(self, args: dict[str, Any]) -> Response:
        """Return one page of a project's checks, optionally filtered.

        Args are `project_id`, `tags` (every one must be among the check's tags), `slug`,
        `match` (field values that must all be equal, for `unique` upserts) and `after`
        (the last id of the previous page). The response's `after` is None on the last page.
        """
        project_id: int = args["project_id"]
        limit = min(int(args.get("limit", MAX_PAGE)), MAX_PAGE)
        after = args.get("after") or "00000000-0000-0000-0000-000000000000"
        params: list[Any] = [project_id, after]
        match: dict[str, Any] = args.get("match") or {}
        # Name and slug are filtered by the database: an upsert by name in a project of
        # 100,000 checks must not read every one of them. The loop below checks the rest.
        conditions = []
        for column, value in (("slug", args.get("slug")), ("name", match.get("name"))):
            if value:
                conditions.append(sql.SQL(" AND {} = %s").format(sql.Identifier(column)))
                params.append(value)
        params.append(limit)
        query = sql.SQL(
            "SELECT id, name, tags, description, channels, created_at FROM checks"
            " WHERE project_id = %s AND id > %s{} ORDER BY id LIMIT %s"
        ).format(sql.SQL("").join(conditions))
        rows = await self._fetch(query, params)

        required_tags = set(args.get("tags") or ())
        now = self.service.clock.time()
        checks = []
        for row in rows:
            check = self.service.checks.get(str(row["id"]))
            if check is None or check.project_id != project_id:
                continue
            view = _view(check, row, now)
            if required_tags and not required_tags.issubset(view["tags"].split()):
                continue
            if any(view.get(name) != value for name, value in match.items()):
                continue
            checks.append(view)
        next_after = str(rows[-1]["id"]) if len(rows) == limit else None
        return (200, {"checks": checks, "after": next_after})

    async def find_unique_key(self, args: dict[str, Any]) -> Response:
        rows = await self._fetch(
            sql.SQL("SELECT id FROM checks WHERE project_id = %s"), [args["project_id"]]
        )
        requested: str = args["unique_key"]
        for row in rows:
            check_id = str(row["id"])
            if unique_key(check_id) == requested and check_id in self.service.checks:
                return (200, {"id": check_id})
        return NOT_FOUND

    # -- slugs -------------------------------------------------------------------------

    async def find_slug(self, args: dict[str, Any]) -> Response:
        return (200, {"ids": self._lookup_slug(args["project_id"], args["slug"])})

    async def slug_create(self, args: dict[str, Any]) -> Response:
        """Create a check for a slug ping with `?create=1`, unless the slug exists here.

        The web worker sends every such create of one (project, slug) to the same shard,
        and this check-then-create runs with no await in between, so concurrent first
        pings create one check, not several.
        """
        fields: dict[str, Any] = args["fields"]
        existing = self._lookup_slug(fields["project_id"], fields["slug"])
        if existing:
            return (200, {"ids": existing})
        status, body = await self.create(args)
        if status != 201:
            return status, body
        return (201, {"ids": [args["id"]]})

    def _lookup_slug(self, project_id: int, slug: str) -> list[str]:
        self._reindex_suspects()
        key = (project_id, slug)
        ids = self.slug_index.get(key)
        if not ids:
            return []
        found = []
        for check_id in list(ids):
            check = self.service.checks.get(check_id)
            if check is None or check.project_id != project_id or check.slug != slug:
                ids.discard(check_id)
            else:
                found.append(check_id)
        if not ids:
            del self.slug_index[key]
        return sorted(found)

    def _key_of(self, check: Check) -> SlugKey | None:
        if not check.slug or check.project_id is None:
            return None
        return (check.project_id, check.slug)

    def _index(self, check: Check) -> None:
        key = self._key_of(check)
        if key is not None:
            self.slug_index.setdefault(key, set()).add(check.id)

    def _reindex(self, check_id: str, old_key: SlugKey | None) -> None:
        if old_key is not None:
            ids = self.slug_index.get(old_key)
            if ids is not None:
                ids.discard(check_id)
                if not ids:
                    del self.slug_index[old_key]
        check = self.service.checks.get(check_id)
        if check is not None:
            self._index(check)

    def _reindex_suspects(self) -> None:
        for check_id in list(self._suspects):
            if check_id in self.service.stale:
                continue  # not reloaded yet
            self._suspects.discard(check_id)
            self._reindex(check_id, None)

    # -- pings and flips ---------------------------------------------------------------

    async def pings(self, args: dict[str, Any]) -> Response:
        """Return the check's latest pings, newest first (at most `limit`)."""
        check = self._owned(args)
        if check is None:
            return NOT_FOUND
        limit = max(1, min(int(args.get("limit", 100)), MAX_PINGS))
        rows = await self._fetch(
            sql.SQL(
                "SELECT n, created, kind, exitstatus, rid, scheme, method, remote_addr, ua,"
                " body_size, duration_s, body IS NOT NULL AND length(body) > 0 AS has_body"
                " FROM pings WHERE check_id = %s AND n > %s ORDER BY n DESC LIMIT %s"
            ),
            [check.id, check.n_pings - limit, limit],
        )
        pings = [
            {
                "n": row["n"],
                "date": row["created"].timestamp(),
                "type": row["kind"],
                "exitstatus": row["exitstatus"],
                "rid": None if row["rid"] is None else str(row["rid"]),
                "scheme": row["scheme"],
                "method": row["method"],
                "remote_addr": row["remote_addr"],
                "ua": row["ua"],
                "body_size": row["body_size"],
                "duration": row["duration_s"],
                "has_body": row["has_body"],
            }
            for row in rows
        ]
        return (200, {"pings": pings})

    async def ping_body(self, args: dict[str, Any]) -> Response:
        """Return one ping's stored body (base64), if the ping is among the latest `limit`."""
        check = self._owned(args)
        if check is None:
            return NOT_FOUND
        n = int(args["n"])
        if n <= check.n_pings - int(args.get("limit", 100)) or n > check.n_pings:
            return NOT_FOUND
        rows = await self._fetch(
            sql.SQL("SELECT body FROM pings WHERE check_id = %s AND n = %s"), [check.id, n]
        )
        if not rows or not rows[0]["body"]:
            return NOT_FOUND
        return (200, {"body": base64.b64encode(bytes(rows[0]["body"])).decode()})

    async def flips(self, args: dict[str, Any]) -> Response:
        """Return the check's flips, newest first, within [start, end) when given."""
        check = self._owned(args)
        if check is None:
            return NOT_FOUND
        conditions = [sql.SQL("check_id = %s")]
        params: list[Any] = [check.id]
        if args.get("start") is not None:
            conditions.append(sql.SQL("created >= %s"))
            params.append(datetime.fromtimestamp(float(args["start"]), UTC))
        if args.get("end") is not None:
            conditions.append(sql.SQL("created < %s"))
            params.append(datetime.fromtimestamp(float(args["end"]), UTC))
        params.append(MAX_FLIPS)
        rows = await self._fetch(
            sql.SQL(
                "SELECT created, new_status FROM flips WHERE {}"
                " ORDER BY created DESC, id DESC LIMIT %s"
            ).format(sql.SQL(" AND ").join(conditions)),
            params,
        )
        flips = [[row["created"].timestamp(), row["new_status"]] for row in rows]
        return (200, {"flips": flips})

    async def notifications(self, args: dict[str, Any]) -> Response:
        """Return the check's latest notifications with their delivery outcome, newest first."""
        check = self._owned(args)
        if check is None:
            return NOT_FOUND
        rows = await self._fetch(
            sql.SQL(
                "SELECT id, kind, channel_id, status, event_time, created, due, attempts,"
                " finished, last_error FROM notifications WHERE check_id = %s"
                " ORDER BY created DESC, event_time DESC LIMIT %s"
            ),
            [check.id, MAX_NOTIFICATIONS],
        )
        return (
            200,
            {
                "notifications": [
                    {
                        "id": str(row["id"]),
                        "kind": row["kind"],
                        "channel": str(row["channel_id"]),
                        "status": row["status"],
                        "event_time": row["event_time"].timestamp(),
                        "created": row["created"].timestamp(),
                        "due": row["due"].timestamp(),
                        "attempts": row["attempts"],
                        "finished": None
                        if row["finished"] is None
                        else row["finished"].timestamp(),
                        "error": row["last_error"],
                    }
                    for row in rows
                ]
            },
        )

    # -- database ----------------------------------------------------------------------

    async def _fetch(self, query: sql.Composable, params: Iterable[Any]) -> list[dict[str, Any]]:
        service = self.service
        async with service.semaphore, service.pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(query, list(params))
            rows: list[dict[str, Any]] = await cursor.fetchall()
            return rows

    async def _view_one(self, check: Check | None) -> dict[str, Any] | None:
        if check is None:
            return None
        rows = await self._fetch(
            sql.SQL(
                "SELECT id, name, tags, description, channels, created_at FROM checks WHERE id = %s"
            ),
            [check.id],
        )
        if not rows:
            return None
        return _view(check, rows[0], self.service.clock.time())


def _view(check: Check, row: dict[str, Any], now: float) -> dict[str, Any]:
    """Merge a check's state in memory with its stored settings; times are epoch seconds."""
    view: dict[str, Any] = {
        "id": check.id,
        "unique_key": unique_key(check.id),
        "name": row["name"],
        "slug": check.slug,
        "tags": row["tags"],
        "desc": row["description"],
        "channels": sorted(str(channel) for channel in row["channels"]),
        "created": row["created_at"].timestamp(),
        "kind": check.kind,
        "timeout": int(check.timeout),
        "grace": int(check.grace),
        "status": check.status_at(now),
        "started": check.last_start is not None,
        "last_ping": check.last_ping,
        "next_ping": check.next_expected(),
        "last_duration": check.last_duration,
        "n_pings": check.n_pings,
        "manual_resume": check.manual_resume,
        "methods": "POST" if check.methods_post else "",
    }
    if check.schedule is not None:
        view["schedule"] = check.schedule.expression
        view["tz"] = check.schedule.tz
    if check.max_runtime is not None:
        view["max_runtime"] = int(check.max_runtime)
    policy = alerts.config_of(check)
    view.update(
        alert_after=policy.alert_after,
        recover_after=policy.recover_after,
        reminder=0 if policy.reminder_every is None else int(policy.reminder_every),
        late_notice=policy.late_notice,
    )
    return view


def _uuids(values: Iterable[str]) -> list[uuid.UUID]:
    return [uuid.UUID(value) for value in values]
