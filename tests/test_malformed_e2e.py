"""Generated malformed input over a real TLS connection: errors are answers, no one else notices.

A node runs in a background thread on its own uvloop event loop, so that Hypothesis can drive
plain synchronous websocket clients (``websockets.sync``). One participant, the *attacker* (a
presenter, so polls, documents and media are all open to it), sends each generated input; then
the relay must

* answer it with at most one error frame and keep the connection, or switch it if it is a valid
  frame, or close the connection with a documented close code (1009 too big, 4429 abuse), after
  which the attacker reconnects with its multi-use invitation; and
* deliver to a second participant, the *observer*, nothing but what a valid frame carries (the
  sender stamped by the relay, the validated header fields, the payload byte for byte), the
  roster news of the attacker's reconnects, and the control chat the attacker sends after every
  input: never an error frame, never an input that was refused.

A websocket ping after each input makes the attacker's side exact: the relay answers pings in
order with the frames it reads, so every answer to the input arrives before the pong.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
import uvloop
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from switchboard.client import tls_context
from switchboard.core.codes import CloseCode
from switchboard.core.wire import (
    CONTROL_OPS,
    DOCUMENT_OPS,
    POLL_OPS,
    Kind,
    encode_data,
    encode_join,
)
from switchboard.node import Node

from .conftest import TIMEOUT, Host, make_settings, signed_in_host

T = TypeVar("T")

MAX_FRAME = 4096
MAX_SMALL = 64
"""Chat, poll and media payloads above this are refused (too_large, a strike towards 4429)."""

ALLOWED_CLOSES = {CloseCode.MESSAGE_TOO_BIG, CloseCode.ABUSE}
FORWARDED = {
    Kind.CHAT: {"k", "from", "to"},
    Kind.POLL: {"k", "from", "to", "op", "poll"},
    Kind.DOCUMENT: {"k", "from", "to", "op", "doc", "seq", "fin", "size", "page"},
    Kind.MEDIA: {"k", "from", "track", "m", "seq", "key", "ts"},
}
"""The header fields the relay may forward for each data kind (the rest is dropped)."""
DEFAULTS = {"fin": False, "key": False}


class NodeThread:
    """A node on its own uvloop event loop in a background thread."""

    def __init__(self, data_dir: Path, **changes: Any) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="node", daemon=True)
        self.node = Node(make_settings(data_dir, **changes))

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT * 4)

    def __enter__(self) -> NodeThread:
        self.thread.start()
        self.call(self.node.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.node.stop())
            self.call(self.loop.shutdown_asyncgens())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT * 4)
            self.loop.close()


def split(data: bytes) -> tuple[Any, bytes]:
    """A message's msgpack header and the bytes after it (read independently of the relay)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    header = unpacker.unpack()
    return header, data[unpacker.tell() :]


