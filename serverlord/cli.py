"""The `serverlord` command: serve, migrate, and the user, project and key commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from serverlord.accounts import cli as accounts_cli
from serverlord.config import ConfigError, Settings, from_env, load_dotenv_file
from serverlord.logs import setup_logging

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="serverlord", description="Server Lord, a monitor for cron jobs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve", help="run the server (embedded PostgreSQL when DATABASE_URL is unset)"
    )
    commands.add_parser("migrate", help="create or update the catalog and shard schemas")
    accounts_cli.add_commands(commands)
    args = parser.parse_args(argv)

    load_dotenv_file()
    try:
        settings = from_env()
    except ConfigError as exc:
        print(f"serverlord: invalid configuration: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level, "supervisor" if args.command == "serve" else "migrate")

    if args.command == "serve":
        from serverlord.alerting.settings import alert_settings_from_env
        from serverlord.observability.telemetry import export_settings
        from serverlord.supervisor import Supervisor

        # Every child reads the OTEL_* variables itself, and every shard process reads the
        # alert delivery variables (SITE_ROOT, SMTP_*, WEBHOOK_ALLOWED_NETWORKS). Checking
        # them here stops a bad value before any child starts, with the message where the
        # operator looks.
        try:
            export_settings(os.environ)
            alert_settings_from_env(os.environ)
        except ConfigError as exc:
            print(f"serverlord: invalid configuration: {exc}", file=sys.stderr)
            sys.exit(2)
        sys.exit(Supervisor(settings).run())
    if args.command == "migrate":
        _migrate(settings)
    if args.command in ("user", "project", "key", "channel"):
        sys.exit(accounts_cli.run(args, settings))


def _migrate(settings: Settings) -> None:
    from serverlord.supervisor import Supervisor

    supervisor = Supervisor(settings)
    try:
        supervisor.prepare_databases()
    except ConfigError as exc:
        print(f"serverlord: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        supervisor.halt()
    log.info("migrations applied")


if __name__ == "__main__":
    main()
