"""`ccserver serve | migrate | check-ledger | ...`"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from ccserver.config import Config, ConfigError, load_config
from ccserver.ledger.check import check_ledger
from ccserver.ledger.database import open_database
from ccserver.ledger.migrate import MigrationError, migrate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccserver", description="VoIP credit-control server")
    parser.add_argument("--config", help="TOML configuration file")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server until SIGINT/SIGTERM")
    serve.add_argument("--demo", action="store_true", help="seed demo data and print commands")
    commands.add_parser("migrate", help="apply database migrations and exit")
    commands.add_parser(
        "check-ledger",
        help="verify balances equal the journal, the ledger sums to zero, CDRs match transfers",
    )
    return parser


async def _migrate(config: Config) -> int:
    async with open_database(config.database, run_migrations=False) as bridge:
        applied = await bridge.run(migrate)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


async def _check_ledger(config: Config) -> int:
    async with open_database(config.database) as bridge:
        report = await bridge.run(check_ledger)
    print(report.render())
    return 0 if report.clean else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"ccserver: configuration error: {error}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            from ccserver.server import serve

            return trio.run(lambda: serve(config, demo=args.demo))
        commands = {"migrate": _migrate, "check-ledger": _check_ledger}
        return trio.run(commands[args.command], config)
    except MigrationError as error:
        print(f"ccserver: {error}", file=sys.stderr)
        return 2
