"""API tokens: issue (shown once), list, revoke.

A caller issues tokens only inside what it sees and never above itself: the new principal's scope
is an account in the caller's subtree, its role is at most the caller's, and its permissions are
what the role allows, narrowed to what the caller holds and to what the request names. Each
token gets a principal of its own. The token is random, stored as its SHA-256 digest, and goes
into the live token store at once, so it works on the next request; revoking takes it out again.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from starlette.responses import Response

from ccserver.actors.account import Account
from ccserver.admin_api.app import Api, Call, Page, Route
from ccserver.admin_api.auth import (
    Permission,
    Principal,
    Role,
    effective_permissions,
    new_token,
    token_digest,
)
from ccserver.admin_api.common import Cursor, Limit, Number, page, rfc3339
from ccserver.admin_api.problems import FieldError, forbidden, invalid, not_found

# Higher outranks lower; a caller never issues (or revokes) a token above its own rank.
ROLE_RANK: dict[Role, int] = {
    Role.CUSTOMER: 0,
    Role.AGENT: 1,
    Role.RESELLER: 2,
    Role.ADMIN: 3,
    Role.SUPER_ADMIN: 4,
}
IssuableRole = Literal["admin", "reseller", "agent", "customer"]
TOKEN_ID_MAX = 2**63 - 1  # bigint
LIST_LIMIT_DEFAULT = 100
TOKEN_NAME_MAX = 200


class TokenCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=TOKEN_NAME_MAX)]
    role: IssuableRole
    scope: Number | None = None  # the account number whose subtree the token sees
    # Omitted: everything the role allows (and the caller holds).
    permissions: Annotated[list[Permission], Meta(max_length=len(Permission))] | None = None


class TokenInfo(msgspec.Struct):
    id: int
    name: str
    role: str
    scope: str | None
    permissions: list[str]
    created_at: str | None
    revoked_at: str | None


class TokenCreated(msgspec.Struct):
    id: int
    token: str  # shown only in this response
    name: str
    role: str
    scope: str | None
    permissions: list[str]
    created_at: str | None


class TokenQuery(msgspec.Struct, forbid_unknown_fields=True):
    revoked: bool = False  # also list revoked tokens
    limit: Limit = LIST_LIMIT_DEFAULT
    cursor: Cursor | None = None


# -- issue --------------------------------------------------------------------------------------


async def create_token(api: Api, call: Call) -> TokenCreated:
    call.require(Permission.TOKENS)
    body: TokenCreate = call.body
    caller = call.principal
    role = Role(body.role)
    errors: list[FieldError] = []
    if ROLE_RANK[role] > ROLE_RANK[caller.role]:
        errors.append(FieldError("role", f"a {caller.role.value} cannot issue {role.value} tokens"))
    scope_account: Account | None = None
    if body.scope is not None:
        scope_account = api.engine.hierarchy.find_number(body.scope)
        # An account outside the caller's subtree reads exactly like one that does not exist.
        if (
            scope_account is None
            or scope_account.parent is None
            or not call.scope.sees(scope_account)
        ):
            errors.append(FieldError("scope", "no such account"))
            scope_account = None
    elif role is not Role.ADMIN:
        errors.append(FieldError("scope", f"is required for a {role.value} token"))
    elif not call.scope.unrestricted:
        errors.append(FieldError("scope", "only operator staff can issue unscoped tokens"))
    if errors:
        raise invalid(errors)
    requested = None if body.permissions is None else [p.value for p in body.permissions]
    permissions = effective_permissions(role, requested) & caller.permissions
    names = sorted(p.value for p in permissions)
    scope_account_id = scope_account.id if scope_account is not None else None
    token = new_token()
    digest = token_digest(token)
    row = await api.bridge.run(
        insert_token,
        body.name,
        role.value,
        scope_account_id,
        msgspec.json.encode(names).decode(),
        digest,
    )
    # Into the live store only once the database holds it: a token that works survives restarts.
    api.tokens.add(
        digest,
        row["token_id"],
        Principal(
            id=row["principal_id"],
            name=body.name,
            role=role,
            scope_account_id=scope_account_id,
            permissions=permissions,
        ),
    )
    return TokenCreated(
        id=row["token_id"],
        token=token,
        name=body.name,
        role=role.value,
        scope=scope_account.number if scope_account is not None else None,
        permissions=names,
        created_at=rfc3339(row["created_at"]),
    )


async def insert_token(
    connection: Any,
    name: str,
    role: str,
    scope_account_id: int | None,
    permissions_json: str,
    digest: bytes,
) -> Any:
    async with connection.transaction():
        principal_id = await connection.fetchval(
            """INSERT INTO principals (name, role, scope_account_id, permissions)
               VALUES ($1, $2, $3, $4::jsonb) RETURNING id""",
            name,
            role,
            scope_account_id,
            permissions_json,
        )
        return await connection.fetchrow(
            """INSERT INTO tokens (principal_id, token_sha256) VALUES ($1, $2)
               RETURNING id AS token_id, principal_id,
                         extract(epoch from created_at)::float8 AS created_at""",
            principal_id,
            digest,
        )


# -- list ---------------------------------------------------------------------------------------


async def list_tokens(api: Api, call: Call) -> Page:
    call.require(Permission.TOKENS)
    query: TokenQuery = call.query
    cursor = min(int(query.cursor), TOKEN_ID_MAX) if query.cursor is not None else None
    root: int | None = None
    if not call.scope.unrestricted:
        if call.scope.root is None:  # its scope account was deleted: it sees nothing
            return Page(items=[], next_cursor=None)
        root = call.scope.root.id
    rows = await api.bridge.run(_fetch_tokens, root, query.revoked, cursor, query.limit + 1)
    return page([_token_info(row) for row in rows], query.limit, lambda item: item.id)


async def _fetch_tokens(
    connection: Any, root: int | None, revoked: bool, cursor: int | None, limit: int
) -> list[Any]:
    args: list[Any] = [revoked, cursor, limit]
    conditions = ["($1 OR t.revoked_at IS NULL)", "($2::bigint IS NULL OR t.id < $2)"]
    subtree = ""
    if root is not None:
        # The caller's subtree, walked down from its scope account (accounts_parent index).
        # Operator staff's principals have no scope account, so they never show up here.
        args.append(root)
        subtree = """WITH RECURSIVE subtree AS (
                SELECT id FROM accounts WHERE id = $4
                UNION ALL
                SELECT c.id FROM accounts c JOIN subtree s ON c.parent_id = s.id
                WHERE c.status <> 'deleted')"""
        conditions.append("p.scope_account_id IN (SELECT id FROM subtree)")
    statement = f"""{subtree}
        SELECT t.id, p.name, p.role, p.permissions::text AS permissions, a.number AS scope_number,
               extract(epoch from t.created_at)::float8 AS created_at,
               extract(epoch from t.revoked_at)::float8 AS revoked_at
        FROM tokens t JOIN principals p ON p.id = t.principal_id
             LEFT JOIN accounts a ON a.id = p.scope_account_id
        WHERE {" AND ".join(conditions)}
        ORDER BY t.id DESC LIMIT $3"""
    return list(await connection.fetch(statement, *args))


def _token_info(row: Any) -> TokenInfo:
    permissions = msgspec.json.decode(row["permissions"])
    return TokenInfo(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        scope=row["scope_number"],
        permissions=sorted(permissions) if isinstance(permissions, list) else [],
        created_at=rfc3339(row["created_at"]),
        revoked_at=rfc3339(row["revoked_at"]),
    )


# -- revoke -------------------------------------------------------------------------------------


async def revoke_token(api: Api, call: Call) -> Response:
    call.require(Permission.TOKENS)
    text = call.path["id"]
    if not text.isdigit() or not 0 < int(text) <= TOKEN_ID_MAX:
        raise not_found("token")
    token_id = int(text)
    row = await api.bridge.run(_fetch_token, token_id)
    if row is None or not _sees_principal(api, call, row["scope_account_id"]):
        raise not_found("token")
    if ROLE_RANK[Role(row["role"])] > ROLE_RANK[call.principal.role]:
        raise forbidden(f"a {call.principal.role.value} cannot revoke {row['role']} tokens")
    # Revoking twice is not an error: the token is revoked either way (DELETE is idempotent).
    await api.bridge.run(_revoke, token_id)
    api.tokens.remove_token(token_id)
    return Response(status_code=204)


def _sees_principal(api: Api, call: Call, scope_account_id: int | None) -> bool:
    if call.scope.unrestricted:
        return True
    if scope_account_id is None:  # operator staff: only staff sees them
        return False
    return call.scope.sees(api.engine.hierarchy.get(scope_account_id))


async def _fetch_token(connection: Any, token_id: int) -> Any:
    return await connection.fetchrow(
        """SELECT t.id, p.role, p.scope_account_id
           FROM tokens t JOIN principals p ON p.id = t.principal_id WHERE t.id = $1""",
        token_id,
    )


async def _revoke(connection: Any, token_id: int) -> None:
    await connection.execute(
        "UPDATE tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id
    )


ROUTES: list[Route] = [
    Route("POST", "/v1/tokens", create_token, "create_token",
          "Issue a token (shown only in this response) for a principal in the caller's scope",
          body=TokenCreate, response=TokenCreated, status=201, errors=(401, 403, 422)),
    Route("GET", "/v1/tokens", list_tokens, "list_tokens",
          "Tokens of the principals the caller sees (never the token itself)",
          query=TokenQuery, listing=TokenInfo, errors=(401, 403, 422)),
    Route("DELETE", "/v1/tokens/{id}", revoke_token, "revoke_token",
          "Revoke a token: it stops working at once", status=204, errors=(401, 403, 404)),
]  # fmt: skip
