"""Rates, rate groups and the cost of a call: pure functions over integers.

Cost of a call of d answered seconds: 0 if d == 0; otherwise r = d - free seconds; billable = 0 if
r <= 0, else the first increment in full plus the rest of r rounded up to whole next increments;
cost = connect fee + price per minute * (1 + markup) * billable / 60, computed exactly as a ratio
of integers and rounded once at the rate group's precision in its rounding direction.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import cast

from ccserver.money import MONEY_DECIMALS_MAX, Rounding, round_ratio
from ccserver.rating.prefix_index import PrefixIndex
from ccserver.rating.rate import INCREMENT_SECONDS_MAX as INCREMENT_SECONDS_MAX
from ccserver.rating.rate import PricedRate as PricedRate
from ccserver.rating.rate import Rate as Rate
from ccserver.rating.rate import RateError as RateError

PPM = 1_000_000
SECONDS_PER_MINUTE = 60
# Every charge is an exact ratio over this denominator before its one rounding.
CHARGE_DENOMINATOR = SECONDS_PER_MINUTE * PPM
# An enum member read through its class costs a descriptor call (Python 3.11); these are read
# for every charge.
_UP = Rounding.UP
_DOWN = Rounding.DOWN
_HALF_UP = Rounding.HALF_UP
# Priced rates a group keeps for rates not in its tariff (the personal rates of the accounts it
# prices) before it drops the oldest. The rates of its tariff are priced in its RateSpace, one
# PricedRate per rate.
PRICED_MAX = 1 << 16
PRICED_EVICTED = PRICED_MAX // 64
# The rounding step of each precision, in micro-units.
_STEPS: dict[int, int] = {p: 10 ** (MONEY_DECIMALS_MAX - p) for p in range(MONEY_DECIMALS_MAX + 1)}


def billable_seconds(rate: Rate, duration_seconds: int) -> int:
    assert duration_seconds >= 0
    rest = duration_seconds - rate.free_seconds
    if rest <= 0:
        return 0
    first = rate.first_increment_seconds
    if rest <= first:
        return first
    step = rate.next_increment_seconds
    return first + -(-(rest - first) // step) * step


class RateIndex(PrefixIndex[Rate]):
    """A rate group's prefix index of rates, mirrored into the group's RateSpace.

    Built alone (a tariff parsed off the event loop) it is a plain index; once it is a group's
    (`RateGroup.index = ...`) every change to it changes the space too.
    """

    __slots__ = ("group",)

    def __init__(self, group: RateGroup | None = None) -> None:
        super().__init__()
        self.group = group

    def put(self, prefix: str, value: Rate) -> None:
        super().put(prefix, value)
        group = self.group
        if group is not None:
            group.space.put_rate(prefix, group, value)

    def update(self, values: dict[str, Rate]) -> None:
        super().update(values)
        group = self.group
        if group is not None:
            group.space.put_rates(group, values.items())

    def remove(self, prefix: str) -> bool:
        removed = super().remove(prefix)
        group = self.group
        if removed and group is not None:
            group.space.discard_rate(prefix, group)
        return removed

    def clear(self) -> None:
        group = self.group
        if group is not None:
            group.space.discard_rates(group, self)
        super().clear()


def _slot(node: tuple[object, ...] | None, key: object) -> int:
    """Where the pair of the group marked `key` starts in a node of a RateSpace, or -1."""
    if node is not None:
        for i in range(0, len(node), 2):
            if node[i] is key:
                return i
    return -1


def _with_pair(node: tuple[object, ...] | None, key: object, value: object) -> tuple[object, ...]:
    """`node` with the pair of `key` set to `value` (replaced, or added)."""
    if node is None:
        return (key, value)
    i = _slot(node, key)
    if i < 0:
        return (*node, key, value)
    return (*node[: i + 1], value, *node[i + 2 :])


class RateSpace(PrefixIndex[tuple[object, ...]]):
    """The rates of several rate groups by prefix, so that one walk finds the rate of each.

    A call is rated at every level of its chain, each level with its own group, and the groups
    of one operator mostly share their prefixes (a reseller's tariff is its parent's destinations
    at its own prices). A longest-prefix walk is mostly misses in a large table, longest length
    first; walked once for the whole chain (`match`), those probes are paid once, not at every
    level. Each prefix holds a tuple of (group key, rate) pairs, one per group with a rate there
    (scanned by identity: a handful in practice). A group's key is a plain `object()`, not the
    group: a tuple of untracked objects leaves the cycle collector's care at its first young
    collection, and a space holds one tuple per prefix. A rate is replaced by its PricedRate the
    first time it is priced, so a tariff loaded whole is not priced before it is used.

    The engine's groups share the engine's space; a group made alone has a space of its own.
    The space is a PrefixIndex of those tuples, which keeps the lengths present.
    """

    __slots__ = ()

    def put_rate(self, prefix: str, group: RateGroup, value: Rate | PricedRate) -> None:
        self.put(prefix, _with_pair(self.get(prefix), group.key, value))

    def put_rates(self, group: RateGroup, rates: Iterable[tuple[str, Rate]]) -> None:
        """`put_rate` of many rates of one group (a tariff loaded whole), the lengths present
        counted once at the end."""
        by_prefix = self._by_prefix
        key = group.key
        for prefix, rate in rates:
            by_prefix[prefix] = _with_pair(by_prefix.get(prefix), key, rate)
        self._recount()

    def discard_rate(self, prefix: str, group: RateGroup) -> None:
        node = self.get(prefix)
        i = _slot(node, group.key)
        if node is None or i < 0:
            return
        rest = (*node[:i], *node[i + 2 :])
        if rest:
            self.put(prefix, rest)
        else:
            self.remove(prefix)

    def discard_rates(self, group: RateGroup, prefixes: Iterable[str]) -> None:
        """`discard_rate` of many prefixes of one group (a tariff cleared or replaced whole)."""
        for prefix in prefixes:
            self.discard_rate(prefix, group)

    def value(self, prefix: str, group: RateGroup) -> Rate | PricedRate | None:
        """What the space holds for `group` at `prefix` exactly: its rate, or the rate priced."""
        node = self.get(prefix)
        i = _slot(node, group.key)
        if node is None or i < 0:
            return None
        return cast("Rate | PricedRate", node[i + 1])

    def find(self, number: str, group: RateGroup) -> PricedRate | None:
        """The longest-prefix rate of `group` for `number`, priced by it."""
        found: list[PricedRate | None] = [None]
        self.match(number, [group], found, 1)
        return found[0]

    def match(
        self,
        number: str,
        groups: list[RateGroup | None],
        found: list[PricedRate | None],
        wanted: int,
    ) -> None:
        """`found[n] = find(number, groups[n])` for every n where groups[n] is a group of this
        space (`wanted` of them), in one walk; found[n] is left as it is where groups[n] is
        None."""
        by_prefix = self._by_prefix
        size = len(number)
        count = len(groups)
        for length in self._lengths:
            if length > size:
                continue
            node = by_prefix.get(number[:length])
            if node is None:
                continue
            for n in range(count):
                group = groups[n]
                if group is None or found[n] is not None:
                    continue
                i = _slot(node, group.key)
                if i >= 0:
                    found[n] = group.entry_of(cast("Rate | PricedRate", node[i + 1]))
                    wanted -= 1
            if not wanted:
                return


class RateGroup:
    """A tariff: a prefix index of rates plus how their charges are rounded.

    The engine prices every level of every call (hold and grant at authorization, cost at stop),
    so what pricing needs is kept computed: the group's rounding units, and a `PricedRate` per
    rate. Those of its tariff are kept in its RateSpace beside the rates, priced when first
    used; those of other rates it prices (personal rates) in a cache by prefix, checked by
    identity so that a personal rate on a prefix of the tariff is priced as itself (at most
    PRICED_MAX). The setters of `precision`, `rounding` and `markup_ppm` refresh the units and
    start a new generation of priced rates: a call admitted before the change is charged at the
    pricing of its stop, as before. Rounding is `round_ratio`'s arithmetic, inlined.
    """

    __slots__ = (
        "_generation",
        "_index",
        "_markup_factor",
        "_markup_ppm",
        "_precision",
        "_priced",
        "_rounding",
        "_scaled",
        "_step",
        "id",
        "key",
        "name",
        "owner_id",
        "space",
    )

    def __init__(
        self,
        id: int,
        name: str,
        owner_id: int | None = None,
        precision: int = 4,
        rounding: str = Rounding.UP,  # a Rounding or its value ("half_up")
        markup_ppm: int = 0,
        space: RateSpace | None = None,
    ) -> None:
        if not 0 <= precision <= MONEY_DECIMALS_MAX:
            raise RateError("precision must be between 0 and 6")
        if markup_ppm < -PPM:
            raise RateError("markup_pct must not be below -100")
        self.id = id
        self.name = name
        self.owner_id = owner_id
        self._generation = 0
        self.precision = precision
        self.rounding = rounding
        self.markup_ppm = markup_ppm
        self.space = space if space is not None else RateSpace()
        self.key = object()  # what marks this group's rates in the space
        self._index = RateIndex(self)

    @property
    def index(self) -> RateIndex:
        return self._index

    @index.setter
    def index(self, index: RateIndex) -> None:
        """Replace the whole tariff (built apart, off the event loop): the space loses the old
        rates and gains the new ones in this one call. The old index stays as it was, detached."""
        assert index.group is None, "an index belongs to one group"
        old = self._index
        self.space.discard_rates(self, old)
        old.group = None
        index.group = self
        self.space.put_rates(self, index.items())
        self._index = index

    @property
    def precision(self) -> int:
        return self._precision

    @precision.setter
    def precision(self, precision: int) -> None:
        self._precision = precision
        # 0 for a precision out of range: charges then take the checked path, which refuses it.
        step = _STEPS.get(precision, 0)
        self._step = step
        self._scaled = step * CHARGE_DENOMINATOR
        self._repriced()

    @property
    def rounding(self) -> Rounding:
        return self._rounding

    @rounding.setter
    def rounding(self, rounding: str) -> None:
        self._rounding = Rounding(rounding)
        self._repriced()

    @property
    def markup_ppm(self) -> int:
        return self._markup_ppm

    @markup_ppm.setter
    def markup_ppm(self, markup_ppm: int) -> None:
        self._markup_ppm = markup_ppm
        self._markup_factor = PPM + markup_ppm
        self._repriced()

    def _repriced(self) -> None:
        """The pricing changed: every PricedRate computed so far is stale."""
        self._priced: dict[str, PricedRate] = {}
        self._generation += 1

    def put(self, rate: Rate) -> None:
        rate.validate()
        self.index.put(rate.prefix, rate)

    def lookup(self, number: str) -> Rate | None:
        return self.index.longest_match(number)

    # The exact charge is numerator / (60 * PPM) micro-units: the connect fee scaled up, plus the
    # marked-up price (per_second_factor) of the billable seconds.

    def _rounded(self, numerator: int) -> int:
        """round_ratio(numerator, 60 * PPM, precision, rounding)."""
        step = self._step
        if not step:
            return round_ratio(numerator, CHARGE_DENOMINATOR, self._precision, self._rounding)
        scaled = self._scaled
        rounding = self._rounding
        if rounding is _UP:
            return -((-numerator) // scaled) * step
        if rounding is _DOWN:
            return numerator // scaled * step
        magnitude = (2 * abs(numerator) + scaled) // (2 * scaled)
        return (magnitude if numerator >= 0 else -magnitude) * step

    def priced(self, rate: Rate) -> PricedRate:
        # The engine gets its tariff rates priced from the space's walk (`entry_of`); what it
        # prices here are personal rates, kept in the cache: that is looked at first.
        entry = self._priced.get(rate.prefix)
        if entry is not None and entry.rate is rate:
            return entry
        held = self.space.value(rate.prefix, self)
        if held is rate or (isinstance(held, PricedRate) and held.rate is rate):
            return self.entry_of(held)
        return self._cached(self._price(rate))

    def entry_of(self, held: Rate | PricedRate) -> PricedRate:
        """What the space holds for this group at a prefix, priced under the current pricing
        (and kept there priced)."""
        if isinstance(held, PricedRate):
            if held.generation == self._generation:
                return held
            rate = held.rate
        else:
            rate = held
        entry = self._price(rate)
        self.space.put_rate(rate.prefix, self, entry)
        return entry

    def _price(self, rate: Rate) -> PricedRate:
        connect = rate.connect_fee_micros * CHARGE_DENOMINATOR
        factor = rate.per_minute_micros * self._markup_factor
        # cost_micros(rate, free + first): a duration that bills exactly the first increment.
        numerator = connect + factor * rate.first_increment_seconds
        step = self._step
        if step and self._rounding is _UP:  # _rounded, inlined for the usual rounding
            hold = -((-numerator) // self._scaled) * step
        else:
            hold = self._rounded(numerator)
        # cost_micros(rate, 1): the connect fee alone inside free seconds, else the first increment.
        one_second = self._rounded(connect) if rate.free_seconds >= 1 else hold
        return PricedRate(
            rate,
            self._generation,
            hold,
            factor,
            connect,
            one_second,
            rate.prefix,
            rate.free_seconds,
            rate.first_increment_seconds,
            rate.next_increment_seconds,
        )

    def _cached(self, entry: PricedRate) -> PricedRate:
        cache = self._priced
        if len(cache) >= PRICED_MAX:
            # The oldest priced first, a slice at a time: freeing the whole cache in one call
            # stalls that call for tens of milliseconds.
            for prefix in list(islice(cache, PRICED_EVICTED)):
                del cache[prefix]
        cache[entry.prefix] = entry
        return entry

    def cost_micros(self, rate: Rate, duration_seconds: int) -> int:
        return self.cost_and_billable(rate, duration_seconds)[0]

    def cost_and_billable(self, rate: Rate, duration_seconds: int) -> tuple[int, int]:
        """`(cost_micros, billable_seconds)` of a call of `duration_seconds`."""
        return self.charge(self.priced(rate), duration_seconds)

    def charge(self, entry: PricedRate, duration_seconds: int) -> tuple[int, int]:
        """cost_and_billable of `entry.rate`, from a PricedRate of this group kept since (the
        engine keeps the one it admitted a call with, and prices the call's stop with it)."""
        if duration_seconds <= 0:
            assert duration_seconds == 0
            return 0, 0
        if entry.generation != self._generation:
            entry = self.priced(entry.rate)  # the group's pricing changed since
        # billable_seconds, inlined.
        rest = duration_seconds - entry.free_seconds
        if rest <= 0:
            return entry.one_second_micros, 0  # the connect fee alone
        billable = entry.first_increment_seconds
        if rest <= billable:
            return entry.hold_micros, billable
        increment = entry.next_increment_seconds
        billable += -((billable - rest) // increment) * increment
        numerator = entry.connect + entry.factor * billable
        step = self._step
        if step and self._rounding is _UP:  # _rounded, inlined for the usual rounding
            return -((-numerator) // self._scaled) * step, billable
        return self._rounded(numerator), billable

    def first_increment_cost_micros(self, rate: Rate) -> int:
        """What a call must be able to pay to be admitted: connect fee + first increment."""
        return self.priced(rate).hold_micros

    def max_seconds(self, rate: Rate, available_micros: int) -> int | None:
        """The longest call whose cost is at most `available_micros`; None when unbounded.

        Exact inverse of `cost_micros`: the largest billable seconds whose exact charge still
        rounds to at most the available amount, then the increment boundary at or below it.
        """
        if available_micros < 0:
            return 0
        entry = self.priced(rate)
        if entry.one_second_micros > available_micros:
            return 0
        factor = entry.factor
        if factor <= 0:
            return None
        step = self._step
        quantum = self._scaled
        assert step, "precision out of range"  # pricing one second refused it already
        rounding = self._rounding
        whole_steps = available_micros // step
        if rounding is _UP:
            numerator_max = whole_steps * quantum
        elif rounding is _DOWN:
            numerator_max = (whole_steps + 1) * quantum - 1
        else:
            numerator_max = (2 * quantum * whole_steps + quantum - 1) // 2
        billable_max = (numerator_max - entry.connect) // factor
        first = rate.first_increment_seconds
        if billable_max < first:
            # Only the free seconds (charged the connect fee alone) are affordable.
            return rate.free_seconds
        increment = rate.next_increment_seconds
        return rate.free_seconds + first + (billable_max - first) // increment * increment

    def quote(self, rate: Rate, available_micros: int) -> tuple[PricedRate, int | None]:
        """`(priced(rate), max_seconds(rate, available_micros))` in one pass: what the engine
        needs of every level of an authorization. When the first increment (`hold_micros`) costs
        more than is available the call is refused, and max_seconds is 0 rather than computed."""
        return self.quote_entry(self.priced(rate), available_micros)

    def quote_entry(
        self, entry: PricedRate, available_micros: int
    ) -> tuple[PricedRate, int | None]:
        """`quote` of a rate priced by this group under its current pricing (RateSpace.match)."""
        # max_seconds, inlined; a hold at most what is available means it is not negative.
        if entry.hold_micros > available_micros or entry.one_second_micros > available_micros:
            return entry, 0
        factor = entry.factor
        if factor <= 0:
            return entry, None
        step = self._step
        rounding = self._rounding
        if rounding is _UP:
            numerator_max = available_micros // step * self._scaled
        elif rounding is _DOWN:
            numerator_max = (available_micros // step + 1) * self._scaled - 1
        else:
            quantum = self._scaled
            numerator_max = (2 * quantum * (available_micros // step) + quantum - 1) // 2
        billable_max = (numerator_max - entry.connect) // factor
        first = entry.first_increment_seconds
        if billable_max < first:
            return entry, entry.free_seconds
        increment = entry.next_increment_seconds
        return entry, entry.free_seconds + first + (billable_max - first) // increment * increment

    def per_second_factor(self, rate: Rate) -> int:
        """Price of one second as a numerator over 60 * PPM micro-units (burn rate)."""
        return rate.per_minute_micros * self._markup_factor
