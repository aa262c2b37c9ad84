"""One load-generator process: many websocket participants on one event loop.

The generator must never be the bottleneck, so its hot paths do as little as
Python allows: picows' Cython websocket client (masking and framing in C), one
1 ms ticker per process instead of a task or timer per sender, a pre-built
payload per stream with only the 12-byte stamp added per frame, and receivers
that look only at the last bytes of a message and append one integer (the
one-way latency in microseconds) to an array. Histograms are built from those
arrays after the measured window, off the clock.

A worker is driven by its parent over a pipe (see :mod:`.runner`): ``connect``
a list of participants, ``run`` a measured window, ``close``. Each answer is a
plain dict, so workers can be spread over processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import socket
import ssl
import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from picows import WSListener, WSMsgType, WSTransport, ws_connect

from ..client import tls_context
from ..osutil import raise_open_files_limit
from .codecs import MAGIC, STAMP, Codec, SendFn, load_codec
from .scenarios import Stream

__all__ = ["Link", "Participant", "Worker", "sleep_until", "worker_main"]

_TICK = 0.001
_BINARY = WSMsgType.BINARY
_TEXT = WSMsgType.TEXT
_unpack_ns = STAMP.unpack_from
_now_ns = time.monotonic_ns


@dataclass(frozen=True, slots=True)
class Participant:
    """One participant to connect: which meeting, its place, whether it sends or reads slowly."""

    meeting: int
    index: int
    sender: bool
    slow: bool = False


class Link(WSListener):
    """One generated participant's websocket."""

    __slots__ = (
        "budget",
        "codec",
        "delivered",
        "error",
        "index",
        "is_joined",
        "lat",
        "meeting",
        "meeting_no",
        "paused",
        "ready",
        "sender",
        "slow",
        "state",
        "tail",
        "throttled",
        "transport",
        "worker",
    )

    def __init__(
        self,
        worker: Worker,
        meeting: Mapping[str, Any],
        number: int,
        who: Participant,
        ready: asyncio.Future[None],
    ) -> None:
        self.worker = worker
        self.meeting_no = number
        self.codec = worker.codec
        self.tail = worker.codec.tail
        self.meeting = meeting
        self.index = who.index
        self.sender = who.sender
        self.slow = who.slow
        self.lat = worker.lat_slow if who.slow else worker.lat
        self.transport: WSTransport | None = None
        self.ready = ready
        self.state = 0
        self.is_joined = False
        self.error: str | None = None
        self.delivered = 0
        self.budget = 0.0
        self.paused = False
        self.throttled = False

    # for codecs

    def send_binary(self, data: bytes) -> None:
        """Send one binary message."""
        if self.transport is not None:
            self.transport.send(_BINARY, data)

    def send_text(self, data: bytes) -> None:
        """Send one text message (``data`` is UTF-8)."""
        if self.transport is not None:
            self.transport.send(_TEXT, data)

    def joined(self) -> None:
        """The relay accepted this participant."""
        self.is_joined = True
        if not self.ready.done():
            self.ready.set_result(None)

    def failed(self, reason: str) -> None:
        """The relay refused this participant."""
        self.error = reason
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))

    # picows

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.codec.hello(self, self.meeting, self.index, self.sender)

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        kind = frame.msg_type
        if kind is _BINARY:
            # A view of picows' read buffer, valid during this call: the stamp is read
            # in place rather than copying every payload (4 KiB a video frame) first.
            view = frame.get_payload_as_memoryview()
            size = len(view)
            end = size - self.tail
            stamp = _unpack_ns(view, end - 12) if end >= 12 else None
            if stamp is not None and stamp[0] == MAGIC:
                sent = stamp[1]
                if sent >= self.worker.window_ns:
                    self.lat.append((_now_ns() - sent) // 1000)
                    self.delivered += 1
                if self.throttled:
                    self.budget -= size
                    if self.budget < 0 and not self.paused:
                        self.paused = True
                        transport.underlying_transport.pause_reading()
            else:
                self.codec.on_stampless(self, view)
        elif kind is _TEXT:
            self.codec.on_other(self, False, frame.get_payload_as_memoryview())
        # picows answers pings itself; a close ends the link in on_ws_disconnected

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.transport = None
        self.worker.disconnected += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(self.error or "disconnected before joining"))

    def refill(self, amount: float) -> None:
        """A slow reader's allowance grows; it reads again while the allowance lasts."""
        self.budget = min(self.budget + amount, amount * 2)
        if self.paused and self.budget >= 0 and self.transport is not None:
            self.paused = False
            self.transport.underlying_transport.resume_reading()


