"""Money: exact parsing, formatting that never loses digits, one-point rounding."""

from __future__ import annotations

import decimal
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ccserver.money import (
    MICROS_PER_UNIT,
    MoneyError,
    Rounding,
    format_money,
    parse_money,
    percent_to_ppm,
    round_micros,
    round_ratio,
)

PRECISIONS = range(7)

# --------------------------------------------------------------------------------------------
# parse_money


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("0", 0),
        ("-0", 0),
        ("+0", 0),
        ("0.0", 0),
        ("12.5", 12_500_000),
        ("-12.5", -12_500_000),
        ("-0.000001", -1),
        ("0.000001", 1),
        (".5", 500_000),
        ("-.5", -500_000),
        ("+.000001", 1),
        ("+3", 3_000_000),
        ("3", 3_000_000),
        ("007", 7_000_000),
        ("1.1", 1_100_000),
        ("1.01", 1_010_000),
        ("1.000100", 1_000_100),
        ("1234567890.123456", 1_234_567_890_123_456),
        ("-1234567890.123456", -1_234_567_890_123_456),
        ("9223372036854.775807", 2**63 - 1),
    ],
)
def test_parse_money_valid(text: str, micros: int) -> None:
    result = parse_money(text)
    assert type(result) is int
    assert result == micros


@pytest.mark.parametrize(
    "text", ["1.1234567", "0.0000001", "-0.0000001", ".1234567", "+1.00000000"]
)
def test_parse_money_rejects_more_than_six_decimals(text: str) -> None:
    with pytest.raises(MoneyError, match="more than 6 decimals"):
        parse_money(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        " 1",
        "1 ",
        "\t1",
        "1e3",
        "1E3",
        "1.5e-3",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "Infinity",
        "1,000",
        "1_000",
        "1.",
        "-",
        "+",
        ".",
        "-.",
        "--1",
        "+-1",
        "1.2.3",
        "0x10",
        "1/2",
        "12a",
        "$1",
    ],
)
def test_parse_money_rejects_malformed(text: str) -> None:
    with pytest.raises(MoneyError, match="not a decimal number"):
        parse_money(text)


@pytest.mark.parametrize("text", ["1\n", "12.5\n", "-0.000001\n"])
def test_parse_money_rejects_trailing_newline(text: str) -> None:
    # A newline is whitespace: "no spaces" holds for it too.
    with pytest.raises(MoneyError):
        parse_money(text)


@pytest.mark.parametrize(
    "text",
    [
        "\u0661\u0662",  # Arabic-Indic "12"
        "\u0661\u0662.\u0665",  # Arabic-Indic "12.5"
        "\uff11",  # fullwidth "1"
        "1.\u0665",  # ASCII whole, Arabic-Indic fraction
    ],
)
def test_parse_money_rejects_non_ascii_digits(text: str) -> None:
    with pytest.raises(MoneyError):
        parse_money(text)


@pytest.mark.parametrize("digits", [4301, 5000])
def test_parse_money_very_long_amount_is_exact_or_money_error(digits: int) -> None:
    # Python refuses int() of more than 4,300 digits with a plain ValueError; the parser must
    # either return the exact amount or report a MoneyError, never leak another error type.
    text = "1" * digits
    try:
        result = parse_money(text)
    except MoneyError:
        return
    assert result == (10**digits - 1) // 9 * MICROS_PER_UNIT  # 111...1 units


@pytest.mark.parametrize("value", [None, 1, 0, 1.5, Decimal("1.5"), b"1", ["1"]])
def test_parse_money_rejects_non_str(value: object) -> None:
    with pytest.raises(MoneyError, match="decimal string"):
        parse_money(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["9223372036854.775808", "10000000000000", "-99999999999999"])
def test_parse_money_rejects_amounts_beyond_bigint_micros(text: str) -> None:
    with pytest.raises(MoneyError, match="too large"):
        parse_money(text)


def test_parse_money_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_money("abc")


