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

from ccserver.actors.account import (
    EXPOSURE_DENOMINATOR,
    NUM_BITS,
    NUM_MASK,
    Account,
    CliPolicy,
    Status,
)
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
from ccserver.actors.session import LevelCharge, Session, SessionState, session_id_of
from ccserver.rating.tariff import PricedRate, Rate, RateGroup, RateSpace

# Personal rates of an account with no rate group are rounded like a default tariff.
DEFAULT_GROUP = RateGroup(0, "default")
# Money operations and stops remembered for answering a repeat the same way. A repeated stop older
# than RECENT_STOPS_MAX stops is not recognised here (it is a retransmission, which comes within
# seconds); the ledger's idempotency keys still refuse to apply its transfers twice.
RECENT_KEYS_MAX = 200_000
RECENT_STOPS_MAX = 50_000
SESSIONS_MAX = 2_000_000
DEADLINE_HEAP_SLACK = 1024
DEADLINE_ID_BITS = 64  # of the account id in an entry of the deadline heap
DEADLINE_ID_MASK = (1 << DEADLINE_ID_BITS) - 1
# A depletion further away than this is scheduled half-way instead (Engine._reschedule).
DEADLINE_HORIZON_MS = 60_000
_ROUNDING_SLACK = EXPOSURE_DENOMINATOR - 1