@dataclass
class Env:
    """The running node, the meeting, and the two participants' connections."""

    nt: NodeThread
    host: Host
    ctx: ssl.SSLContext
    attacker_token: str
    observer_token: str
    join_token: str
    attacker: ClientConnection | None = None
    attacker_pid: int = 0
    attacker_pids: set[int] = field(default_factory=set)
    observer: ClientConnection | None = None
    observer_pid: int = 0
    reconnects: int = 0
    closes: dict[int, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    connections: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def connect(self) -> ClientConnection:
        return connect(
            self.nt.node.relay_url,
            ssl=self.ctx,
            compression=None,
            max_size=None,
            max_queue=None,  # always read: a pong must not wait behind unread messages
            open_timeout=TIMEOUT,
            close_timeout=1,
        )

    def join(self, token: str, name: str) -> tuple[ClientConnection, int]:
        ws = self.connections.enter_context(self.connect())
        ws.send(encode_join(token, name))
        welcome, _ = split(ws.recv(timeout=TIMEOUT))
        assert welcome["op"] == "welcome", welcome
        return ws, welcome["pid"]

    def join_attacker(self) -> None:
        self.attacker, self.attacker_pid = self.join(self.attacker_token, "attacker")
        self.attacker_pids.add(self.attacker_pid)


def blocking_client_tls(ca_file: Path) -> ssl.SSLContext:
    """TLS for websockets' blocking client: at most TLS 1.2.

    That client reads the connection in a background thread while its main
    thread writes; TLS 1.3 session tickets arriving during the upgrade request's
    write make OpenSSL lose the request now and then (see "TLS transport" in
    docs/topics/performance.md). TLS 1.2 sends nothing after the handshake.
    """
    ctx = tls_context(ca_file)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with NodeThread(
        tmp_path_factory.mktemp("malformed") / "var",
        max_frame_bytes=MAX_FRAME,
        max_chat_bytes=MAX_SMALL,
        max_poll_bytes=MAX_SMALL,
        max_media_bytes=MAX_SMALL,
        rate_chat=100_000.0,
        rate_poll=100_000.0,
        rate_document=100_000.0,
        rate_media=100_000.0,
        rate_control=100_000.0,
        reconnect_grace=0,
    ) as nt:
        host = nt.call(signed_in_host(nt.node))
        try:
            mid = nt.call(host.meeting())
            e = Env(
                nt,
                host,
                blocking_client_tls(nt.node.ca_file),
                attacker_token=nt.call(host.invite(mid, "presenter", max_uses=1000)),
                observer_token=nt.call(host.invite(mid, "attendee")),
                join_token=nt.call(host.invite(nt.call(host.meeting()), "attendee", max_uses=1000)),
            )
            e.observer, e.observer_pid = e.join(e.observer_token, "observer")
            e.join(e.join_token, "keeps the join meeting live")
            e.join_attacker()
            split(e.observer.recv(timeout=TIMEOUT))  # the attacker joined
            with e.connections:
                yield e
        finally:
            nt.call(host.api.close())


# strategies

_INTS = st.one_of(
    st.sampled_from(
        [0, 1, 2, 3, 4, 5, 2**16 - 1, 2**16, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -1]
    ),
    st.integers(-(2**63), 2**64 - 1),
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    _INTS,
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=10),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=5,
)
_OPS = sorted(CONTROL_OPS | POLL_OPS | DOCUMENT_OPS | {"join", "welcome", "error", "track", ""})
_SMALL = st.integers(0, 6)
_ROLES = ["host", "presenter", "attendee", "Host"]
_FIELD = {
    "k": st.one_of(st.integers(-1, 6), _VALUES),
    "op": st.one_of(st.sampled_from(_OPS), _VALUES),
    "role": st.one_of(st.sampled_from(_ROLES), _VALUES),
    "m": st.one_of(st.integers(-1, 3), _VALUES),
    "to": st.one_of(_SMALL, _VALUES),
    "pid": st.one_of(_SMALL, _VALUES),
}
_KEYS = (
    "k", "to", "op", "poll", "doc", "seq", "fin", "size", "page", "track", "m", "key", "ts",
    "pid", "role", "on", "from", "inv", "resume", "name", "p",
)  # fmt: skip

_VOCABULARY = {*_OPS, *_ROLES, *_KEYS}
"""Words the strategies use on purpose; a reason may name them (it names fields and roles)."""

random_maps = st.builds(
    lambda known, extra: {**extra, **known},
    st.fixed_dictionaries({}, optional={k: _FIELD.get(k, _VALUES) for k in _KEYS}),
    st.dictionaries(st.text(max_size=6), _VALUES, max_size=2),
)


@st.composite
def plausible_maps(draw: st.DrawFn) -> dict[str, Any]:
    """Headers close to valid ones, so the deeper checks run too; one field may be wrong."""
    kind = draw(st.sampled_from(list(Kind)))
    header: dict[str, Any] = {"k": int(kind)}
    if draw(st.booleans()):
        header["to"] = draw(_SMALL)
    small, flag = st.integers(0, 9), st.booleans()
    if kind is Kind.POLL:
        header.update(op=draw(st.sampled_from(sorted(POLL_OPS))), poll=draw(small))
    elif kind is Kind.DOCUMENT:
        header.update(
            op=draw(st.sampled_from(sorted(DOCUMENT_OPS))),
            doc=draw(small),
            seq=draw(small),
            fin=draw(flag),
            page=draw(small),
        )
        if draw(st.booleans()):
            header["size"] = draw(st.integers(0, 1000))
    elif kind is Kind.MEDIA:
        header.update(track=draw(small), m=draw(st.integers(0, 2)), seq=draw(_INTS), key=draw(flag))
        if draw(st.booleans()):
            header["ts"] = draw(_INTS)
    elif kind is Kind.CONTROL:
        header.update(
            op=draw(st.sampled_from(sorted(CONTROL_OPS))),
            pid=draw(_SMALL),
            track=draw(small),
            on=draw(flag),
            m=draw(st.integers(0, 2)),
            role=draw(st.sampled_from(["host", "presenter", "attendee"])),
        )
    if draw(st.integers(0, 3)) == 0:
        key = draw(st.sampled_from([*header, "extra", "from"]))
        header[key] = draw(_VALUES)
    return header