@given(
    whole=st.integers(min_value=0, max_value=9_223_372_036_853),
    fraction=st.text(alphabet="0123456789", min_size=0, max_size=6),
    sign=st.sampled_from(["", "+", "-"]),
)
def test_parse_money_matches_decimal(whole: int, fraction: str, sign: str) -> None:
    text = f"{sign}{whole}" + (f".{fraction}" if fraction else "")
    expected = Decimal(text) * MICROS_PER_UNIT
    assert expected == expected.to_integral_value()
    assert parse_money(text) == int(expected)


# --------------------------------------------------------------------------------------------
# format_money


@pytest.mark.parametrize(
    ("micros", "decimals", "text"),
    [
        (0, 0, "0"),
        (0, 1, "0.0"),
        (0, 4, "0.0000"),
        (0, 6, "0.000000"),
        (12_500_000, 0, "12.500000"),  # 0.5 cannot be shown at 0 decimals: all digits kept
        (12_000_000, 0, "12"),
        (12_500_000, 1, "12.5"),
        (12_500_000, 2, "12.50"),
        (12_500_000, 3, "12.500"),
        (12_500_000, 4, "12.5000"),
        (12_500_000, 5, "12.50000"),
        (12_500_000, 6, "12.500000"),
        (1, 6, "0.000001"),
        (1, 5, "0.000001"),
        (1, 0, "0.000001"),
        (10, 5, "0.00001"),
        (10, 4, "0.000010"),
        (1_230_000, 2, "1.23"),
        (1_234_000, 2, "1.234000"),
        (-1, 6, "-0.000001"),
        (-1, 4, "-0.000001"),
        (-500_000, 0, "-0.500000"),
        (-500_000, 1, "-0.5"),
        (-12_000_000, 0, "-12"),
        (-12_340_000, 2, "-12.34"),
        (-12_340_000, 4, "-12.3400"),
        (1_234_567_890_123_456, 6, "1234567890.123456"),
        (1_234_567_890_123_456, 2, "1234567890.123456"),
        (1_234_567_890_000_000, 0, "1234567890"),
    ],
)
def test_format_money(micros: int, decimals: int, text: str) -> None:
    assert format_money(micros, decimals) == text


def test_format_money_default_is_four_decimals() -> None:
    assert format_money(1_500_000) == "1.5000"
    assert format_money(1_500_001) == "1.500001"


@pytest.mark.parametrize("decimals", [-1, 7])
def test_format_money_rejects_bad_decimals(decimals: int) -> None:
    with pytest.raises(AssertionError):
        format_money(1, decimals)


def test_format_money_rejects_non_int() -> None:
    with pytest.raises(AssertionError):
        format_money(1.5, 4)  # type: ignore[arg-type]


@given(micros=st.integers(min_value=-(2**63 - 1), max_value=2**63 - 1), decimals=st.integers(0, 6))
@example(micros=1, decimals=0)
@example(micros=-1, decimals=0)
@example(micros=-999_999, decimals=5)
def test_format_money_never_drops_digits(micros: int, decimals: int) -> None:
    text = format_money(micros, decimals)
    # Round trip: every nonzero digit survives, whatever `decimals` asked for.
    assert parse_money(text) == micros
    assert Decimal(text) * MICROS_PER_UNIT == micros
    _, _, fraction = text.partition(".")
    if micros % 10 ** (6 - decimals) == 0:
        assert len(fraction) == decimals
    else:
        assert len(fraction) == 6
    assert text.startswith("-") == (micros < 0)


# --------------------------------------------------------------------------------------------
# round_ratio / round_micros


