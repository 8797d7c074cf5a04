"""The writer's array literals read back in Postgres as exactly the values they were made of."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ccserver.ledger.array_literals import bool_array, float_array, int_array, text_array
from tests.conftest import PostgresServer

Query = Callable[..., Any]

# Any text Postgres can store: no NUL, no lone surrogate (not encodable as UTF-8).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
BIGINT = st.integers(-(2**63), 2**63 - 1)


@pytest.fixture(scope="module")
def query(postgres_server: PostgresServer) -> Iterator[Query]:
    loop = asyncio.new_event_loop()
    connection = loop.run_until_complete(asyncpg.connect(postgres_server.admin_dsn))

    def run(sql: str, *args: object) -> Any:
        return loop.run_until_complete(connection.fetchval(sql, *args))

    yield run
    loop.run_until_complete(connection.close())
    loop.close()


@settings(max_examples=300, deadline=None)
@given(st.lists(TEXT, max_size=12))
@example([])
@example([""])
@example(["", ""])
@example(["NULL", "null", " ", "a,b", "{x}", '"', "\\", '\\"', '""', "\\\\", "\n\t", "é€😀"])
def test_text_array_reads_back_as_its_values(query: Query, values: list[str]) -> None:
    assert query("SELECT $1::text::text[]", text_array(values)) == values


@settings(max_examples=100, deadline=None)
@given(st.lists(BIGINT, max_size=12))
def test_int_array_reads_back_as_its_values(query: Query, values: list[int]) -> None:
    assert query("SELECT $1::text::bigint[]", int_array(values)) == values


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=12))
@example([1_700_000_000.123456, 0.1, -0.0, 5e-324, 1.7976931348623157e308])
def test_float_array_reads_back_as_the_same_doubles(query: Query, values: list[float]) -> None:
    assert query("SELECT $1::text::float8[]", float_array(values)) == values


@given(st.lists(st.booleans(), max_size=12))
def test_bool_array_reads_back_as_its_values(query: Query, values: list[bool]) -> None:
    assert query("SELECT $1::text::boolean[]", bool_array(values)) == values


def test_a_nul_in_a_text_value_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        text_array(["ok", "a\x00b"])
