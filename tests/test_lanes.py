"""A lane switches a frame exactly as the Python path would.

A media frame whose header has the SDK's layout, and a chat message to
everyone under the sender's last header, are switched in the connection's core
by a lane (:class:`MediaLane`, :class:`ChatLane`; compiled, or the Python
twins), without :meth:`Hub.switch` and :meth:`Meeting.route`. These tests build
the same meeting twice on real hubs, connections and meeting models (only the
sockets are recording sinks), one switching through lanes and one with lanes
switched off, and apply the same steps to both: media frames on several tracks
in every 'seq' encoding, chat to everyone and to one under several headers,
mutes, roles, webinar mode, subscriptions, receivers' backlogs, presence, the
clock against the rate limits, tracks withdrawn and republished as another
media type, the meeting's end. After every step every connection must have
been sent the same bytes (frames to receivers, errors and keyframe requests to
the sender) and the meeting must hold the same record counters, rate buckets
and strikes, and key waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.protocol import State

from switchboard.clock import Clock
from switchboard.core import wire
from switchboard.core.limits import KindLimit, Limits
from switchboard.core.meeting import Meeting, MeetingState, Participant, Presence
from switchboard.core.rules import Role
from switchboard.core.wire import Kind, Media
from switchboard.relay import _purecore, connection
from switchboard.relay import hub as hub_module
from switchboard.relay.hub import DropPolicy, Hub, Room

from .test_frame_reader_e2e import frame

PURE_ONLY = os.environ.get("SWITCHBOARD_PURE_PYTHON") == "1"

if PURE_ONLY:
    LANES: list[ModuleType] = [_purecore]
else:
    from switchboard.relay import _core

    LANES = [_purecore, _core]


class SteppedClock(Clock):
    """Monotonic time that moves only when a step says so."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def mono(self) -> float:
        return self.now


class Sink:
    """A transport that records what it is given; its backlog is set by the steps."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.buffered = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


PEOPLE = 4
"""Participant 1 sends on tracks 1 and 2, 2 and 3 on track 1; all receive."""
ROLES = (Role.HOST, Role.PRESENTER, Role.ATTENDEE, Role.PRESENTER)
"""An attendee may send media, but not in webinar mode."""

LIMITS = Limits(
    media=KindLimit(rate=200, burst=6, max_bytes=300),
    chat=KindLimit(rate=100, burst=4, max_bytes=200),
    abuse_strikes=40,
)
DROP = DropPolicy(video=1000, screen=2000, audio=3000)


class World:
    """One hub with one meeting of :data:`PEOPLE` seated connections on sinks."""

    def __init__(self, lanes: ModuleType | None) -> None:
        self.clock = SteppedClock()
        self.hub = Hub(None, clock=self.clock, limits=LIMITS, drop=DROP)  # type: ignore[arg-type]
        self.lanes = lanes
        self.meeting = Meeting(
            "m1",
            "h1",
            started_at=1.0,
            started_mono=self.clock.now,
            max_participants=10,
            limits=LIMITS,
            clock=self.clock.mono,
        )
        self.room = Room(self.meeting, "r1")
        self.hub.rooms["m1"] = self.room
        self.people: list[Participant] = []
        self.conns: dict[int, connection.RelayConnection] = {}
        self.sinks: dict[int, Sink] = {}
        for i in range(PEOPLE):
            person = self.meeting.join(role=ROLES[i], name=f"p{i}", seat=f"s{i}")
            conn = connection.RelayConnection(
                self.hub, max_size=1 << 16, join_timeout=60.0, write_limit=1 << 30
            )
            sink = Sink()
            conn.connection_made(sink)  # type: ignore[arg-type]
            conn.proto.state = State.OPEN
            conn.open = True
            conn._direct = True
            conn.participant = person
            conn.room = self.room
            self.room.conns[person.pid] = conn
            self.people.append(person)
            self.conns[person.pid] = conn
            self.sinks[person.pid] = sink
        published = (
            (1, 1, Media.VIDEO),
            (1, 2, Media.AUDIO),
            (2, 1, Media.AUDIO),
            (3, 1, Media.AUDIO),
        )
        for pid, track, media in published:
            self.meeting.apply(
                self.meeting.participants[pid],
                "publish",
                {"track": track, "m": int(media), "on": True},
                self.clock.now,
            )

        self.python_path_calls = 0
        """Frames the hub's Python path was handed (the lanes took the others)."""
        self.python_path_switched = 0
        """Of those, the ones it switched rather than refused."""
        python_path = self.hub.switch

        def counted(conn: Any, data: Any) -> None:
            self.python_path_calls += 1
            python_path(conn, data)  # raises for a refused frame
            self.python_path_switched += 1

        self.hub.switch = counted  # type: ignore[method-assign]

    def close(self) -> None:
        for conn in self.conns.values():
            conn.abort()

    def send(self, pid: int, message: bytes, key: bytes) -> None:
        conn = self.conns[pid]
        if self.lanes is None:
            conn.lanes = ()  # every frame through Hub.switch
        if self.lanes is _purecore and connection.COMPILED and conn.open and conn._direct:
            # The twin's lanes on a compiled connection: offer the message as its reader does
            # (a connection that no longer reads frames itself hands them to websockets).
            if not _purecore.ConnectionCore._take_message(conn, message):  # type: ignore[arg-type]
                conn._on_message(message)
            return
        conn.data_received(frame(0x2, message, key=key))

    def flush(self) -> None:
        self.hub.outbox.flush()

    def state(self) -> dict[str, Any]:
        meeting = self.meeting
        people = {}
        for person in self.people:
            assert person.rate is not None
            bucket = person.rate.bucket("media")
            people[person.pid] = (
                None if bucket is None else (bucket.tokens, bucket.at),
                list(person.rate._strikes),
                sorted(person.awaiting_key or ()),
                self.conns[person.pid].open,
                self.sinks[person.pid].writes,
            )
        return {
            "features": {
                name: (
                    use.frames,
                    use.bytes,
                    use.deliveries,
                    use.dropped,
                    use.first_use,
                    use.last_use,
                )
                for name, use in meeting.meter._features.items()
            },
            "last_activity": meeting.last_activity,
            "people": people,
        }