@pytest.mark.parametrize(
    ("micros", "precision", "up", "down", "half_up"),
    [
        # precision 6: nothing to round
        (1, 6, 1, 1, 1),
        (-1, 6, -1, -1, -1),
        (1_234_567, 6, 1_234_567, 1_234_567, 1_234_567),
        # precision 5: step 10
        (1, 5, 10, 0, 0),
        (4, 5, 10, 0, 0),
        (5, 5, 10, 0, 10),
        (6, 5, 10, 0, 10),
        (10, 5, 10, 10, 10),
        (-1, 5, 0, -10, 0),
        (-5, 5, 0, -10, -10),
        (-6, 5, 0, -10, -10),
        # precision 4: step 100
        (1, 4, 100, 0, 0),
        (49, 4, 100, 0, 0),
        (50, 4, 100, 0, 100),
        (150, 4, 200, 100, 200),
        (250, 4, 300, 200, 300),
        (-50, 4, 0, -100, -100),
        (-49, 4, 0, -100, 0),
        (-150, 4, -100, -200, -200),
        # precision 3: step 1,000
        (1_500, 3, 2_000, 1_000, 2_000),
        (1_499, 3, 2_000, 1_000, 1_000),
        (-1_500, 3, -1_000, -2_000, -2_000),
        # precision 2: step 10,000
        (1_005_000, 2, 1_010_000, 1_000_000, 1_010_000),
        (1_004_999, 2, 1_010_000, 1_000_000, 1_000_000),
        (-1_005_000, 2, -1_000_000, -1_010_000, -1_010_000),
        # precision 1: step 100,000
        (50_000, 1, 100_000, 0, 100_000),
        (-50_000, 1, 0, -100_000, -100_000),
        (250_000, 1, 300_000, 200_000, 300_000),
        # precision 0: step 1,000,000
        (1, 0, 1_000_000, 0, 0),
        (500_000, 0, 1_000_000, 0, 1_000_000),
        (499_999, 0, 1_000_000, 0, 0),
        (2_500_000, 0, 3_000_000, 2_000_000, 3_000_000),
        (-2_500_000, 0, -2_000_000, -3_000_000, -3_000_000),
        (-1, 0, 0, -1_000_000, 0),
        (-500_000, 0, 0, -1_000_000, -1_000_000),
        (3_000_000, 0, 3_000_000, 3_000_000, 3_000_000),
        (-3_000_000, 0, -3_000_000, -3_000_000, -3_000_000),
    ],
)
def test_round_micros_table(micros: int, precision: int, up: int, down: int, half_up: int) -> None:
    assert round_micros(micros, precision, Rounding.UP) == up
    assert round_micros(micros, precision, Rounding.DOWN) == down
    assert round_micros(micros, precision, Rounding.HALF_UP) == half_up


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("rounding", list(Rounding))
def test_round_micros_zero_and_exact_multiples(precision: int, rounding: Rounding) -> None:
    step = 10 ** (6 - precision)
    assert round_micros(0, precision, rounding) == 0
    for k in (1, -1, 7, -7, 123_456_789):
        assert round_micros(k * step, precision, rounding) == k * step


@pytest.mark.parametrize("precision", PRECISIONS)
def test_round_ratio_ties_every_precision(precision: int) -> None:
    """An exact half step: up -> ceiling, down -> floor, half_up -> away from zero."""
    step = 10 ** (6 - precision)
    for k in (0, 1, 2, 17):
        # (k + 1/2) steps as a ratio: (2k + 1) * step / 2
        numerator, denominator = (2 * k + 1) * step, 2
        assert round_ratio(numerator, denominator, precision, Rounding.UP) == (k + 1) * step
        assert round_ratio(numerator, denominator, precision, Rounding.DOWN) == k * step
        assert round_ratio(numerator, denominator, precision, Rounding.HALF_UP) == (k + 1) * step
        assert round_ratio(-numerator, denominator, precision, Rounding.UP) == -k * step
        assert round_ratio(-numerator, denominator, precision, Rounding.DOWN) == -(k + 1) * step
        assert round_ratio(-numerator, denominator, precision, Rounding.HALF_UP) == -(k + 1) * step


