"""The call engine over small hand-built hierarchies: grants, every reject, holds, depletion."""

from __future__ import annotations

import hashlib

import pytest

from ccserver.actors.account import Account, AccountKind, Billing, CliPolicy, Status
from ccserver.actors.engine import Engine, EngineError
from ccserver.actors.messages import (
    AccountingRequest,
    CallRequest,
    Chap,
    Grant,
    Pap,
    Reject,
    RejectReason,
    StopResult,
)
from ccserver.money import parse_money
from ccserver.rating.tariff import Rate, RateGroup

UNIT = 1_000_000


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def group(
    group_id: int, per_minute: str, first: int = 1, nxt: int = 1, connect: str = "0"
) -> RateGroup:
    rates = RateGroup(group_id, f"g{group_id}")
    rates.put(Rate("44", "UK", parse_money(connect), parse_money(per_minute), 0, first, nxt))
    return rates


class World:
    """operator -> reseller r1 -> customers c1, c2 (and r2 -> c3, a sibling tree)."""

    def __init__(self, reseller_balance: str = "100", customer_balance: str = "10") -> None:
        self.clock = Clock()
        self.engine = Engine(clock=self.clock, max_call_seconds=7200, hold_ttl_seconds=60)
        h = self.engine.hierarchy
        self.op_group = group(1, "0.60")  # the operator sells to r1 at 0.60/min = 0.01/s
        self.r_group = group(2, "1.20")  # r1 sells to its customers at 1.20/min = 0.02/s
        self.r1 = h.add(
            Account(
                2,
                "r1",
                AccountKind.RESELLER,
                h.operator,
                rate_group=self.op_group,
                balance_micros=parse_money(reseller_balance),
            )
        )
        self.c1 = h.add(self.customer(3, "c1", customer_balance))
        self.c2 = h.add(self.customer(4, "c2", customer_balance))

    def customer(self, account_id: int, number: str, balance: str, **kw: object) -> Account:
        return Account(
            account_id,
            number,
            AccountKind.CUSTOMER,
            self.r1,
            rate_group=self.r_group,
            balance_micros=parse_money(balance),
            password="secret",
            **kw,  # type: ignore[arg-type]
        )

    def authorize(
        self, number: str = "c1", called: str = "4420", sid: str | None = "s1", **kw: object
    ) -> Grant | Reject:
        request = CallRequest(
            nas="nas1",
            username=number,
            called=called,
            credential=Pap(kw.pop("password", "secret")),  # type: ignore[arg-type]
            session_id=sid,
            **kw,  # type: ignore[arg-type]
        )
        return self.engine.authorize(request)

    def start(self, sid: str, **kw: object) -> object:
        return self.engine.start(AccountingRequest(nas="nas1", session_id=sid, **kw))  # type: ignore[arg-type]

    def stop(self, sid: str, seconds: int, **kw: object) -> StopResult | Reject:
        return self.engine.stop(
            AccountingRequest(nas="nas1", session_id=sid, duration_seconds=seconds, **kw)  # type: ignore[arg-type]
        )


def granted(result: Grant | Reject) -> Grant:
    assert isinstance(result, Grant), result
    return result


def rejected(result: Grant | Reject, reason: RejectReason, level: str | None = None) -> None:
    assert isinstance(result, Reject), result
    assert result.reason is reason
    if level is not None:
        assert result.account_number == level


def test_grant_is_the_minimum_over_levels_and_holds_every_level() -> None:
    w = World(reseller_balance="100", customer_balance="1")
    grant = granted(w.authorize())
    # c1 can pay 1.00 / 0.02 per second = 50 s; r1 could pay 10,000 s.
    assert grant.seconds == 50
    assert [level.account_number for level in grant.levels] == ["c1", "r1"]
    assert w.c1.pending_hold_micros == 20_000 and w.r1.pending_hold_micros == 10_000
    assert w.c1.calls == 1 and w.r1.calls == 1
    w.engine.check_invariants()


def test_grant_is_capped_by_max_call_seconds() -> None:
    w = World(reseller_balance="100000", customer_balance="100000")
    assert granted(w.authorize()).seconds == 7200


def test_call_cycle_charges_every_level_to_its_parent() -> None:
    w = World()
    granted(w.authorize())
    w.start("s1")
    w.clock.now += 30
    result = w.stop("s1", 30)
    assert isinstance(result, StopResult)
    assert [(c.account_number, c.cost_micros) for c in result.cdr.levels] == [
        ("c1", 600_000),
        ("r1", 300_000),
    ]
    transfers = {
        (t.debit_account_id, t.credit_account_id, t.credit_kind): t.amount_micros
        for t in result.transfers
    }
    assert transfers == {(3, 2, "revenue"): 600_000, (2, 1, "revenue"): 300_000}
    assert w.c1.balance_micros == 10 * UNIT - 600_000
    assert w.r1.balance_micros == 100 * UNIT - 300_000
    assert w.c1.calls == w.r1.calls == 0
    w.engine.check_invariants()


