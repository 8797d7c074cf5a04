"""What goes into the engine and what comes out of it: typed, protocol-free messages.

Every message is frozen and holds only immutable values, so none can be part of a reference
cycle: `gc=False` keeps them out of the cycle collector, which the engine's hot path (several of
them per call, a table of recent stops) would otherwise keep busy.
"""

from __future__ import annotations

import enum

import msgspec


class RejectReason(enum.StrEnum):
    """Reject reason tokens of CONTRACT.md, in the order the engine checks them."""

    UNKNOWN_ACCOUNT = "unknown_account"
    BAD_CREDENTIALS = "bad_credentials"
    SUSPENDED = "suspended"
    EXPIRED = "expired"
    CLI_REJECTED = "cli_rejected"
    BLOCKED_DESTINATION = "blocked_destination"
    NO_RATE = "no_rate"
    CONCURRENCY_LIMIT = "concurrency_limit"
    CPS_LIMIT = "cps_limit"
    INSUFFICIENT_FUNDS = "insufficient_funds"


class Pap(msgspec.Struct, frozen=True, gc=False):
    password: str


class Chap(msgspec.Struct, frozen=True, gc=False):
    ident: int
    challenge: bytes
    response: bytes  # the 16-byte MD5 digest


Credential = Pap | Chap


class CallRequest(msgspec.Struct, frozen=True, gc=False):
    """An authorization (with `called`) or an authentication (without)."""

    nas: str
    username: str = ""
    called: str | None = None
    calling: str = ""
    credential: Credential | None = None
    source_ip: str | None = None  # Framed-IP-Address or the address in User-Name
    session_id: str | None = None


class AccountingRequest(msgspec.Struct, frozen=True, gc=False):
    """Start, Interim-Update or Stop of a call, identified by (nas, session_id)."""

    nas: str
    session_id: str
    username: str = ""
    called: str = ""
    calling: str = ""
    source_ip: str | None = None
    duration_seconds: int = 0
    disconnect_cause: str = ""
    setup_time: float | None = None
    connect_time: float | None = None
    disconnect_time: float | None = None


class Reject(msgspec.Struct, frozen=True, gc=False):
    reason: RejectReason
    account_number: str | None = None  # the level of the chain that refused
    detail: str = ""


class LevelGrant(msgspec.Struct, frozen=True, gc=False):
    account_id: int
    account_number: str
    prefix: str
    hold_micros: int
    max_seconds: int | None  # what this level's funds buy; None when the rate is free


class Grant(msgspec.Struct, frozen=True, gc=False):
    session_key: tuple[str, ...]
    account_id: int
    account_number: str
    seconds: int | None  # None for an authentication (no destination)
    available_micros: int
    currency: str
    prepaid: bool
    levels: tuple[LevelGrant, ...] = ()


class Transfer(msgspec.Struct, frozen=True, gc=False):
    """One movement of money: credit the credit account, debit the debit account."""

    idempotency_key: str
    debit_account_id: int
    debit_kind: str  # balance | revenue | funding
    credit_account_id: int
    credit_kind: str
    amount_micros: int
    kind: str  # call | topup | adjustment
    reference: str


class LevelCost(msgspec.Struct, frozen=True, gc=False):
    account_id: int
    account_number: str
    prefix: str
    cost_micros: int
    billable_seconds: int


class Cdr(msgspec.Struct, frozen=True, gc=False):
    nas: str
    session_id: str
    account_id: int
    account_number: str
    calling: str
    called: str
    duration_seconds: int
    billable_seconds: int
    cost_micros: int  # what the customer pays: the first level's cost
    levels: tuple[LevelCost, ...]
    disconnect_cause: str
    start_time: float
    stop_time: float
    authorized: bool


class StopResult(msgspec.Struct, frozen=True, gc=False):
    cdr: Cdr
    transfers: tuple[Transfer, ...]
    duplicate: bool = False


class MoneyResult(msgspec.Struct, frozen=True, gc=False):
    """A top-up or adjustment: the transfers and the account's new posted balance."""

    transfers: tuple[Transfer, ...]
    balance_micros: int
    duplicate: bool = False


class Disconnect(msgspec.Struct, frozen=True, gc=False):
    """Ask the protocol side to end a call (RADIUS Disconnect-Request, Diameter ASR)."""

    session_key: tuple[str, ...]
    nas: str
    session_id: str
    username: str
    reason: str  # depleted | suspended | operator | deleted
    account_number: str  # the level that caused it
