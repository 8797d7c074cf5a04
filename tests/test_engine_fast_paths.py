"""What the engine's fast paths must keep equal to the slow ones they stand for.

Pricing: `RateGroup.quote` and `RateGroup.charge` (a rate priced once per group, and the priced
rate a call keeps until its stop) against the oracle of test_rating, also after the group's
precision, rounding or markup change. Deadlines: the margin a scheduled deadline carries never
lets it fall later than the funds allow. Memory: an ended call keeps no reference cycle and leaves
nothing behind in its accounts.
"""

from __future__ import annotations

import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccserver.actors.account import EXPOSURE_DENOMINATOR, Account
from ccserver.actors.engine import Engine
from ccserver.actors.messages import AccountingRequest, StopResult
from ccserver.money import Rounding, parse_money
from ccserver.rating import tariff
from ccserver.rating.prefix_index import PrefixIndex
from ccserver.rating.tariff import PPM, Rate, RateGroup
from tests.test_engine import UNIT, World, granted
from tests.test_engine_properties import OPS, Driver, worlds
from tests.test_rating import _oracle_billable, _oracle_cost, groups, make_rate, rates

# -- pricing --------------------------------------------------------------------------------------


@given(
    group=groups(),
    rate=rates(),
    available=st.integers(-10, 10**7) | st.integers(0, 10**15),
    d=st.integers(0, 10**5),
)
def test_quote_and_charge_match_the_oracle(
    group: RateGroup, rate: Rate, available: int, d: int
) -> None:
    priced, seconds = group.quote(rate, available)
    assert priced.rate is rate
    first = rate.free_seconds + rate.first_increment_seconds
    assert priced.hold_micros == _oracle_cost(group, rate, first)
    assert priced.hold_micros == group.first_increment_cost_micros(rate)
    assert priced.one_second_micros == _oracle_cost(group, rate, 1)
    assert priced.factor == rate.per_minute_micros * (PPM + group.markup_ppm)
    if priced.hold_micros <= available:
        assert seconds == group.max_seconds(rate, available)
    else:
        assert seconds == 0
    expected = (_oracle_cost(group, rate, d), _oracle_billable(rate, d))
    assert group.charge(priced, d) == expected
    assert group.cost_and_billable(rate, d) == expected


@given(
    group=groups(),
    rate=rates(),
    change=st.sampled_from(["precision", "rounding", "markup_ppm"]),
    precision=st.integers(0, 6),
    rounding=st.sampled_from(list(Rounding)),
    markup_ppm=st.sampled_from([-PPM, -500_000, 0, 125_000, 2 * PPM]),
    d=st.integers(0, 10**5),
)
def test_pricing_follows_changes_of_the_group(
    group: RateGroup,
    rate: Rate,
    change: str,
    precision: int,
    rounding: Rounding,
    markup_ppm: int,
    d: int,
) -> None:
    kept, _ = group.quote(rate, 10**15)  # as a call keeps it from its authorization
    setattr(group, change, {"precision": precision, "rounding": rounding}.get(change, markup_ppm))
    expected = (_oracle_cost(group, rate, d), _oracle_billable(rate, d))
    assert group.charge(kept, d) == expected
    assert group.cost_and_billable(rate, d) == expected
    assert group.priced(rate).hold_micros == _oracle_cost(
        group, rate, rate.free_seconds + rate.first_increment_seconds
    )


def test_a_personal_rate_on_a_group_prefix_is_priced_as_itself() -> None:
    group = RateGroup(1, "g", precision=6)
    listed = make_rate(prefix="44", per_minute=600_000)
    personal = make_rate(prefix="44", per_minute=60_000)
    group.put(listed)
    for _ in range(3):  # alternating, through the group's cache
        assert group.cost_micros(listed, 60) == 600_000
        assert group.cost_micros(personal, 60) == 60_000
        assert group.quote(personal, 10**9)[0].rate is personal


def test_the_priced_rates_a_group_keeps_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tariff, "PRICED_MAX", 8)
    monkeypatch.setattr(tariff, "PRICED_EVICTED", 2)
    group = RateGroup(1, "g", precision=6)
    listed = [make_rate(prefix=str(100 + n), per_minute=60_000 * (n + 1)) for n in range(20)]
    for _ in range(2):
        for n, rate in enumerate(listed):
            assert group.cost_micros(rate, 60) == 60_000 * (n + 1)
            assert len(group._priced) <= 8


