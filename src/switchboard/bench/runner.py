"""Drive one scenario against one relay and reduce what the generator saw to figures.

The runner owns the parts of a benchmark that are not per-frame: provisioning
meetings through the target's own API, spreading whole meetings over worker
processes (so one-way latency is measured within one process's clock),
starting every worker's window at the same instant, reading the server's CPU
and memory from the kernel's accounting (``/proc``), and turning the workers'
latency arrays into one HDR histogram. A :class:`Target` is whatever is being
measured: switchboard (started for the run, or someone's deployment) or a peer
relay in ``benchmarks/peers/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

from ..client import ApiClient
from .scenarios import Scenario
from .worker import worker_main

__all__ = [
    "Generator",
    "ServerStats",
    "SwitchboardTarget",
    "Target",
    "cpu_plan",
    "free_port",
    "latency_figures",
    "run_scenario",
    "start_switchboard",
]

PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99, 100.0)


def free_port() -> int:
    """A TCP port free on loopback now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_plan(workers: int | None) -> tuple[list[int], list[int], int]:
    """Server CPUs, generator CPUs and worker count for this machine.

    With two CPUs or more the relay gets the first one and the generator's
    workers the rest (one worker per CPU unless ``workers`` says otherwise), so
    the relay's CPU figures are its own and the generator cannot steal from
    it. With one CPU nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return [], [], workers or 1
    return cpus[:1], cpus[1:], workers or max(1, len(cpus) - 1)


class ServerStats:
    """The server process as the kernel accounts for it (all threads included)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float | None:
        """User plus system CPU time the process has used so far."""
        split = self.cpu_split()
        return None if split is None else split[0] + split[1]

    def cpu_split(self) -> tuple[float, float] | None:
        """User and system (kernel: TCP, TLS syscalls) CPU seconds so far."""
        if self.pid is None:
            return None
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / ticks, int(fields[12]) / ticks

    def memory_kib(self, field: str = "VmRSS") -> int | None:
        """Resident memory now (``VmRSS``) or at its peak (``VmHWM``), in KiB."""
        if self.pid is None:
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None


class Target:
    """A relay under test: how the generator reaches it and how meetings are made on it."""

    name = "target"
    codec = "switchboard.bench.codecs:RoomCodec"

    def __init__(self, spec: Mapping[str, Any], pid: int | None = None) -> None:
        self.spec: dict[str, Any] = dict(spec)
        self.stats = ServerStats(pid)

    async def provision(self, scenario: Scenario, count: int) -> list[dict[str, Any]]:
        """Make ``count`` more meetings for ``scenario``; each is what the codec joins with."""
        first = self.spec.setdefault("_rooms", 0)
        self.spec["_rooms"] = first + count
        return [{"room": f"room-{first + i}"} for i in range(count)]

    async def finish(self, meetings: Sequence[Mapping[str, Any]]) -> None:
        """The run is over: end the meetings (switchboard commits their records)."""

    async def stop(self) -> None:
        """Stop the relay if the run started it."""


