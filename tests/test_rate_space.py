"""The rate space: one walk that finds each group's longest-prefix rate, kept equal to the groups'
own indexes through every change of their tariffs and pricing, and the engine rating each level
of a chain with its own group's rate from it."""

from __future__ import annotations

import gc

from hypothesis import given, settings
from hypothesis import strategies as st

from ccserver.actors.account import Account, AccountKind
from ccserver.actors.engine import Engine
from ccserver.actors.messages import CallRequest, Grant, Pap, Reject, RejectReason
from ccserver.rating.prefix_index import PrefixIndex
from ccserver.rating.tariff import PricedRate, Rate, RateGroup, RateIndex, RateSpace
from tests.test_rating import make_rate

PREFIXES = st.text("1234", min_size=1, max_size=5)
NUMBERS = st.text("1234", min_size=0, max_size=7)


def _rate(prefix: str, per_minute: int) -> Rate:
    return make_rate(prefix=prefix, per_minute=per_minute, first=30, next_=6)


# One step changes one group (0-2): put, remove, clear, replace its whole index, or change its
# pricing (its priced rates in the space go stale).
STEPS = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 2), PREFIXES, st.integers(0, 900_000)),
    st.tuples(st.just("remove"), st.integers(0, 2), PREFIXES),
    st.tuples(st.just("clear"), st.integers(0, 2)),
    st.tuples(st.just("replace"), st.integers(0, 2), st.lists(PREFIXES, max_size=6)),
    st.tuples(st.just("markup"), st.integers(0, 2), st.sampled_from([0, 100_000, 500_000])),
)


def _apply(groups: list[RateGroup], step: tuple[object, ...]) -> None:
    kind, which = step[0], step[1]
    assert isinstance(which, int)
    group = groups[which]
    if kind == "put":
        prefix, price = step[2], step[3]
        assert isinstance(prefix, str) and isinstance(price, int)
        group.put(_rate(prefix, price))
    elif kind == "remove":
        prefix = step[2]
        assert isinstance(prefix, str)
        group.index.remove(prefix)
    elif kind == "clear":
        group.index.clear()
    elif kind == "replace":
        prefixes = step[2]
        assert isinstance(prefixes, list)
        index = RateIndex()
        for n, prefix in enumerate(prefixes):
            index.put(prefix, _rate(prefix, 1_000 * n))
        group.index = index
    else:
        markup = step[2]
        assert isinstance(markup, int)
        group.markup_ppm = markup


def _check(space: RateSpace, groups: list[RateGroup], numbers: list[str]) -> None:
    distinct = set().union(*(set(group.index) for group in groups))
    assert len(space) == len(distinct)
    for number in numbers:
        want = [group.index.longest_match(number) for group in groups]
        found: list[PricedRate | None] = [None] * len(groups)
        space.match(number, list(groups), found, len(groups))
        for group, rate, entry in zip(groups, want, found, strict=True):
            single = space.find(number, group)
            if rate is None:
                assert entry is None and single is None
                continue
            assert entry is not None and entry.rate is rate and single is entry
            fresh = group._price(rate)  # priced afresh under the group's current pricing
            assert (entry.generation, entry.hold_micros, entry.factor) == (
                fresh.generation,
                fresh.hold_micros,
                fresh.factor,
            )
            assert group.priced(rate) is entry


@settings(max_examples=300, deadline=None)
@given(st.lists(STEPS, max_size=40), st.lists(NUMBERS, min_size=1, max_size=8))
def test_one_walk_finds_every_group_s_own_longest_match(
    steps: list[tuple[object, ...]], numbers: list[str]
) -> None:
    space = RateSpace()
    groups = [RateGroup(n, f"g{n}", space=space) for n in range(3)]
    for step in steps:
        _apply(groups, step)
        _check(space, groups, numbers)


