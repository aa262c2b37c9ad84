"""The ramp's decisions: which load counts as passed, where it stops, what it calls capacity.

The windows here are scripted (a stand-in for ``_measure``, keyed by load and
attempt), because what is tested is the ramp's bookkeeping, not a relay: the
geometric steps, the bisection between the last pass and the first failure,
and a failing load measured once more before it counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from switchboard.bench import runner
from switchboard.bench.scenarios import SCENARIOS


class FakeTarget:
    stats = None

    async def provision(self, scenario: Any, count: int) -> list[dict[str, Any]]:
        return [{} for _ in range(count)]


class FakeGenerator:
    async def connect(self, scenario: Any, meetings: list[dict[str, Any]]) -> dict[str, Any]:
        return {"joined": len(meetings)}


async def ramp(
    monkeypatch: pytest.MonkeyPatch, verdict: Callable[[int, int], float]
) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """Run the ramp with windows whose p99 for (load, attempt at that load) is ``verdict``'s."""
    meetings: list[dict[str, Any]] = []
    seen: list[tuple[int, int]] = []

    async def measure(*args: Any, **kwargs: Any) -> dict[str, Any]:
        active = args[5] if len(args) > 5 else kwargs.get("active")
        load = active if active is not None else len(meetings)
        attempt = sum(1 for m, _ in seen if m == load) + 1
        seen.append((load, attempt))
        return {
            "delivery_ratio": 1.0,
            "latency_ms_p99": verdict(load, attempt),
            "deliveries_per_s": 1000.0 * load,
            "server_cpu_pct": 50.0,
            "generator_cpu_pct": 50.0,
        }

    monkeypatch.setattr(runner, "_measure", measure)
    monkeypatch.setattr(runner.asyncio, "sleep", _no_sleep)
    result = await runner._ramp(
        FakeTarget(),  # type: ignore[arg-type]
        SCENARIOS["ramp"],
        FakeGenerator(),  # type: ignore[arg-type]
        meetings,
        runner._Progress("ramp/test", None),
        0.0,
        10,
        1.4,
    )
    return result, seen


async def _no_sleep(delay: float, result: Any = None) -> Any:
    return result


async def test_a_load_that_fails_once_is_measured_again_and_can_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 55 meetings hits one bad window; the second is fine. Up to 100 pass.
    def verdict(load: int, attempt: int) -> float:
        if load == 55 and attempt == 1:
            return 90.0
        return 10.0 if load <= 100 else 80.0

    result, seen = await ramp(monkeypatch, verdict)
    assert (55, 2) in seen
    assert result["capacity_meetings"] == 100
    retried = [s for s in result["steps"] if s["meetings"] == 55]
    assert [(s["attempt"], s["passed"]) for s in retried] == [(1, False), (2, True)]


async def test_a_load_that_fails_twice_ends_the_ramp(monkeypatch: pytest.MonkeyPatch) -> None:
    # Everything from 55 meetings up fails every time: capacity is below 55.
    result, seen = await ramp(monkeypatch, lambda load, attempt: 10.0 if load < 55 else 80.0)
    # Bisection between 39 (passed) and 55 (failed twice): 47 and 51 pass; then the
    # half-capacity window.
    assert [load for load, _ in seen] == [20, 28, 39, 55, 55, 47, 51, 25]
    assert result["capacity_meetings"] == 51
    assert result["half_capacity"]["meetings"] == 25
