"""Rating: the cost of a call at every boundary, its exact inverse, and prefix lookup.

Every expectation is either written out by hand or computed by `_oracle_cost`, an independent
restatement of the documented formula over `fractions.Fraction`.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ccserver.money import Rounding
from ccserver.rating.tariff import (
    INCREMENT_SECONDS_MAX,
    PPM,
    Rate,
    RateError,
    RateGroup,
    billable_seconds,
)


def make_rate(
    *,
    prefix: str = "44",
    connect: int = 0,
    per_minute: int = 600_000,
    free: int = 0,
    first: int = 1,
    next_: int = 1,
) -> Rate:
    return Rate(
        prefix=prefix,
        destination="test",
        connect_fee_micros=connect,
        per_minute_micros=per_minute,
        free_seconds=free,
        first_increment_seconds=first,
        next_increment_seconds=next_,
    )


def make_group(
    precision: int = 6, rounding: Rounding = Rounding.UP, markup_ppm: int = 0
) -> RateGroup:
    return RateGroup(1, "g", precision=precision, rounding=rounding, markup_ppm=markup_ppm)


# --------------------------------------------------------------------------------------------
# Oracle: the documented formula, restated with Fractions.


def _oracle_billable(rate: Rate, d: int) -> int:
    r = d - rate.free_seconds
    if r <= 0:
        return 0
    rest = max(0, r - rate.first_increment_seconds)
    return (
        rate.first_increment_seconds
        + math.ceil(Fraction(rest, rate.next_increment_seconds)) * rate.next_increment_seconds
    )


def _oracle_round(exact: Fraction, precision: int, rounding: Rounding) -> int:
    step = 10 ** (6 - precision)
    q = exact / step
    if rounding == Rounding.UP:
        n = math.ceil(q)
    elif rounding == Rounding.DOWN:
        n = math.floor(q)
    else:
        n = math.floor(abs(q) + Fraction(1, 2))
        n = n if q >= 0 else -n
    return n * step


def _oracle_exact(rate: Rate, d: int, markup_ppm: int) -> Fraction:
    if d == 0:
        return Fraction(0)
    billable = _oracle_billable(rate, d)
    price = Fraction(rate.per_minute_micros) * (1 + Fraction(markup_ppm, PPM))
    return rate.connect_fee_micros + price * billable / 60


def _oracle_cost(group: RateGroup, rate: Rate, d: int) -> int:
    if d == 0:
        return 0
    return _oracle_round(_oracle_exact(rate, d, group.markup_ppm), group.precision, group.rounding)


def _oracle_max_seconds(group: RateGroup, rate: Rate, available: int) -> int | None:
    """Largest d with cost(d) <= available, by search over the oracle cost (monotone in d)."""
    if available < 0 or _oracle_cost(group, rate, 1) > available:
        return 0
    if rate.per_minute_micros * (PPM + group.markup_ppm) == 0:
        return None
    lo, hi = 1, 2
    while _oracle_cost(group, rate, hi) <= available:
        lo, hi = hi, hi * 2
    # invariant: cost(lo) <= available < cost(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _oracle_cost(group, rate, mid) <= available:
            lo = mid
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------------------------
# billable_seconds


@pytest.mark.parametrize(
    ("free", "first", "next_", "d", "billable"),
    [
        # 1/1: per second
        (0, 1, 1, 0, 0),
        (0, 1, 1, 1, 1),
        (0, 1, 1, 2, 2),
        (0, 1, 1, 3599, 3599),
        # 60/60: per minute
        (0, 60, 60, 1, 60),
        (0, 60, 60, 59, 60),
        (0, 60, 60, 60, 60),
        (0, 60, 60, 61, 120),
        (0, 60, 60, 120, 120),
        (0, 60, 60, 121, 180),
        # 30/6 with no free seconds: d = first, first + 1, first + next, first + next + 1
        (0, 30, 6, 1, 30),
        (0, 30, 6, 29, 30),
        (0, 30, 6, 30, 30),
        (0, 30, 6, 31, 36),
        (0, 30, 6, 35, 36),
        (0, 30, 6, 36, 36),
        (0, 30, 6, 37, 42),
        # 30/6 with 5 free seconds
        (5, 30, 6, 0, 0),
        (5, 30, 6, 1, 0),
        (5, 30, 6, 5, 0),
        (5, 30, 6, 6, 30),
        (5, 30, 6, 35, 30),
        (5, 30, 6, 36, 36),
        (5, 30, 6, 41, 36),
        (5, 30, 6, 42, 42),
        # next increment larger than the first
        (0, 1, 60, 1, 1),
        (0, 1, 60, 2, 61),
        (0, 1, 60, 61, 61),
        (0, 1, 60, 62, 121),
        # free seconds only
        (10, 1, 1, 10, 0),
        (10, 1, 1, 11, 1),
        (10, 1, 1, 12, 2),
        # maxima
        (0, 86_400, 86_400, 86_400, 86_400),
        (0, 86_400, 86_400, 86_401, 172_800),
        (86_400, 1, 1, 86_400, 0),
        (86_400, 1, 1, 86_401, 1),
        # huge duration
        (7, 60, 60, 10**9, 1_000_000_020),
        (0, 1, 1, 10**9, 10**9),
    ],
)
def test_billable_seconds(free: int, first: int, next_: int, d: int, billable: int) -> None:
    rate = make_rate(free=free, first=first, next_=next_)
    assert billable_seconds(rate, d) == billable
    assert _oracle_billable(rate, d) == billable


def test_billable_seconds_rejects_negative_duration() -> None:
    with pytest.raises(AssertionError):
        billable_seconds(make_rate(), -1)


@st.composite
def rates(draw: st.DrawFn, max_price: int = 10**8, max_fee: int = 10**7) -> Rate:
    return make_rate(
        connect=draw(st.integers(0, max_fee) | st.just(0)),
        per_minute=draw(st.integers(0, max_price) | st.just(0)),
        free=draw(st.integers(0, 120) | st.sampled_from([0, INCREMENT_SECONDS_MAX])),
        first=draw(st.integers(1, 120) | st.sampled_from([1, INCREMENT_SECONDS_MAX])),
        next_=draw(st.integers(1, 120) | st.sampled_from([1, INCREMENT_SECONDS_MAX])),
    )


@st.composite
def groups(draw: st.DrawFn) -> RateGroup:
    return make_group(
        precision=draw(st.integers(0, 6)),
        rounding=draw(st.sampled_from(list(Rounding))),
        markup_ppm=draw(st.integers(-PPM, 2 * PPM) | st.sampled_from([-PPM, 0, 100_000])),
    )


@given(rate=rates(), d=st.integers(0, 10**6) | st.integers(0, 10**12))
def test_billable_seconds_properties(rate: Rate, d: int) -> None:
    b = billable_seconds(rate, d)
    assert b == _oracle_billable(rate, d)
    if d <= rate.free_seconds:
        assert b == 0
    else:
        paid = d - rate.free_seconds
        first, step = rate.first_increment_seconds, rate.next_increment_seconds
        assert b >= paid  # never bills less than was used
        assert b >= first
        assert (b - first) % step == 0
        assert b - paid < max(first, step)  # ... and never a whole extra increment
    assert billable_seconds(rate, d + 1) >= b


# --------------------------------------------------------------------------------------------
# cost_micros at every boundary


# 10,000 micros a second, 0.05 connect fee, 5 free seconds, 30/6 increments; precision 6 so that
# nothing is rounded and each boundary shows exactly.
BOUNDARY_RATE = make_rate(connect=50_000, per_minute=600_000, free=5, first=30, next_=6)


@pytest.mark.parametrize(
    ("d", "cost"),
    [
        (0, 0),  # no call: not even the connect fee
        (1, 50_000),  # inside the free seconds: the connect fee alone
        (4, 50_000),
        (5, 50_000),  # d = free
        (6, 50_000 + 300_000),  # d = free + 1: the whole first increment
        (34, 50_000 + 300_000),
        (35, 50_000 + 300_000),  # d = free + first
        (36, 50_000 + 360_000),  # d = free + first + 1: one next increment
        (41, 50_000 + 360_000),  # d = free + first + next
        (42, 50_000 + 420_000),  # d = free + first + next + 1
        (3605, 50_000 + 36_000_000),  # an hour after the free seconds
    ],
)
def test_cost_boundaries_with_free_seconds(d: int, cost: int) -> None:
    group = make_group(precision=6)
    assert group.cost_micros(BOUNDARY_RATE, d) == cost
    assert _oracle_cost(group, BOUNDARY_RATE, d) == cost


@pytest.mark.parametrize(
    ("d", "cost"),
    [
        (0, 0),
        (1, 300_000),  # free = 0: d = 1 already costs the first increment
        (29, 300_000),
        (30, 300_000),  # d = first
        (31, 360_000),  # d = first + 1
        (36, 360_000),  # d = first + next
        (37, 420_000),  # d = first + next + 1
    ],
)
def test_cost_boundaries_without_free_seconds(d: int, cost: int) -> None:
    rate = make_rate(connect=0, per_minute=600_000, free=0, first=30, next_=6)
    assert make_group(precision=6).cost_micros(rate, d) == cost


def test_cost_zero_duration_is_zero_even_with_connect_fee() -> None:
    rate = make_rate(connect=1_000_000, per_minute=10**9)
    for precision in range(7):
        for rounding in Rounding:
            assert make_group(precision, rounding).cost_micros(rate, 0) == 0


def test_cost_rejects_negative_duration() -> None:
    with pytest.raises(AssertionError):
        make_group().cost_micros(make_rate(), -1)


def test_zero_price_rate() -> None:
    free_rate = make_rate(connect=0, per_minute=0, free=0, first=60, next_=60)
    fee_only = make_rate(connect=123_400, per_minute=0, free=10, first=60, next_=60)
    for precision in (0, 4, 6):
        for rounding in Rounding:
            group = make_group(precision, rounding)
            for d in (0, 1, 59, 60, 61, 10**9):
                assert group.cost_micros(free_rate, d) == 0
            assert group.cost_micros(fee_only, 0) == 0
    group = make_group(4, Rounding.UP)
    for d in (1, 10, 11, 70, 71, 10**9):
        assert group.cost_micros(fee_only, d) == 123_400


def test_zero_connect_fee() -> None:
    rate = make_rate(connect=0, per_minute=60_000, free=0, first=1, next_=1)  # 1,000 micros/s
    group = make_group(6)
    assert [group.cost_micros(rate, d) for d in range(5)] == [0, 1_000, 2_000, 3_000, 4_000]


def test_connect_fee_is_charged_within_free_seconds_and_added_once() -> None:
    rate = make_rate(connect=70_000, per_minute=60_000, free=3, first=1, next_=1)
    group = make_group(6)
    assert [group.cost_micros(rate, d) for d in range(7)] == [
        0,
        70_000,
        70_000,
        70_000,
        71_000,
        72_000,
        73_000,
    ]


def test_huge_duration_is_exact() -> None:
    # 10**9 seconds at 123.456789 a minute, per-minute billing after 7 free seconds.
    rate = make_rate(connect=1, per_minute=123_456_789, free=7, first=60, next_=60)
    billable = 1_000_000_020
    assert billable_seconds(rate, 10**9) == billable
    expected = 1 + 123_456_789 * billable // 60
    assert 123_456_789 * billable % 60 == 0
    assert expected == 2_057_613_191_152_264
    group = make_group(6, Rounding.DOWN)
    assert group.cost_micros(rate, 10**9) == expected
    assert make_group(6, Rounding.UP).cost_micros(rate, 10**9) == expected


@pytest.mark.parametrize(
    ("precision", "rounding", "cost"),
    [
        # exact: 2 + 1,000,001 * 10**9 / 60 = 16,666,683,333,335.333... micros
        (6, Rounding.UP, 16_666_683_333_336),
        (6, Rounding.DOWN, 16_666_683_333_335),
        (6, Rounding.HALF_UP, 16_666_683_333_335),
        (4, Rounding.UP, 16_666_683_333_400),
        (4, Rounding.DOWN, 16_666_683_333_300),
        (4, Rounding.HALF_UP, 16_666_683_333_300),
        (0, Rounding.UP, 16_666_684_000_000),
        (0, Rounding.DOWN, 16_666_683_000_000),
        (0, Rounding.HALF_UP, 16_666_683_000_000),
    ],
)
def test_huge_duration_rounded_once(precision: int, rounding: Rounding, cost: int) -> None:
    rate = make_rate(connect=2, per_minute=1_000_001, free=0, first=1, next_=1)
    group = make_group(precision, rounding)
    assert group.cost_micros(rate, 10**9) == cost
    assert _oracle_cost(group, rate, 10**9) == cost


@pytest.mark.parametrize(
    ("per_minute", "connect", "d", "precision", "rounding", "cost"),
    [
        # 1 unit a minute, 1 second: 16,666.666... micros
        (1_000_000, 0, 1, 6, Rounding.UP, 16_667),
        (1_000_000, 0, 1, 6, Rounding.DOWN, 16_666),
        (1_000_000, 0, 1, 6, Rounding.HALF_UP, 16_667),
        (1_000_000, 0, 1, 4, Rounding.UP, 16_700),
        (1_000_000, 0, 1, 4, Rounding.DOWN, 16_600),
        (1_000_000, 0, 1, 4, Rounding.HALF_UP, 16_700),
        (1_000_000, 0, 1, 0, Rounding.UP, 1_000_000),
        (1_000_000, 0, 1, 0, Rounding.DOWN, 0),
        (1_000_000, 0, 1, 0, Rounding.HALF_UP, 0),
        # 1 micro a minute, 1 second: 1/60 micro
        (1, 0, 1, 6, Rounding.UP, 1),
        (1, 0, 1, 6, Rounding.DOWN, 0),
        (1, 0, 1, 6, Rounding.HALF_UP, 0),
        (1, 0, 30, 6, Rounding.HALF_UP, 1),  # exactly 0.5 micro: tie rounds up
        (1, 0, 29, 6, Rounding.HALF_UP, 0),
        # exact ties at precision 4 and 0
        (9_000, 0, 1, 4, Rounding.UP, 200),  # 150 micros
        (9_000, 0, 1, 4, Rounding.DOWN, 100),
        (9_000, 0, 1, 4, Rounding.HALF_UP, 200),
        (30_000_000, 0, 1, 0, Rounding.UP, 1_000_000),  # 500,000 micros
        (30_000_000, 0, 1, 0, Rounding.DOWN, 0),
        (30_000_000, 0, 1, 0, Rounding.HALF_UP, 1_000_000),
        (29_999_999, 0, 1, 0, Rounding.HALF_UP, 0),  # just under the tie
        # the connect fee is rounded together with the usage, not separately
        (9_000, 50, 1, 4, Rounding.HALF_UP, 200),  # 50 + 150 = 200: exact
        (9_000, 50, 1, 4, Rounding.DOWN, 200),
        (9_000, 49, 1, 4, Rounding.DOWN, 100),  # 199
        (9_000, 49, 1, 4, Rounding.HALF_UP, 200),  # 199
        (0, 1, 1, 0, Rounding.UP, 1_000_000),
        (0, 1, 1, 0, Rounding.DOWN, 0),
        (0, 499_999, 1, 0, Rounding.HALF_UP, 0),
        (0, 500_000, 1, 0, Rounding.HALF_UP, 1_000_000),
        # already on the grid: every rounding agrees
        (600_000, 0, 100, 0, Rounding.UP, 1_000_000),
        (600_000, 0, 100, 0, Rounding.DOWN, 1_000_000),
    ],
)
def test_cost_rounding(
    per_minute: int, connect: int, d: int, precision: int, rounding: Rounding, cost: int
) -> None:
    rate = make_rate(connect=connect, per_minute=per_minute)
    group = make_group(precision, rounding)
    if cost % 10 ** (6 - precision):
        pytest.fail("bad table row: expected cost is not on the precision's grid")
    assert group.cost_micros(rate, d) == cost
    assert _oracle_cost(group, rate, d) == cost


def test_cost_rounding_exact_on_grid_every_direction() -> None:
    rate = make_rate(connect=0, per_minute=600_000)
    for precision in (0, 4, 6):
        for rounding in Rounding:
            group = make_group(precision, rounding)
            # 100 seconds at 10,000 micros/s = 1.000000: exact at every precision
            assert group.cost_micros(rate, 100) == 1_000_000


def test_default_precision_and_rounding() -> None:
    group = RateGroup(1, "default")
    assert group.precision == 4
    assert group.rounding is Rounding.UP
    assert group.markup_ppm == 0
    rate = make_rate(per_minute=1_000_000)
    assert group.cost_micros(rate, 1) == 16_700  # 16,666.67 rounded up at 4 decimals


@pytest.mark.parametrize(
    ("markup_ppm", "cost"),
    [
        (0, 50_000 + 600_000),
        (100_000, 50_000 + 660_000),  # +10%: the connect fee is not marked up
        (125_000, 50_000 + 675_000),
        (1_000_000, 50_000 + 1_200_000),  # +100%
        (-250_000, 50_000 + 450_000),
        (-PPM, 50_000),  # -100%: usage is free, the connect fee is not
        (1, 50_000 + 600_001),  # +0.0001%: 600,000.6 rounded up
    ],
)
def test_markup(markup_ppm: int, cost: int) -> None:
    rate = make_rate(connect=50_000, per_minute=600_000, first=60, next_=60)
    group = make_group(6, Rounding.UP, markup_ppm)
    assert group.cost_micros(rate, 60) == cost
    assert _oracle_cost(group, rate, 60) == cost


def test_markup_is_rounded_once_not_per_part() -> None:
    # 1 micro/min * 1.5 over 20 s = 0.5 micro exactly: half_up -> 1, down -> 0
    rate = make_rate(per_minute=1)
    assert make_group(6, Rounding.HALF_UP, 500_000).cost_micros(rate, 20) == 1
    assert make_group(6, Rounding.DOWN, 500_000).cost_micros(rate, 20) == 0
    assert make_group(6, Rounding.HALF_UP, 0).cost_micros(rate, 20) == 0  # 1/3 micro


@given(
    group=groups(),
    rate=rates(),
    d=st.integers(0, 100_000) | st.integers(0, 10**9),
)
@example(group=make_group(0, Rounding.HALF_UP), rate=make_rate(per_minute=30_000_000), d=1)
def test_cost_matches_oracle(group: RateGroup, rate: Rate, d: int) -> None:
    cost = group.cost_micros(rate, d)
    assert type(cost) is int
    assert cost == _oracle_cost(group, rate, d)
    assert cost % 10 ** (6 - group.precision) == 0
    # cost never decreases with duration
    assert group.cost_micros(rate, d + 1) >= cost
    # direction of the rounding against the exact amount
    exact = _oracle_exact(rate, d, group.markup_ppm)
    step = 10 ** (6 - group.precision)
    if group.rounding is Rounding.UP:
        assert exact <= cost < exact + step
    elif group.rounding is Rounding.DOWN:
        assert exact - step < cost <= exact
    else:
        assert abs(cost - exact) <= Fraction(step, 2)


# --------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "prefix", ["", "4a", "+44", "44 ", " 44", "4-4", "1" * 33, "\u0664\u0664", "\uff14"]
)
def test_validate_rejects_bad_prefix(prefix: str) -> None:
    with pytest.raises(RateError, match="prefix"):
        make_rate(prefix=prefix).validate()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"connect": -1}, "connect_fee"),
        ({"per_minute": -1}, "per_minute"),
        ({"free": -1}, "free_seconds"),
        ({"free": INCREMENT_SECONDS_MAX + 1}, "free_seconds"),
        ({"first": 0}, "first_increment"),
        ({"first": -1}, "first_increment"),
        ({"first": INCREMENT_SECONDS_MAX + 1}, "first_increment"),
        ({"next_": 0}, "next_increment"),
        ({"next_": -60}, "next_increment"),
        ({"next_": INCREMENT_SECONDS_MAX + 1}, "next_increment"),
    ],
)
def test_validate_rejects_bad_fields(fields: dict[str, int], message: str) -> None:
    rate = make_rate(**fields)  # type: ignore[arg-type]
    with pytest.raises(RateError, match=message):
        rate.validate()
    group = make_group()
    with pytest.raises(RateError):
        group.put(rate)
    assert len(group.index) == 0
    assert group.lookup(rate.prefix + "123") is None


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"prefix": "1"},
        {"prefix": "9" * 32},
        {"connect": 0, "per_minute": 0},
        {"free": 0, "first": 1, "next_": 1},
        {
            "free": INCREMENT_SECONDS_MAX,
            "first": INCREMENT_SECONDS_MAX,
            "next_": INCREMENT_SECONDS_MAX,
        },
    ],
)
def test_validate_accepts_limits(fields: dict[str, object]) -> None:
    rate = make_rate(**fields)  # type: ignore[arg-type]
    rate.validate()  # no exception
    group = make_group()
    group.put(rate)
    assert group.lookup(rate.prefix) is rate


def test_rate_error_is_value_error() -> None:
    assert issubclass(RateError, ValueError)


@pytest.mark.parametrize("precision", [-1, 7])
def test_group_rejects_bad_precision(precision: int) -> None:
    with pytest.raises(RateError, match="precision"):
        RateGroup(1, "g", precision=precision)


def test_group_markup_limits() -> None:
    with pytest.raises(RateError, match="markup"):
        RateGroup(1, "g", markup_ppm=-PPM - 1)
    assert RateGroup(1, "g", markup_ppm=-PPM).markup_ppm == -PPM


def test_group_rounding_from_string() -> None:
    group = RateGroup(1, "g", rounding="half_up")
    assert group.rounding is Rounding.HALF_UP
    with pytest.raises(ValueError):
        RateGroup(1, "g", rounding="nearest")


# --------------------------------------------------------------------------------------------
# first_increment_cost_micros


def test_first_increment_cost() -> None:
    group = make_group(6)
    assert group.first_increment_cost_micros(BOUNDARY_RATE) == 50_000 + 300_000
    assert group.first_increment_cost_micros(BOUNDARY_RATE) == group.cost_micros(BOUNDARY_RATE, 35)


@given(group=groups(), rate=rates())
def test_first_increment_cost_is_cost_of_free_plus_first(group: RateGroup, rate: Rate) -> None:
    cost = group.first_increment_cost_micros(rate)
    d = rate.free_seconds + rate.first_increment_seconds
    assert cost == group.cost_micros(rate, d)
    assert cost == _oracle_cost(group, rate, d)
    # and it is the most any call of up to that duration costs
    assert group.cost_micros(rate, d + 1) >= cost
    assert group.cost_micros(rate, 1) <= cost


# --------------------------------------------------------------------------------------------
# max_seconds: the exact inverse of cost_micros


def _check_max_seconds(group: RateGroup, rate: Rate, available: int) -> int | None:
    m = group.max_seconds(rate, available)
    cost_1 = group.cost_micros(rate, 1)
    if available < 0 or cost_1 > available:
        assert m == 0
        return m
    if rate.per_minute_micros * (PPM + group.markup_ppm) == 0:
        # unbounded: no duration ever costs more than the first second
        assert m is None
        assert group.cost_micros(rate, 10**12) == cost_1 <= available
        return m
    assert m is not None
    assert type(m) is int
    assert m >= 1
    assert group.cost_micros(rate, m) <= available
    # m ends a billing step: one more second buys more billable time, and is not affordable
    assert billable_seconds(rate, m + 1) > billable_seconds(rate, m)
    assert group.cost_micros(rate, m + 1) > available
    return m


@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("precision", [0, 4, 6])
def test_max_seconds_boundaries(precision: int, rounding: Rounding) -> None:
    group = make_group(precision, rounding)
    rate = BOUNDARY_RATE
    # every cost a call can reach, one micro either side, plus a coarse sweep
    reachable = {group.cost_micros(rate, d) + delta for d in range(80) for delta in (-1, 0, 1)}
    for available in sorted(reachable | set(range(-1, 2_000_000, 9_973))):
        m = _check_max_seconds(group, rate, available)
        assert m == _oracle_max_seconds(group, rate, available)


def test_max_seconds_examples() -> None:
    group = make_group(6, Rounding.UP)
    rate = BOUNDARY_RATE  # 0.05 connect, 10,000 micros/s, 5 free, 30/6
    assert group.max_seconds(rate, -1) == 0
    assert group.max_seconds(rate, 0) == 0
    assert group.max_seconds(rate, 49_999) == 0  # cannot pay the connect fee
    assert group.max_seconds(rate, 50_000) == 5  # the free seconds only
    assert group.max_seconds(rate, 349_999) == 5
    assert group.max_seconds(rate, 350_000) == 35  # free + first
    assert group.max_seconds(rate, 409_999) == 35
    assert group.max_seconds(rate, 410_000) == 41  # free + first + next
    # no free seconds: cost(1) is the first increment
    rate = make_rate(connect=0, per_minute=600_000, first=30, next_=6)
    assert group.max_seconds(rate, 299_999) == 0
    assert group.max_seconds(rate, 300_000) == 30
    assert group.max_seconds(rate, 359_999) == 30
    assert group.max_seconds(rate, 360_000) == 36


def test_max_seconds_zero_price() -> None:
    group = make_group(4, Rounding.UP)
    free = make_rate(connect=0, per_minute=0)
    fee_only = make_rate(connect=100, per_minute=0)  # rounds up to 0.0001 = 100 micros
    assert group.max_seconds(free, 0) is None
    assert group.max_seconds(free, 10**12) is None
    assert group.max_seconds(free, -1) == 0
    assert group.max_seconds(fee_only, 99) == 0
    assert group.max_seconds(fee_only, 100) is None
    # -100% markup makes usage free as well
    minus_all = make_group(4, Rounding.UP, -PPM)
    priced = make_rate(connect=0, per_minute=600_000)
    assert minus_all.max_seconds(priced, 0) is None


def test_max_seconds_rounding_down_allows_more() -> None:
    # 1 unit a minute per second, precision 0: 1 second = 0.0166 unit
    rate = make_rate(per_minute=1_000_000)
    up, down, half = (make_group(0, r) for r in (Rounding.UP, Rounding.DOWN, Rounding.HALF_UP))
    assert up.max_seconds(rate, 0) == 0  # 1 s rounds up to 1.000000
    assert up.max_seconds(rate, 1_000_000) == 60
    assert down.max_seconds(rate, 0) == 59  # 59 s = 0.98 rounds down to 0
    assert down.max_seconds(rate, 1_000_000) == 119
    assert half.max_seconds(rate, 0) == 29  # 29 s = 0.483 rounds to 0; 30 s = 0.5 to 1
    assert half.max_seconds(rate, 1_000_000) == 89
    # available amounts off the precision's grid are floored to it
    assert up.max_seconds(rate, 1_999_999) == 60


def test_max_seconds_huge() -> None:
    rate = make_rate(connect=1, per_minute=1, free=0, first=1, next_=1)
    group = make_group(6, Rounding.UP)
    available = 10**18
    m = _check_max_seconds(group, rate, available)
    assert m == (available - 1) * 60


@given(group=groups(), rate=rates(), available=st.integers(-10, 10**9) | st.integers(-10, 10**15))
@example(group=make_group(6), rate=make_rate(connect=1, per_minute=0), available=0)
@example(group=make_group(0, Rounding.HALF_UP), rate=make_rate(per_minute=1), available=499_999)
@example(group=make_group(0, Rounding.DOWN), rate=make_rate(per_minute=1), available=0)
@example(group=make_group(6), rate=make_rate(free=86_400, connect=5), available=5)
def test_max_seconds_is_exact_inverse(group: RateGroup, rate: Rate, available: int) -> None:
    _check_max_seconds(group, rate, available)


@given(
    group=groups(),
    rate=rates(max_price=10**7, max_fee=10**6),
    available=st.integers(-10, 10**8),
)
def test_max_seconds_matches_search_over_oracle(
    group: RateGroup, rate: Rate, available: int
) -> None:
    assert group.max_seconds(rate, available) == _oracle_max_seconds(group, rate, available)


# --------------------------------------------------------------------------------------------
# longest-prefix lookup


def test_lookup_longest_prefix() -> None:
    group = make_group()
    r4, r44, r447, r4478 = (make_rate(prefix=p) for p in ("4", "44", "447", "4478"))
    r1 = make_rate(prefix="1")
    for r in (r447, r4, r4478, r44, r1):
        group.put(r)
    assert group.lookup("447812345678") is r4478
    assert group.lookup("4478") is r4478
    assert group.lookup("447912345678") is r447
    assert group.lookup("447") is r447
    assert group.lookup("441234") is r44
    assert group.lookup("44") is r44
    assert group.lookup("49") is r4
    assert group.lookup("4") is r4
    assert group.lookup("12125551234") is r1
    assert group.lookup("5") is None
    assert group.lookup("") is None
    assert group.lookup("33123") is None


def test_lookup_put_replaces_same_prefix() -> None:
    group = make_group()
    old = make_rate(prefix="44", per_minute=1)
    new = make_rate(prefix="44", per_minute=2)
    group.put(old)
    group.put(new)
    assert group.lookup("4412") is new
    assert len(group.index) == 1


def test_lookup_then_cost() -> None:
    group = make_group(4, Rounding.UP)
    group.put(make_rate(prefix="1", per_minute=600_000, first=60, next_=60))
    group.put(make_rate(prefix="1900", per_minute=6_000_000, first=60, next_=60))
    assert group.cost_micros(group.lookup("12125551234"), 61) == 1_200_000  # type: ignore[arg-type]
    assert group.cost_micros(group.lookup("19005551234"), 61) == 12_000_000  # type: ignore[arg-type]
