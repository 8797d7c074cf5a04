"""A call as the engine tracks it: one charge per level of its chain.

Plain classes, compiled by mypyc with the engine (ccserver/compiled.py): the engine then reads
and writes their fields directly, as struct members, which it could not do with a struct of
another extension (a msgspec struct, as they were, cost the compiled engine 8-19% in cycles/s).
The one reference cycle among them, a session and its charges (`LevelCharge.session`), is broken
by the engine when the call ends (`Engine._release` and `Engine._finish`), so an ended call is
freed by reference counting, not left to the cycle collector. Equality is identity: two calls are
never the same call because their fields are equal.
"""

from __future__ import annotations

import enum

from ccserver.actors.account import Account
from ccserver.rating.tariff import PricedRate, Rate, RateGroup


class SessionState(enum.IntEnum):
    PENDING = 1  # authorized, holds placed, no accounting Start yet
    ACTIVE = 2  # started: its exposure accrues at every level
    ENDED = 3


class LevelCharge:
    """What one call costs one level of its chain, and its place in that level's exposure."""

    __slots__ = (
        "account",
        "accrual_state",
        "group",
        "hold_micros",
        "mature_ms",
        "priced",
        "rate",
        "rate_factor",
        "session",
        "session_id_num",
    )

    def __init__(
        self,
        session: Session | None,
        session_id_num: int,
        account: Account,
        rate: Rate,
        group: RateGroup,
        hold_micros: int,
        rate_factor: int,
        priced: PricedRate,
        mature_ms: int = 0,
        accrual_state: int = 0,
    ) -> None:
        # None until the engine has priced every level and opens the call, and again once it ends.
        self.session = session
        self.session_id_num = session_id_num
        self.account = account
        self.rate = rate
        self.group = group
        self.hold_micros = hold_micros
        self.rate_factor = rate_factor  # RateGroup.per_second_factor(rate)
        self.priced = priced  # what the group priced the rate at when the call was admitted
        self.mature_ms = mature_ms
        # 0 not accruing, 1 young (inside its first increment), 2 mature, 3 removed.
        self.accrual_state = accrual_state

    def set_start(self, start_ms: int) -> None:
        rate = self.rate
        self.mature_ms = start_ms + (rate.free_seconds + rate.first_increment_seconds) * 1000


class Session:
    __slots__ = (
        "account",
        "authorized",
        "called",
        "calling",
        "created_ms",
        "disconnect_requested",
        "granted_seconds",
        "hold_expires_ms",
        "join_key",
        "key",
        "levels",
        "nas",
        "num",
        "session_id",
        "start_ms",
        "state",
        "used_seconds",
        "username",
    )

    def __init__(
        self,
        num: int,
        key: tuple[str, ...],
        account: Account,
        nas: str,
        session_id: str,
        username: str,
        calling: str,
        called: str,
        created_ms: int,
        start_ms: int,
        levels: tuple[LevelCharge, ...] = (),
        join_key: tuple[str, ...] | None = None,
        state: SessionState = SessionState.PENDING,
        hold_expires_ms: int = 0,
        granted_seconds: int | None = None,
        used_seconds: int = 0,
        disconnect_requested: bool = False,
        authorized: bool = True,
    ) -> None:
        self.num = num
        self.key = key
        self.account = account
        self.nas = nas
        self.session_id = session_id  # key[1] once the call has an Acct-Session-Id, else ""
        self.username = username
        self.calling = calling
        self.called = called
        self.created_ms = created_ms
        self.start_ms = start_ms  # created_ms until the call starts
        self.levels = levels
        self.join_key = join_key
        self.state = state
        self.hold_expires_ms = hold_expires_ms
        self.granted_seconds = granted_seconds
        self.used_seconds = used_seconds
        self.disconnect_requested = disconnect_requested
        self.authorized = authorized


def session_id_of(key: tuple[str, ...]) -> str:
    return key[1] if len(key) == 2 else ""