# Enum members read through their class cost a descriptor call each (Python 3.11); module
# globals do not. These are read on every call.
_ACTIVE = Status.ACTIVE
_LISTED = CliPolicy.LISTED
_PENDING = SessionState.PENDING
_STARTED = SessionState.ACTIVE
_ENDED = SessionState.ENDED


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
        rate_space: RateSpace | None = None,
    ) -> None:
        assert max_call_seconds > 0 and hold_ttl_seconds > 0
        self.hierarchy = hierarchy if hierarchy is not None else Hierarchy()
        # Where the rate groups made for this engine keep their rates (RateGroup(space=...)):
        # an authorization finds the rate of every level of its chain in one walk of it.
        self.rate_space = rate_space if rate_space is not None else RateSpace()
        self.clock = clock
        self.max_call_seconds = max_call_seconds
        self.hold_ttl_seconds = hold_ttl_seconds
        self.sessions: dict[tuple[str, ...], Session] = {}
        self.rate_groups: dict[int, RateGroup] = {}
        # Authorizations that carried no Acct-Session-Id wait here for their Start, by
        # (nas, User-Name, Called-Station-Id), oldest first.
        self._joins: dict[tuple[str, ...], list[Session]] = {}
        self._session_seq = 0
        # A heap of hold_expires_ms << NUM_BITS | num of every authorization, and the sessions
        # still waiting for their Start by num: an expiry that finds its call started, ended or
        # authorized afresh finds nothing here.
        self._hold_expiries: list[int] = []
        self._pending: dict[int, Session] = {}
        # A heap of deadline_ms << DEADLINE_ID_BITS | account id (ints: no tuple per deadline
        # for the young collection to walk), and account id -> the deadline it has in the heap,
        # for the levels with calls up (a level whose last call ended keeps its deadline parked
        # in Account.deadline_ms). An entry is live if it is its account's deadline; an entry
        # pushed twice for the same instant is looked at once (the second finds it not live).
        self._deadlines: list[int] = []
        self._deadline_live: dict[int, int] = {}
        # A stop or a money operation seen again answers what it answered the first time.
        # A stop is remembered as its CDR and the parent id of its top level (_transfers_of).
        self._recent_stops: OrderedDict[tuple[str, ...], tuple[Cdr, int]] = OrderedDict()
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
    ) -> tuple[Account, tuple[Account, ...], str] | Reject:
        username = request.username
        # _identify's first and usual case, inlined: an account found by its number.
        account = self.hierarchy.by_number.get(username) if username else None
        if account is not None and account.parent is not None:
            found_by = "number"
        else:
            account, found_by = self._identify(request)
            if account is None:
                return Reject(RejectReason.UNKNOWN_ACCOUNT)
        if found_by == "number" or found_by == "sip":
            credential = request.credential
            if isinstance(credential, Pap):  # Account.password_matches, inlined
                secret = credential.password
                password = account.password
                pin = account.pin
                accepted = (password is not None and secret == password) or (
                    pin is not None and secret == pin
                )
            else:
                accepted = self._credentials_ok(account, request)
            if not accepted:
                return Reject(RejectReason.BAD_CREDENTIALS, account.number)
        chain = account.chain_tuple()
        for level in chain:
            if level.status is not _ACTIVE:
                return Reject(RejectReason.SUSPENDED, level.number)
        for level in chain:
            if level.expires_at is not None and level.expires_at <= now:
                return Reject(RejectReason.EXPIRED, level.number)
        if account.cli_policy is _LISTED and request.calling not in account.caller_ids:
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

        # Check every level before touching any: the holds below cannot fail half-way. What is
        # built here (charges, grants) is only kept if every level admits the call.
        charges: list[LevelCharge] = []
        grants: list[LevelGrant] = []
        granted = self.max_call_seconds
        account_available = 0
        num = self._session_seq + 1  # the number the session will have
        entries = _entries_for(self.rate_space, called, chain)
        for n, level in enumerate(chain):
            entry = entries[n]
            if entry is None:
                return Reject(RejectReason.NO_RATE, level.number, called)
            group = level.rate_group
            if group is None:
                group = DEFAULT_GROUP
            if level.max_concurrent and level.calls >= level.max_concurrent:
                return Reject(RejectReason.CONCURRENCY_LIMIT, level.number)
            window = level.cps_window
            if window is not None and not window.can_admit(now_ms):
                return Reject(RejectReason.CPS_LIMIT, level.number)
            # Account.available_micros, inlined.
            young = level._young
            if young and young[0] >> NUM_BITS <= now_ms:
                level._mature_until(now_ms)
            available = (
                level.balance_micros
                - level.floor_micros
                - level.pending_hold_micros
                - level.active_base_micros
            )
            mature_sum = level.mature_rate_sum
            if mature_sum or level.mature_rate_time_sum:
                available += (
                    level.mature_rate_time_sum - mature_sum * now_ms
                ) // EXPOSURE_DENOMINATOR
            priced, seconds = group.quote_entry(entry, available)
            hold = priced.hold_micros
            if available < hold:
                return Reject(RejectReason.INSUFFICIENT_FUNDS, level.number)
            if seconds is not None and seconds < granted:
                granted = seconds
            if not charges:
                account_available = available - hold
            charges.append(
                LevelCharge(None, num, level, priced.rate, group, hold, priced.factor, priced)
            )
            grants.append(LevelGrant(level.id, level.number, priced.prefix, hold, seconds))
        assert granted > 0

        session_id = request.session_id
        nas = request.nas
        # _session_key, inlined.
        key = (nas, session_id) if session_id is not None else (nas, "", str(num))
        sessions = self.sessions
        previous = sessions.get(key)
        if previous is not None:
            if previous.state is not _PENDING:
                return Reject(RejectReason.CONCURRENCY_LIMIT, account.number, "session in use")
            # A repeated authorization of a call not yet started replaces the earlier one.
            self._release(previous)
        # _new_session, inlined.
        if len(sessions) >= SESSIONS_MAX:
            raise EngineError("session table full")
        self._session_seq = num
        hold_expires_ms = now_ms + self.hold_ttl_seconds * 1000
        session = Session(
            num,
            key,
            account,
            nas,
            session_id_of(key),
            request.username,
            request.calling,
            called,
            now_ms,
            now_ms,
            tuple(charges),
            None,
            _PENDING,
            hold_expires_ms,
            granted,
        )
        sessions[key] = session
        for charge in charges:
            charge.session = session
            level = charge.account
            level.calls += 1
            level.pending_hold_micros += charge.hold_micros
            if level.deadline_ms is not None:
                level.deadline_margin -= charge.hold_micros * EXPOSURE_DENOMINATOR
            if level.cps_window is not None:
                level.cps_window.admit(now_ms)
        if session_id is None:
            join = (nas, request.username, request.called or "")
            session.join_key = join
            self._joins.setdefault(join, []).append(session)
        self._pending[num] = session
        heapq.heappush(self._hold_expiries, hold_expires_ms << NUM_BITS | num)
        if previous is None and chain:
            # Only this call's hold has changed the account (chain[0]) since it was priced.
            available = account_available
        else:
            available = account.available_micros(now_ms)
        return Grant(
            key,
            account.id,
            account.number,
            granted,
            available,
            account.currency,
            account.floor_micros == 0,
            tuple(grants),
        )

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
            self._session_seq,
            key,
            account,
            key[0],
            session_id_of(key),
            username,
            calling,
            called,
            now_ms,
            now_ms,
            authorized=False,
        )
        self.sessions[key] = session
        charges = []
        for level, rate, group in priced:
            entry = group.priced(rate)
            hold = entry.hold_micros
            charges.append(
                LevelCharge(session, session.num, level, rate, group, hold, entry.factor, entry)
            )
            level.calls += 1
            level.pending_hold_micros += hold
            if level.deadline_ms is not None:
                level.deadline_margin -= hold * EXPOSURE_DENOMINATOR
        session.levels = tuple(charges)
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
        session = self.sessions.get((request.nas, request.session_id))
        if session is None:
            session = self._find_for_accounting(request)
        if session is None:
            found = self._unauthorized_session(request)
            if isinstance(found, Reject):
                return found
            session = found
        if session.state is _PENDING:
            self._activate(session, now_ms - request.duration_seconds * 1000, now_ms)
        return session

    def _activate(self, session: Session, start_ms: int, now_ms: int | None = None) -> None:
        assert session.state is _PENDING
        if session.join_key is not None:
            self._unjoin(session)
        session.state = _STARTED
        self._pending.pop(session.num, None)
        session.start_ms = start_ms
        if now_ms is None:
            now_ms = int(self.clock() * 1000)
        for charge in session.levels:
            level = charge.account
            level.pending_hold_micros -= charge.hold_micros
            assert level.pending_hold_micros >= 0
            priced = charge.priced  # charge.set_start, inlined
            mature_ms = start_ms + (priced.free_seconds + priced.first_increment_seconds) * 1000
            charge.mature_ms = mature_ms
            level.add_active(charge, now_ms)
            # Reserve what the call can burn until the deadline (see _reschedule): from now, or
            # from the end of its first increment if that is past already (a Start that reports
            # time used). A deadline due already is looked at by `tick`, afresh.
            scheduled = level.deadline_ms
            if scheduled is None:
                self._reschedule(level, now_ms)
            elif scheduled > now_ms:
                burning_from = mature_ms if mature_ms < now_ms else now_ms
                margin = level.deadline_margin - charge.rate_factor * (scheduled - burning_from)
                if margin < 0:
                    self._reschedule(level, now_ms)
                else:
                    level.deadline_margin = margin
                    if level.id not in self._deadline_live:
                        self._push_deadline(level, scheduled)  # parked (_finish): back on
            elif level.id not in self._deadline_live:
                self._reschedule(level, now_ms)  # parked and due: `tick` would not see it

    def update(self, request: AccountingRequest) -> Session | Reject:
        """Interim-Update: the call is up for `duration_seconds`; re-anchor its start."""
        session = self._find_for_accounting(request)
        if session is None or session.state is _PENDING:
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
            cdr, top_parent_id = previous
            return StopResult(cdr, _transfers_of(cdr, top_parent_id), duplicate=True)
        session = self.sessions.get(key)
        if session is None:
            session = self._find_for_accounting(request)
        if session is None:
            found = self._unauthorized_session(request)
            if isinstance(found, Reject):
                return found
            session = found
        result = self._finish(session, request, self.clock())
        self._remember_stop(key, result, session)
        return result

    def _remember_stop(self, key: tuple[str, ...], result: StopResult, session: Session) -> None:
        # The transfers are rebuilt from the CDR when a stop is repeated (_transfers_of): kept
        # whole, they were about half of the memory of this table.
        top_parent_id = 0
        if session.levels:
            parent = session.levels[-1].account.parent
            assert parent is not None
            top_parent_id = parent.id
        recent = self._recent_stops
        recent[key] = (result.cdr, top_parent_id)
        while len(recent) > RECENT_STOPS_MAX:
            recent.popitem(last=False)

    def _finish(self, session: Session, request: AccountingRequest, now: float) -> StopResult:
        """Cost, debit and release a call at every level (`_release` and the pricing, fused:
        the deadline decision below needs each charge's accrual before its release)."""
        now_ms = int(now * 1000)
        duration = max(0, request.duration_seconds)
        reference = f"{session.nas}/{request.session_id}"
        state = session.state
        assert state is not _ENDED
        if session.join_key is not None:
            self._unjoin(session)
        pending = state is _PENDING
        transfers = []
        costs = []
        for charge in session.levels:
            level = charge.account
            parent = level.parent
            assert parent is not None
            level.calls -= 1
            assert level.calls >= 0
            hold = charge.hold_micros
            accrual = charge.accrual_state
            if pending:
                level.pending_hold_micros -= hold
                assert level.pending_hold_micros >= 0
            else:
                level.end_active(charge)
            charge.session = None
            cost, billable = charge.group.charge(charge.priced, duration)
            assert cost >= 0
            costs.append(LevelCost(level.id, level.number, charge.priced.prefix, cost, billable))
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
            # The deadline's margin gets back what was reserved for the call (its hold, and its
            # burn from now until the deadline) and loses its cost.
            scheduled = level.deadline_ms
            if scheduled is None:
                # No margin is kept without a deadline (no call that burns, or the level ran dry
                # already): whether the level is dry now is computed, as at every stop before.
                if level.active_charges:
                    self._reschedule(level, now_ms)
            elif scheduled > now_ms:
                margin = level.deadline_margin + (hold - cost) * EXPOSURE_DENOMINATOR
                if not pending:
                    mature_ms = charge.mature_ms
                    if accrual == 2 or (accrual == 1 and mature_ms <= now_ms):
                        # Past its first increment its burn since then is part of the exposure
                        # released (the exposure sum is rounded up: one micro-unit less, at most).
                        margin += charge.rate_factor * (scheduled - mature_ms) - _ROUNDING_SLACK
                    else:
                        margin += charge.rate_factor * (scheduled - now_ms)
                if margin < 0:
                    self._reschedule(level, now_ms)
                else:
                    level.deadline_margin = margin
            if not level.active_charges and level.deadline_ms is not None:
                # The level's last call: its deadline leaves the heap (which holds the levels
                # with calls up, not every level that ever had one) but stays with its margin,
                # for the level's next call to take up without computing it afresh.
                self._deadline_live.pop(level.id, None)
        if pending:
            self._pending.pop(session.num, None)
        session.state = _ENDED
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
        account = session.account
        first = costs[0] if costs else None
        cdr = Cdr(
            session.nas,
            request.session_id,
            account.id,
            account.number,
            request.calling or session.calling,
            session.called,
            duration,
            first.billable_seconds if first is not None else 0,
            first.cost_micros if first is not None else 0,  # what the customer pays
            tuple(costs),
            request.disconnect_cause,
            # Of a call never started, this is when it was authorized.
            request.connect_time or session.start_ms / 1000,
            request.disconnect_time or now,
            session.authorized,
        )
        return StopResult(cdr, tuple(transfers))

    def _release(self, session: Session) -> None:
        """Give back the slots and holds of a call, at every level."""
        state = session.state
        assert state is not _ENDED
        self._unjoin(session)
        for charge in session.levels:
            level = charge.account
            level.calls -= 1
            assert level.calls >= 0
            if state is _PENDING:
                level.pending_hold_micros -= charge.hold_micros
                assert level.pending_hold_micros >= 0
            else:
                level.end_active(charge)
            charge.session = None
        if state is _PENDING:
            self._pending.pop(session.num, None)
        session.state = _ENDED
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]

    def end_all(self, nas: str) -> list[StopResult]:
        """Accounting-On/Off: the NAS restarted, so every call it had is over (billed as used)."""
        return self._end_sessions([s for s in self.sessions.values() if s.nas == nas], "nas-reboot")

    def end_calls_through(self, account: Account, cause: str) -> list[StopResult]:
        """End now every call with `account` in its chain (a deleted account): the started ones
        are billed as used, the authorized ones never started are released."""
        return self._end_sessions(list(self.active_sessions(account)), cause)

    def _end_sessions(self, sessions: list[Session], cause: str) -> list[StopResult]:
        results = []
        now = self.clock()
        for session in sessions:
            if session.state is _ENDED:
                continue
            if session.state is _PENDING:
                self._release(session)  # authorized, never started: nothing to charge
                continue
            used = max(session.used_seconds, int(now - session.start_ms / 1000))
            request = AccountingRequest(
                nas=session.nas,
                session_id=session.session_id or f"auth-{session.num}",
                duration_seconds=used,
                disconnect_cause=cause,
            )
            result = self._finish(session, request, now)
            self._remember_stop(session.key, result, session)
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
        if amount_micros < 0:
            # (A credit only moves depletion later: the deadline scheduled stays early enough.)
            self._spend(account, -amount_micros, int(self.clock() * 1000))
        result = MoneyResult((transfer,), account.balance_micros)
        self._recent_money[key] = result
        if len(self._recent_money) > RECENT_KEYS_MAX:
            self._recent_money.popitem(last=False)
        return result

    def revert(self, transfers: Iterable[Transfer]) -> None:
        """Undo what these transfers did to balances in memory. For a stop the engine did not
        recognise as repeated (a retransmission older than its memory of stops, or across a
        restart) but the ledger had applied already: the ledger is right, the second debit is
        given back."""
        now_ms = int(self.clock() * 1000)
        for transfer in transfers:
            amount = transfer.amount_micros
            if transfer.debit_kind == "balance":
                debited = self.hierarchy.get(transfer.debit_account_id)
                if debited is not None:
                    debited.balance_micros += amount  # a credit: the deadline stays early enough
            if transfer.credit_kind == "balance":
                credited = self.hierarchy.get(transfer.credit_account_id)
                if credited is not None:
                    credited.balance_micros -= amount
                    self._spend(credited, amount, now_ms)

    # -- timers: hold expiry and depletion ------------------------------------------------------

    # The depletion deadline of an account is an instant at which its funds may be gone; `tick`
    # looks at the account then, and disconnects its calls or schedules it again. A deadline
    # earlier than needed costs one look; a later one would let calls run past the funds.
    #
    # Computing the instant (the account's funds and burn rate: big-integer arithmetic over its
    # active calls) at every level of every start and stop was the largest cost of a call. So a
    # deadline comes with a margin, in exposure numerator units (micro-units times
    # EXPOSURE_DENOMINATOR): the funds left at the deadline if every active call burns until
    # then from the later of its start and the scheduling. An authorization takes its hold from
    # it, a start the call's burn until the deadline; a stop gives back what was taken for the
    # call and takes its cost; a debit takes its amount. While the margin is not negative the
    # deadline is early enough; when it is, the deadline is computed afresh. Credits only move
    # depletion later and leave it as it is. A depletion further away than DEADLINE_HORIZON_MS
    # is scheduled half-way, which leaves a margin of half the funds; near the end the deadline
    # is the computed instant, as it always was. When a level's last call ends its deadline is
    # parked: out of the heap, kept with its margin for the level's next call.

    def _reschedule(self, account: Account, now_ms: int) -> None:
        """Compute the account's deadline and margin afresh (none without calls that burn)."""
        if not account.active_charges:
            self._drop_deadline(account)
            return
        remaining, rate_sum = account.funds_and_burn(now_ms)
        if remaining <= 0:
            deadline = now_ms
            margin = 0
        elif rate_sum == 0:
            self._drop_deadline(account)
            return
        else:
            funds = remaining * EXPOSURE_DENOMINATOR
            # Account.depletion_ms: rounded up, so that at that instant the funds are gone (or,
            # with young calls, the re-check finds a later instant).
            span = -(-funds // rate_sum)
            if span > DEADLINE_HORIZON_MS:
                span //= 2
            deadline = now_ms + span
            margin = funds - rate_sum * span
        account.deadline_margin = margin
        if deadline != account.deadline_ms or account.id not in self._deadline_live:
            self._push_deadline(account, deadline)

    def _spend(self, account: Account, micros: int, now_ms: int) -> None:
        """The account's funds went down by `micros` (a debit)."""
        scheduled = account.deadline_ms
        if scheduled is not None and scheduled <= now_ms:
            return  # due already: `tick` looks at it next
        if scheduled is not None:
            margin = account.deadline_margin - micros * EXPOSURE_DENOMINATOR
            if margin >= 0:
                account.deadline_margin = margin
                return
        self._reschedule(account, now_ms)

    def _push_deadline(self, account: Account, deadline: int) -> None:
        assert 0 <= account.id <= DEADLINE_ID_MASK  # ids are Postgres bigints, never negative
        account.deadline_ms = deadline
        self._deadline_live[account.id] = deadline
        heapq.heappush(self._deadlines, deadline << DEADLINE_ID_BITS | account.id)
        if len(self._deadlines) > 2 * len(self._deadline_live) + DEADLINE_HEAP_SLACK:
            live = self._deadline_live
            self._deadlines = [
                entry
                for entry in self._deadlines
                if live.get(entry & DEADLINE_ID_MASK) == entry >> DEADLINE_ID_BITS
            ]
            heapq.heapify(self._deadlines)

    def _drop_deadline(self, account: Account) -> None:
        if account.deadline_ms is not None:
            account.deadline_ms = None
            self._deadline_live.pop(account.id, None)

    def next_deadline(self, hold_slack_seconds: float = 0.0) -> float | None:
        """When `tick` has work next (seconds on the engine clock), or None.

        With a slack, hold expiries count that much later, depletion deadlines never: a caller
        that sleeps until then (the server's timer) releases every hold expired by then in one
        `tick` rather than waking once per authorization (every authorization's expiry stays in
        the heap after its call starts, and comes due hold_ttl_seconds later).
        """
        expiries = self._hold_expiries
        deadlines = self._deadlines
        if expiries:
            first = (expiries[0] >> NUM_BITS) + int(hold_slack_seconds * 1000)
            if deadlines:
                first = min(first, deadlines[0] >> DEADLINE_ID_BITS)
        elif deadlines:
            first = deadlines[0] >> DEADLINE_ID_BITS
        else:
            return None
        return first / 1000

    def tick(self) -> list[Disconnect]:
        """Release expired holds and find the calls whose chain ran dry by now."""
        now_ms = int(self.clock() * 1000)
        expiries = self._hold_expiries
        pending = self._pending
        while expiries and expiries[0] >> NUM_BITS <= now_ms:
            session = pending.get(heapq.heappop(expiries) & NUM_MASK)
            if session is not None:
                self._release(session)
        disconnects: list[Disconnect] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0] >> DEADLINE_ID_BITS <= now_ms:
            entry = heapq.heappop(deadlines)
            account_id = entry & DEADLINE_ID_MASK
            if self._deadline_live.get(account_id) != entry >> DEADLINE_ID_BITS:
                continue
            del self._deadline_live[account_id]
            account = self.hierarchy.get(account_id)
            if account is None:
                continue
            account.deadline_ms = None
            if account.available_micros(now_ms) > 0:
                # The estimate was early (calls inside their first increment, or a half-way
                # deadline): look again.
                self._reschedule(account, now_ms)
                continue
            disconnects.extend(self._disconnect_level(account, "depleted"))
        return disconnects

    def _disconnect_level(self, account: Account, reason: str) -> list[Disconnect]:
        events = []
        for charge in account.active_charges.values():
            session = charge.session
            assert session is not None  # cleared only when the call ends
            if not session.disconnect_requested:
                session.disconnect_requested = True
                events.append(_disconnect_of(session, reason, account.number))
        return events

    def disconnect(self, key: tuple[str, ...], reason: str = "operator") -> Disconnect | None:
        session = self.sessions.get(key)
        if session is None or session.state is not _STARTED:
            return None
        session.disconnect_requested = True
        return _disconnect_of(session, reason, session.account.number)

    def set_status(self, account: Account, status: Status) -> list[Disconnect]:
        """Suspending an account ends the calls through it (its own and its descendants')."""
        account.status = status
        if status is _ACTIVE:
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
            assert session.state is not _ENDED
            for charge in session.levels:
                level_id = charge.account.id
                calls[level_id] = calls.get(level_id, 0) + 1
                if session.state is _PENDING:
                    pending[level_id] = pending.get(level_id, 0) + charge.hold_micros
                else:
                    base[level_id] = base.get(level_id, 0) + charge.hold_micros
                    assert charge.account.active_charges.get(session.num) is charge
        for num, session in self._pending.items():
            assert session.num == num and session.state is _PENDING
            assert self.sessions.get(session.key) is session
        for account in self.hierarchy:
            assert account.calls == calls.get(account.id, 0), account
            assert account.pending_hold_micros == pending.get(account.id, 0), account
            assert account.active_base_micros == base.get(account.id, 0), account
            assert len(account.active_charges) <= account.calls
            account.assert_invariants()
            self.hierarchy.assert_acyclic(account)


