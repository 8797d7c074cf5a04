"""NAS clients: the RADIUS peers we answer, each with its own secret and CoA port.

Postgres is the record; `api.nas_clients` (a `NasTable`) is the live copy the RADIUS server
looks a packet's source address up in. Operator-wide configuration: operator staff, or a token
with the nas_clients permission, only. The secret is write-only: no response ever carries it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Annotated, Any

import asyncpg
import msgspec
import trio
from starlette.responses import Response

from ccserver.admin_api.app import Api, Call, Page, Route
from ccserver.admin_api.auth import Permission
from ccserver.admin_api.common import Cursor, Limit, page, rfc3339
from ccserver.admin_api.problems import FieldError, conflict, forbidden, invalid, not_found
from ccserver.observability import get_logger

log = get_logger("ccserver.api.nas_clients")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NetworkKey = tuple[int, int, int]  # (ip version, network address as int, prefix length)

NAS_CLIENTS_MAX = 10_000  # far beyond any real deployment; a bound on the table and on a scan
FIND_CACHE_MAX = 65_536  # source addresses whose lookup is remembered
SECRET_CHARS_MAX = 128
DEFAULT_COA_PORT = 3799
LIST_LIMIT_DEFAULT = 100

NasName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="letters, digits, '.', '_' and '-'; at most 64",
        examples=["sbc-1"],
    ),
]
AddressText = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        description="an IPv4/IPv6 address or a CIDR block",
        examples=["192.0.2.10", "198.51.100.0/24"],
    ),
]
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=SECRET_CHARS_MAX)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class NasClientCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: NasName
    address: AddressText
    secret: Secret
    coa_port: Port = DEFAULT_COA_PORT
    require_message_authenticator: bool = True


class NasClientView(msgspec.Struct, kw_only=True):
    name: str
    address: str
    coa_port: int
    require_message_authenticator: bool
    secret_set: bool  # always true: the secret itself is never shown
    created_at: str | None


class NasListQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Limit = LIST_LIMIT_DEFAULT
    cursor: Cursor | None = None


# -- the live table -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class NasClient:
    name: str
    network: Network
    secret: bytes  # the RADIUS shared secret as the codec uses it (UTF-8 of what was set)
    coa_port: int = DEFAULT_COA_PORT
    require_message_authenticator: bool = True


def _key(network: Network) -> NetworkKey:
    return (network.version, int(network.network_address), network.prefixlen)


class NasTable:
    """NAS clients by name and by network; a source address finds its most specific block."""

    __slots__ = ("_by_key", "_by_name", "_found", "_lengths", "lock")

    def __init__(self) -> None:
        self._by_name: dict[str, NasClient] = {}
        # find()'s answers by source address text (None included), cleared on every change:
        # parsing the address and probing the prefixes costs more than the rest of a lookup.
        self._found: dict[str, NasClient | None] = {}
        self._by_key: dict[NetworkKey, NasClient] = {}
        # Prefix lengths present per IP version, longest first: at most 33 or 129 probes.
        self._lengths: dict[int, tuple[int, ...]] = {4: (), 6: ()}
        # Admin API writes hold this around database-then-table, so the table follows the
        # database's order.
        self.lock = trio.Lock()

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, name: str) -> NasClient | None:
        return self._by_name.get(name)

    def clients(self) -> list[NasClient]:
        return list(self._by_name.values())

    def holder_of(self, network: Network) -> NasClient | None:
        """The client configured with exactly this block, if any."""
        return self._by_key.get(_key(network))

    def add(self, client: NasClient) -> None:
        assert client.name not in self._by_name, client.name
        key = _key(client.network)
        assert key not in self._by_key, client.network
        assert len(self._by_name) < NAS_CLIENTS_MAX
        self._by_name[client.name] = client
        self._by_key[key] = client
        self._relength(key[0])
        self._found.clear()

    def remove(self, name: str) -> NasClient | None:
        client = self._by_name.pop(name, None)
        if client is not None:
            key = _key(client.network)
            assert self._by_key[key] is client
            del self._by_key[key]
            self._relength(key[0])
            self._found.clear()
        return client

    def replace_all(self, clients: list[NasClient]) -> list[NasClient]:
        """Load the whole table (start-up); the object stays the same for whoever holds it.

        Rows written around the API (SQL, a restore) may repeat a block the database does not
        keep unique; the first one wins and the others are returned, not loaded.
        """
        self._by_name.clear()
        self._by_key.clear()
        self._lengths = {4: (), 6: ()}
        self._found.clear()
        skipped = []
        for client in clients[:NAS_CLIENTS_MAX]:
            if client.name in self._by_name or _key(client.network) in self._by_key:
                skipped.append(client)
            else:
                self.add(client)
        return skipped

    def _relength(self, version: int) -> None:
        self._lengths[version] = tuple(
            sorted({key[2] for key in self._by_key if key[0] == version}, reverse=True)
        )

    def find(self, ip: str) -> NasClient | None:
        """The client whose block holds `ip`, the longest prefix winning; None if unknown."""
        found = self._found
        try:
            return found[ip]
        except KeyError:
            pass
        client = self._find(ip)
        if len(found) >= FIND_CACHE_MAX:
            found.clear()  # a flood of unknown sources must not grow it without bound
        found[ip] = client
        return client

    def _find(self, ip: str) -> NasClient | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers this way
        version = address.version
        bits = address.max_prefixlen
        value = int(address)
        by_key = self._by_key
        for length in self._lengths[version]:
            mask = ((1 << length) - 1) << (bits - length)
            client = by_key.get((version, value & mask, length))
            if client is not None:
                return client
        return None


def nas_table(api: Api) -> NasTable:
    """`api.nas_clients`, created empty the first time it is asked for."""
    table = getattr(api, "nas_clients", None)
    if table is None:
        table = NasTable()
        api.nas_clients = table  # type: ignore[attr-defined]
    assert isinstance(table, NasTable)
    return table


async def _fetch_all(connection: Any) -> list[Any]:
    return list(
        await connection.fetch(
            f"""SELECT name, address, secret, coa_port, require_message_authenticator
                FROM nas_clients ORDER BY id LIMIT {NAS_CLIENTS_MAX}"""
        )
    )


def _client_of(row: Any) -> NasClient:
    return NasClient(
        name=row["name"],
        network=ipaddress.ip_network(row["address"]),
        secret=row["secret"].encode(),
        coa_port=row["coa_port"],
        require_message_authenticator=row["require_message_authenticator"],
    )


async def load_nas_clients(api: Api) -> NasTable:
    """Fill `api.nas_clients` from the database; call at start-up before RADIUS listens."""
    rows = await api.bridge.run(_fetch_all)
    table = nas_table(api)
    for client in table.replace_all([_client_of(row) for row in rows]):
        log.warning("nas_client_skipped", name=client.name, reason="address of an earlier client")
    log.info("nas_clients_loaded", count=len(table))
    return table


# -- routes ---------------------------------------------------------------------------------------


def _require(call: Call) -> None:
    if not (call.principal.is_operator_staff or call.principal.can(Permission.NAS_CLIENTS)):
        raise forbidden("NAS clients are managed by operator staff or with nas_clients")


def _address_text(network: Network) -> str:
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _view(row: Any) -> NasClientView:
    return NasClientView(
        name=row["name"],
        address=_address_text(ipaddress.ip_network(row["address"])),
        coa_port=row["coa_port"],
        require_message_authenticator=row["require_message_authenticator"],
        secret_set=bool(row["secret"]),
        created_at=rfc3339(row["created_at"]),
    )


_COLUMNS = """id, name, address, secret, coa_port, require_message_authenticator,
              extract(epoch from created_at)::float8 AS created_at"""


def parse_address(text: str) -> Network:
    """An address or a CIDR block; host bits of a block are cleared (192.0.2.7/24 is
    192.0.2.0/24), as FreeRADIUS reads `ipaddr`."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise invalid(
            [FieldError("address", f"{text!r} is not an IP address or CIDR block")]
        ) from None
    return network