class _Tx:
    """One stream one participant sends: its slot, sequence, and who should receive it."""

    __slots__ = ("key_every", "link", "normal", "pad", "send", "seq", "slow")

    def __init__(self, link: Link, send: SendFn, stream: Stream, normal: int, slow: int) -> None:
        self.link = link
        self.send = send
        self.pad = bytes(max(0, stream.size - STAMP.size))
        self.key_every = round(stream.key_every * stream.rate) if stream.key_every else 0
        self.seq = 0
        self.normal = normal
        self.slow = slow


class Worker:
    """Participants on this process's loop, and the ticker that makes them send."""

    def __init__(self, codec_path: str, spec: Mapping[str, Any]) -> None:
        self.codec: Codec = load_codec(codec_path, spec)
        self.spec = spec
        ca = spec.get("ca")
        self.ssl: ssl.SSLContext | None = tls_context(ca) if ca else None
        self.streams: tuple[Stream, ...] = tuple(Stream(**s) for s in spec.get("stream_specs", ()))
        self.slow_factor: float = float(spec.get("slow_factor", 0.1))
        self.links: list[Link] = []
        self.meetings: list[Mapping[str, Any]] = []
        self.rosters: list[list[int]] = []
        self.lat: array[int] = array("q")
        self.lat_slow: array[int] = array("q")
        self.window_ns = 1 << 62
        self.disconnected = 0

    async def connect(
        self, meetings: list[Mapping[str, Any]], who: list[Participant], concurrency: int
    ) -> dict[str, Any]:
        """Connect and join ``who``; answer how many made it and what went wrong.

        ``who`` numbers meetings within ``meetings``; each meeting's whole
        roster is given here, so expected deliveries count every participant
        meant to receive, joined or not.
        """
        base = len(self.meetings)
        self.meetings.extend(meetings)
        for _ in meetings:
            self.rosters.append([0, 0])
        for p in who:
            self.rosters[base + p.meeting][1 if p.slow else 0] += 1
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        started = time.monotonic()
        cpu0 = _cpu()

        async def one(p: Participant) -> None:
            number = base + p.meeting
            meeting = self.meetings[number]
            ready: asyncio.Future[None] = loop.create_future()
            link = Link(self, meeting, number, p, ready)
            async with gate:
                try:
                    await ws_connect(
                        lambda: link,
                        self.codec.url(meeting, p.index),
                        ssl_context=self.ssl,
                        socket_factory=_small_rcvbuf if p.slow else None,
                        max_frame_size=64 << 20,
                    )
                    await asyncio.wait_for(ready, 30)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    if link.transport is not None:
                        link.transport.disconnect()
                    return
            self.links.append(link)

        await asyncio.gather(*(one(p) for p in who))
        return {
            "joined": len(who) - len(errors),
            "failed": len(errors),
            "errors": errors[:5],
            "seconds": time.monotonic() - started,
            "cpu_s": _cpu() - cpu0,
        }

    async def run(
        self, start: float, seconds: float, drain: float, active: int, slow: bool = True
    ) -> dict[str, Any]:
        """Send for ``seconds`` from monotonic time ``start`` in the first ``active`` meetings.

        With ``slow`` false, the slow readers read at full rate (a baseline).
        """
        self.lat = array("q")
        self.lat_slow = array("q")
        for link in self.links:
            link.delivered = 0
            link.lat = self.lat_slow if link.slow else self.lat
        self.disconnected = 0
        txs = self._senders(active)
        throttled = [link for link in self.links if slow and link.slow and link.meeting_no < active]
        allowance = self._slow_allowance()
        for link in self.links:
            link.throttled = False
        for link in throttled:
            link.throttled = True
            link.budget = allowance
        self.window_ns = int(start * 1e9)
        await sleep_until(start)
        cpu0 = _cpu()
        counts = await self._drive(txs, start, start + seconds, throttled, allowance)
        cpu = _cpu() - cpu0
        await asyncio.sleep(drain)
        self.window_ns = 1 << 62
        for link in throttled:
            link.throttled = False
            link.refill(float(1 << 40))
        sent, expected, expected_slow, lag = counts
        return {
            "sent": sent,
            "expected": expected,
            "expected_slow": expected_slow,
            "delivered": sum(link.delivered for link in self.links if not link.slow),
            "delivered_slow": sum(link.delivered for link in self.links if link.slow),
            "lat": self.lat.tobytes(),
            "lat_slow": self.lat_slow.tobytes(),
            "cpu_s": cpu,
            "seconds": seconds,
            "lag_max_ms": lag * 1000,
            "disconnected": self.disconnected,
        }

    def _senders(self, active: int) -> list[list[list[_Tx]]]:
        """Per stream, a ring of 1 ms slots, each holding the senders due in it."""
        rings: list[list[list[_Tx]]] = []
        for number, stream in enumerate(self.streams):
            slots: list[list[_Tx]] = [[] for _ in range(max(1, round(1 / stream.rate / _TICK)))]
            for link in self.links:
                if not link.sender or link.meeting_no >= active:
                    continue
                normal, slow = self.rosters[link.meeting_no]
                if link.slow:
                    slow -= 1
                else:
                    normal -= 1
                send = self.codec.sender(link.meeting, link.index, number, stream.kind)
                slots[random.randrange(len(slots))].append(_Tx(link, send, stream, normal, slow))
            rings.append(slots)
        return rings

    def _slow_allowance(self) -> float:
        """Bytes a slow reader may read per refill (every 100 ms, readers on staggered ticks):
        a fraction of its inflow."""
        if not self.streams:
            return 0.0
        senders = self.spec.get("senders_per_meeting") or 1
        per_s = sum(s.rate * s.size for s in self.streams) * float(senders)
        return per_s * self.slow_factor * 0.1

    async def _drive(
        self,
        rings: list[list[list[_Tx]]],
        start: float,
        end: float,
        slow: list[Link],
        allowance: float,
    ) -> tuple[int, int, int, float]:
        sent = expected = expected_slow = 0
        lag = 0.0
        tick = 0
        last = int((end - start) / _TICK)
        refill_every = int(0.1 / _TICK)
        now_ns, pack = _now_ns, STAMP.pack
        while tick < last:
            now = time.monotonic()
            due = min(last, int((now - start) / _TICK) + 1)
            if tick < due - 1:
                lag = max(lag, now - (start + tick * _TICK))
            while tick < due:
                for slots in rings:
                    for tx in slots[tick % len(slots)]:
                        transport = tx.link.transport
                        if transport is None:
                            continue
                        seq = tx.seq
                        tx.seq = seq + 1
                        key = tx.key_every != 0 and seq % tx.key_every == 0
                        tx.send(transport, seq, key, tx.pad + pack(MAGIC, now_ns()))
                        sent += 1
                        expected += tx.normal
                        expected_slow += tx.slow
                if slow:
                    # Each slow reader is refilled every 100 ms, but on its own
                    # tick: refilled together, fifty of them would resume in
                    # the same millisecond and stall this loop (and every other
                    # receiver's timestamps) while their backlogs are read.
                    for link in slow[tick % refill_every :: refill_every]:
                        link.refill(allowance)
                tick += 1
            delay = start + tick * _TICK - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
        return sent, expected, expected_slow, lag

    async def close(self) -> None:
        """Leave every meeting (a normal close)."""
        for link in self.links:
            if link.transport is not None:
                link.transport.send_close()
                link.transport.disconnect()
        self.links.clear()
        await asyncio.sleep(0.2)