def test_a_replaced_index_leaves_the_other_groups_rates_and_stays_usable() -> None:
    space = RateSpace()
    mine, theirs = RateGroup(1, "mine", space=space), RateGroup(2, "theirs", space=space)
    mine.put(_rate("44", 1))
    theirs.put(_rate("44", 2))
    old = mine.index
    new = RateIndex()
    new.put("33", _rate("33", 3))
    mine.index = new
    assert space.find("4420", mine) is None
    found = space.find("4420", theirs)
    assert found is not None and found.rate.per_minute_micros == 2
    found = space.find("3312", mine)
    assert found is not None and found.rate.per_minute_micros == 3
    # The old deck is detached: a change to it reaches nobody's space.
    old.put("33", _rate("33", 9))
    old_rate = old.longest_match("3312")
    assert old_rate is not None and old_rate.per_minute_micros == 9
    found = space.find("3312", mine)
    assert found is not None and found.rate.per_minute_micros == 3


def _chain_engine() -> tuple[Engine, list[Account]]:
    """operator -> r1 (group top) -> r2 (group middle) -> c (group bottom), one space."""
    engine = Engine()
    space = engine.rate_space
    top, middle, bottom = (RateGroup(n, name, space=space) for n, name in enumerate("tmb", 1))
    for prefix, per_minute in (("4", 1_000), ("44", 2_000), ("4420", 3_000)):
        top.put(_rate(prefix, per_minute))
    middle.put(_rate("442", 4_000))
    middle.put(_rate("4", 5_000))
    bottom.put(_rate("44", 6_000))
    h = engine.hierarchy
    r1 = h.add(Account(2, "r1", AccountKind.RESELLER, h.operator, rate_group=top))
    r2 = h.add(Account(3, "r2", AccountKind.RESELLER, r1, rate_group=middle))
    c = h.add(Account(4, "c", AccountKind.CUSTOMER, r2, rate_group=bottom, password="pw"))
    for account in (r1, r2, c):
        account.balance_micros = 10_000_000
    return engine, [c, r2, r1]


def _authorize(engine: Engine, called: str, sid: str) -> Grant | Reject:
    return engine.authorize(
        CallRequest(nas="n", username="c", called=called, credential=Pap("pw"), session_id=sid)
    )


def test_each_level_of_a_chain_is_rated_with_its_own_group_s_longest_match() -> None:
    engine, _ = _chain_engine()
    grant = _authorize(engine, "442079460000", "s1")
    assert isinstance(grant, Grant)
    assert [level.prefix for level in grant.levels] == ["44", "442", "4420"]
    grant = _authorize(engine, "4433", "s2")
    assert isinstance(grant, Grant)
    assert [level.prefix for level in grant.levels] == ["44", "4", "44"]
    # The customer's group has no rate for 43: refused at the customer, whatever the others have.
    reject = _authorize(engine, "4333", "s3")
    assert isinstance(reject, Reject) and reject.reason is RejectReason.NO_RATE
    assert reject.account_number == "c"
    engine.check_invariants()


def test_a_personal_rate_beats_the_shared_walk_and_a_group_alone_is_walked_alone() -> None:
    engine, (customer, middle, _) = _chain_engine()
    customer.personal_rates = PrefixIndex()
    customer.personal_rates.put("4420", _rate("4420", 7_000))
    alone = RateGroup(9, "alone")  # a group of its own space, not the engine's
    alone.put(_rate("44207", 8_000))
    middle.rate_group = alone
    grant = _authorize(engine, "442079460000", "s1")
    assert isinstance(grant, Grant)
    assert [level.prefix for level in grant.levels] == ["4420", "44207", "4420"]
    assert grant.levels[0].hold_micros == 3_500  # the personal 0.007/min, 30 s first increment


def test_the_space_leaves_its_tables_to_reference_counting() -> None:
    """A space holds a tuple per prefix, and pricing replaces it: none of them may stay for the
    cycle collector to walk (a 1,000,000-prefix tariff would make every full collection walk
    1,000,000 more objects)."""
    space = RateSpace()
    groups = [RateGroup(n, f"g{n}", space=space) for n in range(2)]
    for group in groups:
        group.put(_rate("44", 1_000))
    for group in groups:
        assert space.find("4420", group) is not None  # priced: a new tuple
    gc.collect()
    assert not gc.is_tracked(space.get("44"))
