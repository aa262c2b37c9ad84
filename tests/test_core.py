"""The relay's compiled core and its pure-Python twin do the same thing, byte for byte.

``switchboard.relay._core`` (Cython) reads websocket frames, frames and queues
outbound messages and writes each receiver's queue once per loop turn;
``switchboard.relay._purecore`` is the same in Python, the fallback where no C
compiler built the first. Each test here runs on both, with the relay's
connection logic replaced by a recorder of what the core hands it: the order
and bytes of messages, of frames for websockets' parser and of hand-overs must
be identical, and right by RFC 6455. The end-to-end suites run on the compiled
core and, through ``test_relay_suites_pass_on_the_pure_python_core``, on the
pure one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.protocol import State

from switchboard.node import Node
from switchboard.relay import _purecore, connection

from .conftest import make_settings
from .test_frame_reader_e2e import frame

PURE_ONLY = os.environ.get("SWITCHBOARD_PURE_PYTHON") == "1"

if PURE_ONLY:
    IMPLEMENTATIONS: list[ModuleType] = [_purecore]
else:
    # Not importorskip: a checkout whose install did not build the core must fail here.
    from switchboard.relay import _core

    IMPLEMENTATIONS = [_purecore, _core]

impls = pytest.mark.parametrize("core", IMPLEMENTATIONS, ids=lambda m: m.__name__.split(".")[-1])

MAX_SIZE = 1 << 17
KEY = b"\x9a\x01\xfe\x33"
"""The mask of the frames these tests build twice and compare."""


def test_the_environment_selects_the_core() -> None:
    assert connection.COMPILED is not PURE_ONLY
    expected = _purecore if PURE_ONLY else IMPLEMENTATIONS[-1]
    assert connection.ConnectionCore is expected.ConnectionCore
    assert connection.Outbox is expected.Outbox


async def test_the_relay_says_which_core_it_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An operator whose install found no compiler must be able to see it in the log.
    caplog.set_level(logging.INFO, logger="switchboard")
    async with Node(make_settings(tmp_path)):
        pass
    (line,) = [r.getMessage() for r in caplog.records if "relay listening" in r.getMessage()]
    assert line.endswith("core=python" if PURE_ONLY else "core=compiled")


class Proto:
    """What the core reads of websockets' protocol: no fragmented message, and its state."""

    def __init__(self) -> None:
        self.current_size: int | None = None
        self.state = State.OPEN


class Sink:
    """A transport that records writes; its buffer size is set by the test."""

    def __init__(self, *, fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.buffered = 0
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise OSError("the socket is gone")
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered


def recorder(core: ModuleType, outbox: Any = None, *, max_size: int = MAX_SIZE) -> Any:
    """A connection on ``core`` whose callbacks into the relay's logic are recorded."""

    class Recorder(core.ConnectionCore):  # type: ignore[name-defined,misc]
        __slots__ = ("events",)

        def __init__(self) -> None:
            self.events: list[tuple[str, bytes]] = []
            self.proto = Proto()
            self.open = True
            self._direct = True
            self._partial = None
            self.max_size = max_size
            self._pending = []
            self.pending_bytes = 0
            self.write_limit = 1000
            self._outbox = outbox if outbox is not None else core.Outbox()
            self.transport = None
            self.last_rx = 0.0
            self.participant = None
            self.lanes = ()

        def _receive(self, data: Any) -> None:
            data = bytes(data)
            self.events.append(("frame", data))
            if data[0] & 0x0F == 0x8:  # a close frame: websockets leaves OPEN
                self.proto.state = State.CLOSING

        def _hand_over(self, rest: Any) -> None:
            self.events.append(("hand_over", bytes(rest)))
            self._direct = False
            self._partial = None

        def _on_message(self, data: Any) -> None:
            self.events.append(("message", bytes(data)))

        def _too_slow(self) -> None:
            self.events.append(("too_slow", b""))

        def abort(self) -> None:
            self.events.append(("abort", b""))

    return Recorder()


def feed(conn: Any, stream: bytes, cuts: list[int], *, via_buffer: bool) -> None:
    """``stream`` in pieces ending at ``cuts``, as the transport would deliver it."""
    at = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        piece = stream[at:cut]
        at = max(at, cut)
        if not piece:
            continue
        if via_buffer:
            # A transport fills at most the whole buffer per read; a longer piece takes several.
            buffer = conn.get_buffer(-1)
            for start in range(0, len(piece), len(buffer)):
                chunk = piece[start : start + len(buffer)]
                buffer[: len(chunk)] = chunk
                conn.buffer_updated(len(chunk))
        else:
            conn.data_received(piece)


PATTERN = bytes(i % 251 for i in range(70_000 + 16))
"""Payload bytes: 251 is prime to the frame boundaries, so no two nearby offsets look alike."""

sizes = st.one_of(
    st.integers(0, 140),
    st.sampled_from([125, 126, 127, 65535, 65536, 70000]),
)
frames = st.lists(
    st.tuples(
        st.sampled_from(["binary", "binary", "binary", "ping", "pong"]),
        sizes,
        st.binary(min_size=4, max_size=4),
    ),
    min_size=1,
    max_size=8,
)


@impls
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=frames, cut_points=st.lists(st.integers(0, 250_000), max_size=12), data=st.data())
def test_binary_messages_arrive_whole_and_other_frames_go_to_the_parser(
    core: ModuleType, spec: list[tuple[str, int, bytes]], cut_points: list[int], data: Any
) -> None:
    stream = b""
    expected: list[tuple[str, bytes]] = []
    for n, (kind, size, key) in enumerate(spec):
        if kind == "binary":
            payload = PATTERN[n : n + size]  # byte i is (n + i) % 251: a misplaced byte shows
            stream += frame(0x2, payload, key=key)
            expected.append(("message", payload))
        else:  # control frames carry at most 125 bytes
            payload = bytes(range(min(size, 125)))
            wire = frame(0x9 if kind == "ping" else 0xA, payload, key=key)
            stream += wire
            expected.append(("frame", wire))
    via_buffer = data.draw(st.booleans(), label="via_buffer")
    conn = recorder(core)
    feed(conn, stream, [c % (len(stream) + 1) for c in cut_points], via_buffer=via_buffer)
    assert conn.events == expected
    assert conn._partial is None