def test_a_group_keeps_a_priced_rate_for_every_rate_of_its_tariff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tariff larger than PRICED_MAX is priced once per rate, not again after evictions."""
    monkeypatch.setattr(tariff, "PRICED_MAX", 8)
    monkeypatch.setattr(tariff, "PRICED_EVICTED", 2)
    group = RateGroup(1, "g", precision=6)
    listed = [make_rate(prefix=str(100 + n), per_minute=60_000 * (n + 1)) for n in range(20)]
    for rate in listed:
        group.put(rate)
    first = [group.priced(rate) for rate in listed]
    # Kept in the group's space beside the rates, not in the bounded cache.
    assert not group._priced
    assert all(group.space.value(r.prefix, group) is e for r, e in zip(listed, first, strict=True))
    assert all(group.priced(rate) is entry for rate, entry in zip(listed, first, strict=True))
    # Personal rates priced by the group on top of its tariff are bounded.
    for n in range(20):
        group.priced(make_rate(prefix=str(900 + n), per_minute=60_000))
        assert len(group._priced) <= 8
    assert all(group.priced(rate) is entry for rate, entry in zip(listed, first, strict=True))


def test_a_call_is_charged_at_the_pricing_of_its_stop() -> None:
    """A tariff change during a call applies to its stop, as it always did."""
    w = World()
    granted(w.authorize())
    w.start("s1")
    w.r_group.markup_ppm = 500_000  # +50% for c1's level, after the call was admitted
    result = w.stop("s1", 30)
    assert isinstance(result, StopResult)
    assert [c.cost_micros for c in result.cdr.levels] == [900_000, 300_000]


# -- deadlines ------------------------------------------------------------------------------------


class DeadlineDriver(Driver):
    """The random call mixes of test_engine_properties, checking after every step the invariant
    of a scheduled deadline's margin: it is never more than the funds left at the deadline if
    every active call burned from now on (one micro-unit of rounding aside). So while the margin
    is not negative, the funds last until the deadline."""

    def check(self) -> None:
        # The engine's own invariants, and this one; test_engine_properties checks the ledger's.
        self.engine.check_invariants()
        now_ms = int(self.now() * 1000)
        for account in self.accounts:
            scheduled = account.deadline_ms
            if scheduled is None or scheduled <= now_ms:
                continue  # none, or due: `tick` looks at the account afresh
            available, burn = account.funds_and_burn(now_ms)
            at_deadline = available * EXPOSURE_DENOMINATOR - burn * (scheduled - now_ms)
            assert account.deadline_margin <= at_deadline + EXPOSURE_DENOMINATOR - 1, (
                account,
                scheduled,
                now_ms,
                available,
                burn,
                account.deadline_margin,
            )


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(engine=worlds(), ops=OPS)
def test_deadlines_are_never_later_than_the_funds(
    engine: Engine, ops: list[tuple[str, int, int]]
) -> None:
    driver = DeadlineDriver(engine)
    driver.prepare()
    driver.check()
    for op, a, b in ops:
        driver.run(op, a, b)
    driver.advance(100_000)
    driver.check()


def test_a_far_depletion_is_found_through_half_way_deadlines() -> None:
    """c1 can pay 5,000 s at 0.02/s: the deadline comes half-way, then closer, and the call is
    cut when the funds are gone, not later."""
    w = World(reseller_balance="100000", customer_balance="100")
    granted(w.authorize())
    w.start("s1")
    began = w.clock.now
    looks = 0
    events = []
    while not events:
        deadline = w.engine.next_deadline()
        assert deadline is not None and deadline <= began + 5_001
        w.clock.now = max(w.clock.now, deadline)
        events = w.engine.tick()
        looks += 1
    assert 4_999 <= w.clock.now - began <= 5_001
    assert looks <= 20
    assert [e.session_id for e in events] == ["s1"]


def test_a_stop_that_costs_more_than_it_held_brings_the_deadline_forward() -> None:
    """Two calls on r1; one stops billed a whole minute after 2 s (60 s increments): r1's funds
    drop by more than that call's exposure, and the other call is cut as early as they run out."""
    w = World(reseller_balance="1.00", customer_balance="100")
    w.op_group.put(Rate("33", "FR", 0, parse_money("0.60"), 0, 1, 60))
    w.r_group.put(Rate("33", "FR", 0, parse_money("0.60"), 0, 1, 60))
    granted(w.authorize("c1", called="3310", sid="a"))
    w.start("a")
    granted(w.authorize("c2", called="3310", sid="b"))
    w.start("b")
    w.clock.now += 2
    stopped = w.stop("a", 2)  # 1 + 60 s billed: 0.61 of r1's 1.00
    assert isinstance(stopped, StopResult) and stopped.cdr.levels[1].cost_micros == 610_000
    # b has used 2 s of the 0.39 left at 0.01/s: the funds are gone 37 s from now.
    events = []
    while not events:
        deadline = w.engine.next_deadline()
        assert deadline is not None
        w.clock.now = max(w.clock.now, deadline)
        events = w.engine.tick()
    assert 1_700_000_000.0 + 38 <= w.clock.now <= 1_700_000_000.0 + 40
    assert [e.session_id for e in events] == ["b"]


# -- memory ---------------------------------------------------------------------------------------


def test_ended_calls_keep_no_cycle_and_leave_nothing_in_their_accounts() -> None:
    w = World()
    sessions = []
    granted(w.authorize("c1", sid="a"))
    w.start("a")
    sessions.append(w.engine.sessions[("nas1", "a")])
    granted(w.authorize("c2", sid="b"))  # replaced before it starts
    sessions.append(w.engine.sessions[("nas1", "b")])
    granted(w.authorize("c2", sid="b"))
    sessions.append(w.engine.sessions[("nas1", "b")])  # expires unstarted
    w.stop("a", 10)
    w.clock.now += 61
    w.engine.tick()
    assert w.engine.sessions == {}
    for session in sessions:
        assert all(charge.session is None for charge in session.levels)
    for account in (w.c1, w.c2, w.r1):
        assert account.active_charges == {}
        assert account._young is None


