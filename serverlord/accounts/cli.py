"""`serverlord user|project|key ...`: manage accounts from the command line.

Each command prints what its user needs next: a new project's keys (shown only this
once) and ready `curl` lines that create a check and ping it. `--json` prints the same
facts as one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import conninfo, sql
from psycopg.types.json import Jsonb

from serverlord.accounts import store
from serverlord.accounts.keys import KEY_KIND_NAMES, KEY_KINDS, KeyKind
from serverlord.alerting.channels import ChannelError, validate_channel, validate_channel_name
from serverlord.config import Settings
from serverlord.storage.migrate import migrate

# The catalog's database inside the embedded cluster; the supervisor uses the same name.
EMBEDDED_CATALOG = "serverlord"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `user`, `project`, `key` and `channel` commands to the `serverlord` parser."""
    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True
    )
    create = user.add_parser("create", help="create a user")
    create.add_argument("email", help="the user's email address, used to name the owner")
    _add_output_options(create)

    project = commands.add_parser("project", help="manage projects").add_subparsers(
        dest="action", required=True
    )
    create = project.add_parser(
        "create", help="create a project with a read-write, a read-only and a ping key"
    )
    create.add_argument("--owner", required=True, help="email of the owning user")
    create.add_argument("--name", default="", help="project name (at most 100 characters)")
    _add_output_options(create)
    member = project.add_parser("add-member", help="let another user see or change a project")
    member.add_argument("--project", type=int, required=True, help="project id")
    member.add_argument("--email", required=True, help="email of the user to add")
    member.add_argument("--role", choices=("ro", "rw"), required=True, help="read-only or full")
    _add_output_options(member)

    key = commands.add_parser("key", help="manage API and ping keys").add_subparsers(
        dest="action", required=True
    )
    create = key.add_parser("create", help="create another key for a project")
    create.add_argument("--project", type=int, required=True, help="project id")
    create.add_argument(
        "--kind", choices=KEY_KINDS, required=True, help="rw (read-write), ro or ping"
    )
    _add_output_options(create)
    revoke = key.add_parser("revoke", help="revoke a project's key by its first characters")
    revoke.add_argument("--project", type=int, required=True, help="project id")
    revoke.add_argument("prefix", help="the key's first 6 characters, as `key create` shows")
    _add_output_options(revoke)

    channel = commands.add_parser("channel", help="manage alert channels").add_subparsers(
        dest="action", required=True
    )
    create = channel.add_parser(
        "create", help='create a channel; new checks with channels="*" use it'
    )
    create.add_argument("--project", type=int, required=True, help="project id")
    create.add_argument("--name", default="", help="channel name (at most 100 characters)")
    create.add_argument(
        "--kind", choices=("webhook", "email", "apprise"), required=True, help="channel kind"
    )
    create.add_argument(
        "--config",
        required=True,
        help='JSON settings, e.g. \'{"urls": ["ntfy://ntfy.sh/mytopic"]}\' for apprise',
    )
    _add_output_options(create)
    listing = channel.add_parser("list", help="list a project's channels")
    listing.add_argument("--project", type=int, required=True, help="project id")
    _add_output_options(listing)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--url", default=None, help="the server's public URL for the printed examples"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Carry out one account command and return the process exit status."""
    url = (args.url or f"http://localhost:{settings.port}").rstrip("/")
    try:
        with catalog_connection(settings) as conn:
            facts, text = _dispatch(conn, args, url)
    except store.AccountError as exc:
        print(f"serverlord: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(facts) if args.json else text)
    return 0


def _dispatch(
    conn: psycopg.Connection[Any], args: argparse.Namespace, url: str
) -> tuple[dict[str, Any], str]:
    command = (args.command, args.action)
    if command == ("user", "create"):
        return _create_user(conn, args.email)
    if command == ("project", "create"):
        return _create_project(conn, args.owner, args.name, url)
    if command == ("project", "add-member"):
        user_id = store.find_user(conn, args.email)
        store.find_project(conn, args.project)
        store.add_member(conn, args.project, user_id, args.role)
        facts = {"project_id": args.project, "user_id": user_id, "role": args.role}
        return facts, f"{args.email} is now a {args.role} member of project {args.project}"
    if command == ("key", "create"):
        return _create_key(conn, args.project, args.kind, url)
    if command == ("key", "revoke"):
        count = store.revoke_key(conn, args.project, args.prefix)
        if count == 0:
            raise store.AccountError(
                f"project {args.project} has no active key starting with {args.prefix!r}"
            )
        text = (
            f"revoked {count} key(s) of project {args.project} starting with {args.prefix}; "
            "web workers may accept it for a few more seconds from their cache"
        )
        return {"project_id": args.project, "revoked": count}, text
    if command == ("channel", "create"):
        return _create_channel(conn, args.project, args.name, args.kind, args.config)
    if command == ("channel", "list"):
        store.find_project(conn, args.project)
        rows = conn.execute(
            "SELECT id, name, kind FROM channels WHERE project_id = %s ORDER BY created",
            (args.project,),
        ).fetchall()
        channels = [{"id": str(row[0]), "name": row[1], "kind": row[2]} for row in rows]
        text = "\n".join(f"{c['id']}  {c['kind']:8} {c['name']}" for c in channels)
        return {"project_id": args.project, "channels": channels}, text or "no channels"
    raise store.AccountError(f"unknown command {' '.join(command)}")


def _create_channel(
    conn: psycopg.Connection[Any], project_id: int, name: str, kind: str, raw_config: str
) -> tuple[dict[str, Any], str]:
    store.find_project(conn, project_id)
    try:
        config = json.loads(raw_config)
    except json.JSONDecodeError as exc:
        raise store.AccountError(f"--config is not valid JSON: {exc}") from None
    try:
        name = validate_channel_name(name)
        normal = validate_channel(kind, config)
    except ChannelError as exc:
        raise store.AccountError(f"invalid channel: {exc}") from None
    channel_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO channels (id, project_id, name, kind, config) VALUES (%s, %s, %s, %s, %s)",
        (channel_id, project_id, name, kind, Jsonb(normal)),
    )
    text = (
        f"created {kind} channel {channel_id} {name!r} for project {project_id}\n"
        'checks created with "channels": "*" notify it; assign it to existing checks with\n'
        f'  "channels": "{channel_id}" in a check update'
    )
    return {"project_id": project_id, "channel_id": str(channel_id), "kind": kind}, text