def test_repeated_stop_is_charged_once() -> None:
    w = World()
    granted(w.authorize())
    w.start("s1")
    first = w.stop("s1", 30)
    again = w.stop("s1", 30)
    assert isinstance(first, StopResult) and isinstance(again, StopResult)
    assert again.duplicate and again.transfers == first.transfers
    assert w.c1.balance_micros == 10 * UNIT - 600_000


def test_stop_of_a_call_never_authorized_is_rated_and_charged() -> None:
    w = World()
    result = w.engine.stop(
        AccountingRequest(
            nas="nas1", session_id="x", username="c1", called="4420", duration_seconds=10
        )
    )
    assert isinstance(result, StopResult)
    assert not result.cdr.authorized
    assert w.c1.balance_micros == 10 * UNIT - 200_000
    assert w.r1.balance_micros == 100 * UNIT - 100_000
    w.engine.check_invariants()


def test_unknown_session_and_account_stop_is_rejected() -> None:
    w = World()
    result = w.engine.stop(
        AccountingRequest(nas="nas1", session_id="x", username="nobody", called="4420")
    )
    assert isinstance(result, Reject) and result.reason is RejectReason.UNKNOWN_ACCOUNT


def test_start_joins_an_authorization_without_session_id() -> None:
    w = World()
    granted(w.authorize(sid=None))
    session = w.engine.start(
        AccountingRequest(nas="nas1", session_id="acct-9", username="c1", called="4420")
    )
    assert not isinstance(session, Reject)
    assert session.authorized and session.key == ("nas1", "acct-9")
    assert w.c1.calls == 1 and w.c1.pending_hold_micros == 0
    w.engine.check_invariants()


def test_reject_unknown_account_and_bad_credentials() -> None:
    w = World()
    rejected(w.authorize("nobody"), RejectReason.UNKNOWN_ACCOUNT)
    rejected(w.authorize(password="wrong"), RejectReason.BAD_CREDENTIALS, "c1")
    # No credential at all is not good enough for an account found by its number.
    result = w.engine.authorize(CallRequest(nas="nas1", username="c1", called="4420"))
    rejected(result, RejectReason.BAD_CREDENTIALS)


def test_pin_and_chap_authenticate() -> None:
    w = World()
    w.c2.pin = "4321"
    granted(w.authorize("c2", password="4321"))
    challenge = b"0123456789abcdef"
    response = hashlib.md5(bytes((7,)) + b"secret" + challenge).digest()
    chap = CallRequest(
        nas="nas1", username="c1", called="4420", credential=Chap(7, challenge, response)
    )
    granted(w.engine.authorize(chap))
    bad = CallRequest(
        nas="nas1", username="c1", called="4420", credential=Chap(7, challenge, b"x" * 16)
    )
    rejected(w.engine.authorize(bad), RejectReason.BAD_CREDENTIALS)


def test_ip_authenticated_account_with_tech_prefix() -> None:
    w = World()
    trunk = w.engine.hierarchy.add(
        w.customer(9, "trunk", "10", ip_addresses=("10.0.0.0/24",), tech_prefix="99#")
    )
    request = CallRequest(
        nas="nas1", username="", called="99#4420", source_ip="10.0.0.7", session_id="t"
    )
    grant = granted(w.engine.authorize(request))
    assert grant.account_number == trunk.number and grant.levels[0].prefix == "44"
    rejected(
        w.engine.authorize(CallRequest(nas="nas1", called="99#4420", source_ip="10.0.1.7")),
        RejectReason.UNKNOWN_ACCOUNT,
    )


def test_ani_authenticated_account_and_cli_policy() -> None:
    w = World()
    w.engine.hierarchy.add(w.customer(9, "card", "10", caller_ids=("15550001",)))
    grant = granted(w.engine.authorize(CallRequest(nas="nas1", calling="15550001", called="4420")))
    assert grant.account_number == "card"
    w.c1.cli_policy = CliPolicy.LISTED
    w.c1.caller_ids = ("15550002",)
    rejected(w.authorize(calling="15550003"), RejectReason.CLI_REJECTED, "c1")
    granted(w.authorize(calling="15550002"))