def test_a_call_is_freed_at_its_stop_and_its_hold_expiry_then_finds_nothing() -> None:
    """The hold expiry of every authorization stays in the engine's heap for hold_ttl_seconds, as
    a number: the call it names is freed when it ends, not a minute later."""
    w = World()
    granted(w.authorize("c1", sid="a"))
    session = w.engine.sessions[("nas1", "a")]
    w.start("a")
    w.stop("a", 10)
    # Only this test's own name and getrefcount's argument hold the session now.
    assert sys.getrefcount(session) == 2
    assert w.engine._pending == {}
    assert len(w.engine._hold_expiries) == 1
    granted(w.authorize("c1", sid="b"))  # never started: released at its expiry
    w.clock.now += 61
    w.engine.tick()
    assert w.engine.sessions == {} and w.engine._pending == {}
    assert w.c1.calls == 0 and w.c1.pending_hold_micros == 0
    w.engine.check_invariants()


def test_a_repeated_stop_answers_the_same_transfers_at_every_depth() -> None:
    w = World()
    h = w.engine.hierarchy
    r2 = h.add(
        Account(
            10,
            "r2",
            w.r1.kind,
            w.r1,
            rate_group=w.op_group,
            balance_micros=parse_money("100"),
        )
    )
    w.r1.rate_group = w.r_group
    c3 = Account(11, "c3", w.c1.kind, r2, rate_group=w.r_group, password="secret")
    c3.balance_micros = parse_money("10")
    h.add(c3)
    personal: PrefixIndex[Rate] = PrefixIndex()
    personal.put("4", Rate("4", "x", 0, parse_money("0.06"), 0, 1, 1))
    c3.personal_rates = personal
    granted(w.authorize("c3", sid="d"))
    w.start("d")
    first = w.stop("d", 42)
    unauthorized = w.engine.stop(
        AccountingRequest(
            nas="nas1", session_id="u", username="c3", called="4420", duration_seconds=7
        )
    )
    granted(w.authorize("c3", sid="e"))
    w.start("e")
    w.clock.now += 5
    (ended,) = w.engine.end_all("nas1")
    for result, sid in ((first, "d"), (unauthorized, "u"), (ended, "e")):
        assert isinstance(result, StopResult) and len(result.transfers) == 3
        again = w.stop(sid, 42)
        assert isinstance(again, StopResult) and again.duplicate
        assert again.transfers == result.transfers and again.cdr == result.cdr


def test_revert_gives_back_a_stop_the_ledger_had_applied_already() -> None:
    """A stop retransmitted after the engine forgot it is charged again in memory; the ledger
    refuses it, and the RADIUS front end reverts it."""
    w = World()
    granted(w.authorize())
    w.start("s1")
    first = w.stop("s1", 30)
    assert isinstance(first, StopResult)
    balances = (w.c1.balance_micros, w.r1.balance_micros)
    w.engine._recent_stops.clear()  # forgotten, as across a restart
    again = w.engine.stop(
        AccountingRequest(
            nas="nas1", session_id="s1", username="c1", called="4420", duration_seconds=30
        )
    )
    assert isinstance(again, StopResult) and not again.duplicate
    assert again.transfers == first.transfers
    w.engine.revert(again.transfers)
    assert (w.c1.balance_micros, w.r1.balance_micros) == balances
    topup = w.engine.topup(w.c1.id, 5 * UNIT, "t1")
    w.engine.revert(topup.transfers)
    assert (w.c1.balance_micros, w.r1.balance_micros) == balances
    w.engine.check_invariants()


def test_a_start_reporting_time_used_spends_the_margin_at_once() -> None:
    """A Start (or an Interim-Update of a call not started) that says the call is up for a while
    already: what it used until now comes out of the funds at once, not only what it will burn."""
    w = World(reseller_balance="100000", customer_balance="100")  # a: 5,000 s at 0.02/s
    w.r_group.put(Rate("33", "FR", 0, parse_money("0.90"), 0, 1, 1))  # b: 0.015/s
    w.op_group.put(Rate("33", "FR", 0, parse_money("0.45"), 0, 1, 1))
    granted(w.authorize("c1", sid="a"))
    w.start("a")
    deadline_ms = w.c1.deadline_ms
    assert deadline_ms is not None and deadline_ms > (w.clock.now + 2_000) * 1000  # half-way
    granted(w.authorize("c1", called="3310", sid="b"))
    # b reports 4,900 s used: 73.50 gone already, 26.50 left burning 0.035/s, for 757 s.
    w.start("b", duration_seconds=4_900)
    began = w.clock.now
    events = []
    while not events:
        deadline = w.engine.next_deadline()
        assert deadline is not None and deadline <= began + 758
        w.clock.now = max(w.clock.now, deadline)
        events = w.engine.tick()
    assert 757 <= w.clock.now - began <= 758
    assert sorted(e.session_id for e in events) == ["a", "b"]