@pytest.mark.parametrize("precision", PRECISIONS)
def test_round_ratio_just_around_ties(precision: int) -> None:
    step = 10 ** (6 - precision)
    # 1/2 step minus and plus a tiny epsilon (1 / (2 * 10**9) of a step).
    below = (10**9 * step - 1, 2 * 10**9)
    above = (10**9 * step + 1, 2 * 10**9)
    assert round_ratio(*below, precision, Rounding.HALF_UP) == 0
    assert round_ratio(*above, precision, Rounding.HALF_UP) == step
    assert round_ratio(-below[0], below[1], precision, Rounding.HALF_UP) == 0
    assert round_ratio(-above[0], above[1], precision, Rounding.HALF_UP) == -step
    assert round_ratio(*below, precision, Rounding.UP) == step
    assert round_ratio(*below, precision, Rounding.DOWN) == 0
    assert round_ratio(-below[0], below[1], precision, Rounding.UP) == 0
    assert round_ratio(-below[0], below[1], precision, Rounding.DOWN) == -step


def test_round_ratio_fraction_of_a_micro() -> None:
    # 1/3 micro-unit
    assert round_ratio(1, 3, 6, Rounding.UP) == 1
    assert round_ratio(1, 3, 6, Rounding.DOWN) == 0
    assert round_ratio(1, 3, 6, Rounding.HALF_UP) == 0
    assert round_ratio(2, 3, 6, Rounding.HALF_UP) == 1
    assert round_ratio(-1, 3, 6, Rounding.UP) == 0
    assert round_ratio(-1, 3, 6, Rounding.DOWN) == -1
    assert round_ratio(-2, 3, 6, Rounding.HALF_UP) == -1
    # 10 / 60,000,000 (one micro per minute, 10 seconds): a tiny positive amount
    assert round_ratio(10, 60_000_000, 4, Rounding.UP) == 100
    assert round_ratio(10, 60_000_000, 4, Rounding.DOWN) == 0
    assert round_ratio(10, 60_000_000, 0, Rounding.UP) == 1_000_000


def test_round_ratio_returns_int() -> None:
    for rounding in Rounding:
        assert type(round_ratio(7, 3, 2, rounding)) is int


@pytest.mark.parametrize(("denominator", "precision"), [(0, 4), (-1, 4), (1, -1), (1, 7)], ids=str)
def test_round_ratio_rejects_bad_arguments(denominator: int, precision: int) -> None:
    with pytest.raises(AssertionError):
        round_ratio(1, denominator, precision, Rounding.UP)


_DECIMAL_ROUNDING = {
    Rounding.UP: decimal.ROUND_CEILING,
    Rounding.DOWN: decimal.ROUND_FLOOR,
    Rounding.HALF_UP: decimal.ROUND_HALF_UP,
}


def _decimal_round_ratio(
    numerator: int, denominator: int, precision: int, rounding: Rounding
) -> int:
    """Oracle: Decimal quantize of numerator/denominator micro-units, at `precision` decimals.

    The quotient is computed with 200 significant digits: |numerator| < 10**40 so a value that
    is not exactly on a rounding boundary (or a tie) is at least 1/(2*denominator) away from one,
    far beyond the precision of the division, so the quotient's own rounding cannot move it.
    """
    ctx = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_EVEN, traps=[])
    units = ctx.divide(Decimal(numerator), Decimal(denominator) * MICROS_PER_UNIT)
    quantum = Decimal(1).scaleb(-precision)
    rounded = units.quantize(quantum, rounding=_DECIMAL_ROUNDING[rounding], context=ctx)
    micros = rounded.scaleb(6, context=ctx)
    assert micros == micros.to_integral_value()
    return int(micros)