class SwitchboardTarget(Target):
    """switchboard: meetings and invitations through its HTTPS API, as a host's app makes them."""

    name = "switchboard"
    codec = "switchboard.bench.codecs:SwitchboardCodec"

    def __init__(
        self,
        ws_url: str,
        api_url: str,
        token: str,
        ca: Path | str | None,
        *,
        process: subprocess.Popen[str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        super().__init__(
            {"url": ws_url, "ca": str(ca) if ca else None}, process.pid if process else None
        )
        self.api = ApiClient(api_url, ca_file=ca, token=token)
        self.process = process
        self.workdir = workdir

    async def provision(self, scenario: Scenario, count: int) -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(8)
        senders = scenario.participants if scenario.senders is None else scenario.senders
        receivers = scenario.participants - senders

        async def one() -> dict[str, Any]:
            async with gate:
                meeting_id = (await self.api.create_meeting())["meeting_id"]
                tokens = {}
                if senders:
                    sender = await self.api.invite(meeting_id, "presenter", max_uses=senders)
                    tokens["sender"] = sender["token"]
                if receivers:
                    receiver = await self.api.invite(meeting_id, "attendee", max_uses=receivers)
                    tokens["receiver"] = receiver["token"]
                return {"meeting_id": meeting_id, "tokens": tokens}

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def finish(self, meetings: Sequence[Mapping[str, Any]]) -> None:
        gate = asyncio.Semaphore(8)

        async def one(meeting: Mapping[str, Any]) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await self.api.end_meeting(meeting["meeting_id"])

        await asyncio.gather(*(one(m) for m in meetings))

    async def stop(self) -> None:
        await self.api.close()
        if self.process is not None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            if self.process.stdout is not None:
                self.process.stdout.close()


def _pin(cpus: Sequence[int]) -> Callable[[], None] | None:
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


async def start_switchboard(
    workdir: Path, *, cpus: Sequence[int] = (), env: Mapping[str, str] | None = None
) -> SwitchboardTarget:
    """Start a switchboard with embedded defaults in ``workdir``; sign in a bench host.

    Every feature stays on. Only limits a benchmark must exceed are raised: the
    participant cap (a 501-seat webinar) and the connection cap.
    """
    data = workdir / "switchboard"
    # Never the caller's SWITCHBOARD_* settings: on an operator's machine they
    # could point the throwaway relay at a real database, webhook or host name.
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")},
        "SWITCHBOARD_MAX_PARTICIPANTS": "1000",
        "SWITCHBOARD_MAX_CONNECTIONS": "20000",
        "SWITCHBOARD_LOG_LEVEL": "warning",
        **(env or {}),
    }
    cli = [sys.executable, "-m", "switchboard.cli"]
    password = secrets.token_urlsafe(16)
    email = "bench@example.com"
    await asyncio.to_thread(
        subprocess.run,
        [*cli, "host", "add", email, "--password-stdin", "--data-dir", str(data)],
        input=password,
        text=True,
        check=True,
        capture_output=True,
        env=environment,
    )
    relay_port, api_port = free_port(), free_port()
    command = [*cli, "serve", "--data-dir", str(data)]
    command += ["--relay-port", str(relay_port), "--api-port", str(api_port)]
    process = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, started once
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=environment,
        preexec_fn=_pin(cpus),
    )
    stdout = process.stdout
    assert stdout is not None
    try:
        while "trust this CA" not in (line := await asyncio.to_thread(stdout.readline)):
            if not line:
                raise RuntimeError("switchboard did not start")
        ca = data / "tls" / "ca.pem"
        api_url = f"https://localhost:{api_port}"
        async with ApiClient(api_url, ca_file=ca) as api:
            token = (await api.sign_in(email, password))["token"]
    except BaseException:
        process.kill()
        await asyncio.to_thread(process.wait)
        stdout.close()
        raise
    return SwitchboardTarget(
        f"wss://localhost:{relay_port}/v1/ws", api_url, token, ca, process=process, workdir=workdir
    )


