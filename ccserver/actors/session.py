"""A call as the engine tracks it: one charge per level of its chain."""

from __future__ import annotations

import enum

from ccserver.actors.account import Account
from ccserver.rating.tariff import Rate, RateGroup


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
        "rate",
        "rate_factor",
        "session",
        "session_id_num",
    )

    def __init__(
        self, session: Session, account: Account, rate: Rate, group: RateGroup, hold_micros: int
    ) -> None:
        self.session = session
        self.session_id_num = session.num
        self.account = account
        self.rate = rate
        self.group = group
        self.hold_micros = hold_micros
        self.rate_factor = group.per_second_factor(rate)
        self.mature_ms = 0
        # 0 not accruing, 1 young (inside its first increment), 2 mature, 3 removed.
        self.accrual_state = 0

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
        username: str,
        calling: str,
        called: str,
        now_ms: int,
    ) -> None:
        self.num = num
        self.key = key
        self.join_key: tuple[str, ...] | None = None
        self.account = account
        self.nas = nas
        self.session_id = key[1] if len(key) == 2 else ""
        self.username = username
        self.calling = calling
        self.called = called
        self.levels: list[LevelCharge] = []
        self.state = SessionState.PENDING
        self.created_ms = now_ms
        self.start_ms = now_ms
        self.hold_expires_ms = 0
        self.granted_seconds: int | None = None
        self.used_seconds = 0
        self.disconnect_requested = False
        self.authorized = True
