"""`ccserver serve`: every part of the server under one trio nursery.

Start-up: open (or start) the database, migrate, load the engine, open the ledger writer, then the
listeners; /readyz turns 200 only then. SIGINT/SIGTERM: /readyz turns 503, listeners stop
accepting, requests in flight finish, the writer commits everything queued, the embedded
Postgres stops, exit 0.
"""

from __future__ import annotations

import gc
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from ccserver.actors.engine import Engine
from ccserver.admin_api.app import Api, create_app
from ccserver.admin_api.auth import TokenStore, fetch_tokens
from ccserver.admin_api.nas_clients import load_nas_clients
from ccserver.config import Config
from ccserver.ledger.bridge import Bridge
from ccserver.ledger.database import open_database
from ccserver.ledger.loader import build_engine, fetch_snapshot
from ccserver.ledger.writer import Writer
from ccserver.observability import ACTIVE_CALLS, configure_logging, get_logger, watch_collector

log = get_logger("ccserver.server")

# A worker thread (trio.to_thread: a CSV export, a tariff parsed) holds the GIL for up to the
# switch interval before the trio thread gets it back: at CPython's default (5 ms) every request
# waiting meanwhile waits that much.
GIL_SWITCH_INTERVAL_SECONDS = 0.0005
# A young collection stops every request for as long as it walks what survived since the last
# one, and the count that triggers it is of survivors (allocations less deallocations: short-lived
# containers cancel out). Each authorization leaves three tuples alive until its hold ends (its
# key, its levels, its expiry entry), so the threshold sets the pause. Under RADIUS authorization
# load young collections took 20 ms (p50; up to 50) at 50,000, and 0.7 ms (at most 3) at 5,000,
# with less time in all (0.14 s against 0.33 s over the same phases). What start-up loaded
# (accounts, tariffs) is frozen out of every collection, so a full collection walks only what was
# created since.
GC_THRESHOLDS = (5_000, 50, 100)
# That count is net of deallocations, so it misses objects that live a while: a call's state lives
# as long as the call, and the engine remembers each stop for the next 50,000. At a steady rate as
# many old ones die as new ones are made, the count stays under the threshold, and the survivors
# pile up unwalked until a collection finally comes: under accounting load one found 30,000-
# 150,000 young objects and stopped every request for 17-80 ms. So the young generation is also
# collected on a clock, between requests.
YOUNG_COLLECTION_PERIOD_SECONDS = 0.1

TIMER_PERIOD_SECONDS_MAX = 0.25  # the longest a depletion can wait for the timer to notice
# How late an expired hold may be released: the timer then wakes a few times a second for them,
# not once per authorization (2,000 times a second at 2,000 calls/s, 60 s later).
HOLD_RELEASE_SLACK_SECONDS = TIMER_PERIOD_SECONDS_MAX
SHUTDOWN_GRACE_SECONDS = 10.0

# Protocol front ends: each is started with the Api and the shutdown event, calls
# task_status.started() once listening, and returns once `shutdown` is set and its requests in
# flight are answered.
FrontEnd = Callable[..., Awaitable[None]]


def front_ends() -> list[FrontEnd]:
    from ccserver.radius.server import radius_server

    return [radius_server]


async def engine_timer(api: Api) -> None:
    """Release expired holds and hand depletion disconnects to the protocol side."""
    engine = api.engine
    while True:
        deadline = engine.next_deadline(HOLD_RELEASE_SLACK_SECONDS)
        delay = TIMER_PERIOD_SECONDS_MAX
        if deadline is not None:
            delay = min(max(deadline - engine.clock(), 0.0), TIMER_PERIOD_SECONDS_MAX)
        await trio.sleep(delay)
        events = engine.tick()
        if events:
            api.send_disconnects(events)
        ACTIVE_CALLS.set(len(engine.sessions))