@given(
    numerator=st.integers(min_value=-(10**30), max_value=10**30),
    denominator=st.integers(min_value=1, max_value=10**12),
    precision=st.integers(min_value=0, max_value=6),
    rounding=st.sampled_from(list(Rounding)),
)
@example(numerator=500_000, denominator=1, precision=0, rounding=Rounding.HALF_UP)
@example(numerator=-500_000, denominator=1, precision=0, rounding=Rounding.HALF_UP)
@example(numerator=-1, denominator=2, precision=6, rounding=Rounding.HALF_UP)
@example(numerator=1, denominator=2, precision=6, rounding=Rounding.HALF_UP)
@example(numerator=-1, denominator=3, precision=6, rounding=Rounding.UP)
@example(numerator=-1, denominator=3, precision=6, rounding=Rounding.DOWN)
@example(numerator=150, denominator=3, precision=4, rounding=Rounding.HALF_UP)
def test_round_ratio_matches_decimal_quantize(
    numerator: int, denominator: int, precision: int, rounding: Rounding
) -> None:
    result = round_ratio(numerator, denominator, precision, rounding)
    assert result == _decimal_round_ratio(numerator, denominator, precision, rounding)
    assert result % 10 ** (6 - precision) == 0


@given(
    numerator=st.integers(min_value=-(10**30), max_value=10**30),
    denominator=st.integers(min_value=1, max_value=10**12),
    precision=st.integers(min_value=0, max_value=6),
)
def test_round_ratio_bracketing(numerator: int, denominator: int, precision: int) -> None:
    step = 10 ** (6 - precision)
    up = round_ratio(numerator, denominator, precision, Rounding.UP)
    down = round_ratio(numerator, denominator, precision, Rounding.DOWN)
    half = round_ratio(numerator, denominator, precision, Rounding.HALF_UP)
    # down <= exact <= up, one step apart unless exact; half_up is one of them
    assert down * denominator <= numerator <= up * denominator
    assert up - down in (0, step)
    assert (up == down) == (numerator % (denominator * step) == 0)
    assert half in (up, down)
    # half_up picks the nearer one, ties away from zero
    dist_down = numerator - down * denominator
    dist_up = up * denominator - numerator
    if dist_down < dist_up:
        assert half == down
    elif dist_up < dist_down:
        assert half == up
    else:
        assert half == (up if numerator > 0 else down)
    # symmetry: half_up is odd; up(-x) == -down(x)
    assert round_ratio(-numerator, denominator, precision, Rounding.HALF_UP) == -half
    assert round_ratio(-numerator, denominator, precision, Rounding.UP) == -down


@given(micros=st.integers(min_value=-(10**24), max_value=10**24), precision=st.integers(0, 6))
def test_round_micros_equals_round_ratio_over_one(micros: int, precision: int) -> None:
    for rounding in Rounding:
        assert round_micros(micros, precision, rounding) == round_ratio(
            micros, 1, precision, rounding
        )
        assert round_micros(micros, precision, rounding) == _decimal_round_ratio(
            micros, 1, precision, rounding
        )


# --------------------------------------------------------------------------------------------
# percent_to_ppm


@pytest.mark.parametrize(
    ("text", "ppm"),
    [
        ("0", 0),
        ("12.5", 125_000),
        ("100", 1_000_000),
        ("-100", -1_000_000),
        ("0.0001", 1),
        ("-0.0001", -1),
        ("33.3333", 333_333),
        ("1", 10_000),
        (".5", 5_000),
        ("250", 2_500_000),
        ("+7.25", 72_500),
    ],
)
def test_percent_to_ppm(text: str, ppm: int) -> None:
    assert percent_to_ppm(text) == ppm


@pytest.mark.parametrize("text", ["0.00001", "12.12345", "-0.000001", "1.000001"])
def test_percent_to_ppm_rejects_more_than_four_decimals(text: str) -> None:
    with pytest.raises(MoneyError, match="more than 4 decimals"):
        percent_to_ppm(text)


@pytest.mark.parametrize("text", ["", "12%", "1e2", "NaN", "0.0000001", " 5"])
def test_percent_to_ppm_rejects_malformed(text: str) -> None:
    with pytest.raises(MoneyError):
        percent_to_ppm(text)


@given(ppm=st.integers(min_value=-(10**15), max_value=10**15))
def test_percent_to_ppm_round_trip(ppm: int) -> None:
    text = str(Decimal(ppm).scaleb(-4))
    assert "E" not in text.upper()
    assert percent_to_ppm(text) == ppm
