"""The per-frame and per-delivery work of a relay connection, in Python.

The relay normally runs the compiled twin of this module
(:mod:`switchboard.relay._core`, Cython); this one is what runs where that
extension was not built (no C compiler at install time) or when
``SWITCHBOARD_PURE_PYTHON=1`` asks for it. It is also the readable reference:
the two must behave the same, and tests/test_core.py holds them to it.

What lives here is the work of every frame: reading RFC 6455 frames out of
decrypted bytes, queueing pre-framed messages per receiver, writing each
receiver's queue once per event-loop turn, and switching the chat and media
frames whose headers repeat the sender's last ones (:class:`Lane`), most of
what a relay carries. Everything that decides (routing, rules, limits, the
handshake, closing) is in :mod:`switchboard.relay.connection`,
:mod:`switchboard.relay.hub` and the meeting model: a lane reads their
state and passes only the frames they would pass without a word, and leaves
every other one to them. The subclass supplies what this class calls back
into: ``_receive``, ``_hand_over``, ``_on_message``, ``_switch_failed``,
``_too_slow``, ``send_control`` and ``abort``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import struct
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from websockets.protocol import State

from ..core.meeting import MeetingState, Presence
from ..core.wire import MediaLayout, read_media

if TYPE_CHECKING:
    from websockets.server import ServerProtocol

    from ..core.limits import _Bucket
    from ..core.meeting import Participant
    from ..core.records import FeatureUsage, UsageMeter
    from ..core.rules import Role
    from ..core.wire import Media
    from .hub import Room

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - wheels ship the C extension
    from websockets.utils import apply_mask

__all__ = [
    "COMPILED",
    "READ_BUFFER",
    "ChatLane",
    "ConnectionCore",
    "Lane",
    "MediaLane",
    "Outbox",
    "binary_message",
    "fan_out",
    "fan_out_media",
]

COMPILED = False

log = logging.getLogger("switchboard.relay")

_H1 = struct.Struct("!BB").pack
_H2 = struct.Struct("!BBH").pack
_H8 = struct.Struct("!BBQ").pack
_OPEN = State.OPEN
_LIVE = MeetingState.LIVE
_HERE = Presence.HERE

READ_BUFFER = memoryview(bytearray(256 * 1024))
"""Where every connection's transport decrypts into (see :meth:`ConnectionCore.get_buffer`)."""


def binary_message(*parts: bytes | memoryview) -> bytes:
    """One unmasked, unfragmented binary websocket frame holding ``parts``, concatenated.

    Server-to-client frames are not masked (RFC 6455 5.1), so the result can be
    written unchanged to every recipient.
    """
    n = 0
    for part in parts:
        n += len(part)
    if n < 126:
        head = _H1(0x82, n)
    elif n < 65536:
        head = _H2(0x82, 126, n)
    else:
        head = _H8(0x82, 127, n)
    return b"".join((head, *parts))


