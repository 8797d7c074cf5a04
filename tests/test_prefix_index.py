"""PrefixIndex: longest-prefix match over digit strings, checked against brute force."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccserver.rating.prefix_index import PREFIX_DIGITS_MAX, PrefixIndex, is_digit_prefix


def brute_longest(table: dict[str, int], number: str) -> int | None:
    """Oracle: every stored prefix is considered; the longest one the number starts with wins."""
    best: str | None = None
    for prefix in table:
        if number.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return None if best is None else table[best]


def build(prefixes: dict[str, int]) -> PrefixIndex[int]:
    index: PrefixIndex[int] = PrefixIndex()
    for prefix, value in prefixes.items():
        index.put(prefix, value)
    return index


# --------------------------------------------------------------------------------------------
# basics


def test_longest_match() -> None:
    index = build({"1": 1, "44": 44, "447": 447, "4478": 4478, "4479": 4479, "49": 49})
    assert index.longest_match("447812345678") == 4478
    assert index.longest_match("4478") == 4478
    assert index.longest_match("447912345678") == 4479
    assert index.longest_match("447012345678") == 447
    assert index.longest_match("447") == 447
    assert index.longest_match("4412") == 44
    assert index.longest_match("44") == 44
    assert index.longest_match("4912") == 49
    assert index.longest_match("12125551234") == 1
    assert index.longest_match("1") == 1
    assert index.matches_any("4478")
    assert index.matches_any("1999")


def test_no_match() -> None:
    empty: PrefixIndex[int] = PrefixIndex()
    assert empty.longest_match("4412345") is None
    assert empty.longest_match("") is None
    assert not empty.matches_any("1")
    index = build({"44": 44, "4478": 4478})
    assert index.longest_match("4") is None  # shorter than every prefix
    assert index.longest_match("") is None
    assert index.longest_match("45") is None
    assert index.longest_match("54478") is None  # contains a prefix, but not at the start
    assert index.longest_match("3344") is None
    assert not index.matches_any("4")
    assert not index.matches_any("5")


def test_zero_is_a_digit_and_a_falsy_value_still_matches() -> None:
    index = build({"0": 0, "00": 100})
    assert index.longest_match("0") == 0
    assert index.matches_any("0")
    assert index.longest_match("001") == 100
    assert index.longest_match("01") == 0
    assert index.longest_match("1") is None


def test_put_overwrites() -> None:
    index: PrefixIndex[str] = PrefixIndex()
    index.put("44", "old")
    lengths = index._lengths
    index.put("44", "new")
    assert len(index) == 1
    assert index.get("44") == "new"
    assert index.longest_match("441") == "new"
    assert index._lengths == lengths == (2,)
    # overwriting does not double-count the length: one removal empties the table
    assert index.remove("44")
    assert index._lengths == ()
    assert index.longest_match("441") is None


def test_container_protocol() -> None:
    index = build({"1": 1, "44": 44, "447": 447})
    assert len(index) == 3
    assert "44" in index
    assert "4" not in index
    assert "4412" not in index  # membership is exact, not by prefix
    assert set(index) == {"1", "44", "447"}
    assert dict(index.items()) == {"1": 1, "44": 44, "447": 447}
    assert index.get("44") == 44
    assert index.get("4412") is None
    index.clear()
    assert len(index) == 0
    assert index._lengths == ()
    assert index.longest_match("447") is None
    index.put("9", 9)  # usable after clear
    assert index.longest_match("91") == 9


def test_remove() -> None:
    index = build({"4": 4, "44": 44, "447": 447, "448": 448, "4478": 4478})
    assert index._lengths == (4, 3, 2, 1)

    assert index.remove("4478") is True
    assert index._lengths == (3, 2, 1)  # no prefix of 4 digits left: the length is dropped
    assert index.longest_match("447812") == 447
    assert "4478" not in index
    assert len(index) == 4

    assert index.remove("4478") is False  # already gone
    assert index.remove("9") is False  # never there
    assert index.remove("") is False
    assert len(index) == 4

    assert index.remove("447") is True
    assert index._lengths == (3, 2, 1)  # "448" still has 3 digits
    assert index.longest_match("447812") == 44
    assert index.longest_match("4481") == 448

    assert index.remove("448") is True
    assert index._lengths == (2, 1)
    assert index.longest_match("4481") == 44

    assert index.remove("4") is True
    assert index._lengths == (2,)
    assert index.longest_match("41") is None
    assert index.longest_match("4412") == 44

    assert index.remove("44") is True
    assert index._lengths == ()
    assert len(index) == 0
    assert index.longest_match("4412") is None

    # and it fills again
    index.put("447", 1)
    assert index._lengths == (3,)
    assert index.longest_match("4478") == 1


def test_lengths_1_to_32() -> None:
    number = "12345678901234567890123456789012345"  # 35 digits
    index: PrefixIndex[int] = PrefixIndex()
    for length in range(1, PREFIX_DIGITS_MAX + 1):
        index.put(number[:length], length)
    assert len(index) == 32
    assert index._lengths == tuple(range(32, 0, -1))
    assert index.longest_match(number) == 32  # a number longer than any prefix
    for length in range(1, PREFIX_DIGITS_MAX + 1):
        assert index.longest_match(number[:length]) == length
        # a different next digit falls back to exactly this length
        other = "0" if number[length] != "0" else "1"
        assert index.longest_match(number[:length] + other + "999") == length
    # remove from the longest down; each lookup falls back one digit
    for length in range(PREFIX_DIGITS_MAX, 1, -1):
        assert index.remove(number[:length])
        assert index._lengths == tuple(range(length - 1, 0, -1))
        assert index.longest_match(number) == length - 1
    # remove from the shortest up in a fresh table
    index = build({number[:length]: length for length in range(1, 33)})
    for length in range(1, PREFIX_DIGITS_MAX):
        assert index.remove(number[:length])
        assert index.longest_match(number) == 32
        assert index.longest_match(number[:length]) is None


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "1a",
        "a1",
        "+44",
        "-1",
        "1.5",
        " 1",
        "1 ",
        "1\n",
        "4-4",
        "1" * (PREFIX_DIGITS_MAX + 1),
        "\u0664\u0664",  # Arabic-Indic digits
        "\uff14",  # fullwidth 4
        "\u00b2",  # superscript two: str.isdigit() is True, but not ASCII
    ],
)
def test_put_rejects_non_digit_prefix(prefix: str) -> None:
    assert not is_digit_prefix(prefix)
    index = build({"4": 4})
    with pytest.raises(AssertionError):
        index.put(prefix, 1)
    assert len(index) == 1
    assert index._lengths == (1,)
    assert prefix not in index


def test_is_digit_prefix_accepts() -> None:
    assert is_digit_prefix("0")
    assert is_digit_prefix("1234567890")
    assert is_digit_prefix("9" * PREFIX_DIGITS_MAX)


# --------------------------------------------------------------------------------------------
# property: any sequence of puts and removes against a dict and brute force

_prefixes = st.text(alphabet="0123", min_size=1, max_size=5) | st.text(
    alphabet="0123456789", min_size=1, max_size=PREFIX_DIGITS_MAX
)
_ops = st.lists(
    st.tuples(st.sampled_from(["put", "put", "remove"]), _prefixes, st.integers(0, 1000)),
    max_size=60,
)
_numbers = st.lists(st.text(alphabet="0123", max_size=8) | st.text(alphabet="0123456789"))


@given(ops=_ops, numbers=_numbers)
def test_matches_brute_force(ops: list[tuple[str, str, int]], numbers: list[str]) -> None:
    index: PrefixIndex[int] = PrefixIndex()
    table: dict[str, int] = {}
    for op, prefix, value in ops:
        if op == "put":
            index.put(prefix, value)
            table[prefix] = value
        else:
            assert index.remove(prefix) == (prefix in table)
            table.pop(prefix, None)
        # the length table is exactly the lengths present, longest first
        assert index._lengths == tuple(sorted({len(p) for p in table}, reverse=True))
    assert len(index) == len(table)
    assert dict(index.items()) == table
    queries = numbers + list(table) + [p + "5" for p in table] + [p[:-1] for p in table]
    for number in queries:
        assert index.longest_match(number) == brute_longest(table, number), number


# --------------------------------------------------------------------------------------------
# 1,000,000 prefixes


_DIGIT_TABLE = bytes(48 + b % 10 for b in range(256))


def _random_digits(rng: random.Random, count: int) -> str:
    return rng.randbytes(count).translate(_DIGIT_TABLE).decode("ascii")


def test_one_million_prefixes() -> None:
    rng = random.Random(20240601)
    size = 1_000_000

    # 1,000,000 distinct random prefixes of 6 to 12 digits
    table: dict[str, int] = {}
    while len(table) < size:
        need = size - len(table) + 1000
        digits = _random_digits(rng, 12 * need)
        lengths = rng.randbytes(need)
        for i in range(need):
            table.setdefault(digits[12 * i : 12 * i + 6 + lengths[i] % 7], len(table))
            if len(table) == size:
                break
    assert len(table) == size
    prefixes = list(table)

    index: PrefixIndex[int] = PrefixIndex()
    put = index.put
    for prefix, value in table.items():
        put(prefix, value)
    assert len(index) == size
    assert index._lengths == (12, 11, 10, 9, 8, 7, 6)

    # a few thousand numbers: stored prefixes extended by random digits, random numbers, stored
    # prefixes with the last digit changed (often a shorter prefix matches), and short numbers
    numbers: list[str] = []
    for prefix in rng.sample(prefixes, 2000):
        numbers.append(prefix + _random_digits(rng, rng.randrange(0, 9)))
    numbers += [_random_digits(rng, rng.randrange(6, 16)) for _ in range(2000)]
    for prefix in rng.sample(prefixes, 500):
        numbers.append(prefix[:-1] + str((int(prefix[-1]) + 1) % 10))
    numbers += [_random_digits(rng, rng.randrange(0, 6)) for _ in range(500)]

    def brute_force_all(current: dict[str, int]) -> list[int | None]:
        # One pass over every stored prefix, checking it against every prefix of every number.
        starts: dict[str, list[int]] = {}
        for q, number in enumerate(numbers):
            for length in range(1, len(number) + 1):
                starts.setdefault(number[:length], []).append(q)
        best: list[str | None] = [None] * len(numbers)
        for prefix in current:
            for q in starts.get(prefix, ()):
                held = best[q]
                if held is None or len(prefix) > len(held):
                    best[q] = prefix
        return [None if p is None else current[p] for p in best]

    expected = brute_force_all(table)
    got = [index.longest_match(number) for number in numbers]
    assert got == expected

    # the sample exercises hits, misses and nested prefixes (a shorter stored prefix exists)
    hits = [e for e in expected if e is not None]
    assert len(hits) > 2200
    assert len(numbers) - len(hits) > 500
    nested = sum(
        1
        for number, e in zip(numbers, expected, strict=True)
        if e is not None and any(number[:n] in table for n in range(6, len(prefixes[e])))
    )
    assert nested > 100

    # a full linear scan for a handful of numbers, the slowest and plainest oracle
    for number in numbers[:3] + numbers[2000:2002] + numbers[4000:4002]:
        assert index.longest_match(number) == brute_longest(table, number)

    # remove every 12-digit prefix (and a random sample of others): the 12 leaves the length
    # table and lookups stay right
    removed = [p for p in prefixes if len(p) == 12] + rng.sample(prefixes, 10_000)
    for prefix in removed:
        assert index.remove(prefix) == (prefix in table)
        table.pop(prefix, None)
    assert len(index) == len(table)
    assert index._lengths == (11, 10, 9, 8, 7, 6)
    assert [index.longest_match(number) for number in numbers] == brute_force_all(table)