def _entries_for(
    space: RateSpace, called: str, chain: tuple[Account, ...]
) -> list[PricedRate | None]:
    """The priced rate of every level of a chain for `called`, None where a level has none: its
    personal rate (Account.lookup_rate's order), else its group's; the groups of `space` are
    looked up in one walk of it."""
    count = len(chain)
    found: list[PricedRate | None] = [None] * count
    groups: list[RateGroup | None] = [None] * count
    wanted = 0
    for n in range(count):
        level = chain[n]
        group = level.rate_group
        personal = level.personal_rates
        if personal is not None:
            rate = personal.longest_match(called)
            if rate is not None:
                found[n] = (group if group is not None else DEFAULT_GROUP).priced(rate)
                continue
        if group is None:
            continue
        if group.space is space:
            groups[n] = group
            wanted += 1
        else:
            found[n] = group.space.find(called, group)
    if wanted:
        space.match(called, groups, found, wanted)
    return found


def _rate_for(level: Account, number: str) -> tuple[Rate | None, RateGroup]:
    group = level.rate_group if level.rate_group is not None else DEFAULT_GROUP
    return level.lookup_rate(number), group


def _transfers_of(cdr: Cdr, top_parent_id: int) -> tuple[Transfer, ...]:
    """The transfers `_finish` made for this CDR: each level pays its cost to its parent, which
    is the next level of the chain, or `top_parent_id` for the last."""
    reference = f"{cdr.nas}/{cdr.session_id}"
    levels = cdr.levels
    transfers = []
    for index, level in enumerate(levels):
        if level.cost_micros:
            parent_id = levels[index + 1].account_id if index + 1 < len(levels) else top_parent_id
            transfers.append(
                Transfer(
                    f"call:{reference}:{level.account_id}",
                    level.account_id,
                    "balance",
                    parent_id,
                    "revenue",
                    level.cost_micros,
                    "call",
                    reference,
                )
            )
    return tuple(transfers)


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