class Outbox:
    """Connections with frames waiting for the end of this event-loop turn.

    The first frame a connection gets in a turn enlists it; one callback at the
    end of the turn (``call_soon`` runs after the turn's I/O callbacks) writes
    each enlisted connection's frames as one buffer. Latency added: none beyond
    the rest of the current turn, which the frames would wait for anyway.
    """

    __slots__ = ("_context", "_dirty", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[ConnectionCore] = []
        self._scheduled = False
        self._context = contextvars.Context()
        """The flush's: it reads no context variable, and a callback given none gets a
        copy of the current context made for it, an allocation per turn."""

    def enlist(self, conn: ConnectionCore) -> None:
        """``conn`` has its first pending frame of this turn."""
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush, context=self._context)

    def flush(self) -> None:
        """Write every enlisted connection's pending frames."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            try:
                conn.flush_pending()
            except Exception:  # one broken transport must not strand the others' frames
                log.exception("writing to a connection failed; closing it")
                conn.abort()


class ConnectionCore:
    """The hot state and hot methods of a relay connection.

    ``RelayConnection`` subclasses this and sets every attribute in its
    ``__init__``; the annotations below are the contract with the compiled twin.
    """

    __slots__ = (
        "_direct",
        "_outbox",
        "_partial",
        "_pending",
        "_transport",
        "lanes",
        "last_rx",
        "max_size",
        "open",
        "participant",
        "pending_bytes",
        "proto",
        "unsent",
        "write_limit",
    )

    _transport: asyncio.Transport | None
    unsent: int
    """What the transport held unsent after the last write to it (see :func:`fan_out_media`)."""
    proto: ServerProtocol
    open: bool
    pending_bytes: int
    write_limit: int
    max_size: int
    last_rx: float
    _direct: bool
    _partial: bytearray | None
    _pending: list[bytes]
    _outbox: Outbox
    participant: Participant | None
    lanes: tuple[ChatLane | MediaLane, ...]
    """This sender's lanes: its chat to everyone, and one per media track (see :class:`Lane`)."""

    if TYPE_CHECKING:
        # Supplied by the subclass (RelayConnection): what the core calls back into.

        def _receive(self, data: bytes | bytearray | memoryview) -> None: ...

        def _hand_over(self, rest: bytes | bytearray | memoryview) -> None: ...

        def _on_message(self, data: bytes | bytearray | memoryview) -> None: ...

        def _too_slow(self) -> None: ...

        def _switch_failed(self) -> None: ...

        def send_control(self, op: str, **fields: Any) -> None: ...

        room: Room | None

        def abort(self) -> None: ...

    @property
    def transport(self) -> asyncio.Transport | None:
        """The connection's transport; None before it is made and once it is lost."""
        return self._transport

    @transport.setter
    def transport(self, value: asyncio.Transport | None) -> None:
        self._transport = value
        self.unsent = 0  # a new transport holds nothing

    # reading

    def data_received(self, data: bytes | bytearray | memoryview) -> None:
        self.last_rx = time.monotonic()
        if self._direct:
            self._read_frames(data)
        else:
            self._receive(data)

    def get_buffer(self, sizehint: int) -> memoryview:
        """One read buffer shared by every connection of the process.

        Safe because :meth:`buffer_updated` consumes what was read before it
        returns (websockets' parser copies it into this connection's own
        stream), and everything runs on one thread. A buffer of this size per
        connection would cost 256 KiB for every idle participant.
        """
        return READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` of plaintext are in the shared buffer: parse them now."""
        if nbytes < 0 or nbytes > len(READ_BUFFER):
            raise ValueError(
                f"the transport reported {nbytes} bytes in a {len(READ_BUFFER)}-byte buffer"
            )
        self.data_received(READ_BUFFER[:nbytes])
        if nbytes == len(READ_BUFFER):
            self._read_cut_short()

    def _read_cut_short(self) -> None:
        """The transport filled the whole buffer, so it stops reading for this turn: read on soon.

        aiofastnet reads at most one buffer per connection per turn, and the
        socket's readiness brings it back for the rest. With OpenSSL's
        read-ahead (``relay.tls.set_read_ahead``) the rest may already sit in
        OpenSSL's own buffer instead, where no readiness event announces it: a
        large document could wait for the client's next frame.
        """
        retry = getattr(self.transport, "_retry_ssl_read", None)
        if retry is not None:
            asyncio.get_running_loop().call_soon(retry)

    def _read_frames(self, data: bytes | bytearray | memoryview) -> None:
        """Read the frames in ``data``: a whole binary message goes straight to the hub.

        The common case, a masked, unfragmented binary frame within ``max_size``,
        costs a header decode and one unmasking in C. Any other whole frame (ping,
        pong, close, fragments, text) is handed to websockets' parser on its own,
        so that parser always starts at a frame boundary and keeps answering pings
        and closes; anything it must refuse (no mask, reserved bits, a frame over
        ``max_size``) goes to it with the rest of the stream, for its error and
        close code. Incomplete frames wait in ``_partial`` for the next read.
        """
        partial = self._partial
        if partial is not None:
            partial += data
            buf: bytes | bytearray | memoryview = partial
        else:
            buf = data
        proto = self.proto
        end = len(buf)
        at = 0
        while end - at >= 2:
            first, second = buf[at], buf[at + 1]
            length = second & 0x7F
            if length < 126:
                mask_at = at + 2
            elif length == 126:
                mask_at = at + 4
                if mask_at > end:
                    break
                length = int.from_bytes(buf[at + 2 : mask_at], "big")
            else:
                mask_at = at + 10
                if mask_at > end:
                    break
                length = int.from_bytes(buf[at + 2 : mask_at], "big")
            if not second & 0x80 or first & 0x70 or length > self.max_size or not self.open:
                self._hand_over(buf[at:])
                return
            start = mask_at + 4
            stop = start + length
            if stop > end:
                break
            if first == 0x82 and proto.current_size is None:
                message = apply_mask(buf[start:stop], buf[mask_at:start])  # type: ignore[arg-type]
                if not (self.lanes and self._take_message(message)):
                    self._on_message(message)
            else:
                self._receive(bytes(buf[at:stop]))
                if proto.state is not _OPEN:
                    self._hand_over(buf[stop:])
                    return
            at = stop
        if at == end:
            self._partial = None
        elif partial is not None:
            del partial[:at]
        else:
            self._partial = bytearray(buf[at:])

    def _take_message(self, data: bytes) -> bool:
        """Whether one of this sender's lanes switched the binary message ``data``.

        A lane that fails (a bug, not a refusal: refusals go to the Python path)
        costs this connection, as a failure in :meth:`Hub.switch` would.
        """
        for lane in self.lanes:
            try:
                if lane.take(self, data):
                    return True
            except Exception:
                self._switch_failed()
                return True
        return False

    # writing

    def write_frame(self, message: bytes) -> bool:
        """Queue one pre-framed message (:func:`binary_message`); never blocks.

        The frame leaves at the end of this event-loop turn, together with any
        other frame this receiver gets in the same turn (see :class:`Outbox`).
        Returns whether it was queued (not if the connection is closing).
        """
        if not self.open:
            return False
        pending = self._pending
        if not pending:
            self._outbox.enlist(self)  # once per receiver per turn
        pending.append(message)
        self.pending_bytes += len(message)
        return True

    def flush_pending(self) -> None:
        """Write this turn's frames as one buffer: one TLS record, one syscall."""
        pending = self._pending
        if not pending:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            pending.clear()
            self.pending_bytes = 0
            return
        transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
        pending.clear()
        self.pending_bytes = 0
        self.unsent = transport.get_write_buffer_size()
        if self.unsent > self.write_limit:
            self._too_slow()


def fan_out(conns: Mapping[int, ConnectionCore], me: int, message: bytes) -> int:
    """Queue ``message`` for every connection in ``conns`` but ``me``'s; how many took it."""
    n = 0
    for pid, other in conns.items():
        if pid != me and other.write_frame(message):
            n += 1
    return n


def fan_out_media(
    conns: Mapping[int, ConnectionCore],
    me: int,
    track: int,
    m: int,
    key: bool,
    keyed: bool,
    threshold: int,
    stream: tuple[int, int],
    message: bytes,
) -> tuple[int, int, bool]:
    """Queue a media frame for every subscribed receiver in ``conns`` but ``me``; by the
    drop policy, ``(deliveries, dropped, ask_keyframe)``.

    A receiver whose backlog (queued this turn plus the transport's buffer) is over
    ``threshold`` does not get the frame. For video and screen (``keyed``) it then
    waits for the next keyframe of this ``stream`` and the sender is asked for one:
    frames that depend on a dropped one are worth nothing to it.

    The transport is asked for its buffer only when it held something after the
    last write (``unsent``): a transport's buffer grows only by writes, and each
    write to it (``flush_pending``, the bulk pump, websockets' own frames) notes
    what it left. Asking every transport for every frame was a method lookup and
    call per delivery, a few per cent of an audio delivery. Bytes OpenSSL writes
    of its own accord (a key update's answer) are seen at the next write.
    """
    deliveries = dropped = 0
    ask = False
    for pid, other in conns.items():
        if pid == me or not other.open:
            continue
        receiver = other.participant
        if receiver is None:
            continue
        if (receiver.media_off or receiver.unsubscribed) and not receiver.wants(me, track, m):
            continue
        backlog = other.pending_bytes
        if other.unsent:
            transport = other.transport
            if transport is not None:
                other.unsent = transport.get_write_buffer_size()
                backlog += other.unsent
        waiting = receiver.awaiting_key
        if keyed and waiting and stream in waiting:
            if not key or backlog > threshold:
                dropped += 1
                continue
            waiting.discard(stream)
        elif backlog > threshold:
            dropped += 1
            if keyed:
                if waiting is None:
                    waiting = receiver.awaiting_key = set()
                waiting.add(stream)
                ask = True
            continue
        if other.write_frame(message):
            deliveries += 1
    return deliveries, dropped, ask


class Lane:
    """A sender's frames of one kind under one header, switched here, from the websocket
    frame to the receivers' queues: :class:`ChatLane` and :class:`MediaLane`.

    Chat and media are most of what a relay switches, and a sender repeats its
    header frame after frame (the SDK's media header differs only in 'seq' and
    'key', see :func:`wire.read_media`). The Python path (:meth:`Hub.switch`)
    learns a lane from the first such frame; the next ones are decided here as
    :meth:`Meeting.route` and the hub would, reading the same objects (the
    meeting's state and mutes, the sender's presence, role, tracks and rate
    bucket, the receivers' subscriptions and backlogs) and counting into the
    same record counters. Nothing is cached that could go stale but the rules
    table's answer for the last role and webinar mode. Any frame a lane does not
    plainly pass (refused, rate-limited, a role or track change) it leaves to the
    Python path, which decides it again and answers the sender: a lane has no
    error paths of its own. The compiled twin does this without the interpreter,
    which was the difference between the relay and the featureless reference
    relay (docs/topics/performance.md).
    """

    __slots__ = ("_allows", "_clock", "_feature", "_kind_name", "_role", "_webinar", "pid")

    def __init__(
        self,
        *,
        pid: int,
        kind_name: str,
        feature: str,
        clock: Callable[[], float],
        allows: Callable[[Role, bool], bool],
    ) -> None:
        self.pid = pid
        self._kind_name = kind_name
        """The rate limit's name for this kind ("chat", "media")."""
        self._feature = feature
        self._clock = clock
        self._allows = allows
        """Whether the rules let a role send this kind to everyone (webinar or not)."""
        self._role: Role | None = None
        self._webinar: bool | None = None

    def _admit(self, sender: Participant, meeting: Any) -> bool:
        # The route's checks that change nothing: the meeting, presence, the rules table.
        if meeting.state is not _LIVE or sender.presence is not _HERE:
            return False
        role, webinar = sender.role, meeting.webinar
        if role is not self._role or webinar is not self._webinar:
            if not self._allows(role, webinar):
                return False
            self._role, self._webinar = role, webinar
        return True

    def _spend(self, sender: Participant, nbytes: int) -> float | None:
        """:meth:`RateMeter.admit`'s rule for a frame it lets through: the time it was let
        through; ``None`` for a frame it would refuse (and count a strike for)."""
        assert sender.rate is not None
        bucket: _Bucket | None = sender.rate.bucket(self._kind_name)
        if bucket is None:
            return None
        limit = bucket.limit
        if limit.max_bytes and nbytes > limit.max_bytes:
            return None
        now = self._clock()
        tokens = min(limit.burst, bucket.tokens + (now - bucket.at) * limit.rate)
        if tokens < 1.0:
            return None
        bucket.tokens = tokens - 1.0
        bucket.at = now
        return now

    def _count(self, meeting: Any, nbytes: int, deliveries: int, dropped: int, now: float) -> None:
        # Meeting.switched: the record's counters of this feature.
        meter: UsageMeter = meeting.meter
        use: FeatureUsage = meter.usage(self._feature, now)
        use.frames += 1
        use.bytes += nbytes
        use.deliveries += deliveries
        use.dropped += dropped
        use.last_use = now - meter.started_mono
        meeting.last_activity = now


class ChatLane(Lane):
    """A sender's chat messages to everyone under one header (``prefix``, the client's
    header bytes; ``head``, the header forwarded for them).

    A msgpack map ends where its encoding says, so a message that starts with the
    bytes of a header has that header and its payload after it.
    """

    __slots__ = ("head", "prefix")

    def __init__(self, prefix: bytes, head: bytes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix
        self.head = head

    def take(self, conn: ConnectionCore, data: bytes) -> bool:
        """Switch the binary message ``data`` from ``conn`` if it is this lane's; whether it
        was."""
        prefix = self.prefix
        if data[: len(prefix)] != prefix:
            return False
        nbytes = len(data) - len(prefix)
        room, sender = conn.room, conn.participant
        if sender is None or room is None:
            return False
        meeting = room.meeting
        if not self._admit(sender, meeting):
            return False
        now = self._spend(sender, nbytes)
        if now is None:
            return False
        message = binary_message(self.head, memoryview(data)[len(prefix) :])
        self._count(meeting, nbytes, fan_out(room.conns, self.pid, message), 0, now)
        return True


class MediaLane(Lane):
    """One sender's media track whose headers have the SDK's layout
    (:func:`wire.media_layout`)."""

    __slots__ = ("_keyed", "_media", "_threshold", "layout", "m", "stream", "track")

    def __init__(
        self, layout: MediaLayout, *, media: Media, keyed: bool, threshold: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if len(layout.prefix) > 64 or len(layout.out_prefix) > 64:
            raise ValueError("a media header layout longer than any the SDK writes")
        self.layout = layout
        self.track = layout.track
        self.m = layout.m
        self.stream = (self.pid, layout.track)
        self._media = media
        self._keyed = keyed
        self._threshold = threshold

    def take(self, conn: ConnectionCore, data: bytes) -> bool:
        """Switch the binary message ``data`` from ``conn`` if it is this track's; whether it
        was (switched, or dropped because the track is muted)."""
        hit = read_media(self.layout, data)
        if hit is None:
            return False
        frame, head = hit
        nbytes = len(data) - frame.payload_offset
        room, sender = conn.room, conn.participant
        if sender is None or room is None:
            return False
        meeting = room.meeting
        if not self._admit(sender, meeting):
            return False
        if sender.tracks.get(self.track) is not self._media:
            return False
        now = self._spend(sender, nbytes)
        if now is None:
            return False  # RateMeter.admit refuses it, and counts the strike
        if meeting.muted and self.stream in meeting.muted:
            return True  # a muted track: dropped on purpose, not switched
        message = binary_message(head, memoryview(data)[frame.payload_offset :])
        deliveries, dropped, ask = fan_out_media(
            room.conns,
            self.pid,
            self.track,
            self.m,
            frame.fields["key"],
            self._keyed,
            self._threshold,
            self.stream,
            message,
        )
        self._count(meeting, nbytes, deliveries, dropped, now)
        if ask and meeting.keyframe_due(self.pid, self.track, now):
            conn.send_control("keyframe", track=self.track)
        return True