CHAT_HEADERS: list[dict[str, Any]] = [{"k": 1}, {"k": 1}, {"k": 1, "x": 1}, {"x": 1, "k": 1}]
"""The SDK's chat header; one with 'to' (added per message); two with an extra field."""


@contextlib.contextmanager
def hub_lanes(lanes: ModuleType) -> Iterator[None]:
    """Hubs made meanwhile build their lanes from ``lanes`` (the twin or the compiled core)."""
    restore = hub_module.MediaLane, hub_module.ChatLane
    hub_module.MediaLane, hub_module.ChatLane = lanes.MediaLane, lanes.ChatLane  # type: ignore[attr-defined]
    try:
        yield
    finally:
        hub_module.MediaLane, hub_module.ChatLane = restore


def media_message(track: int, m: int, seq: int, key: bool, size: int, *, extra: bool) -> bytes:
    fields: dict[str, Any] = {"track": track, "m": m, "seq": seq, "key": key}
    if extra:
        fields["x"] = 1  # not the SDK's layout: always the Python path
    payload = bytes((seq + i) % 256 for i in range(size))
    return wire.encode_data(Kind.MEDIA, None, payload, **fields)


def seq_in_form(message: bytes, form: int) -> bytes:
    """``message`` (seq < 128) with its 'seq' written in a longer msgpack form."""
    at = message.index(b"\xa3seq") + 4
    seq = message[at]
    longer = [bytes([seq]), b"\xcc" + bytes([seq]), b"\xcd" + struct.pack("!H", seq)]
    longer.append(b"\xce" + struct.pack("!I", seq))
    return message[:at] + longer[form] + message[at + 1 :]


