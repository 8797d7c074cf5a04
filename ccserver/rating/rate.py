"""A rate, and what a rate group prices it at: msgspec structs, in a module mypyc does not compile.

Both are frozen structs without cycle-collector tracking (`gc=False`): hashable, immutable, and
never walked by a collection, however many a tariff holds (one `Rate` per prefix, one
`PricedRate` per rate a group has priced). A module compiled by mypyc builds its msgspec classes
without their class options (neither frozen nor untracked), so these live here; the compiled
rating and engine code use them as Python objects.
"""

from __future__ import annotations

import msgspec

from ccserver.rating.prefix_index import is_digit_prefix

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


class PricedRate(msgspec.Struct, frozen=True, gc=False):
    """What a rate costs under one rate group's markup and rounding, computed once.

    Charges are exact ratios of big integers; a call needs the same few of them at every level
    (its hold, its burn rate), so a group keeps them per rate rather than recomputing them.
    """

    rate: Rate
    generation: int  # of the group's pricing (RateGroup._generation) it was computed under
    hold_micros: int  # first_increment_cost_micros
    factor: int  # per_second_factor
    connect: int  # the connect fee as a numerator over 60 * PPM
    one_second_micros: int  # cost_micros(rate, 1)
    # The rate's own fields that pricing and the engine read, copied: a call reads them here
    # rather than from the rate, one object fewer to fetch from memory per level.
    prefix: str
    free_seconds: int
    first_increment_seconds: int
    next_increment_seconds: int
