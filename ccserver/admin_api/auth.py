"""Principals, tokens and scopes.

Every token belongs to a principal with a role and, except for operator staff, a scope: one
account whose subtree is all the principal can see or change. Anything outside answers 404 (a
403 would leak that it exists). Tokens are random, shown once, and stored as SHA-256 digests.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from typing import Any

import msgspec

from ccserver.actors.account import Account
from ccserver.actors.hierarchy import Hierarchy

TOKEN_PREFIX = "ccs_"


class Role(enum.StrEnum):
    SUPER_ADMIN = "super_admin"
    ADMIN = "admin"
    RESELLER = "reseller"
    AGENT = "agent"
    CUSTOMER = "customer"


class Permission(enum.StrEnum):
    """What a principal may change, in the spirit of VOS3000's per-user permission flags."""

    ACCOUNTS = "accounts"  # create, change, delete accounts in scope
    PAYMENTS_SELF = "payments_self"  # top up its own account
    PAYMENTS_SUB = "payments_sub"  # top up accounts below its own
    NAS_CLIENTS = "nas_clients"  # manage RADIUS clients (operator-wide)
    RATE_GROUPS = "rate_groups"  # create and change tariffs
    TOKENS = "tokens"  # issue tokens for principals in scope


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.SUPER_ADMIN: frozenset(Permission),
    Role.ADMIN: frozenset(Permission),
    Role.RESELLER: frozenset(
        {Permission.ACCOUNTS, Permission.PAYMENTS_SUB, Permission.RATE_GROUPS, Permission.TOKENS}
    ),
    Role.AGENT: frozenset({Permission.ACCOUNTS, Permission.PAYMENTS_SUB}),
    Role.CUSTOMER: frozenset(),
}
OPERATOR_ROLES = frozenset({Role.SUPER_ADMIN, Role.ADMIN})


class Principal(msgspec.Struct, frozen=True):
    id: int
    name: str
    role: Role
    scope_account_id: int | None
    permissions: frozenset[Permission]

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    @property
    def is_operator_staff(self) -> bool:
        return self.role in OPERATOR_ROLES and self.scope_account_id is None


def effective_permissions(role: Role, requested: list[str] | None) -> frozenset[Permission]:
    """A token never has more than its role allows; it may be given less."""
    allowed = ROLE_PERMISSIONS[role]
    if requested is None:
        return allowed
    return allowed & frozenset(Permission(p) for p in requested)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Scope:
    """What one principal can see, over the live hierarchy."""

    def __init__(self, principal: Principal, hierarchy: Hierarchy) -> None:
        self.principal = principal
        self.hierarchy = hierarchy
        scope_id = principal.scope_account_id
        self.root: Account | None = None
        if scope_id is not None:
            self.root = hierarchy.get(scope_id)

    @property
    def unrestricted(self) -> bool:
        return self.principal.is_operator_staff

    def sees(self, account: Account | None) -> bool:
        if account is None:
            return False
        if self.unrestricted:
            return True
        if self.root is None:
            return False
        return self.hierarchy.is_ancestor(self.root, account)

    def top(self) -> Account:
        """The account at the top of what this principal sees (the operator for staff)."""
        if self.unrestricted:
            return self.hierarchy.operator
        assert self.root is not None
        return self.root


# A token not in memory is looked up in the database once (it may have been issued by
# `ccserver token create` in another process); a miss is remembered for a while so that a
# client retrying a bad token does not cost a query per request.
UNKNOWN_TOKEN_TTL_SECONDS = 10.0
UNKNOWN_TOKENS_MAX = 10_000


class TokenStore:
    """Token digests to principals, in memory; the database is the record."""

    def __init__(self) -> None:
        self._by_digest: dict[bytes, tuple[int, Principal]] = {}
        self._unknown: dict[bytes, float] = {}  # digest -> when the database last lacked it

    def add(self, digest: bytes, token_id: int, principal: Principal) -> None:
        self._by_digest[digest] = (token_id, principal)
        self._unknown.pop(digest, None)

    def remove_token(self, token_id: int) -> None:
        for digest in [d for d, (t, _) in self._by_digest.items() if t == token_id]:
            del self._by_digest[digest]

    def lookup(self, digest: bytes) -> Principal | None:
        found = self._by_digest.get(digest)
        return found[1] if found is not None else None

    def recently_unknown(self, digest: bytes, now: float) -> bool:
        seen = self._unknown.get(digest)
        return seen is not None and now - seen < UNKNOWN_TOKEN_TTL_SECONDS

    def remember_unknown(self, digest: bytes, now: float) -> None:
        if len(self._unknown) >= UNKNOWN_TOKENS_MAX:
            self._unknown = {
                d: t for d, t in self._unknown.items() if now - t < UNKNOWN_TOKEN_TTL_SECONDS
            }
            if len(self._unknown) >= UNKNOWN_TOKENS_MAX:
                self._unknown.clear()
        self._unknown[digest] = now

    def load(self, rows: list[Any]) -> None:
        for row in rows:
            self.add(
                bytes(row["token_sha256"]),
                row["token_id"],
                Principal(
                    id=row["id"],
                    name=row["name"],
                    role=Role(row["role"]),
                    scope_account_id=row["scope_account_id"],
                    permissions=frozenset(
                        Permission(p) for p in msgspec.json.decode(row["permissions"])
                    ),
                ),
            )


TOKEN_COLUMNS = """t.id AS token_id, p.id, p.name, p.role, p.scope_account_id,
                   p.permissions::text AS permissions, t.token_sha256"""


async def fetch_tokens(connection: Any) -> list[Any]:
    return list(
        await connection.fetch(
            f"""SELECT {TOKEN_COLUMNS}
                FROM tokens t JOIN principals p ON p.id = t.principal_id
                WHERE t.revoked_at IS NULL"""
        )
    )


async def fetch_token(connection: Any, digest: bytes) -> list[Any]:
    """The live token with this digest, as a list of zero or one rows for `TokenStore.load`."""
    return list(
        await connection.fetch(
            f"""SELECT {TOKEN_COLUMNS}
                FROM tokens t JOIN principals p ON p.id = t.principal_id
                WHERE t.token_sha256 = $1 AND t.revoked_at IS NULL""",
            digest,
        )
    )