frame_step = st.tuples(
    st.just("frame"),
    st.sampled_from([(1, 1), (1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (4, 1)]),  # (pid, track)
    st.integers(0, 70_000),
    st.booleans(),
    st.sampled_from([0, 10, 160, 290, 301]),
    st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2, 3]),  # 1-3: seq in a longer form than the SDK's
    st.integers(0, 12),  # 12: a header that is not the SDK's (the simplest value, 0, is)
    st.sampled_from([0.005, 0.0, 0.02, 0.0, 0.004]),  # since the last step: the rate limit refills
)
# Hypothesis favours the first value of each choice (and shrinks towards it): the first
# is the one that leaves the senders able to send, so most runs reach the lanes.
change = st.one_of(
    st.tuples(st.just("turn")),
    st.tuples(st.just("clock"), st.sampled_from([0.0, 0.001, 0.02, 1.0])),
    st.tuples(
        st.just("backlog"), st.integers(1, PEOPLE), st.sampled_from([0, 900, 1500, 2500, 4000])
    ),
    st.tuples(st.just("mute"), st.sampled_from([(1, 1), (1, 2), (2, 1), (3, 1)]), st.booleans()),
    st.tuples(
        st.just("role"),
        st.integers(1, PEOPLE),
        st.sampled_from([Role.PRESENTER, Role.HOST, Role.ATTENDEE, Role.SUPPORT]),
    ),
    st.tuples(st.just("webinar"), st.booleans()),
    st.tuples(st.just("media_off"), st.integers(1, PEOPLE), st.sampled_from([0, 1, 2, None])),
    st.tuples(
        st.just("unsubscribe"), st.integers(1, PEOPLE), st.sampled_from([(1, 1), (1, None), (2, 1)])
    ),
    st.tuples(
        st.just("presence"),
        st.integers(1, PEOPLE),
        st.sampled_from([Presence.HERE, Presence.AWAY, Presence.LOBBY]),
    ),
    st.tuples(
        st.just("track"),
        st.sampled_from([(1, 1), (1, 2), (2, 1), (3, 1)]),
        st.sampled_from([1, 0, 2, None]),
    ),
)
chat_step = st.tuples(
    st.just("chat"),
    st.integers(1, PEOPLE),
    st.sampled_from([0, 20, 150, 201]),
    st.sampled_from([0, 0, 1, 2, 3]),  # the header: see CHAT_HEADERS
    st.sampled_from([0.01, 0.0, 0.02]),
)
step = st.tuples(
    st.one_of(frame_step, chat_step),
    st.integers(0, 3).flatmap(lambda i: change if i == 3 else st.none()),
)
"""A frame, and after one in four a change of state: frames are what the lanes take."""
finale = st.sampled_from([(), (("end",),), (("closed", 1),), (("closed", 2),), (("closed", 3),)])
"""Steps after which a sender or everyone is done: at most one, late in a run."""


def apply(world: World, action: tuple[Any, ...], rng_key: bytes) -> None:
    meeting, name = world.meeting, action[0]
    if name == "chat":
        pid, size, variant, dt = action[1:]
        world.clock.now += dt
        header = CHAT_HEADERS[variant]
        if variant == 1:
            header = {**header, "to": 1 + (pid + size) % (PEOPLE + 1)}  # anyone, self, no one
        payload = bytes((pid + i) % 256 for i in range(size))
        world.send(pid, msgpack.packb(header) + payload, rng_key)
    elif name == "frame":
        (pid, track), seq, key, size, form, extra, dt = action[1:]
        world.clock.now += dt
        sender = meeting.participants.get(pid)
        published = sender.tracks.get(track) if sender is not None else None
        m = int(published) if published is not None else int(Media.VIDEO)
        if extra in (10, 11):  # a header that names another media type than the track's
            m = (m + extra - 9) % 3
        message = media_message(
            track, m, seq if form == 0 else seq % 128, key, size, extra=extra == 12
        )
        if form:
            message = seq_in_form(message, form)
        world.send(pid, message, rng_key)
    elif name == "turn":
        world.flush()
    elif name == "clock":
        world.clock.now += action[1]
    elif name == "backlog":
        world.sinks[action[1]].buffered = action[2]
    elif name == "mute":
        (stream, on) = action[1:]
        (meeting.muted.add if on else meeting.muted.discard)(stream)
    elif name == "role":
        meeting.participants[action[1]].role = action[2]
    elif name == "webinar":
        meeting.webinar = action[1]
    elif name == "media_off":
        person = meeting.participants[action[1]]
        person.media_off = frozenset() if action[2] is None else frozenset({action[2]})
    elif name == "unsubscribe":
        person = meeting.participants[action[1]]
        person.unsubscribed = person.unsubscribed ^ frozenset({action[2]})
    elif name == "presence":
        meeting.participants[action[1]].presence = action[2]
    elif name == "track":
        (pid, track), media = action[1:]
        tracks = meeting.participants[pid].tracks
        if media is None:
            tracks.pop(track, None)
        else:
            tracks[track] = Media(media)
    elif name == "closed":
        world.conns[action[1]].open = False
    elif name == "end":
        meeting.state = MeetingState.ENDED