def refused_streams() -> list[tuple[str, bytes]]:
    ok = frame(0x2, b"first", key=KEY)
    return [
        ("unmasked", ok + frame(0x2, b"plain", masked=False) + frame(0x2, b"after", key=KEY)),
        (
            "reserved bit",
            ok + frame(0x2, b"rsv", rsv=0x40, key=KEY) + frame(0x2, b"after", key=KEY),
        ),
        (
            "over max_size",
            ok + frame(0x2, bytes(MAX_SIZE + 1), key=KEY) + frame(0x2, b"after", key=KEY),
        ),
        ("64-bit length", ok + b"\x82\xff" + b"\xff" * 8 + b"\x00" * 4 + b"rest"),
        (
            "close",
            ok + frame(0x8, struct.pack("!H", 1000), key=KEY) + frame(0x2, b"after", key=KEY),
        ),
    ]


@impls
@pytest.mark.parametrize(
    ("case", "stream"), refused_streams(), ids=[c for c, _ in refused_streams()]
)
@pytest.mark.parametrize("via_buffer", [False, True], ids=["bytes", "buffer"])
def test_what_the_reader_must_not_judge_goes_to_the_parser_with_the_rest(
    core: ModuleType, case: str, stream: bytes, via_buffer: bool
) -> None:
    first = frame(0x2, b"first", key=KEY)
    conn = recorder(core)
    # The stream arrives in two reads cut inside the second frame's header.
    feed(conn, stream, [len(first) + 1], via_buffer=via_buffer)
    assert conn.events[0] == ("message", b"first")
    if case == "close":
        close = frame(0x8, struct.pack("!H", 1000), key=KEY)
        assert conn.events[1:] == [
            ("frame", close),
            ("hand_over", stream[len(first) + len(close) :]),
        ]
    else:
        assert conn.events[1:] == [("hand_over", stream[len(first) :])]
    assert not conn._direct


@impls
def test_a_closed_connection_reads_no_more_messages_itself(core: ModuleType) -> None:
    conn = recorder(core)
    conn.open = False
    stream = frame(0x2, b"late", key=KEY)
    conn.data_received(stream)
    assert conn.events == [("hand_over", stream)]


@impls
def test_a_fragmented_message_in_progress_keeps_binary_frames_for_the_parser(
    core: ModuleType,
) -> None:
    conn = recorder(core)
    conn.proto.current_size = 10  # websockets is assembling a fragmented message
    binary = frame(0x2, b"mid-message", key=KEY)
    conn.data_received(binary)
    assert conn.events == [("frame", binary)]


@impls
def test_before_the_handover_everything_goes_to_the_parser(core: ModuleType) -> None:
    conn = recorder(core)
    conn._direct = False
    conn.data_received(b"GET /v1/ws HTTP/1.1\r\n")
    buffer = conn.get_buffer(-1)
    buffer[:2] = b"\r\n"
    conn.buffer_updated(2)
    assert conn.events == [("frame", b"GET /v1/ws HTTP/1.1\r\n"), ("frame", b"\r\n")]


@impls
def test_the_core_refuses_queues_of_none_and_reads_past_its_buffer(core: ModuleType) -> None:
    conn = recorder(core)
    with pytest.raises(ValueError, match="bytes in a"):
        conn.buffer_updated(len(conn.get_buffer(-1)) + 1)
    with pytest.raises(ValueError, match="bytes in a"):
        conn.buffer_updated(-1)
    assert conn.events == []
    if core is not _purecore:  # the Python twin is held to this by mypy, not at run time
        with pytest.raises(TypeError):
            conn.write_frame(None)
        with pytest.raises(TypeError):
            core.fan_out({2: conn}, 1, None)
        assert conn._pending == []


@impls
def test_reading_marks_the_connection_alive(core: ModuleType) -> None:
    conn = recorder(core)
    before = conn.last_rx
    conn.data_received(frame(0x2, b"x", key=KEY))
    assert conn.last_rx > before
    assert abs(conn.last_rx - __import__("time").monotonic()) < 5


