"""The generator's window starts when it says: no frame is stamped before the window opens.

A frame stamped before the window is counted as expected by the sender and skipped by
the receivers, so an early start shows as deliveries "missing" that the relay never
lost. The test runs on uvloop, the generator's loop, whose timers keep whole
milliseconds and woke a plain ``asyncio.sleep`` early in about a third of tries.
"""

from __future__ import annotations

import asyncio
import random
import time

import uvloop

from switchboard.bench.worker import sleep_until


def test_sleep_until_never_returns_before_its_deadline() -> None:
    async def tries() -> tuple[float, int]:
        earliest, plain_early = float("inf"), 0
        for _ in range(100):
            when = time.monotonic() + random.uniform(0.0005, 0.01)
            await sleep_until(when)
            earliest = min(earliest, time.monotonic() - when)
            # The same wait with a plain sleep, to show the test can tell the two apart.
            when = time.monotonic() + random.uniform(0.0005, 0.01)
            await asyncio.sleep(when - time.monotonic())
            plain_early += time.monotonic() < when
        return earliest, plain_early

    earliest, plain_early = uvloop.run(tries())
    assert earliest >= 0.0
    assert plain_early > 0  # uvloop does wake early; otherwise this test proves nothing