def test_authentication_only_has_no_session() -> None:
    w = World()
    result = w.engine.authorize(CallRequest(nas="nas1", username="c1", credential=Pap("secret")))
    grant = granted(result)
    assert grant.seconds is None and grant.session_key == ()
    assert w.c1.calls == 0


def test_suspended_and_expired_ancestors_reject() -> None:
    w = World()
    w.engine.set_status(w.r1, Status.SUSPENDED)
    rejected(w.authorize(), RejectReason.SUSPENDED, "r1")
    w.engine.set_status(w.r1, Status.ACTIVE)
    w.r1.expires_at = w.clock.now - 1
    rejected(w.authorize(), RejectReason.EXPIRED, "r1")


def test_blocked_prefix_of_an_ancestor_blocks_its_customers() -> None:
    w = World()
    w.r1.set_blocked_prefixes(("442",))
    rejected(w.authorize(called="4420"), RejectReason.BLOCKED_DESTINATION, "r1")
    granted(w.authorize(called="4410"))


def test_no_rate_at_a_reseller_level() -> None:
    w = World()
    w.r_group.put(Rate("33", "FR", 0, UNIT, 0, 1, 1))  # the customer has a rate, r1 has none
    rejected(w.authorize(called="331"), RejectReason.NO_RATE, "r1")
    assert w.c1.calls == 0 and w.c1.pending_hold_micros == 0


def test_personal_rate_beats_the_rate_group() -> None:
    w = World()
    from ccserver.rating.prefix_index import PrefixIndex

    personal: PrefixIndex[Rate] = PrefixIndex()
    personal.put("4", Rate("4", "anything 4", 0, parse_money("0.06"), 0, 1, 1))
    w.c1.personal_rates = personal
    grant = granted(w.authorize())
    assert grant.levels[0].prefix == "4" and grant.levels[0].hold_micros == 1_000


def test_reseller_concurrency_limit_counts_all_descendants() -> None:
    w = World()
    w.r1.max_concurrent = 2
    granted(w.authorize("c1", sid="a"))
    granted(w.authorize("c2", sid="b"))
    # c1 and c2 have no limit of their own; the third call, from either, hits r1's limit.
    rejected(w.authorize("c1", sid="c"), RejectReason.CONCURRENCY_LIMIT, "r1")
    w.start("a")
    w.stop("a", 5)
    granted(w.authorize("c2", sid="c"))
    w.engine.check_invariants()


def test_cps_limit_admits_at_most_n_calls_in_any_second() -> None:
    w = World()
    w.r1.set_cps(2)
    granted(w.authorize(sid="a"))
    granted(w.authorize("c2", sid="b"))
    rejected(w.authorize(sid="c"), RejectReason.CPS_LIMIT, "r1")
    w.clock.now += 0.999
    rejected(w.authorize(sid="c"), RejectReason.CPS_LIMIT, "r1")
    w.clock.now += 0.001
    granted(w.authorize(sid="c"))


def test_a_reject_at_an_upper_level_leaves_no_hold_below() -> None:
    w = World(reseller_balance="0.005")  # r1 cannot pay one second at 0.01/s
    rejected(w.authorize(), RejectReason.INSUFFICIENT_FUNDS, "r1")
    assert w.c1.calls == 0 and w.c1.pending_hold_micros == 0
    w.engine.check_invariants()


def test_postpaid_floor_is_minus_the_credit_limit() -> None:
    w = World()
    w.c1.balance_micros = 0
    rejected(w.authorize(), RejectReason.INSUFFICIENT_FUNDS, "c1")
    w.c1.billing = Billing.POSTPAID
    w.c1.credit_limit_micros = UNIT
    grant = granted(w.authorize())
    assert grant.seconds == 50 and not grant.prepaid


def test_racing_calls_for_a_resellers_last_funds_cannot_both_win() -> None:
    """r1 can pay exactly one call's first increment: the second authorization is refused."""
    w = World(reseller_balance="0.01", customer_balance="10")
    first = granted(w.authorize("c1", sid="a"))
    assert first.seconds == 1
    rejected(w.authorize("c2", sid="b"), RejectReason.INSUFFICIENT_FUNDS, "r1")
    w.engine.check_invariants()


