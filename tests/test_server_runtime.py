"""How `ccserver serve` runs the interpreter: its young generation collected on a clock."""

from __future__ import annotations

import collections
import gc
from typing import Any

import pytest
import trio

from ccserver import server


async def churn(old: collections.deque[list[int]], seconds: float) -> None:
    """Replace old objects by new ones, one for one: what a steady call rate does to call state."""
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        for _ in range(200):
            old.append([])
            old.popleft()
        await trio.sleep(0)


async def test_steady_churn_of_long_lived_objects_is_collected_on_a_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "YOUNG_COLLECTION_PERIOD_SECONDS", 0.02)
    old: collections.deque[list[int]] = collections.deque([] for _ in range(50_000))
    gc.collect()  # the 50,000 are old now
    young_collections = [0]

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 0:
            young_collections[0] += 1

    gc.callbacks.append(on_collection)
    try:
        # Without the clock: each new object's allocation is cancelled in the interpreter's
        # count by an old one's deallocation, so no collection comes and the survivors pile up.
        await churn(old, 0.1)
        assert len(gc.get_objects(0)) > gc.get_threshold()[0]
        gc.collect(0)
        young_collections[0] = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.collect_young_generation)
            await churn(old, 0.2)
            nursery.cancel_scope.cancel()
    finally:
        gc.callbacks.remove(on_collection)
    assert young_collections[0] >= 4  # 10 periods in 0.2 s; a loaded host runs fewer
