"""`ccserver serve | migrate | token create | check-ledger`"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
import trio

from ccserver.admin_api.auth import (
    OPERATOR_ROLES,
    Role,
    effective_permissions,
    new_token,
    token_digest,
)
from ccserver.admin_api.tokens import TOKEN_NAME_MAX, insert_token
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
    token = commands.add_parser("token", help="manage API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser(
        "create", help="issue an API token; prints it on stdout (it is shown only once)"
    )
    create.add_argument("--name", required=True, help="who or what the token is for")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument(
        "--scope", help="account number whose subtree the token sees (required below admin)"
    )
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


class CommandError(Exception):
    """A command's input is wrong; the message says which argument and why."""


async def _token_create(config: Config, name: str, role: Role, scope: str | None) -> int:
    if not name.strip() or len(name) > TOKEN_NAME_MAX:
        raise CommandError(f"--name: must be 1-{TOKEN_NAME_MAX} characters")
    if scope is None and role not in OPERATOR_ROLES:
        raise CommandError(f"--scope: is required for a {role.value} token")
    async with open_database(config.database) as bridge:
        scope_account_id: int | None = None
        if scope is not None:
            scope_account_id = await bridge.run(_scope_account_id, scope)
            if scope_account_id is None:
                raise CommandError(f"--scope: no account {scope!r} (the operator root excluded)")
        permissions = sorted(p.value for p in effective_permissions(role, None))
        token = new_token()
        row = await bridge.run(
            insert_token,
            name,
            role.value,
            scope_account_id,
            msgspec.json.encode(permissions).decode(),
            token_digest(token),
        )
    print(token)
    print(
        f"token {row['token_id']} for {name!r}: role {role.value}, scope {scope or 'all'}, "
        f"permissions {', '.join(permissions) or 'read only'}. It is shown only once.",
        file=sys.stderr,
    )
    return 0


async def _scope_account_id(connection: Any, number: str) -> int | None:
    value = await connection.fetchval(
        """SELECT id FROM accounts
           WHERE number = $1 AND status <> 'deleted' AND parent_id IS NOT NULL""",
        number,
    )
    return None if value is None else int(value)


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
        if args.command == "token":
            role = Role(args.role)
            return trio.run(_token_create, config, args.name, role, args.scope)
        commands = {"migrate": _migrate, "check-ledger": _check_ledger}
        return trio.run(commands[args.command], config)
    except (MigrationError, CommandError) as error:
        print(f"ccserver: {error}", file=sys.stderr)
        return 2
