"""A call as the engine tracks it: one charge per level of its chain.

Both classes are msgspec structs without cycle-collector tracking (`gc=False`): built in C, they
cost a fraction of a Python `__init__`, and the millions of them a busy engine makes never make the
collector run. That is sound because the one reference cycle among them, a session and its
charges (`LevelCharge.session`), is broken by the engine when the call ends (`Engine._release`
and `Engine._finish`), so an ended call is freed by reference counting. `eq=False` keeps identity
equality: two calls are never the same call because their fields are equal. mypyc does not
compile this module (ccserver/compiled.py): it would build these classes without their options.
Compiled as native classes they were faster to read, but every call of a busy server, its holds
alive for a minute, became objects for the collector to walk.
"""

from __future__ import annotations

import enum

import msgspec

from ccserver.actors.account import Account
from ccserver.rating.tariff import PricedRate, Rate, RateGroup


class SessionState(enum.IntEnum):
    PENDING = 1  # authorized, holds placed, no accounting Start yet
    ACTIVE = 2  # started: its exposure accrues at every level
    ENDED = 3


class LevelCharge(msgspec.Struct, gc=False, eq=False):
    """What one call costs one level of its chain, and its place in that level's exposure."""

    # None until the engine has priced every level and opens the call, and again once it ends.
    session: Session | None
    session_id_num: int
    account: Account
    rate: Rate
    group: RateGroup
    hold_micros: int
    rate_factor: int  # RateGroup.per_second_factor(rate)
    priced: PricedRate  # what the group priced the rate at when the call was admitted
    mature_ms: int = 0
    # 0 not accruing, 1 young (inside its first increment), 2 mature, 3 removed.
    accrual_state: int = 0

    def set_start(self, start_ms: int) -> None:
        priced = self.priced
        self.mature_ms = start_ms + (priced.free_seconds + priced.first_increment_seconds) * 1000


class Session(msgspec.Struct, gc=False, eq=False):
    num: int
    key: tuple[str, ...]
    account: Account
    nas: str
    session_id: str  # key[1] once the call has an Acct-Session-Id, else ""
    username: str
    calling: str
    called: str
    created_ms: int
    start_ms: int  # created_ms until the call starts
    # A tuple: the collector stops tracking it (its items are untracked), unlike a list.
    levels: tuple[LevelCharge, ...] = ()
    join_key: tuple[str, ...] | None = None
    state: SessionState = SessionState.PENDING
    hold_expires_ms: int = 0
    granted_seconds: int | None = None
    used_seconds: int = 0
    disconnect_requested: bool = False
    authorized: bool = True


def session_id_of(key: tuple[str, ...]) -> str:
    return key[1] if len(key) == 2 else ""
