"""The host's own account of its CPUs over a stretch of a benchmark: how much of their time was
idle, waiting for I/O, or stolen (a virtual CPU ready to run while the hypervisor ran something
else: time no process here was given, which slows every figure measured in it)."""

from __future__ import annotations

from typing import Any

import psutil  # type: ignore[import-untyped]

SHOWN = ("idle", "iowait", "steal")


def host_times() -> Any:
    return psutil.cpu_times()


def host_shares(before: Any, after: Any) -> dict[str, float]:
    """Each of SHOWN in percent of all CPU time between two `host_times()` readings."""
    spent = {name: getattr(after, name) - getattr(before, name) for name in after._fields}
    total = sum(spent.values()) or 1.0
    return {name: round(100 * spent.get(name, 0.0) / total, 1) for name in SHOWN}
