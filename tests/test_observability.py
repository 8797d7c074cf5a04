"""ccserver_gc_pause_seconds: every run of the cycle collector, timed by generation."""

from __future__ import annotations

import gc

from ccserver.observability import REGISTRY, watch_collector


def pauses(generation: int) -> float:
    labels = {"generation": str(generation)}
    return REGISTRY.get_sample_value("ccserver_gc_pause_seconds_count", labels) or 0.0


def test_every_collection_is_counted_once_in_its_generation() -> None:
    watch_collector()
    watch_collector()  # a second call adds no second callback
    gc.disable()  # only the collections below
    try:
        before = [pauses(generation) for generation in range(3)]
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        gc.enable()
    assert [pauses(generation) - before[generation] for generation in range(3)] == [1, 0, 2]
    total = REGISTRY.get_sample_value("ccserver_gc_pause_seconds_sum", {"generation": "2"})
    assert total is not None and total > 0