def _create_user(conn: psycopg.Connection[Any], email: str) -> tuple[dict[str, Any], str]:
    user_id = store.create_user(conn, email)
    text = (
        f"created user {user_id} ({email})\n"
        f"next, create a project:\n"
        f'  serverlord project create --owner {email} --name "My project"'
    )
    return {"user_id": user_id, "email": email}, text


def _create_project(
    conn: psycopg.Connection[Any], owner: str, name: str, url: str
) -> tuple[dict[str, Any], str]:
    owner_id = store.find_user(conn, owner)
    project = store.create_project(conn, owner_id, name)
    keys = {kind: store.create_key(conn, project.id, kind) for kind in KEY_KINDS}
    facts = {"project_id": project.id, "name": name, "owner": owner, "keys": keys}
    lines = [
        f"created project {project.id} {name!r} for {owner}",
        "its keys, shown only now (Server Lord stores only their hashes):",
        *(f"  {KEY_KIND_NAMES[kind] + ':':21} {keys[kind]}" for kind in KEY_KINDS),
        "create a check:",
        f"  curl -s {url}/api/v3/checks/ -H 'X-Api-Key: {keys['rw']}' \\",
        '    -d \'{"name": "backup", "slug": "backup", "timeout": 86400, "grace": 3600}\'',
        "then ping it at the end of the job, for example from its crontab line:",
        f"  curl -fsS -m 10 --retry 5 -o /dev/null {url}/ping/{keys['ping']}/backup",
    ]
    return facts, "\n".join(lines)


def _create_key(
    conn: psycopg.Connection[Any], project_id: int, kind: KeyKind, url: str
) -> tuple[dict[str, Any], str]:
    store.find_project(conn, project_id)
    key = store.create_key(conn, project_id, kind)
    if kind == "ping":
        usage = f"  curl -fsS -m 10 --retry 5 -o /dev/null {url}/ping/{key}/<slug>"
    else:
        usage = f"  curl -s {url}/api/v3/checks/ -H 'X-Api-Key: {key}'"
    text = (
        f"created a {KEY_KIND_NAMES[kind]} for project {project_id}, shown only now:\n"
        f"  {key}\n"
        f"use it like this:\n{usage}\n"
        f"revoke it with: serverlord key revoke --project {project_id} {key[:6]}"
    )
    return {"project_id": project_id, "kind": kind, "key": key}, text


@contextmanager
def catalog_connection(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """Connect to the migrated catalog, starting the embedded PostgreSQL when needed.

    The whole command runs in one transaction, so a failed step leaves nothing behind.
    """
    embedded = None
    dsn = settings.database_url
    if dsn is None:
        from serverlord.storage.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(settings.data_dir)
        dsn = _embedded_catalog(embedded.start())
    try:
        migrate(dsn, "catalog")
        with psycopg.connect(dsn) as conn:
            yield conn
    finally:
        if embedded is not None:
            # This stops the cluster only when no other live process, such as a running
            # server, still uses it.
            embedded.stop()


def _embedded_catalog(admin_dsn: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_CATALOG,)
        ).fetchone()
        if row is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(EMBEDDED_CATALOG)))
    return conninfo.make_conninfo(admin_dsn, dbname=EMBEDDED_CATALOG)