@st.composite
def packed(draw: st.DrawFn, headers: st.SearchStrategy[dict[str, Any]]) -> bytes:
    header = draw(headers)
    payload = draw(
        st.one_of(st.binary(max_size=MAX_SMALL), st.binary(min_size=MAX_SMALL + 1, max_size=200))
    )
    return msgpack.packb(header, use_bin_type=True) + payload


@st.composite
def broken(draw: st.DrawFn) -> bytes:
    """msgpack that is not a header: truncated, not a map, too long, too deep, bad keys."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        whole = msgpack.packb(draw(random_maps), use_bin_type=True)
        return whole[: draw(st.integers(0, max(0, len(whole) - 1)))]
    if choice == 1:
        return msgpack.packb(draw(_VALUES), use_bin_type=True) + draw(st.binary(max_size=8))
    if choice == 2:  # a header that does not end within 1024 bytes
        return msgpack.packb({"k": 1, "pad": "x" * draw(st.integers(1024, 2000))})
    if choice == 3:
        depth = draw(st.integers(1, 3000))
        return b"\x91" * depth + b"\x01"
    if choice == 4:  # map keys that are not strings
        key = draw(st.one_of(_INTS, st.floats(), st.booleans(), st.none()))
        return msgpack.packb({key: 1, "k": 1}, strict_types=False) + b"payload"
    return b"\xc1" + draw(st.binary(max_size=40))  # 0xc1 is never valid msgpack


@dataclass(frozen=True)
class Input:
    """One generated input: how it is sent, and what."""

    how: str
    data: Any

    @property
    def message(self) -> bytes | None:
        """The binary message the relay reassembles, if it is one."""
        if self.how == "binary":
            return bytes(self.data)
        if self.how == "fragments":
            return b"".join(self.data)
        return None


def _fragments(message: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(message)) for c in cuts})
    bounds = [0, *points, len(message)]
    return [message[a:b] for a, b in itertools.pairwise(bounds)]


_plausible = packed(plausible_maps()).map(lambda m: Input("binary", m))
_BRANCHES = (
    packed(random_maps).map(lambda m: Input("binary", m)),
    broken().map(lambda m: Input("binary", m)),
    st.binary(max_size=200).map(lambda m: Input("binary", m)),
    st.text(max_size=40).map(lambda t: Input("text", t)),
    st.lists(st.text(max_size=10), min_size=2, max_size=4).map(
        lambda t: Input("text_fragments", t)
    ),
    st.builds(
        lambda m, cuts: Input("fragments", _fragments(m, cuts)),
        packed(st.one_of(random_maps, plausible_maps())),
        st.lists(st.integers(0, 80), min_size=1, max_size=3),
    ),
    st.one_of(  # the two ways to be closed, rarer: each costs a reconnect
        st.binary(min_size=MAX_FRAME + 1, max_size=MAX_FRAME + 64).map(
            lambda m: Input("binary", m)
        ),
        st.integers(50, 70).map(lambda n: Input("burst", n)),
    ),
    _plausible,
)
inputs = st.integers(0, 12).flatmap(lambda i: _BRANCHES[min(i, len(_BRANCHES) - 1)])
"""Every branch, and plausible frames (the last one) about half the time."""


# one example


def _send(ws: ClientConnection, inp: Input) -> None:
    if inp.how == "text":
        ws.send(inp.data)
    elif inp.how == "text_fragments" or inp.how == "fragments":
        ws.send(iter(inp.data))
    elif inp.how == "burst":  # oversized chats until the relay has enough of them
        for i in range(inp.data):
            ws.send(encode_data(Kind.CHAT, None, b"%03d" % i + b"x" * MAX_SMALL))
    else:
        ws.send(inp.data)


def _answers(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    """What the relay sent back before the pong, and the close code if it closed.

    A close the input caused may follow the first pong (the relay answers a ping that arrived
    with the input before it handles the input), never the second.
    """
    for _ in range(2):
        try:
            pong = ws.ping(ack_on_close=True)
        except ConnectionClosed:
            break
        assert pong.wait(TIMEOUT), "no pong and no close"
    got: list[dict[str, Any]] = []
    while True:
        try:
            wait = 0 if ws.protocol.state is State.OPEN else TIMEOUT
            header, _ = split(ws.recv(timeout=wait))  # type: ignore[arg-type]
        except TimeoutError:
            assert ws.protocol.state is State.OPEN
            return got, None
        except ConnectionClosed as exc:
            return got, exc.rcvd.code if exc.rcvd else None
        got.append(header)


def _strings(inp: Input) -> set[str]:
    """Distinctive text the input carries (8 characters or more), to check errors never echo it."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str | bytes):
            text = value if isinstance(value, str) else value.decode("utf-8", "ignore")
            if len(text.strip()) >= 8 and text not in _VOCABULARY:
                found.add(text)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    if inp.how in ("text", "text_fragments"):
        walk("".join(inp.data))
    elif inp.message is not None:
        with contextlib.suppress(Exception):  # not msgpack: nothing a reason could echo
            walk(split(inp.message)[0])
    return found