def test_racing_calls_together_are_cut_when_the_reseller_runs_dry() -> None:
    """r1 can pay 100 s; two calls granted as if alone are disconnected when together they drain
    it, so r1 never pays more than it has (within one increment per call)."""
    w = World(reseller_balance="1.00", customer_balance="10")
    a = granted(w.authorize("c1", sid="a"))
    w.start("a")
    b = granted(w.authorize("c2", sid="b"))
    w.start("b")
    # b sees a's hold: together the grants are what r1 can pay for each call alone.
    assert a.seconds == 100 and b.seconds == 99
    deadline = w.engine.next_deadline()
    assert deadline is not None
    events = []
    while not events:
        deadline = w.engine.next_deadline()
        assert deadline is not None and deadline <= w.clock.now + 100
        w.clock.now = max(w.clock.now, deadline)
        events = w.engine.tick()
    elapsed = w.clock.now - 1_700_000_000.0
    assert 49 <= elapsed <= 51  # two calls at 0.01/s each drain 1.00 in 50 s
    assert {e.session_id for e in events} == {"a", "b"} and {e.account_number for e in events} == {
        "r1"
    }
    for event in events:
        w.stop(event.session_id, int(elapsed))
    assert w.r1.balance_micros >= -2 * 10_000  # at most one 1-second increment per call below 0
    assert w.engine.tick() == []  # asked once
    w.engine.check_invariants()


def test_unstarted_authorization_is_released_after_hold_ttl() -> None:
    w = World()
    granted(w.authorize())
    w.clock.now += 59
    w.engine.tick()
    assert w.c1.calls == 1
    w.clock.now += 1
    w.engine.tick()
    assert w.c1.calls == 0 and w.r1.pending_hold_micros == 0
    assert w.engine.sessions == {}


def test_suspending_a_reseller_disconnects_its_customers_calls() -> None:
    w = World()
    granted(w.authorize("c1", sid="a"))
    w.start("a")
    granted(w.authorize("c2", sid="b"))
    w.start("b")
    events = w.engine.set_status(w.r1, Status.SUSPENDED)
    assert sorted(e.session_id for e in events) == ["a", "b"]
    assert all(e.reason == "suspended" for e in events)


def test_interim_update_reanchors_the_start() -> None:
    w = World(reseller_balance="1000", customer_balance="1.00")
    granted(w.authorize())
    w.start("s1")
    w.clock.now += 10
    w.engine.update(AccountingRequest(nas="nas1", session_id="s1", duration_seconds=30))
    # The NAS says 30 s are used, not 10: the customer's deadline moves 20 s earlier.
    deadline = w.engine.next_deadline()
    assert deadline is not None
    assert deadline - w.clock.now <= 21


def test_topup_and_adjustment_move_money_from_the_parent_once() -> None:
    w = World()
    result = w.engine.topup(w.c1.id, 5 * UNIT, "topup-1")
    (transfer,) = result.transfers
    assert (transfer.debit_account_id, transfer.debit_kind) == (2, "funding")
    assert (transfer.credit_account_id, transfer.credit_kind) == (3, "balance")
    assert w.engine.topup(w.c1.id, 5 * UNIT, "topup-1").duplicate
    assert w.c1.balance_micros == 15 * UNIT
    result = w.engine.adjust(w.c1.id, -2 * UNIT, "adj-1")
    assert result.transfers[0].debit_kind == "balance" and w.c1.balance_micros == 13 * UNIT
    with pytest.raises(EngineError):
        w.engine.topup(w.c1.id, 0, "zero")
    with pytest.raises(EngineError):
        w.engine.topup(w.engine.hierarchy.operator.id, UNIT, "root")


def test_accounting_on_ends_every_call_of_the_nas() -> None:
    w = World()
    granted(w.authorize("c1", sid="a"))
    w.start("a")
    granted(w.authorize("c2", sid="b"))
    w.clock.now += 20
    results = w.engine.end_all("nas1")
    assert [r.cdr.session_id for r in results] == ["a"]
    assert results[0].cdr.duration_seconds == 20
    assert w.engine.sessions == {} and w.r1.calls == 0


def test_with_a_slack_expired_holds_are_released_together() -> None:
    w = World()
    began = w.clock.now
    for n in range(5):
        granted(w.authorize("c1", sid=f"h{n}"))
        w.clock.now += 0.05
    assert w.engine.next_deadline() == began + 60
    deadline = w.engine.next_deadline(0.25)
    assert deadline == began + 60.25
    w.clock.now = deadline
    w.engine.tick()
    assert w.c1.calls == 0 and w.engine.sessions == {}
    assert w.engine.next_deadline(0.25) is None


def test_a_slack_never_puts_off_a_depletion() -> None:
    w = World(reseller_balance="1000", customer_balance="1.00")
    granted(w.authorize())
    w.start("s1")
    depletion = w.engine.next_deadline()
    assert depletion is not None and depletion < w.clock.now + 60
    assert w.engine.next_deadline(30.0) == depletion
