"""Postgres array literals (`{1,2,3}`, `{"a","b"}`) built in one pass over a whole column.

The writer sends each column of a batch as one text parameter cast to its array type in SQL
(`$2::text::bigint[]`) rather than as a Python list for asyncpg to encode: asyncpg's array
encoder costs about 0.35-0.5 us per element on this machine, in the thread that also handles
every request; these functions cost a fraction of that, and Postgres parses the
literal in C. Each function returns exactly the array its input is, or raises ValueError.

Inside double quotes an array literal takes every character as it is except `"` and `\\`, which
are escaped with a backslash; so a text element needs no other escaping (commas, braces, blanks,
newlines and the word NULL stay data). Postgres text cannot hold NUL, which is refused here as
Postgres would refuse it.
"""

from __future__ import annotations

from collections.abc import Sequence

EMPTY = "{}"
_SEPARATOR = "\x00"  # cannot occur in an element: Postgres text has no NUL


def int_array(values: Sequence[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}" if values else EMPTY


def float_array(values: Sequence[float]) -> str:
    # repr is the shortest string that reads back as the same double; float8 input is exact.
    return "{" + ",".join(map(repr, values)) + "}" if values else EMPTY


def bool_array(values: Sequence[bool]) -> str:
    return "{" + ",".join(["t" if value else "f" for value in values]) + "}" if values else EMPTY


def text_array(values: Sequence[str]) -> str:
    if not values:
        return EMPTY
    joined = _SEPARATOR.join(values)
    if joined.count(_SEPARATOR) != len(values) - 1:
        raise ValueError("a text value holds a NUL character, which Postgres text cannot store")
    escaped = joined.replace("\\", "\\\\").replace('"', '\\"')
    return '{"' + escaped.replace(_SEPARATOR, '","') + '"}'
