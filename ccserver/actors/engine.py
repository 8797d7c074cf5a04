"""The call engine: synchronous operations over whole chains of accounts.

No method awaits. An authorization checks every level of the chain (customer, its reseller, that
reseller's parent, ... up to the operator) and places holds at every level, or at none: in one
trio task there is nothing that can run between the check and the hold.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from ccserver.actors.account import Account, CliPolicy, Status
from ccserver.actors.hierarchy import Hierarchy
from ccserver.actors.messages import (
    AccountingRequest,
    CallRequest,
    Cdr,
    Chap,
    Disconnect,
    Grant,
    LevelCost,
    LevelGrant,
    MoneyResult,
    Pap,
    Reject,
    RejectReason,
    StopResult,
    Transfer,
)
from ccserver.actors.session import LevelCharge, Session, SessionState
from ccserver.rating.tariff import Rate, RateGroup, billable_seconds

# Personal rates of an account with no rate group are rounded like a default tariff.
DEFAULT_GROUP = RateGroup(0, "default")
RECENT_KEYS_MAX = 200_000
SESSIONS_MAX = 2_000_000
DEADLINE_HEAP_SLACK = 1024


class EngineError(ValueError):
    """An operation the engine refuses (bad amount, unknown account, ...)."""


class Engine:
    def __init__(
        self,
        hierarchy: Hierarchy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_call_seconds: int = 7200,
        hold_ttl_seconds: int = 60,
    ) -> None:
        assert max_call_seconds > 0 and hold_ttl_seconds > 0
        self.hierarchy = hierarchy if hierarchy is not None else Hierarchy()
        self.clock = clock
        self.max_call_seconds = max_call_seconds
        self.hold_ttl_seconds = hold_ttl_seconds
        self.sessions: dict[tuple[str, ...], Session] = {}
        self.rate_groups: dict[int, RateGroup] = {}
        # Authorizations that carried no Acct-Session-Id wait here for their Start, by
        # (nas, User-Name, Called-Station-Id), oldest first.
        self._joins: dict[tuple[str, ...], list[Session]] = {}
        self._session_seq = 0
        self._hold_expiries: list[tuple[int, int, Session]] = []
        self._deadlines: list[tuple[int, int, int]] = []  # (deadline_ms, account id, version)
        self._deadline_live: dict[int, int] = {}  # account id -> its live deadline version
        # A stop or a money operation seen again answers what it answered the first time.
        self._recent_stops: OrderedDict[tuple[str, ...], StopResult] = OrderedDict()
        self._recent_money: OrderedDict[str, MoneyResult] = OrderedDict()

    # -- identification -------------------------------------------------------------------------

    def _identify(self, request: CallRequest | AccountingRequest) -> tuple[Account | None, str]:
        """Find the account as CONTRACT.md orders it; return it and how it was found."""
        hierarchy = self.hierarchy
        username = request.username
        if username:
            account = hierarchy.by_number.get(username)
            if account is not None and account.parent is not None:
                return account, "number"
            account = hierarchy.by_sip.get(username)
            if account is not None:
                return account, "sip"
            account = hierarchy.by_ip.find(username) if _looks_like_ip(username) else None
            if account is not None:
                return account, "ip"
        if request.source_ip:
            account = hierarchy.by_ip.find(request.source_ip)
            if account is not None:
                return account, "ip"
        if request.calling:
            account = hierarchy.by_ani.get(request.calling)
            if account is not None:
                return account, "ani"
        return None, ""

    @staticmethod
    def _credentials_ok(account: Account, request: CallRequest) -> bool:
        credential = request.credential
        if isinstance(credential, Pap):
            return account.password_matches(credential.password)
        if isinstance(credential, Chap):
            for secret in (account.password, account.pin):
                if secret is None:
                    continue
                digest = hashlib.md5(
                    bytes((credential.ident,)) + secret.encode() + credential.challenge
                ).digest()
                if digest == credential.response:
                    return True
            return False
        return False

    def _admit(
        self, request: CallRequest, now: float
    ) -> tuple[Account, list[Account], str] | Reject:
        account, found_by = self._identify(request)
        if account is None:
            return Reject(RejectReason.UNKNOWN_ACCOUNT)
        if found_by in ("number", "sip") and not self._credentials_ok(account, request):
            return Reject(RejectReason.BAD_CREDENTIALS, account.number)
        chain = account.chain()
        for level in chain:
            if level.status is not Status.ACTIVE:
                return Reject(RejectReason.SUSPENDED, level.number)
        for level in chain:
            if level.expires_at is not None and level.expires_at <= now:
                return Reject(RejectReason.EXPIRED, level.number)
        if account.cli_policy is CliPolicy.LISTED and request.calling not in account.caller_ids:
            return Reject(RejectReason.CLI_REJECTED, account.number)
        return account, chain, found_by

    # -- authorization --------------------------------------------------------------------------

    def authorize(self, request: CallRequest) -> Grant | Reject:
        """Authenticate, or authorize a call to `request.called` and hold every level."""
        now = self.clock()
        now_ms = int(now * 1000)
        admitted = self._admit(request, now)
        if isinstance(admitted, Reject):
            return admitted
        account, chain, found_by = admitted
        if request.called is None:
            return Grant(
                session_key=(),
                account_id=account.id,
                account_number=account.number,
                seconds=None,
                available_micros=account.available_micros(now_ms),
                currency=account.currency,
                prepaid=account.floor_micros == 0,
            )
        called = request.called
        if found_by == "ip" and account.tech_prefix and called.startswith(account.tech_prefix):
            called = called[len(account.tech_prefix) :]
        for level in chain:
            if level.blocked is not None and level.blocked.longest_match(called) is not None:
                return Reject(RejectReason.BLOCKED_DESTINATION, level.number)

        # Check every level before touching any: the holds below cannot fail half-way.
        priced: list[tuple[Account, Rate, RateGroup, int, int | None]] = []
        granted = self.max_call_seconds
        for level in chain:
            rate, group = _rate_for(level, called)
            if rate is None:
                return Reject(RejectReason.NO_RATE, level.number, called)
            if level.max_concurrent and level.calls >= level.max_concurrent:
                return Reject(RejectReason.CONCURRENCY_LIMIT, level.number)
            window = level.cps_window
            if window is not None and not window.can_admit(now_ms):
                return Reject(RejectReason.CPS_LIMIT, level.number)
            hold = group.first_increment_cost_micros(rate)
            available = level.available_micros(now_ms)
            if available < hold:
                return Reject(RejectReason.INSUFFICIENT_FUNDS, level.number)
            seconds = group.max_seconds(rate, available)
            if seconds is not None and seconds < granted:
                granted = seconds
            priced.append((level, rate, group, hold, seconds))
        assert granted > 0

        key = self._session_key(request)
        previous = self.sessions.get(key)
        if previous is not None:
            if previous.state is not SessionState.PENDING:
                return Reject(RejectReason.CONCURRENCY_LIMIT, account.number, "session in use")
            # A repeated authorization of a call not yet started replaces the earlier one.
            self._release(previous)
        session = self._new_session(key, account, request.nas, request.username, request, called)
        session.granted_seconds = granted
        session.hold_expires_ms = now_ms + self.hold_ttl_seconds * 1000
        levels = []
        for level, rate, group, hold, seconds in priced:
            charge = LevelCharge(session, level, rate, group, hold)
            session.levels.append(charge)
            level.calls += 1
            level.pending_hold_micros += hold
            if level.cps_window is not None:
                level.cps_window.admit(now_ms)
            levels.append(LevelGrant(level.id, level.number, rate.prefix, hold, seconds))
        if request.session_id is None:
            join = (request.nas, request.username, request.called or "")
            session.join_key = join
            self._joins.setdefault(join, []).append(session)
        heapq.heappush(self._hold_expiries, (session.hold_expires_ms, session.num, session))
        return Grant(
            session_key=key,
            account_id=account.id,
            account_number=account.number,
            seconds=granted,
            available_micros=account.available_micros(now_ms),
            currency=account.currency,
            prepaid=account.floor_micros == 0,
            levels=tuple(levels),
        )

    def _session_key(self, request: CallRequest) -> tuple[str, ...]:
        if request.session_id is not None:
            return (request.nas, request.session_id)
        # Unique until the Start joins it and re-keys it by its Acct-Session-Id.
        return (request.nas, "", str(self._session_seq + 1))

    def _new_session(
        self,
        key: tuple[str, ...],
        account: Account,
        nas: str,
        username: str,
        request: CallRequest | AccountingRequest,
        called: str,
    ) -> Session:
        if len(self.sessions) >= SESSIONS_MAX:
            raise EngineError("session table full")
        self._session_seq += 1
        now_ms = int(self.clock() * 1000)
        session = Session(
            self._session_seq, key, account, nas, username, request.calling, called, now_ms
        )
        self.sessions[key] = session
        return session

    # -- accounting -----------------------------------------------------------------------------

    def _find_for_accounting(self, request: AccountingRequest) -> Session | None:
        key = (request.nas, request.session_id)
        session = self.sessions.get(key)
        if session is not None:
            return session
        join = (request.nas, request.username, request.called)
        waiting = self._joins.get(join)
        if not waiting:
            return None
        session = waiting[0]
        self._unjoin(session)
        # The authorization is now this call: re-key it by its Acct-Session-Id.
        del self.sessions[session.key]
        session.key = key
        session.session_id = request.session_id
        self.sessions[key] = session
        return session

    def _unjoin(self, session: Session) -> None:
        join = session.join_key
        if join is None:
            return
        waiting = self._joins.get(join)
        if waiting is not None:
            waiting.remove(session)
            if not waiting:
                del self._joins[join]
        session.join_key = None

    def _unauthorized_session(self, request: AccountingRequest) -> Session | Reject:
        """A call the NAS reports without an authorization we hold: rate it all the same."""
        account, found_by = self._identify(request)
        if account is None:
            return Reject(RejectReason.UNKNOWN_ACCOUNT)
        called = request.called
        if found_by == "ip" and account.tech_prefix and called.startswith(account.tech_prefix):
            called = called[len(account.tech_prefix) :]
        key = (request.nas, request.session_id)
        return self._open_unchecked(key, account, request.username, request.calling, called)

    def _open_unchecked(
        self, key: tuple[str, str], account: Account, username: str, calling: str, called: str
    ) -> Session | Reject:
        """Open a call that is already happening: rated at every level, no limit refuses it."""
        priced = []
        for level in account.chain():
            rate, group = _rate_for(level, called)
            if rate is None:
                return Reject(RejectReason.NO_RATE, level.number, called)
            priced.append((level, rate, group))
        if len(self.sessions) >= SESSIONS_MAX:
            raise EngineError("session table full")
        self._session_seq += 1
        now_ms = int(self.clock() * 1000)
        session = Session(
            self._session_seq, key, account, key[0], username, calling, called, now_ms
        )
        self.sessions[key] = session
        session.authorized = False
        for level, rate, group in priced:
            hold = group.first_increment_cost_micros(rate)
            session.levels.append(LevelCharge(session, level, rate, group, hold))
            level.calls += 1
            level.pending_hold_micros += hold
        return session

    def restore_session(
        self,
        nas: str,
        session_id: str,
        account_id: int,
        *,
        username: str,
        calling: str,
        called: str,
        started_at: float,
        authorized: bool,
    ) -> Session | Reject:
        """Bring back a call that was up when the process stopped (start-up load)."""
        account = self.hierarchy.get(account_id)
        if account is None:
            return Reject(RejectReason.UNKNOWN_ACCOUNT)
        session = self._open_unchecked((nas, session_id), account, username, calling, called)
        if isinstance(session, Reject):
            return session
        session.authorized = authorized
        self._activate(session, int(started_at * 1000))
        return session

    def start(self, request: AccountingRequest) -> Session | Reject:
        now_ms = int(self.clock() * 1000)
        session = self._find_for_accounting(request)
        if session is None:
            found = self._unauthorized_session(request)
            if isinstance(found, Reject):
                return found
            session = found
        if session.state is SessionState.PENDING:
            self._activate(session, now_ms - request.duration_seconds * 1000)
        return session

    def _activate(self, session: Session, start_ms: int) -> None:
        assert session.state is SessionState.PENDING
        self._unjoin(session)
        session.state = SessionState.ACTIVE
        session.start_ms = start_ms
        now_ms = int(self.clock() * 1000)
        for charge in session.levels:
            level = charge.account
            level.pending_hold_micros -= charge.hold_micros
            assert level.pending_hold_micros >= 0
            charge.set_start(start_ms)
            level.add_active(charge, now_ms)
            self._reschedule(level, now_ms)

    def update(self, request: AccountingRequest) -> Session | Reject:
        """Interim-Update: the call is up for `duration_seconds`; re-anchor its start."""
        session = self._find_for_accounting(request)
        if session is None or session.state is SessionState.PENDING:
            return self.start(request)
        now_ms = int(self.clock() * 1000)
        session.used_seconds = max(session.used_seconds, request.duration_seconds)
        start_ms = now_ms - request.duration_seconds * 1000
        if abs(start_ms - session.start_ms) >= 1000:
            session.start_ms = start_ms
            for charge in session.levels:
                level = charge.account
                level.remove_active(charge)
                charge.set_start(start_ms)
                level.add_active(charge, now_ms)
                self._reschedule(level, now_ms)
        return session

    def stop(self, request: AccountingRequest) -> StopResult | Reject:
        """End a call: cost at every level, holds released, debits applied, transfers out."""
        key = (request.nas, request.session_id)
        previous = self._recent_stops.get(key)
        if previous is not None:
            return StopResult(previous.cdr, previous.transfers, duplicate=True)
        session = self._find_for_accounting(request)
        if session is None:
            found = self._unauthorized_session(request)
            if isinstance(found, Reject):
                return found
            session = found
        now = self.clock()
        result = self._finish(session, request, now)
        self._recent_stops[key] = result
        if len(self._recent_stops) > RECENT_KEYS_MAX:
            self._recent_stops.popitem(last=False)
        return result

    def _finish(self, session: Session, request: AccountingRequest, now: float) -> StopResult:
        now_ms = int(now * 1000)
        duration = max(0, request.duration_seconds)
        reference = f"{session.nas}/{request.session_id}"
        self._release(session)
        transfers = []
        costs = []
        for charge in session.levels:
            level = charge.account
            parent = level.parent
            assert parent is not None
            cost = charge.group.cost_micros(charge.rate, duration)
            assert cost >= 0
            costs.append(
                LevelCost(
                    level.id,
                    level.number,
                    charge.rate.prefix,
                    cost,
                    billable_seconds(charge.rate, duration),
                )
            )
            if cost:
                level.balance_micros -= cost
                transfers.append(
                    Transfer(
                        f"call:{reference}:{level.id}",
                        level.id,
                        "balance",
                        parent.id,
                        "revenue",
                        cost,
                        "call",
                        reference,
                    )
                )
            self._reschedule(level, now_ms)
        account = session.account
        start_time = session.start_ms / 1000 if session.state is not SessionState.PENDING else now
        cdr = Cdr(
            nas=session.nas,
            session_id=request.session_id,
            account_id=account.id,
            account_number=account.number,
            calling=request.calling or session.calling,
            called=session.called,
            duration_seconds=duration,
            billable_seconds=costs[0].billable_seconds if costs else 0,
            cost_micros=costs[0].cost_micros if costs else 0,
            levels=tuple(costs),
            disconnect_cause=request.disconnect_cause,
            start_time=request.connect_time or start_time,
            stop_time=request.disconnect_time or now,
            authorized=session.authorized,
        )
        return StopResult(cdr, tuple(transfers))

    def _release(self, session: Session) -> None:
        """Give back the slots and holds of a call, at every level."""
        state = session.state
        assert state is not SessionState.ENDED
        self._unjoin(session)
        for charge in session.levels:
            level = charge.account
            level.calls -= 1
            assert level.calls >= 0
            if state is SessionState.PENDING:
                level.pending_hold_micros -= charge.hold_micros
                assert level.pending_hold_micros >= 0
            else:
                level.remove_active(charge)
        session.state = SessionState.ENDED
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]

    def end_all(self, nas: str) -> list[StopResult]:
        """Accounting-On/Off: the NAS restarted, so every call it had is over (billed as used)."""
        results = []
        now = self.clock()
        for session in [s for s in self.sessions.values() if s.nas == nas]:
            used = session.used_seconds
            if session.state is SessionState.ACTIVE:
                used = max(used, int(now - session.start_ms / 1000))
            request = AccountingRequest(
                nas=nas,
                session_id=session.session_id or f"auth-{session.num}",
                duration_seconds=used if session.state is SessionState.ACTIVE else 0,
                disconnect_cause="nas-reboot",
            )
            if session.state is SessionState.PENDING:
                self._release(session)
                continue
            result = self._finish(session, request, now)
            self._recent_stops[session.key] = result
            results.append(result)
        return results

    # -- money ----------------------------------------------------------------------------------

    def topup(self, account_id: int, amount_micros: int, key: str, note: str = "") -> MoneyResult:
        """Credit an account from its parent's funding account (the parent issued the credit)."""
        if amount_micros <= 0:
            raise EngineError("amount must be positive")
        return self._move_money(account_id, amount_micros, key, "topup", note)

    def adjust(self, account_id: int, amount_micros: int, key: str, note: str = "") -> MoneyResult:
        """A signed correction: positive credits the account, negative debits it."""
        if amount_micros == 0:
            raise EngineError("amount must not be zero")
        return self._move_money(account_id, amount_micros, key, "adjustment", note)

    def _move_money(
        self, account_id: int, amount_micros: int, key: str, kind: str, note: str
    ) -> MoneyResult:
        previous = self._recent_money.get(key)
        if previous is not None:
            return MoneyResult(previous.transfers, previous.balance_micros, duplicate=True)
        account = self.hierarchy.get(account_id)
        if account is None or account.parent is None:
            raise EngineError(f"no account {account_id} to credit")
        parent = account.parent
        if amount_micros > 0:
            transfer = Transfer(
                key, parent.id, "funding", account.id, "balance", amount_micros, kind, note
            )
        else:
            transfer = Transfer(
                key, account.id, "balance", parent.id, "funding", -amount_micros, kind, note
            )
        account.balance_micros += amount_micros
        self._reschedule(account, int(self.clock() * 1000))
        result = MoneyResult((transfer,), account.balance_micros)
        self._recent_money[key] = result
        if len(self._recent_money) > RECENT_KEYS_MAX:
            self._recent_money.popitem(last=False)
        return result

    # -- timers: hold expiry and depletion ------------------------------------------------------

    def _reschedule(self, account: Account, now_ms: int) -> None:
        version = account.next_deadline_version()
        if not account.active_charges:
            self._deadline_live.pop(account.id, None)
            return
        deadline = account.depletion_ms(now_ms)
        if deadline is None:
            self._deadline_live.pop(account.id, None)
            return
        self._deadline_live[account.id] = version
        heapq.heappush(self._deadlines, (deadline, account.id, version))
        if len(self._deadlines) > 2 * len(self._deadline_live) + DEADLINE_HEAP_SLACK:
            live = self._deadline_live
            self._deadlines = [entry for entry in self._deadlines if live.get(entry[1]) == entry[2]]
            heapq.heapify(self._deadlines)

    def next_deadline(self) -> float | None:
        """When `tick` has work next (seconds on the engine clock), or None."""
        candidates = []
        if self._hold_expiries:
            candidates.append(self._hold_expiries[0][0])
        if self._deadlines:
            candidates.append(self._deadlines[0][0])
        return min(candidates) / 1000 if candidates else None

    def tick(self) -> list[Disconnect]:
        """Release expired holds and find the calls whose chain ran dry by now."""
        now_ms = int(self.clock() * 1000)
        expiries = self._hold_expiries
        while expiries and expiries[0][0] <= now_ms:
            _, _, session = heapq.heappop(expiries)
            if session.state is SessionState.PENDING:
                self._release(session)
        disconnects: list[Disconnect] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now_ms:
            _, account_id, version = heapq.heappop(deadlines)
            if self._deadline_live.get(account_id) != version:
                continue
            del self._deadline_live[account_id]
            account = self.hierarchy.get(account_id)
            if account is None:
                continue
            if account.available_micros(now_ms) > 0:
                # The estimate was early (calls inside their first increment): look again.
                self._reschedule(account, now_ms)
                continue
            disconnects.extend(self._disconnect_level(account, "depleted"))
        return disconnects

    def _disconnect_level(self, account: Account, reason: str) -> list[Disconnect]:
        events = []
        for charge in account.active_charges.values():
            session = charge.session
            if not session.disconnect_requested:
                session.disconnect_requested = True
                events.append(_disconnect_of(session, reason, account.number))
        return events

    def disconnect(self, key: tuple[str, ...], reason: str = "operator") -> Disconnect | None:
        session = self.sessions.get(key)
        if session is None or session.state is not SessionState.ACTIVE:
            return None
        session.disconnect_requested = True
        return _disconnect_of(session, reason, session.account.number)

    def set_status(self, account: Account, status: Status) -> list[Disconnect]:
        """Suspending an account ends the calls through it (its own and its descendants')."""
        account.status = status
        if status is Status.ACTIVE:
            return []
        return self._disconnect_level(account, status.value)

    # -- inspection -----------------------------------------------------------------------------

    def active_sessions(self, account: Account | None = None) -> Iterable[Session]:
        for session in self.sessions.values():
            if account is None or any(c.account is account for c in session.levels):
                yield session

    def check_invariants(self) -> None:
        """Recompute every counter from the sessions and compare (tests, `check-ledger`)."""
        calls: dict[int, int] = {}
        pending: dict[int, int] = {}
        base: dict[int, int] = {}
        for key, session in self.sessions.items():
            assert session.key == key
            assert session.state is not SessionState.ENDED
            for charge in session.levels:
                level_id = charge.account.id
                calls[level_id] = calls.get(level_id, 0) + 1
                if session.state is SessionState.PENDING:
                    pending[level_id] = pending.get(level_id, 0) + charge.hold_micros
                else:
                    base[level_id] = base.get(level_id, 0) + charge.hold_micros
                    assert charge.account.active_charges.get(session.num) is charge
        for account in self.hierarchy:
            assert account.calls == calls.get(account.id, 0), account
            assert account.pending_hold_micros == pending.get(account.id, 0), account
            assert account.active_base_micros == base.get(account.id, 0), account
            assert len(account.active_charges) <= account.calls
            account.assert_invariants()
            self.hierarchy.assert_acyclic(account)


def _rate_for(level: Account, number: str) -> tuple[Rate | None, RateGroup]:
    group = level.rate_group if level.rate_group is not None else DEFAULT_GROUP
    return level.lookup_rate(number), group


def _disconnect_of(session: Session, reason: str, level_number: str) -> Disconnect:
    return Disconnect(
        session_key=session.key,
        nas=session.nas,
        session_id=session.session_id,
        username=session.username,
        reason=reason,
        account_number=level_number,
    )


def _looks_like_ip(text: str) -> bool:
    if not text or not (text[0].isdigit() or ":" in text):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