async def _insert(connection: Any, body: NasClientCreate, network: Network) -> Any:
    try:
        return await connection.fetchrow(
            f"""INSERT INTO nas_clients (name, address, secret, coa_port,
                    require_message_authenticator)
                VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
            body.name,
            network,
            body.secret,
            body.coa_port,
            body.require_message_authenticator,
        )
    except asyncpg.UniqueViolationError:
        return None


async def create_nas_client(api: Api, call: Call) -> NasClientView:
    _require(call)
    body: NasClientCreate = call.body
    network = parse_address(body.address)
    table = nas_table(api)
    async with table.lock:
        if body.name in table:
            raise conflict(f"a NAS client named {body.name} exists")
        holder = table.holder_of(network)
        if holder is not None:
            raise conflict(f"address {_address_text(network)} belongs to NAS client {holder.name}")
        if len(table) >= NAS_CLIENTS_MAX:
            raise conflict(f"at most {NAS_CLIENTS_MAX} NAS clients")
        row = await api.bridge.run(_insert, body, network)
        if row is None:
            raise conflict(f"a NAS client named {body.name} exists")
        table.add(
            NasClient(
                name=body.name,
                network=network,
                secret=body.secret.encode(),
                coa_port=body.coa_port,
                require_message_authenticator=body.require_message_authenticator,
            )
        )
    return _view(row)


async def _fetch_page(connection: Any, after: int, limit: int) -> list[Any]:
    return list(
        await connection.fetch(
            f"SELECT {_COLUMNS} FROM nas_clients WHERE id > $1 ORDER BY id LIMIT $2",
            after,
            limit,
        )
    )


async def list_nas_clients(api: Api, call: Call) -> Page:
    _require(call)
    query: NasListQuery = call.query
    after = int(query.cursor) if query.cursor is not None else 0
    rows = await api.bridge.run(_fetch_page, after, query.limit + 1)
    listed = page(rows, query.limit, lambda row: row["id"])
    listed.items = [_view(row) for row in listed.items]
    return listed


async def _fetch_one(connection: Any, name: str) -> Any:
    return await connection.fetchrow(f"SELECT {_COLUMNS} FROM nas_clients WHERE name = $1", name)


async def get_nas_client(api: Api, call: Call) -> NasClientView:
    _require(call)
    row = await api.bridge.run(_fetch_one, call.path["name"])
    if row is None:
        raise not_found("NAS client")
    return _view(row)


async def _delete(connection: Any, name: str) -> bool:
    deleted = await connection.fetchval("DELETE FROM nas_clients WHERE name = $1 RETURNING 1", name)
    return deleted is not None


async def delete_nas_client(api: Api, call: Call) -> Response:
    _require(call)
    name = call.path["name"]
    table = nas_table(api)
    async with table.lock:
        if not await api.bridge.run(_delete, name):
            raise not_found("NAS client")
        table.remove(name)
    return Response(status_code=204)


ROUTES: list[Route] = [
    Route("POST", "/v1/nas-clients", create_nas_client, "nas_clients_create",
          "Add a RADIUS client (its address or block, shared secret, CoA port)",
          body=NasClientCreate, response=NasClientView, status=201,
          errors=(401, 403, 409, 422)),
    Route("GET", "/v1/nas-clients", list_nas_clients, "nas_clients_list", "NAS clients",
          query=NasListQuery, listing=NasClientView, errors=(401, 403, 422)),
    Route("GET", "/v1/nas-clients/{name}", get_nas_client, "nas_clients_get", "One NAS client",
          response=NasClientView, errors=(401, 403, 404)),
    Route("DELETE", "/v1/nas-clients/{name}", delete_nas_client, "nas_clients_delete",
          "Remove a NAS client: its packets are dropped from now on", status=204,
          errors=(401, 403, 404)),
]  # fmt: skip