async def sleep_until(when: float) -> None:
    """Return once ``time.monotonic()`` has reached ``when``, never before.

    uvloop's timers keep whole milliseconds of the loop's cached clock, so a
    plain ``asyncio.sleep`` woke up to 1 ms early in about a third of tries.
    Woken early at the start of a window, the generator stamped its first
    frames before the window began: counted as expected, then not counted as
    delivered (the receivers skip stamps from before the window), which showed
    as one chat message "missing" in some runs.
    """
    while (delay := when - time.monotonic()) > 0:  # noqa: ASYNC110 - a deadline, not an event
        await asyncio.sleep(delay)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _small_rcvbuf(url: Any) -> socket.socket:
    """A slow reader's socket: a small kernel receive buffer, so the backlog shows at the relay."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    return sock


async def _serve(pipe: Connection, codec: str, spec: Mapping[str, Any]) -> None:
    worker = Worker(codec, spec)
    loop = asyncio.get_running_loop()
    pipe.send({"ready": True})
    while True:
        command, args = await loop.run_in_executor(None, pipe.recv)
        if command == "connect":
            who = [Participant(*p) for p in args["who"]]
            pipe.send(await worker.connect(args["meetings"], who, args["concurrency"]))
        elif command == "run":
            pipe.send(await worker.run(**args))
        else:
            await worker.close()
            pipe.send({"closed": True})
            return


def worker_main(pipe: Connection, codec: str, spec: Mapping[str, Any], cpus: list[int]) -> None:
    """Entry point of a worker process (``multiprocessing``, spawn)."""
    import uvloop

    raise_open_files_limit(1 << 20)  # as many sockets as the hard limit allows
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        uvloop.run(_serve(pipe, codec, spec))