async def collect_young_generation() -> None:
    """Collect the young generation every YOUNG_COLLECTION_PERIOD_SECONDS (not while a bulk load
    has paused the collector)."""
    while True:
        await trio.sleep(YOUNG_COLLECTION_PERIOD_SECONDS)
        if gc.isenabled():
            gc.collect(0)


async def serve_http(
    api: Api,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    config = HypercornConfig()
    config.bind = [api.config.admin_api.listen]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = SHUTDOWN_GRACE_SECONDS
    # Hypercorn 0.18's default (1000) makes busy keep-alive clients trip BusyResourceError logs.
    config.keep_alive_max_requests = 1_000_000
    await hypercorn_serve(
        create_app(api),  # type: ignore[arg-type]
        config,
        shutdown_trigger=shutdown.wait,
        task_status=task_status,
    )


async def load_engine(api_config: Config, bridge: Bridge) -> Engine:
    started = time.perf_counter()
    # With the DSN the snapshot is read on several connections at once (one instant still).
    snapshot = await bridge.run(fetch_snapshot, bridge.dsn)
    engine = build_engine(
        snapshot,
        max_call_seconds=api_config.engine.max_call_seconds,
        hold_ttl_seconds=api_config.engine.hold_ttl_seconds,
    )
    log.info(
        "engine_loaded",
        accounts=len(engine.hierarchy),
        open_calls=len(engine.sessions),
        seconds=round(time.perf_counter() - started, 3),
    )
    return engine


def tune_runtime() -> None:
    """Interpreter settings for a latency-bound server; see GIL_SWITCH_INTERVAL_SECONDS."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    gc.set_threshold(*GC_THRESHOLDS)
    watch_collector()


def freeze_start_up_heap() -> None:
    """Move everything alive now (the loaded engine, NAS clients, modules) out of the garbage
    collector's reach: it is long lived, and walking it made full collections pause 100+ ms."""
    gc.collect()
    gc.freeze()


async def serve(config: Config, *, demo: bool = False) -> int:
    configure_logging(config.log.level)
    tune_runtime()
    async with open_database(config.database) as bridge:
        demo_token = None
        if demo:
            from ccserver.demo import remember_demo_token, seed_demo

            demo_token = await seed_demo(bridge)
            demo_token = remember_demo_token(config.database.data_dir, demo_token)
        engine = await load_engine(config, bridge)
        tokens = TokenStore()
        tokens.load(await bridge.run(fetch_tokens))
        writer = Writer(
            bridge,
            batch_max=config.ledger.batch_max,
            queue_max=config.ledger.queue_max,
            retry_seconds_max=config.ledger.retry_seconds_max,
        )
        api = Api(engine, writer, bridge, config, tokens)
        await load_nas_clients(api)
        freeze_start_up_heap()
        async with trio.open_nursery() as outer:
            outer.start_soon(writer.run)
            shutdown = trio.Event()
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as front:
                    front.start_soon(engine_timer, api)
                    front.start_soon(collect_young_generation)
                    for front_end in front_ends():
                        await front.start(front_end, api, shutdown)
                    await front.start(serve_http, api, shutdown)
                    api.ready = True
                    if demo:
                        from ccserver.demo import instructions

                        print(instructions(config, demo_token, radius=True), flush=True)
                    log.info("ready", admin_api=config.admin_api.listen)
                    async for signum in signals:
                        log.info("shutting_down", signal=signal.Signals(signum).name)
                        break
                    api.ready = False
                    shutdown.set()
                    # Listeners stop accepting and finish what is in flight; then the timers go.
                    with trio.move_on_after(SHUTDOWN_GRACE_SECONDS + 1):
                        while any(
                            t.name.endswith(("serve_http", "radius_server", "diameter_server"))
                            for t in front.child_tasks
                        ):
                            await trio.sleep(0.05)
                    front.cancel_scope.cancel()
            # Everything queued for the ledger is committed before the database goes away.
            writer.close()
    log.info("stopped")
    return 0
