"""Random call mixes over random hierarchies, checking DESIGN.md's invariants 1-4 after every step.

Each example draws a hierarchy (depth 1-6 below the operator, small balances so that levels run
dry, random limits) and a sequence of operations: authorizations, starts, interim updates, stops
(some repeated), stops of calls never authorized, top-ups (some repeated), and the passing of time
with the depletion scheduler's disconnects acted on at once. An in-memory ledger takes every
transfer the engine emits, applying each idempotency key once.
"""

from __future__ import annotations

import os
from collections import defaultdict, deque

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ccserver.actors.account import Account, AccountKind, Billing
from ccserver.actors.engine import Engine
from ccserver.actors.messages import (
    AccountingRequest,
    CallRequest,
    Grant,
    Pap,
    Reject,
    StopResult,
    Transfer,
)
from ccserver.rating.tariff import Rate, RateGroup, RateSpace

EXAMPLES = 2000 if os.environ.get("CI") else 400
START = 1_700_000_000.0
DESTINATIONS = ("441", "4420", "33", "3361", "1212", "99")


class ManualClock:
    """The engine's clock in these tests: `now[0]` is the time; the driver moves it."""

    def __init__(self, start: float) -> None:
        self.now = [start]

    def __call__(self) -> float:
        return self.now[0]


class Ledger:
    """What the ledger will do: one application per idempotency key, double-entry balances."""

    def __init__(self) -> None:
        self.by_key: dict[str, Transfer] = {}
        self.balances: dict[tuple[int, str], int] = defaultdict(int)
        self.by_reference: dict[str, list[Transfer]] = defaultdict(list)

    def apply(self, transfers: tuple[Transfer, ...]) -> None:
        for transfer in transfers:
            seen = self.by_key.get(transfer.idempotency_key)
            if seen is not None:
                assert seen == transfer, "one key, two different transfers"
                continue
            assert transfer.amount_micros > 0
            self.by_key[transfer.idempotency_key] = transfer
            self.balances[(transfer.debit_account_id, transfer.debit_kind)] -= (
                transfer.amount_micros
            )
            self.balances[(transfer.credit_account_id, transfer.credit_kind)] += (
                transfer.amount_micros
            )
            self.by_reference[transfer.reference].append(transfer)


@st.composite
def rate_groups(draw: st.DrawFn, group_id: int, space: RateSpace | None = None) -> RateGroup:
    group = RateGroup(
        group_id,
        f"g{group_id}",
        precision=draw(st.integers(0, 6)),
        rounding=draw(st.sampled_from(["up", "down", "half_up"])),
        markup_ppm=draw(st.sampled_from([0, 0, 100_000, 250_000])),
        space=space,
    )
    optional = draw(st.sets(st.sampled_from(["44", "442", "336", "1"])))
    for prefix in ["4", "3", *sorted(optional)]:
        group.put(
            Rate(
                prefix,
                prefix,
                draw(st.sampled_from([0, 0, 10_000, 50_000])),
                draw(st.sampled_from([0, 6_000, 60_000, 600_000, 1_200_000])),
                draw(st.sampled_from([0, 0, 5])),
                draw(st.sampled_from([1, 1, 6, 30, 60])),
                draw(st.sampled_from([1, 1, 6, 60])),
            )
        )
    return group


@st.composite
def worlds(draw: st.DrawFn) -> Engine:
    engine = Engine(
        clock=ManualClock(START),
        max_call_seconds=draw(st.sampled_from([60, 600, 7200])),
        hold_ttl_seconds=draw(st.sampled_from([5, 60])),
    )
    # The groups share the engine's space (as the server loads them: one walk rates the whole
    # chain), or each has its own (a walk per level).
    space = engine.rate_space if draw(st.booleans()) else None
    groups = [draw(rate_groups(gid, space)) for gid in range(1, 4)]
    hierarchy = engine.hierarchy
    depth = draw(st.integers(1, 6))
    parents = [hierarchy.operator]
    next_id = 2

    def new_account(parent: Account, kind: AccountKind) -> Account:
        nonlocal next_id
        billing = draw(st.sampled_from([Billing.PREPAID, Billing.PREPAID, Billing.POSTPAID]))
        account = Account(
            next_id,
            f"a{next_id}",
            kind,
            parent,
            billing=billing,
            credit_limit_micros=draw(st.sampled_from([0, 100_000, 1_000_000])),
            balance_micros=draw(st.sampled_from([0, 300_000, 1_000_000, 1_000_000, 5_000_000])),
            rate_group=draw(st.sampled_from(groups)),
            max_concurrent=draw(st.sampled_from([0, 0, 1, 2, 3])),
            cps=draw(st.sampled_from([0, 0, 1, 2])),
            password="pw",
        )
        next_id += 1
        return hierarchy.add(account)

    # A spine of `depth - 1` resellers guarantees the depth; a few more branch off it.
    for _ in range(depth - 1):
        parents.append(new_account(parents[-1], AccountKind.RESELLER))
    for _ in range(draw(st.integers(0, 3))):
        if len(parents[-1].chain()) < depth - 1:
            parents.append(new_account(draw(st.sampled_from(parents)), AccountKind.RESELLER))
    for _ in range(draw(st.integers(1, 4))):
        candidates = [p for p in parents if len(p.chain()) < depth]
        new_account(draw(st.sampled_from(candidates)), AccountKind.CUSTOMER)
    return engine


OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "auth",
                "auth",
                "auth",
                "auth",
                "start",
                "start",
                "start",
                "start",
                "stop",
                "update",
                "restop",
                "unauth_stop",
                "topup",
                "retopup",
                "time",
                "time",
                "time",
            ]
        ),
        st.integers(0, 1_000),
        st.integers(0, 1_000),
    ),
    min_size=1,
    max_size=80,
)


class Driver:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        assert isinstance(engine.clock, ManualClock)
        self.clock = engine.clock.now
        self.ledger = Ledger()
        self.customers = [a for a in engine.hierarchy if a.kind is AccountKind.CUSTOMER]
        self.accounts = [a for a in engine.hierarchy if a.parent is not None]
        self.pending: list[str] = []
        self.active: dict[str, float] = {}
        self.stops: list[AccountingRequest] = []
        self.topups: list[tuple[int, int, str]] = []
        self.seq = 0
        # Invariant 2's allowance per level: one increment per call stopped while the level is
        # below its floor (plus calls charged without authorization, which are never refused).
        self.allowance: dict[int, int] = defaultdict(int)
        self.admissions: dict[int, deque[float]] = defaultdict(deque)
        self.authorized_calls: dict[int, int] = defaultdict(int)
        self.session_levels: dict[str, list[int]] = {}

    def now(self) -> float:
        return self.clock[0]

    def run(self, op: str, a: int, b: int) -> None:
        getattr(self, f"op_{op}")(a, b)
        self.check()

    def op_auth(self, a: int, b: int) -> None:
        customer = self.customers[a % len(self.customers)]
        self.seq += 1
        sid = f"s{self.seq}"
        request = CallRequest(
            nas="nas",
            username=customer.number,
            called=DESTINATIONS[b % len(DESTINATIONS)] + "555",
            credential=Pap("pw"),
            session_id=sid,
        )
        result = self.engine.authorize(request)
        if isinstance(result, Grant):
            assert (
                result.seconds is not None and 1 <= result.seconds <= self.engine.max_call_seconds
            )
            self.pending.append(sid)
            self.session_levels[sid] = [level.account_id for level in result.levels]
            for level in result.levels:
                self.admissions[level.account_id].append(self.now())
                self.authorized_calls[level.account_id] += 1
        else:
            assert isinstance(result, Reject)
            event(f"reject {result.reason.value}")

    def op_start(self, a: int, b: int) -> None:
        if not self.pending:
            return
        sid = self.pending.pop(a % len(self.pending))
        if ("nas", sid) not in self.engine.sessions:
            self.forget(sid)  # its hold expired
            return
        self.engine.start(AccountingRequest(nas="nas", session_id=sid))
        self.active[sid] = self.now()

    def forget(self, sid: str) -> None:
        for level_id in self.session_levels.pop(sid, ()):
            self.authorized_calls[level_id] -= 1

    def op_update(self, a: int, b: int) -> None:
        if self.active:
            sid = sorted(self.active)[a % len(self.active)]
            used = int(self.now() - self.active[sid])
            self.engine.update(AccountingRequest(nas="nas", session_id=sid, duration_seconds=used))

    def stop(self, sid: str) -> None:
        started = self.active.pop(sid, None)
        used = int(self.now() - started) if started is not None else 0
        request = AccountingRequest(nas="nas", session_id=sid, duration_seconds=used)
        self.settle(request)
        self.forget(sid)

    def settle(self, request: AccountingRequest) -> None:
        result = self.engine_stop(request)
        assert isinstance(result, StopResult) and not result.duplicate
        assert result.cdr.authorized
        self.stops.append(request)
        self.ledger.apply(result.transfers)
        for level in result.cdr.levels:
            account = self.engine.hierarchy.get(level.account_id)
            assert account is not None
            self.allowance[level.account_id] += increment_micros(account, level.prefix)

    def op_stop(self, a: int, b: int) -> None:
        live = sorted(self.active) + self.pending
        if live:
            sid = live[a % len(live)]
            if sid in self.pending:
                self.pending.remove(sid)
                if ("nas", sid) not in self.engine.sessions:
                    self.forget(sid)
                    return
            self.stop(sid)

    def op_restop(self, a: int, b: int) -> None:
        if self.stops:
            before = {x.id: x.balance_micros for x in self.accounts}
            result = self.engine_stop(self.stops[a % len(self.stops)])
            assert isinstance(result, StopResult) and result.duplicate
            self.ledger.apply(result.transfers)
            assert before == {x.id: x.balance_micros for x in self.accounts}

    def op_unauth_stop(self, a: int, b: int) -> None:
        customer = self.customers[a % len(self.customers)]
        self.seq += 1
        request = AccountingRequest(
            nas="nas",
            session_id=f"u{self.seq}",
            username=customer.number,
            called=DESTINATIONS[b % len(DESTINATIONS)] + "555",
            duration_seconds=b % 200,
        )
        result = self.engine_stop(request)
        if isinstance(result, StopResult):
            self.stops.append(request)
            self.ledger.apply(result.transfers)
            for level in result.cdr.levels:
                self.allowance[level.account_id] += level.cost_micros

    def op_topup(self, a: int, b: int) -> None:
        account = self.accounts[a % len(self.accounts)]
        self.seq += 1
        topup = (account.id, (b + 1) * 1_000, f"t{self.seq}")
        self.topups.append(topup)
        result = self.engine.topup(*topup)
        self.ledger.apply(result.transfers)

    def op_retopup(self, a: int, b: int) -> None:
        if self.topups:
            result = self.engine.topup(*self.topups[a % len(self.topups)])
            assert result.duplicate
            self.ledger.apply(result.transfers)

    def op_time(self, a: int, b: int) -> None:
        self.advance((a % 40) + b / 1000)

    def advance(self, seconds: float) -> None:
        """Let time pass, acting on every disconnect at the instant it is asked for."""
        target = self.now() + seconds
        while True:
            deadline = self.engine.next_deadline()
            if deadline is None or deadline > target:
                break
            self.clock[0] = max(self.now(), deadline)
            for disconnect in self.engine.tick():
                assert disconnect.session_id in self.active
                event("disconnect on depletion")
                self.stop(disconnect.session_id)
            self.drop_expired()
            self.check()
        self.clock[0] = target
        self.engine.tick()
        self.drop_expired()

    def drop_expired(self) -> None:
        for sid in list(self.pending):
            if ("nas", sid) not in self.engine.sessions:
                self.pending.remove(sid)
                self.forget(sid)

    def check(self) -> None:
        engine = self.engine
        engine.check_invariants()
        ledger = self.ledger
        # 1. The ledger balances, matches the engine, and every call's charges are its transfers.
        assert sum(ledger.balances.values()) == 0
        for account in self.accounts:
            assert (
                account.balance_micros
                == self.initial[account.id] + ledger.balances[(account.id, "balance")]
            )
        for reference, transfers in ledger.by_reference.items():
            if reference in self.cdrs:
                levels = self.cdrs[reference]
                expected = {(lv.account_id, lv.cost_micros) for lv in levels if lv.cost_micros}
                assert {(t.debit_account_id, t.amount_micros) for t in transfers} == expected
        # 2. No level below its floor by more than its allowance.
        for account in self.accounts:
            # An allowance ends only when the level is back above its floor with no call in
            # progress: a call already up when another charge lands may still end past it.
            if account.balance_micros >= account.floor_micros and account.calls == 0:
                self.allowance[account.id] = 0
            else:
                event("a level below its floor")
            assert account.floor_micros - account.balance_micros <= self.allowance[account.id], (
                account
            )
        # 3. Slots and CPS at every level.
        for account in self.accounts:
            assert account.calls == self.authorized_calls[account.id]
            if account.max_concurrent:
                assert self.authorized_calls[account.id] <= account.max_concurrent
            if account.cps:
                times = self.admissions[account.id]
                while times and times[0] <= self.now() - 5:
                    times.popleft()
                ordered = list(times)
                for i in range(len(ordered) - account.cps):
                    assert ordered[i + account.cps] - ordered[i] >= 1.0

    def prepare(self) -> None:
        self.initial = {a.id: a.balance_micros for a in self.accounts}
        self.cdrs: dict[str, tuple] = {}

    def engine_stop(self, request: AccountingRequest) -> StopResult | Reject:
        """`Engine.stop`, and the CDR it made recorded."""
        result = self.engine.stop(request)
        if isinstance(result, StopResult):
            self.cdrs[f"{request.nas}/{request.session_id}"] = result.cdr.levels
        return result


def increment_micros(account: Account, prefix: str) -> int:
    """The most one call's final cost can exceed the exposure the scheduler counted for it."""
    group = account.rate_group
    assert group is not None
    rate = group.index.get(prefix)
    assert rate is not None
    seconds = max(rate.first_increment_seconds, rate.next_increment_seconds) + 1
    step = 10 ** (6 - group.precision)
    return group.cost_micros(rate, seconds) + step


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(engine=worlds(), ops=OPS)
def test_random_call_mixes_keep_the_invariants(
    engine: Engine, ops: list[tuple[str, int, int]]
) -> None:
    driver = Driver(engine)
    driver.prepare()
    driver.check()
    for op, a, b in ops:
        driver.run(op, a, b)
    # Finally end every call: everything is released and the ledger still balances.
    driver.advance(100_000)  # every call still up runs some level dry
    for sid in sorted(driver.active) + list(driver.pending):
        if ("nas", sid) in engine.sessions:
            driver.stop(sid)
    driver.check()
    assert all(a.calls == 0 and a.pending_hold_micros == 0 for a in driver.accounts)