def run(env: Env, inp: Input, n: int) -> None:
    note(f"example {n}: {inp!r}")
    assert env.attacker is not None
    assert env.observer is not None
    sender = env.attacker_pid
    with contextlib.suppress(ConnectionClosed):
        _send(env.attacker, inp)
    answers, code = _answers(env.attacker)
    errors = [a for a in answers if a.get("op") == "error"]
    for a in answers:
        assert a.get("k") == 0, a  # the attacker gets control frames only
        assert a["op"] in {"error", "track", "keyframe", "sync", "joined", "left"}, a
    if code is not None:
        assert code in ALLOWED_CLOSES, (code, errors, inp)
        if code == CloseCode.ABUSE:
            assert errors
            assert errors[-1]["code"] == "abuse"
        env.closes[code] = env.closes.get(code, 0) + 1
        env.join_attacker()
        env.reconnects += 1
    elif inp.how != "burst":
        assert len(errors) <= 1, errors  # one input, at most one answer
    echoes = _strings(inp)
    for error in errors:
        assert set(error) == {"k", "op", "code", "reason"}
        assert isinstance(error["code"], str)
        assert isinstance(error["reason"], str)
        assert len(error["reason"]) < 200
        for text in echoes:  # error frames never repeat what a client sent
            assert text not in error["reason"], (text, error)
    outcome = "closed" if code else errors[0]["code"] if errors else "accepted"
    env.outcomes[outcome] = env.outcomes.get(outcome, 0) + 1

    # The control chat: sent after the input, by the attacker's connection of now.
    marker = b"control %d" % n
    env.attacker.send(encode_data(Kind.CHAT, None, marker))
    received: list[tuple[dict[str, Any], bytes]] = []
    while True:
        header, payload = split(env.observer.recv(timeout=TIMEOUT))  # type: ignore[arg-type]
        if header.get("k") == Kind.CHAT and payload == marker:
            assert header == {"k": int(Kind.CHAT), "from": env.attacker_pid}
            break
        received.append((header, payload))

    message = inp.message
    sent: Any = None
    sent_payload = b""
    if message is not None:
        try:
            sent, sent_payload = split(message)
        except Exception:  # not msgpack, or keys Python cannot hash: not a frame anyway
            sent = None
    data_frames = 0
    for header, payload in received:
        kind = header.get("k")
        if kind == Kind.CONTROL:
            op = header.get("op")
            assert op != "error", header  # the observer never pays for the attacker
            if op == "joined":
                assert header["p"]["pid"] in env.attacker_pids, header
            elif op in ("left", "away"):
                assert header["pid"] in env.attacker_pids, header
            else:
                assert op == "track", header
                assert header["pid"] == sender
                assert not errors
                assert code is None
            continue
        # A data frame: only a valid input can be one, and only as the relay forwards it.
        data_frames += 1
        assert not errors, (header, errors)
        assert code is None
        assert isinstance(sent, dict)
        assert set(header) <= FORWARDED[Kind(kind)], header
        assert header["from"] == sender
        assert header.get("to", env.observer_pid) == env.observer_pid
        assert payload == sent_payload
        for key, value in header.items():
            if key == "from":
                continue
            expected = sent.get(key, DEFAULTS.get(key))
            assert value == expected, (key, header, sent)
            assert type(value) is type(expected), (key, header, sent)
    assert data_frames <= 1
    if (
        isinstance(sent, dict)
        and not errors
        and code is None
        and sent.get("k") == Kind.CHAT
        and type(sent.get("k")) is int
        and sent.get("to") in (None, env.observer_pid)
    ):
        assert data_frames == 1, "an accepted chat must reach the observer"