@pytest.mark.parametrize("lanes", LANES, ids=lambda m: m.__name__.split(".")[-1])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(step, min_size=5, max_size=50),
    last=finale,
    tail=st.lists(st.one_of(frame_step, chat_step), max_size=5),
    seed=st.integers(0, 2**32 - 1),
)
def test_lanes_switch_media_as_the_python_path_does(
    lanes: ModuleType,
    steps: list[tuple[tuple[Any, ...], tuple[Any, ...] | None]],
    last: tuple[tuple[Any, ...], ...],
    tail: list[tuple[Any, ...]],
    seed: int,
) -> None:
    actions = [a for pair in steps for a in pair if a is not None]
    asyncio.run(compare(lanes, [*actions, *last, *tail], seed))


def random_action(rng: random.Random) -> tuple[Any, ...]:
    """One step as the strategies above draw it, from a seeded generator."""
    if rng.random() < 0.15:
        return (
            "chat",
            rng.randint(1, PEOPLE),
            rng.choice([0, 20, 150, 201]),
            rng.choice([0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]),
            rng.choice([0.01, 0.0, 0.02]),
        )
    if rng.random() < 0.8:
        return (
            "frame",
            rng.choice([(1, 1), (1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (4, 1)]),
            rng.randrange(70_001),
            rng.random() < 0.5,
            rng.choice([0, 10, 160, 290, 301]),
            rng.choice([0, 0, 0, 0, 0, 0, 1, 2, 3]),
            rng.randrange(40),  # rarer than in the examples: 10-12 as there
            rng.choice([0.005, 0.0, 0.02, 0.0, 0.004]),
        )
    pid, stream = rng.randint(1, PEOPLE), rng.choice([(1, 1), (1, 2), (2, 1), (3, 1)])
    return rng.choice(
        [
            ("turn",),
            ("clock", rng.choice([0.0, 0.001, 0.02, 1.0])),
            ("backlog", pid, rng.choice([0, 900, 1500, 2500, 4000])),
            ("mute", stream, rng.random() < 0.5),
            ("role", pid, rng.choice(list(Role))),
            ("webinar", rng.random() < 0.5),
            ("media_off", pid, rng.choice([0, 1, 2, None])),
            ("unsubscribe", pid, rng.choice([(1, 1), (1, None), (2, 1)])),
            ("presence", pid, rng.choice(list(Presence))),
            ("track", stream, rng.choice([1, 0, 2, None])),
        ]
    )


@pytest.mark.parametrize("lanes", LANES, ids=lambda m: m.__name__.split(".")[-1])
@pytest.mark.parametrize("seed", range(12))
def test_long_random_runs_go_through_lanes_and_agree(lanes: ModuleType, seed: int) -> None:
    # Hypothesis keeps its examples short; these are long walks, each ending in a finale.
    rng = random.Random(seed)
    actions = [random_action(rng) for _ in range(400)]
    actions += [("end",) if seed % 3 == 0 else ("closed", 1 + seed % 3)]
    actions += [random_action(rng) for _ in range(20)]
    laned, switched_in_python = asyncio.run(compare(lanes, actions, seed))
    # The walk did reach the lanes: of the frames switched, most went through one (the
    # Python path takes each track's and header's first frame, private chat, and what a
    # lane leaves to it).
    assert laned > switched_in_python, (laned, switched_in_python)


async def compare(lanes: ModuleType, actions: list[tuple[Any, ...]], seed: int) -> tuple[int, int]:
    """Apply ``actions`` to a world with ``lanes`` and one without; after each, they must
    agree. Returns how many frames the lanes took, and how many the Python path switched
    (it refuses the others)."""
    rng = random.Random(seed)
    with hub_lanes(lanes):
        fast, slow = World(lanes), World(None)
        try:
            for action in [*actions, ("turn",)]:
                key = rng.randbytes(4)
                for world in (fast, slow):
                    apply(world, action, key)
                assert fast.state() == slow.state(), action
        finally:
            fast.close()
            slow.close()
    frames = sum(1 for a in actions if a[0] in ("frame", "chat"))
    return frames - fast.python_path_calls, fast.python_path_switched


@pytest.mark.parametrize("lanes", LANES, ids=lambda m: m.__name__.split(".")[-1])
async def test_a_lane_switches_and_counts_a_plain_frame(lanes: ModuleType) -> None:
    # The common case, spelled out: the second frame of a track goes through its lane.
    with hub_lanes(lanes):
        world = World(lanes)
        for seq in range(3):
            world.send(
                1,
                media_message(1, int(Media.VIDEO), seq, seq == 0, 100, extra=False),
                b"\x01\x02\x03\x04",
            )
        world.flush()
    conn = world.conns[1]
    assert world.python_path_calls == 1  # the first frame taught the lane; the others took it
    assert len(conn.lanes) == 1
    assert isinstance(conn.lanes[0], lanes.MediaLane)
    for pid in (2, 3, 4):
        (written,) = world.sinks[pid].writes  # three frames, one write: the turn's
        frames = []
        at = 0
        while at < len(written):
            n, at = written[at + 1], at + 2
            if n == 126:
                n, at = struct.unpack_from("!H", written, at)[0], at + 2
            unpacker = msgpack.Unpacker()
            unpacker.feed(written[at : at + n])
            frames.append(unpacker.unpack())
            at += n
        assert [(f["from"], f["seq"], f["key"]) for f in frames] == [
            (1, 0, True),
            (1, 1, False),
            (1, 2, False),
        ]
    frames_in, nbytes, deliveries, dropped, _, _ = world.state()["features"]["video"]
    assert (frames_in, nbytes, deliveries, dropped) == (3, 300, 9, 0)
    world.close()


@pytest.mark.parametrize("lanes", LANES, ids=lambda m: m.__name__.split(".")[-1])
async def test_a_participant_on_every_track_it_may_publish_keeps_a_lane_for_each(
    lanes: ModuleType,
) -> None:
    # Simulcast and screen sharing add tracks: with fewer lanes kept than tracks sent in
    # turn, each frame would evict the lane the next one needs and go the Python path.
    with hub_lanes(lanes):
        world = World(lanes)
        meeting = world.meeting
        tracks = LIMITS.max_tracks
        for track in range(3, tracks + 1):
            meeting.apply(
                meeting.participants[1],
                "publish",
                {"track": track, "m": int(Media.AUDIO), "on": True},
                world.clock.now,
            )
        media = {1: Media.VIDEO}
        for seq in range(3):
            for track in range(1, tracks + 1):
                world.clock.now += 0.05  # within the media rate limit
                m = int(media.get(track, Media.AUDIO))
                world.send(
                    1, media_message(track, m, seq, True, 50, extra=False), b"\x01\x02\x03\x04"
                )
            world.flush()
    assert world.python_path_calls == tracks  # each track's first frame only
    assert sorted(lane.track for lane in world.conns[1].media_lanes) == list(range(1, tracks + 1))
    frames_in = sum(world.state()["features"][f][0] for f in ("audio", "video"))
    assert frames_in == 3 * tracks
    world.close()


@pytest.mark.parametrize("lanes", LANES, ids=lambda m: m.__name__.split(".")[-1])
async def test_a_lane_switches_and_counts_chat_to_everyone(lanes: ModuleType) -> None:
    with hub_lanes(lanes):
        world = World(lanes)
        for n in range(3):
            world.send(2, msgpack.packb({"k": 1}) + f"hello {n}".encode(), b"\x05\x06\x07\x08")
        world.flush()
    assert world.python_path_calls == 1  # the first message taught the lane its header
    (lane,) = world.conns[2].lanes
    assert isinstance(lane, lanes.ChatLane)
    forwarded = msgpack.packb({"k": 1, "from": 2})
    expected = b"".join(
        bytes([0x82, len(forwarded) + 7]) + forwarded + f"hello {n}".encode() for n in range(3)
    )
    for pid in (1, 3, 4):
        assert world.sinks[pid].writes == [expected]
    assert world.sinks[2].writes == []
    frames_in, nbytes, deliveries, dropped, _, _ = world.state()["features"]["chat"]
    assert (frames_in, nbytes, deliveries, dropped) == (3, 21, 9, 0)
    world.close()
