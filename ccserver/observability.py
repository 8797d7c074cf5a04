"""Metrics (prometheus-client) and logs (structlog JSON), named as CONTRACT.md fixes them."""

from __future__ import annotations

import gc
import logging
import sys
import time
from typing import Any, TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "ccserver_requests",
    "Requests by protocol, type and result",
    ["protocol", "type", "result"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "ccserver_request_seconds",
    "Time to answer a request",
    ["protocol", "type"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
ACTIVE_CALLS = Gauge("ccserver_active_calls", "Calls in progress", registry=REGISTRY)
LEDGER_COMMIT_SECONDS = Histogram(
    "ccserver_ledger_commit_seconds",
    "Time from a write's arrival at the writer to its COMMIT",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
    registry=REGISTRY,
)
LEDGER_QUEUE_DEPTH = Gauge(
    "ccserver_ledger_queue_depth", "Writes waiting for the ledger writer", registry=REGISTRY
)
LEDGER_BATCH_SIZE = Histogram(
    "ccserver_ledger_batch_size",
    "Writes committed per transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
    registry=REGISTRY,
)
# Where a commit's time goes, per batch committed: `queued` is how long its oldest write waited
# for the writer (a free commit slot), `hand_off` the wait for the asyncpg loop to take the batch
# up (its next iteration, and a connection: one of the writer's own, kept out of the pool),
# `encode` building its parameters there, `statement` the round trip to Postgres (the statement
# and its COMMIT, until the loop has read the answer), `hand_back` working out from the answer
# which writes were applied, until their waiters are told (on the loop, in the same turn). The
# loop runs in trio's thread (ccserver.ledger.bridge): the hand-off waits for trio to get round
# to it, behind whatever requests are being handled.
LEDGER_COMMIT_STAGE_SECONDS = Histogram(
    "ccserver_ledger_commit_stage_seconds",
    "Time of each stage of a ledger commit, per batch",
    ["stage"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
COMMIT_STAGES = ("queued", "hand_off", "encode", "statement", "hand_back")
LEDGER_RETRIES = Counter(
    "ccserver_ledger_retries", "Ledger commits retried after a database error", registry=REGISTRY
)
DISCONNECTS = Counter(
    "ccserver_disconnects",
    "Disconnect requests by reason and result",
    ["reason", "result"],
    registry=REGISTRY,
)
DROPPED_PACKETS = Counter(
    "ccserver_dropped_packets", "Packets dropped, by reason", ["reason"], registry=REGISTRY
)
# Every request in the process waits while the cycle collector runs: its pauses are latency.
GC_PAUSE_SECONDS = Histogram(
    "ccserver_gc_pause_seconds",
    "Pauses of Python's cycle collector, by generation collected",
    ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
_collector_watched = False


def watch_collector() -> None:
    """Time every run of the cycle collector into GC_PAUSE_SECONDS, from now on (idempotent).

    gc runs its callbacks while it is still collecting, when no other collection can start: the
    observation (which allocates) cannot set off a collection inside one.
    """
    global _collector_watched
    if _collector_watched:
        return
    _collector_watched = True
    pauses = [GC_PAUSE_SECONDS.labels(str(generation)) for generation in range(3)]
    clock = time.perf_counter
    began = [0.0]

    def on_collection(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = clock()
        else:
            pauses[info["generation"]].observe(clock() - began[0])

    gc.callbacks.append(on_collection)


M = TypeVar("M", Counter, Gauge, Histogram)
_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: M, *labels: str) -> M:
    """`metric.labels(*labels)`, bound once and kept: labels() costs more than the increment.

    For label values from a small fixed set (protocol, request type, outcome, drop reason).
    """
    key = (id(metric), labels)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*labels)
    return found


def configure_logging(level: str = "info") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=numeric)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