_counter = itertools.count()


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # the node has state: no replays, no shrinking
    suppress_health_check=list(HealthCheck),
)
@given(inp=inputs)
def test_malformed_input_is_answered_and_disturbs_no_one_else(env: Env, inp: Input) -> None:
    run(env, inp, next(_counter))


def test_the_generated_inputs_reached_every_kind_of_answer(env: Env) -> None:
    """The run above (same module, same node) met accepted frames, errors and both closes."""
    if not env.outcomes:
        pytest.skip("run with the generated test")
    assert env.outcomes.get("accepted", 0) > 0
    assert env.outcomes.get("malformed_header", 0) > 0
    assert env.outcomes.get("binary_only", 0) > 0
    assert env.outcomes.get("too_large", 0) > 0
    assert env.closes.get(CloseCode.MESSAGE_TOO_BIG, 0) > 0
    assert env.closes.get(CloseCode.ABUSE, 0) > 0
    assert len(env.outcomes) >= 10, env.outcomes


# malformed joins


@st.composite
def first_messages(draw: st.DrawFn) -> Input:
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return draw(inputs.filter(lambda i: i.how != "burst"))
    if choice == 1:  # join-shaped, with unknown credentials or wrong types
        key = draw(st.sampled_from(["inv", "resume"]))
        value = draw(st.one_of(st.text(min_size=1, max_size=140), _VALUES))
        header = {"k": 0, "op": "join", key: value}
        if draw(st.booleans()):
            header["name"] = draw(st.one_of(st.text(max_size=70), _VALUES))
        return Input("binary", msgpack.packb(header, use_bin_type=True))
    # the real invitation, with any name: welcome if it is text of at most 64 characters
    name = draw(st.one_of(st.text(max_size=80), _VALUES))
    return Input("join", name)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # the node has state: no replays, no shrinking
    suppress_health_check=list(HealthCheck),
)
@given(first=first_messages())
def test_malformed_joins_are_refused_with_documented_codes(env: Env, first: Input) -> None:
    with env.connect() as ws:
        if first.how == "join":
            ws.send(
                msgpack.packb({"k": 0, "op": "join", "inv": env.join_token, "name": first.data})
            )
        else:
            with contextlib.suppress(ConnectionClosed):
                _send(ws, first)
        got: list[dict[str, Any]] = []
        code: int | None = None
        try:
            while not got or got[-1].get("op") not in ("welcome", "error"):
                got.append(split(ws.recv(timeout=TIMEOUT))[0])  # type: ignore[arg-type]
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        if first.how == "join" and isinstance(first.data, str) and len(first.data) <= 64:
            assert [g["op"] for g in got] == ["welcome"], got
            me = got[0]["pid"]
            assert {"pid": me, "role": "attendee", "name": first.data} in got[0]["roster"]
            return
        if code == CloseCode.MESSAGE_TOO_BIG:
            assert got == []
            return
        assert len(got) == 1, got
        error = got[0]
        assert error["op"] == "error", error
        if first.how in ("text", "text_fragments"):
            # Answered, not closed: a join may still follow.
            assert error["code"] == "binary_only"
            ws.send(encode_join(env.join_token, "after text"))
            assert split(ws.recv(timeout=TIMEOUT))[0]["op"] == "welcome"  # type: ignore[arg-type]
            return
        try:
            ws.recv(timeout=TIMEOUT)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
        expected = {
            "bad_join": CloseCode.BAD_REQUEST,
            "invitation_unknown": CloseCode.INVITATION_INVALID,
            "resume_invalid": CloseCode.INVITATION_INVALID,
        }
        assert error["code"] in expected, error
        assert code == expected[error["code"]]