parts = st.lists(
    st.one_of(st.binary(max_size=300), st.sampled_from([bytes(125), bytes(65535), bytes(70000)])),
    min_size=1,
    max_size=4,
)


@settings(max_examples=80, deadline=None)
@given(pieces=parts, as_view=st.booleans())
def test_outbound_frames_are_identical_and_parse_back(pieces: list[bytes], as_view: bool) -> None:
    args = [memoryview(p) if as_view and i % 2 else p for i, p in enumerate(pieces)]
    results = {core.__name__: core.binary_message(*args) for core in IMPLEMENTATIONS}
    assert len(set(results.values())) == 1
    message = next(iter(results.values()))
    body = b"".join(pieces)
    assert message[0] == 0x82  # FIN, binary, no mask: one frame serves every receiver
    n = message[1]
    assert not n & 0x80
    if n < 126:
        assert n == len(body)
        assert message[2:] == body
    elif n == 126:
        assert struct.unpack("!H", message[2:4])[0] == len(body) >= 126
        assert message[4:] == body
    else:
        assert struct.unpack("!Q", message[2:10])[0] == len(body) >= 65536
        assert message[10:] == body


@impls
async def test_frames_for_one_receiver_in_one_turn_leave_in_one_write(core: ModuleType) -> None:
    outbox = core.Outbox()
    a, b = recorder(core, outbox), recorder(core, outbox)
    a.transport, b.transport = Sink(), Sink()
    assert a.write_frame(b"one")
    assert a.write_frame(b"two")
    assert b.write_frame(b"three")
    assert a.pending_bytes == 6
    assert a.transport.writes == []  # nothing leaves before the end of the turn
    await asyncio.sleep(0)
    assert a.transport.writes == [b"onetwo"]
    assert b.transport.writes == [b"three"]
    assert a.pending_bytes == 0
    assert a.write_frame(b"four")
    await asyncio.sleep(0)
    assert a.transport.writes == [b"onetwo", b"four"]


@impls
async def test_a_closing_or_closed_receiver_takes_nothing(core: ModuleType) -> None:
    outbox = core.Outbox()
    conn = recorder(core, outbox)
    conn.transport = sink = Sink()
    conn.open = False
    assert conn.write_frame(b"x") is False
    conn.open = True
    assert conn.write_frame(b"y")
    sink.closing = True
    await asyncio.sleep(0)
    assert sink.writes == []
    assert conn.pending_bytes == 0
    assert conn._pending == []


@impls
async def test_a_receiver_over_its_write_limit_is_reported_too_slow(core: ModuleType) -> None:
    outbox = core.Outbox()
    conn = recorder(core, outbox)
    conn.transport = sink = Sink()
    sink.buffered = 1000
    conn.write_frame(b"x")
    await asyncio.sleep(0)
    assert conn.events == []  # at the limit: fine
    sink.buffered = 1001
    conn.write_frame(b"y")
    await asyncio.sleep(0)
    assert conn.events == [("too_slow", b"")]
    assert sink.writes == [b"x", b"y"]


@impls
async def test_one_failing_transport_does_not_strand_the_others(
    core: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = core.Outbox()
    broken, fine = recorder(core, outbox), recorder(core, outbox)
    broken.transport, fine.transport = Sink(fail=True), Sink()
    broken.write_frame(b"lost")
    fine.write_frame(b"kept")
    await asyncio.sleep(0)
    assert broken.events == [("abort", b"")]
    assert fine.transport.writes == [b"kept"]
    assert "writing to a connection failed" in caplog.text
    assert "lost" not in caplog.text


@impls
async def test_fan_out_skips_the_sender_and_counts_who_took_it(core: ModuleType) -> None:
    outbox = core.Outbox()
    conns = {pid: recorder(core, outbox) for pid in (1, 300, 70000)}
    for conn in conns.values():
        conn.transport = Sink()
    conns[70000].open = False
    assert core.fan_out(conns, 1, b"msg") == 1
    await asyncio.sleep(0)
    assert conns[1].transport.writes == []
    assert conns[300].transport.writes == [b"msg"]
    assert conns[70000].transport.writes == []
    assert core.fan_out(conns, 999, b"all") == 2


RELAY_SUITES = [
    "tests/test_core.py",
    "tests/test_frame_reader_e2e.py",
    "tests/test_kinds_e2e.py",
    "tests/test_backpressure_e2e.py",
    "tests/test_relay_transport.py",
    "tests/test_malformed_e2e.py",
]


@pytest.mark.skipif(PURE_ONLY, reason="this is the run on the pure-Python core")
@pytest.mark.timeout(600)
def test_relay_suites_pass_on_the_pure_python_core(tmp_path: Path) -> None:
    """Where no compiler built the core, the relay runs _purecore: it must pass the same tests."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SWITCHBOARD_PURE_PYTHON": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *RELAY_SUITES],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    summary = result.stdout.strip().splitlines()[-1:] or ["(no output)"]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary[0], summary
    assert "failed" not in summary[0], summary
