"""Longest-prefix match over digit strings.

A dict keyed by prefix plus the sorted set of prefix lengths present: a lookup slices the number
at each length present, longest first, so it costs at most one hash lookup per digit of the
number, whatever the size of the table (1,000,000 prefixes and more).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")

PREFIX_DIGITS_MAX = 32


def is_digit_prefix(text: str) -> bool:
    return 0 < len(text) <= PREFIX_DIGITS_MAX and text.isascii() and text.isdigit()


class PrefixIndex(Generic[V]):
    __slots__ = ("_by_prefix", "_lengths", "_lengths_count")

    def __init__(self) -> None:
        self._by_prefix: dict[str, V] = {}
        # Lengths present, longest first, and how many prefixes have each length (so removal can
        # drop a length that is no longer used).
        self._lengths: tuple[int, ...] = ()
        self._lengths_count: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._by_prefix)

    def __contains__(self, prefix: str) -> bool:
        return prefix in self._by_prefix

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_prefix)

    def items(self) -> Iterator[tuple[str, V]]:
        return iter(self._by_prefix.items())

    def get(self, prefix: str) -> V | None:
        return self._by_prefix.get(prefix)

    def put(self, prefix: str, value: V) -> None:
        assert is_digit_prefix(prefix), prefix
        if prefix not in self._by_prefix:
            length = len(prefix)
            count = self._lengths_count.get(length, 0)
            self._lengths_count[length] = count + 1
            if count == 0:
                self._lengths = tuple(sorted(self._lengths_count, reverse=True))
        self._by_prefix[prefix] = value

    def update(self, values: dict[str, V]) -> None:
        """`put` of many prefixes at once (a tariff loaded whole): one dict update and one count
        of the lengths. The prefixes must be digit strings; the caller has checked them."""
        if not values:
            return
        self._by_prefix.update(values)
        self._recount()

    def _recount(self) -> None:
        """Count the lengths present afresh (after entries were added to `_by_prefix` directly)."""
        self._lengths_count = dict(Counter(map(len, self._by_prefix)))
        self._lengths = tuple(sorted(self._lengths_count, reverse=True))

    def remove(self, prefix: str) -> bool:
        if prefix not in self._by_prefix:
            return False
        del self._by_prefix[prefix]
        length = len(prefix)
        count = self._lengths_count[length] - 1
        if count == 0:
            del self._lengths_count[length]
            self._lengths = tuple(sorted(self._lengths_count, reverse=True))
        else:
            self._lengths_count[length] = count
        return True

    def clear(self) -> None:
        self._by_prefix.clear()
        self._lengths = ()
        self._lengths_count.clear()

    def longest_match(self, number: str) -> V | None:
        by_prefix = self._by_prefix
        size = len(number)
        for length in self._lengths:
            if length <= size:
                value = by_prefix.get(number[:length])
                if value is not None:
                    return value
        return None

    def matches_any(self, number: str) -> bool:
        return self.longest_match(number) is not None