class Generator:
    """Worker processes, each a :mod:`.worker` loop, driven in lock step."""

    def __init__(self, target: Target, scenario: Scenario, workers: int, cpus: Sequence[int]):
        ctx = multiprocessing.get_context("spawn")
        senders = scenario.participants - 1 if scenario.senders is None else scenario.senders
        spec = {
            **target.spec,
            "stream_specs": [asdict(s) for s in scenario.streams],
            "streams": [s.kind for s in scenario.streams],
            "slow_factor": scenario.slow_factor,
            "senders_per_meeting": senders,
        }
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(workers):
            mine, theirs = ctx.Pipe()
            process = ctx.Process(
                target=worker_main, args=(theirs, target.codec, spec, list(cpus)), daemon=True
            )
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)
        self.meetings = [0] * workers

    async def _ask(self, pipe: Connection, command: str, args: Any) -> dict[str, Any]:
        pipe.send((command, args))
        answer: dict[str, Any] = await asyncio.to_thread(pipe.recv)
        return answer

    async def start(self) -> None:
        """Wait until every worker is up."""
        for pipe in self.pipes:
            await asyncio.to_thread(pipe.recv)

    async def connect(
        self, scenario: Scenario, meetings: Sequence[Mapping[str, Any]], concurrency: int = 64
    ) -> dict[str, Any]:
        """Connect every participant of ``meetings``; whole meetings go to one worker each."""
        shares: list[tuple[list[Mapping[str, Any]], list[tuple[int, int, bool, bool]]]] = [
            ([], []) for _ in self.pipes
        ]
        slow_every = round(1 / scenario.slow) if scenario.slow else 0
        receivers_seen = 0
        senders = scenario.participants if scenario.senders is None else scenario.senders
        for number, meeting in enumerate(meetings):
            worker = (sum(self.meetings) + number) % len(self.pipes)
            mine, who = shares[worker]
            for index in range(scenario.participants):
                receivers_seen += 1
                slow = bool(slow_every) and receivers_seen % slow_every == 0
                who.append((len(mine), index, index < senders, slow))
            mine.append(meeting)
        answers = await asyncio.gather(
            *(
                self._ask(
                    pipe,
                    "connect",
                    {"meetings": mine, "who": who, "concurrency": concurrency},
                )
                for pipe, (mine, who) in zip(self.pipes, shares, strict=True)
            )
        )
        for i, (mine, _) in enumerate(shares):
            self.meetings[i] += len(mine)
        return {
            "joined": sum(a["joined"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "errors": [e for a in answers for e in a["errors"]][:5],
            # The busiest worker's share of one CPU while joining: near 100%, the
            # generator, not the relay, set the join rate.
            "generator_cpu_pct_joining": round(
                max(100 * a["cpu_s"] / max(a["seconds"], 1e-9) for a in answers), 1
            ),
        }

    async def run(
        self, seconds: float, drain: float, active: int | None = None, *, slow: bool = True
    ) -> list[dict[str, Any]]:
        """One measured window in every worker at once; ``active`` meetings in all send."""
        start = time.monotonic() + 0.5
        total = sum(self.meetings)
        active = total if active is None else active
        per_worker = [
            sum(1 for n in range(active) if n % len(self.pipes) == i)
            for i in range(len(self.pipes))
        ]
        return list(
            await asyncio.gather(
                *(
                    self._ask(
                        pipe,
                        "run",
                        {
                            "start": start,
                            "seconds": seconds,
                            "drain": drain,
                            "active": share,
                            "slow": slow,
                        },
                    )
                    for pipe, share in zip(self.pipes, per_worker, strict=True)
                )
            )
        )

    async def close(self) -> None:
        """Leave every meeting and stop the workers."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(self._ask(pipe, "close", None) for pipe in self.pipes)), 30
            )
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        for pipe in self.pipes:
            pipe.close()


def latency_figures(arrays: Sequence[bytes]) -> dict[str, float | None]:
    """One HDR histogram (1 µs to 60 s, 3 significant digits) over every worker's samples."""
    import numpy as np
    from hdrh.histogram import HdrHistogram

    samples = np.concatenate(
        [np.frombuffer(a, dtype=np.int64) for a in arrays] or [np.zeros(0, dtype=np.int64)]
    )
    keys = ("p50", "p90", "p99", "p999", "p9999", "max")
    if samples.size == 0:
        return {f"latency_ms_{k}": None for k in keys}
    histogram = HdrHistogram(1, 60_000_000, 3)
    values, counts = np.unique(np.clip(samples, 1, 60_000_000), return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        histogram.record_value(value, count)
    return {
        f"latency_ms_{k}": round(histogram.get_value_at_percentile(p) / 1000, 3)
        for k, p in zip(keys, PERCENTILES, strict=True)
    }


def _window(
    results: Sequence[Mapping[str, Any]], cpu_s: float | None, seconds: float
) -> dict[str, Any]:
    sent = sum(r["sent"] for r in results)
    expected = sum(r["expected"] for r in results)
    delivered = sum(r["delivered"] for r in results)
    expected_slow = sum(r["expected_slow"] for r in results)
    delivered_slow = sum(r["delivered_slow"] for r in results)
    figures: dict[str, Any] = {
        "seconds": seconds,
        "sent": sent,
        "expected": expected,
        "delivered": delivered,
        "missing": expected - delivered,
        "delivery_ratio": round(delivered / expected, 5) if expected else None,
        "deliveries_per_s": round((delivered + delivered_slow) / seconds, 1),
        "server_cpu_s": round(cpu_s, 3) if cpu_s is not None else None,
        "server_cpu_pct": round(100 * cpu_s / seconds, 1) if cpu_s is not None else None,
        "server_cpu_us_per_delivery": (
            round(cpu_s * 1e6 / (delivered + delivered_slow), 3)
            if cpu_s is not None and delivered + delivered_slow
            else None
        ),
        # The busiest worker in its busiest window (results may pool several windows).
        "generator_cpu_pct": round(max(100 * r["cpu_s"] / r["seconds"] for r in results), 1),
        "generator_lag_max_ms": round(max(r["lag_max_ms"] for r in results), 2),
        "disconnected": sum(r["disconnected"] for r in results),
        **latency_figures([r["lat"] for r in results]),
    }
    if expected_slow:
        figures["slow_expected"] = expected_slow
        figures["slow_delivered"] = delivered_slow
        figures["slow_delivery_ratio"] = round(delivered_slow / expected_slow, 5)
        figures["slow_latency_ms_p99"] = latency_figures([r["lat_slow"] for r in results])[
            "latency_ms_p99"
        ]
    return figures


class _Progress:
    """One status line while a window runs: elapsed time and the server's CPU."""

    def __init__(self, label: str, stream: TextIO | None) -> None:
        self.label = label
        self.stream = stream

    def say(self, text: str, end: str = "\n") -> None:
        if self.stream is None:
            return
        if self.stream.isatty():  # redraw in place; a log gets plain lines
            self.stream.write(f"\r[{self.label}] {text}\x1b[K{end}")
        elif end:
            self.stream.write(f"[{self.label}] {text}{end}")
        self.stream.flush()

    async def watch(self, stats: ServerStats, seconds: float) -> None:
        if self.stream is None:
            return
        started = time.monotonic()
        before = stats.cpu_seconds()
        tty = self.stream.isatty()
        while (elapsed := time.monotonic() - started) < seconds + 0.5:
            await asyncio.sleep(1.0)
            now = stats.cpu_seconds()
            cpu = (
                f", server CPU {100 * (now - before):.0f}%"
                if now is not None and before is not None
                else ""
            )
            before = now
            if tty:
                self.say(f"{min(elapsed, seconds):4.0f}/{seconds:.0f} s{cpu}", end="")
        if tty:
            self.say("window done", end="")


_Window = tuple[list[dict[str, Any]], tuple[float, float] | None]
"""One measured window: every worker's results, and the server's CPU (user, system) in it."""


async def _run_window(
    generator: Generator,
    stats: ServerStats,
    progress: _Progress,
    seconds: float,
    drain: float,
    active: int | None = None,
    *,
    slow: bool = True,
) -> _Window:
    split0 = stats.cpu_split()
    watcher = asyncio.create_task(progress.watch(stats, seconds))
    results = await generator.run(seconds, drain, active, slow=slow)
    split1 = stats.cpu_split()
    watcher.cancel()
    if split0 is None or split1 is None:
        return results, None
    return results, (split1[0] - split0[0], split1[1] - split0[1])


def _pooled(windows: Sequence[_Window], seconds: float) -> dict[str, Any]:
    """The figures of one or more windows of the same kind, their samples pooled."""
    results = [r for window_results, _ in windows for r in window_results]
    splits = [split for _, split in windows]
    # The drain (and the 0.5 s lead-in) had no load: CPU in them is the idle cost, kept in.
    if any(split is None for split in splits):
        return _window(results, None, seconds * len(windows))
    user = sum(split[0] for split in splits if split is not None)
    system = sum(split[1] for split in splits if split is not None)
    figures = _window(results, user + system, seconds * len(windows))
    figures["server_sys_share"] = round(system / max(1e-9, user + system), 3)
    return figures


async def _measure(
    generator: Generator,
    stats: ServerStats,
    progress: _Progress,
    seconds: float,
    drain: float,
    active: int | None = None,
    *,
    slow: bool = True,
) -> dict[str, Any]:
    window = await _run_window(generator, stats, progress, seconds, drain, active, slow=slow)
    return _pooled([window], seconds)


_SLOW_ORDER = (False, True, True, False)
"""The slow scenario's windows: without slow readers, with, with, without (ABBA).

Whatever drifts over a run (the aftermath of the joins: the collector's first
full pass, buffers growing; the host's own hiccups) falls on both kinds alike,
so the comparison is the slow readers' effect and not the order of the windows.
With one window of each, baseline first, the order weighed more than the slow
readers: the baseline, right after the joins, had 2x to 13x the slow window's
p99 in three runs on one day, and 1/14 of it in an earlier run.
"""


async def run_scenario(
    target: Target,
    scenario: Scenario,
    *,
    workers: int = 1,
    cpus: Sequence[int] = (),
    drain: float = 1.0,
    progress: TextIO | None = sys.stderr,
    ramp_steps: int = 10,
    ramp_growth: float = 1.4,
) -> dict[str, Any]:
    """Run ``scenario`` against ``target``; return its figures (one flat dict, plus steps)."""
    label = f"{scenario.name}/{target.name}"
    say = _Progress(label, progress)
    stats = target.stats
    row: dict[str, Any] = {
        "relay": target.name,
        "scenario": scenario.name,
        "meetings": scenario.meetings,
        "participants": scenario.participants,
        "offered_deliveries_per_s": round(scenario.offered_deliveries_per_s, 1),
        "workers": workers,
    }
    generator = Generator(target, scenario, workers, cpus)
    meetings: list[dict[str, Any]] = []
    try:
        await generator.start()
        say.say(f"provisioning {scenario.meetings} meetings")
        meetings = await target.provision(scenario, scenario.meetings)
        rss0 = stats.memory_kib()
        cpu0 = stats.cpu_seconds()
        say.say(f"connecting {scenario.meetings * scenario.participants} participants")
        started = time.monotonic()
        joined = await generator.connect(scenario, meetings)
        join_seconds = time.monotonic() - started
        cpu1 = stats.cpu_seconds()
        row.update(joined)
        row["joins_per_s"] = round(joined["joined"] / join_seconds, 1)
        if cpu0 is not None and cpu1 is not None and joined["joined"]:
            row["server_cpu_ms_per_join"] = round((cpu1 - cpu0) * 1000 / joined["joined"], 3)
            row["server_cpu_pct_joining"] = round(100 * (cpu1 - cpu0) / join_seconds, 1)
        if scenario.mode == "idle":
            await asyncio.sleep(scenario.seconds)
            rss1 = stats.memory_kib()
            if rss0 is not None and rss1 is not None and joined["joined"]:
                row["server_rss_kib_per_connection"] = round((rss1 - rss0) / joined["joined"], 2)
                row["server_rss_mib"] = round(rss1 / 1024, 1)
        elif scenario.mode == "ramp":
            row.update(
                await _ramp(
                    target, scenario, generator, meetings, say, drain, ramp_steps, ramp_growth
                )
            )
        else:
            if scenario.slow:
                windows: dict[bool, list[_Window]] = {False: [], True: []}
                p99s: list[dict[str, Any]] = []
                for slow in _SLOW_ORDER:
                    say.say(
                        "window with slow readers"
                        if slow
                        else "baseline window: every receiver reads at full rate"
                    )
                    window = await _run_window(
                        generator, stats, say, scenario.seconds, drain, slow=slow
                    )
                    windows[slow].append(window)
                    alone = _pooled([window], scenario.seconds)
                    # The generator's own lag sits inside every latency it measures: a
                    # window whose p99 is its lag says more about the generator than the relay.
                    p99s.append(
                        {
                            "slow": slow,
                            "latency_ms_p99": alone["latency_ms_p99"],
                            "generator_lag_max_ms": alone["generator_lag_max_ms"],
                            "generator_cpu_pct": alone["generator_cpu_pct"],
                        }
                    )
                row["baseline"] = _pooled(windows[False], scenario.seconds)
                row.update(_pooled(windows[True], scenario.seconds))
                row["windows"] = p99s
            else:
                row.update(await _measure(generator, stats, say, scenario.seconds, drain))
        peak = stats.memory_kib("VmHWM")
        row["server_rss_peak_mib"] = round(peak / 1024, 1) if peak is not None else None
        say.say(_summary(row))
    finally:
        await generator.close()
        await target.finish(meetings)
    return row


_REFINE = 2
"""Bisection steps between the ramp's last passing and first failing load."""

_ATTEMPTS = 2
"""Windows a ramp step gets before it counts as failed.

A load fails only when it fails twice in a row. On a shared machine one
window in a few dozen catches a hiccup of the host (a 90 ms p99 at a load
that passed with 6 ms in the next run), and a single unlucky window would
otherwise end the ramp and halve the capacity. Both windows are kept in the
curve (``attempt`` 1 and 2), so a reader sees every retry.
"""


async def _ramp(
    target: Target,
    scenario: Scenario,
    generator: Generator,
    meetings: list[dict[str, Any]],
    say: _Progress,
    drain: float,
    steps: int,
    growth: float,
) -> dict[str, Any]:
    """Grow the load until delivery < 99.9% or p99 > 50 ms; then measure at half capacity.

    A step that fails is measured once more and fails only if that window
    fails too (see :data:`_ATTEMPTS`). Between the last step that passed and
    the first that failed, ``_REFINE`` more steps bisect the gap, so the
    capacity is not just the last point of a coarse geometric series.
    """
    curve: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    count = scenario.meetings
    failed_at: int | None = None

    async def step(count: int, active: int | None = None) -> bool:
        offered = count * scenario.offered_deliveries_per_s / scenario.meetings
        say.say(f"step: {count} meetings, {offered:.0f} deliveries/s offered")
        for attempt in range(1, _ATTEMPTS + 1):
            window = await _measure(generator, target.stats, say, scenario.seconds, drain, active)
            window["meetings"] = count
            window["attempt"] = attempt
            passed = (window["delivery_ratio"] or 0) >= 0.999 and (
                window["latency_ms_p99"] is not None and window["latency_ms_p99"] <= 50
            )
            window["passed"] = passed
            curve.append(window)
            say.say(_summary(window))
            if passed:
                break
            if attempt < _ATTEMPTS:
                say.say("failed: measuring the same load once more")
                await asyncio.sleep(3.0)  # this window's backlog drains first
        if passed:
            nonlocal best
            if best is None or count > best["meetings"]:
                best = window
        return passed

    for _ in range(steps):
        if count > len(meetings):
            more = await target.provision(scenario, count - len(meetings))
            await generator.connect(scenario, more)
            meetings.extend(more)
        if not await step(count):
            failed_at = count
            break
        count = max(count + 1, round(count * growth))
    if best is not None and failed_at is not None:
        low, high = best["meetings"], failed_at
        for _ in range(_REFINE):
            middle = (low + high) // 2
            if middle <= low:
                break
            await asyncio.sleep(3.0)  # the failed step's backlog drains first
            if await step(middle, active=middle):
                low = middle
            else:
                high = middle
    result: dict[str, Any] = {"steps": curve}
    if best is None:
        result["capacity_deliveries_per_s"] = 0
        return result
    result["capacity_deliveries_per_s"] = best["deliveries_per_s"]
    result["capacity_meetings"] = best["meetings"]
    result["capacity_latency_ms_p99"] = best["latency_ms_p99"]
    result["capacity_server_cpu_pct"] = best["server_cpu_pct"]
    half = max(1, best["meetings"] // 2)
    say.say(f"half capacity: {half} meetings")
    await asyncio.sleep(3.0)  # the failed step's backlog drains before the next window
    window = await _measure(generator, target.stats, say, scenario.seconds, drain, active=half)
    window["meetings"] = half
    result["half_capacity"] = window
    result.update(
        {
            k: v
            for k, v in window.items()
            if k.startswith(("latency_ms_", "server_cpu_", "server_sys"))
        }
    )
    result["deliveries_per_s"] = window["deliveries_per_s"]
    result["delivery_ratio"] = window["delivery_ratio"]
    result["generator_cpu_pct"] = window["generator_cpu_pct"]
    return result


def _summary(row: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (
        ("deliveries_per_s", "deliveries/s"),
        ("delivery_ratio", "delivered"),
        ("server_cpu_us_per_delivery", "µs CPU/delivery"),
        ("latency_ms_p99", "p99 ms"),
        ("generator_cpu_pct", "% generator CPU"),
        ("joins_per_s", "joins/s"),
        ("server_rss_kib_per_connection", "KiB/conn"),
        ("capacity_deliveries_per_s", "capacity deliveries/s"),
    ):
        if row.get(key) is not None:
            parts.append(f"{row[key]} {label}")
    return ", ".join(parts)
