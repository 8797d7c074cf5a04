"""Rates, rate groups and the cost of a call: pure functions over integers.

Cost of a call of d answered seconds: 0 if d == 0; otherwise r = d - free seconds; billable = 0 if
r <= 0, else the first increment in full plus the rest of r rounded up to whole next increments;
cost = connect fee + price per minute * (1 + markup) * billable / 60, computed exactly as a ratio
of integers and rounded once at the rate group's precision in its rounding direction.
"""

from __future__ import annotations

import msgspec

from ccserver.money import MONEY_DECIMALS_MAX, Rounding, round_ratio
from ccserver.rating.prefix_index import PrefixIndex, is_digit_prefix

PPM = 1_000_000
SECONDS_PER_MINUTE = 60
INCREMENT_SECONDS_MAX = 86_400


class RateError(ValueError):
    """A rate or rate group whose fields cannot describe a tariff."""


class Rate(msgspec.Struct, frozen=True, gc=False):
    prefix: str
    destination: str
    connect_fee_micros: int
    per_minute_micros: int
    free_seconds: int = 0
    first_increment_seconds: int = 1
    next_increment_seconds: int = 1

    def validate(self) -> None:
        if not is_digit_prefix(self.prefix):
            raise RateError(f"prefix {self.prefix!r} must be 1-32 digits")
        if self.connect_fee_micros < 0:
            raise RateError("connect_fee must not be negative")
        if self.per_minute_micros < 0:
            raise RateError("per_minute must not be negative")
        if not 0 <= self.free_seconds <= INCREMENT_SECONDS_MAX:
            raise RateError("free_seconds must be between 0 and 86400")
        if not 1 <= self.first_increment_seconds <= INCREMENT_SECONDS_MAX:
            raise RateError("first_increment must be between 1 and 86400")
        if not 1 <= self.next_increment_seconds <= INCREMENT_SECONDS_MAX:
            raise RateError("next_increment must be between 1 and 86400")


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


class RateGroup:
    """A tariff: a prefix index of rates plus how their charges are rounded."""

    __slots__ = ("id", "index", "markup_ppm", "name", "owner_id", "precision", "rounding")

    def __init__(
        self,
        id: int,
        name: str,
        owner_id: int | None = None,
        precision: int = 4,
        rounding: Rounding = Rounding.UP,
        markup_ppm: int = 0,
    ) -> None:
        if not 0 <= precision <= MONEY_DECIMALS_MAX:
            raise RateError("precision must be between 0 and 6")
        if markup_ppm < -PPM:
            raise RateError("markup_pct must not be below -100")
        self.id = id
        self.name = name
        self.owner_id = owner_id
        self.precision = precision
        self.rounding = Rounding(rounding)
        self.markup_ppm = markup_ppm
        self.index: PrefixIndex[Rate] = PrefixIndex()

    def put(self, rate: Rate) -> None:
        rate.validate()
        self.index.put(rate.prefix, rate)

    def lookup(self, number: str) -> Rate | None:
        return self.index.longest_match(number)

    # The exact charge is numerator / (60 * PPM) micro-units: the connect fee scaled up, plus the
    # marked-up price of the billable seconds.
    def _price_factor(self, rate: Rate) -> int:
        return rate.per_minute_micros * (PPM + self.markup_ppm)

    def cost_micros(self, rate: Rate, duration_seconds: int) -> int:
        if duration_seconds <= 0:
            assert duration_seconds == 0
            return 0
        billable = billable_seconds(rate, duration_seconds)
        numerator = (
            rate.connect_fee_micros * (SECONDS_PER_MINUTE * PPM)
            + self._price_factor(rate) * billable
        )
        return round_ratio(numerator, SECONDS_PER_MINUTE * PPM, self.precision, self.rounding)

    def first_increment_cost_micros(self, rate: Rate) -> int:
        """What a call must be able to pay to be admitted: connect fee + first increment."""
        return self.cost_micros(rate, rate.free_seconds + rate.first_increment_seconds)

    def max_seconds(self, rate: Rate, available_micros: int) -> int | None:
        """The longest call whose cost is at most `available_micros`; None when unbounded.

        Exact inverse of `cost_micros`: the largest billable seconds whose exact charge still
        rounds to at most the available amount, then the increment boundary at or below it.
        """
        if available_micros < 0 or self.cost_micros(rate, 1) > available_micros:
            return 0
        price_factor = self._price_factor(rate)
        if price_factor <= 0:
            return None
        denominator = SECONDS_PER_MINUTE * PPM
        step: int = 10 ** (MONEY_DECIMALS_MAX - self.precision)
        quantum = step * denominator
        whole_steps = available_micros // step
        if self.rounding is Rounding.UP:
            numerator_max = whole_steps * quantum
        elif self.rounding is Rounding.DOWN:
            numerator_max = (whole_steps + 1) * quantum - 1
        else:
            numerator_max = (2 * quantum * whole_steps + quantum - 1) // 2
        billable_max = (numerator_max - rate.connect_fee_micros * denominator) // price_factor
        first = rate.first_increment_seconds
        if billable_max < first:
            # Only the free seconds (charged the connect fee alone) are affordable.
            return rate.free_seconds
        extra = (billable_max - first) // rate.next_increment_seconds
        return rate.free_seconds + first + extra * rate.next_increment_seconds

    def per_second_factor(self, rate: Rate) -> int:
        """Price of one second as a numerator over 60 * PPM micro-units (burn rate)."""
        return self._price_factor(rate)
