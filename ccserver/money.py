"""Money: an `int` of micro-units (1/1,000,000 of the currency unit) everywhere inside.

Decimal strings appear only at the edges (API, CSV, invoices, RADIUS attributes). A charge is
computed exactly as a ratio of integers and rounded once, by `round_ratio`.
"""

from __future__ import annotations

import enum
import re

MICROS_PER_UNIT = 1_000_000
MONEY_DECIMALS_MAX = 6

# Digits, an optional fraction of at most 6 digits, an optional sign. No exponent, no grouping, no
# spaces, no NaN/Infinity: anything else is an input error the edge reports by name.
_DECIMAL_RE = re.compile(r"([+-]?)([0-9]{1,19})(?:\.([0-9]{1,6}))?|([+-]?)\.([0-9]{1,6})")
# Amounts are stored as Postgres bigint micro-units.
MICROS_MAX = 2**63 - 1


class MoneyError(ValueError):
    """A decimal string that is not a valid amount of money."""


class Rounding(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    HALF_UP = "half_up"


def parse_money(text: str) -> int:
    """Parse a decimal string ("12.5", "-0.000001") into micro-units, exactly."""
    if not isinstance(text, str):
        raise MoneyError("amount must be a decimal string")
    match = _DECIMAL_RE.fullmatch(text)
    if match is None:
        if re.fullmatch(r"[+-]?[0-9]*\.[0-9]{7,}", text):
            raise MoneyError(f"amount {text!r} has more than {MONEY_DECIMALS_MAX} decimals")
        raise MoneyError(f"amount {text!r} is not a decimal number")
    if match.group(2) is not None:
        sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    else:
        sign, whole, fraction = match.group(4), "0", match.group(5)
    micros = int(whole) * MICROS_PER_UNIT + int(fraction.ljust(MONEY_DECIMALS_MAX, "0"))
    if micros > MICROS_MAX:
        raise MoneyError(f"amount {text!r} is too large")
    return -micros if sign == "-" else micros


def format_money(micros: int, decimals: int = 4) -> str:
    """Format micro-units as a decimal string with exactly `decimals` decimals (0-6).

    Digits below `decimals` must be zero: formatting never rounds silently. Callers round first
    with `round_micros` when they mean to.
    """
    assert 0 <= decimals <= MONEY_DECIMALS_MAX
    assert isinstance(micros, int)
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_UNIT)
    if decimals < MONEY_DECIMALS_MAX:
        step: int = 10 ** (MONEY_DECIMALS_MAX - decimals)
        if fraction % step:
            # Keep every digit rather than lose money in a display.
            decimals = MONEY_DECIMALS_MAX
        else:
            fraction //= step
    if decimals == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{decimals}d}"


# An enum member read through its class costs a descriptor call (Python 3.11).
_UP = Rounding.UP
_DOWN = Rounding.DOWN


def round_ratio(numerator: int, denominator: int, precision: int, rounding: Rounding) -> int:
    """Round the exact amount numerator/denominator micro-units to `precision` decimals.

    The one rounding point of every charge. `up` rounds toward +infinity, `down` toward
    -infinity, `half_up` to nearest with ties away from zero. Returns micro-units.
    """
    assert denominator > 0
    assert 0 <= precision <= MONEY_DECIMALS_MAX
    if rounding.__class__ is not Rounding:
        rounding = Rounding(rounding)  # a plain string ("up"): validated as before
    step: int = 10 ** (MONEY_DECIMALS_MAX - precision)
    scaled_denominator = denominator * step
    if rounding is _UP:
        quotient = -((-numerator) // scaled_denominator)
    elif rounding is _DOWN:
        quotient = numerator // scaled_denominator
    else:
        magnitude = (2 * abs(numerator) + scaled_denominator) // (2 * scaled_denominator)
        quotient = magnitude if numerator >= 0 else -magnitude
    return quotient * step


def round_micros(micros: int, precision: int, rounding: Rounding) -> int:
    """Round an amount of micro-units to `precision` decimals."""
    return round_ratio(micros, 1, precision, rounding)


def percent_to_ppm(text: str) -> int:
    """Parse a percentage ("12.5") into parts per million of the base (125,000)."""
    # A percentage with 4 decimals is a ratio with 6: reuse the money parser's exactness.
    micros = parse_money(text)
    if micros % 100:
        raise MoneyError(f"percentage {text!r} has more than 4 decimals")
    return micros // 100
