"""One participant's websocket: the thin asyncio adapter around websockets' sans-I/O protocol.

The connection is an :class:`asyncio.Protocol`. Bytes arrive in
``data_received`` (or the transport's shared buffer), go through websockets'
``ServerProtocol`` (handshake, framing, ping/pong, close handshake), and each
complete binary message is handed to the :class:`~switchboard.relay.hub.Hub`
*synchronously*: switching a frame involves no task, no await and no copy of
the payload into a Python object. The only await in a connection's life is the
join, which has to ask the store whether the invitation is good.

Outbound frames are pre-framed bytes (see :func:`binary_message`): a server
frame is unmasked, so one byte string serves every recipient. Frames bound for
one receiver within one event-loop turn are coalesced (:class:`Outbox`): they
leave in one transport write at the end of the turn, which is one TLS record
and one send syscall however many frames the turn produced for that receiver.
Under load a turn handles many inbound frames, so the per-delivery cost falls
as the load rises. A receiver whose buffer passes ``write_buffer_limit`` is
closed with ``TOO_SLOW``; a sender is never paused for a receiver.

The per-frame and per-delivery mechanics (frame reading and unmasking, the
write queues, the outbox, framing, the chat fan-out) are the connection's base
class, :class:`ConnectionCore`: compiled from ``_core.pyx`` where the install
built it, else ``_purecore.py``, the same in Python (``SWITCHBOARD_PURE_PYTHON=1``
chooses it). :data:`COMPILED` says which. This module keeps every decision.

The websockets logger is wrapped so that it can never log at DEBUG, which is
where websockets would print frame contents.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, cast

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..core import wire
from ..core.codes import CloseCode, is_transient
from ..errors import Abuse, FrameError, ProtocolError, SwitchboardError
from ..logs import frame_blind

if TYPE_CHECKING or os.environ.get("SWITCHBOARD_PURE_PYTHON") == "1":
    from . import _purecore as _impl
else:
    try:
        from . import _core as _impl
    except ImportError:  # pragma: no cover - built without a C compiler
        from . import _purecore as _impl

COMPILED = _impl.COMPILED
ChatLane = _impl.ChatLane
ConnectionCore = _impl.ConnectionCore
Lane = _impl.Lane
MediaLane = _impl.MediaLane
Outbox = _impl.Outbox
binary_message = _impl.binary_message
fan_out = _impl.fan_out
fan_out_media = _impl.fan_out_media

if TYPE_CHECKING:
    from ..core.meeting import Participant
    from .hub import Hub, Room

__all__ = [
    "COMPILED",
    "WS_PATH",
    "BufferedRelayConnection",
    "ChatLane",
    "Lane",
    "MediaLane",
    "Outbox",
    "RelayConnection",
    "binary_message",
    "fan_out",
    "fan_out_media",
]

WS_PATH = "/v1/ws"

log = logging.getLogger("switchboard.relay")

_CLOSE_TIMEOUT = 5.0
_SLOW_CLOSE_TIMEOUT = 1.0
_BULK_HIGH = 128 * 1024
"""Document frames wait in the bulk queue while more than this is buffered for the socket."""
_BULK_PUMP_DELAY = 0.02
_LAYOUT_MISSES = 16


_WS_LOGGER = frame_blind("switchboard.relay.websocket")

_BINARY = Opcode.BINARY


def _close_reason(reason: str) -> str:
    encoded = reason.encode()[:120]
    return encoded.decode(errors="ignore")


def _parked() -> Generator[None]:
    yield  # pragma: no cover - never stepped


_PARKED = _parked()
"""Stands in for websockets' parser of an open connection until a frame needs it."""


class RelayConnection(ConnectionCore, asyncio.Protocol):
    """A participant connection from TLS accept to close."""

    # The hot attributes (transport, proto, open, pending_bytes, write_limit,
    # max_size, last_rx and the read and write queues) are ConnectionCore's.
    __slots__ = (
        "_bulk",
        "_bulk_bytes",
        "_chat_lane",
        "_close_timer",
        "_fragments",
        "_join_started",
        "_join_task",
        "_join_timer",
        "_pump_timer",
        "bulk_limit",
        "hub",
        "layout_misses",
        "media_lanes",
        "repeat",
        "room",
        "send_buffer",
    )

    def __init__(
        self,
        hub: Hub,
        *,
        max_size: int,
        join_timeout: float,
        write_limit: int,
        send_buffer: int = 0,
        bulk_limit: int = 128 << 20,
    ) -> None:
        self.hub = hub
        self.proto = ServerProtocol(max_size=max_size, logger=_WS_LOGGER)
        self.max_size = max_size
        self._direct = False
        """Frames are read by :meth:`_read_frames`; websockets' parser sees only whole frames."""
        self._partial: bytearray | None = None
        """The start of a frame whose end has not arrived yet (direct reading only)."""
        self.write_limit = write_limit
        self.send_buffer = send_buffer
        self.bulk_limit = bulk_limit
        self._bulk: deque[bytes] | None = None
        """Document frames waiting for the socket; made on first use (most never share one)."""
        self._bulk_bytes = 0
        self._pending: list[bytes] = []
        """Frames queued in this turn, written by :meth:`flush_pending` at its end."""
        self._outbox = hub.outbox
        self.pending_bytes = 0
        """Bytes of frames queued in this turn, not yet handed to the transport."""
        self.open = False
        """Frames may be written: the handshake is done and no close has started."""
        self._pump_timer: asyncio.TimerHandle | None = None
        self.transport = None
        self.room: Room | None = None
        self.participant: Participant | None = None
        self.media_lanes: tuple[MediaLane, ...] = ()
        """The core's lanes for this participant's media tracks, one per header layout
        (:func:`wire.media_layout`), newest last."""
        self._chat_lane: ChatLane | None = None
        """The core's lane for this participant's chat to everyone under its last header."""
        self.lanes = ()
        self.layout_misses = 0
        """Media headers that had no layout (not the SDK's); after a few, none is sought."""
        self.repeat: tuple[bytes, wire.ClientFrame, bytes] | None = None
        """The last chat header this participant sent: its bytes, its parse, and the
        header forwarded for it (see :meth:`Hub.switch`)."""
        self.last_rx = time.monotonic()
        self._fragments: list[bytes | bytearray | memoryview] | None = None
        self._join_task: asyncio.Task[None] | None = None
        self._join_started = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._join_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            join_timeout, self._join_timed_out
        )

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        # Flow control for the bulk queue: resume_writing() pumps it.
        self.transport.set_write_buffer_limits(high=_BULK_HIGH, low=_BULK_HIGH // 2)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Frames leave as soon as a turn ends: never held back by Nagle's
            # algorithm waiting for the receiver's (delayed) ACK. Not every TLS
            # transport sets this for accepted sockets, so the relay does.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.send_buffer:
                # A small kernel send buffer keeps the backlog in our buffer, where
                # the drop policy sees it, instead of megabytes of autotuned kernel
                # buffer that would only add latency.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        self.hub.connected(self)
        log.debug("connection accepted connections=%d", len(self.hub.connections))

    def _receive(self, data: bytes | bytearray | memoryview) -> None:
        """Let websockets' parser read ``data``: the handshake, and whatever is not a plain
        binary message (control frames, fragments, protocol errors, closing).

        Only this and the relay's own ``close``/``ping`` make websockets write
        (pongs, close frames), so only they flush its output.
        """
        proto = self.proto
        if proto.parser is _PARKED:
            proto.parser = proto.parse()  # see the handover below
            next(proto.parser)
        proto.receive_data(data)  # type: ignore[arg-type]  # any bytes-like is read
        handshake = False
        for event in proto.events_received():
            if type(event) is Frame:
                if event.opcode is _BINARY and event.fin and self.participant is not None:
                    self._on_message(event.data)
                else:
                    self._on_frame(event)
            elif isinstance(event, Request):
                self._on_request(event)
                handshake = True
        if handshake and self.open and not proto.reader.buffer:
            # The upgrade request was all the client sent (RFC 6455 4.1: it waits
            # for the response), so websockets' parser now waits for the first
            # byte of a frame: from here on frames are read by _read_frames.
            self._direct = True
            # Its generator's frame would hold the upgrade request (headers and
            # all) for the connection's life. It is dropped; a fresh one, which
            # starts at a frame boundary since the state is OPEN, is made the
            # first time a frame needs it (most connections: a ping or a close).
            proto.parser = _PARKED
        self._flush()
        if self.open and proto.state is not State.OPEN:
            self.open = False  # a close frame came in, or the parser refused something

    def _hand_over(self, rest: bytes | bytearray | memoryview) -> None:
        """Back to websockets' parser for good, from a frame boundary: closing or refusing."""
        self._direct = False
        self._partial = None
        if rest:
            self._receive(bytes(rest))

    def eof_received(self) -> bool | None:
        proto = self.proto
        if proto.parser is _PARKED:
            proto.parser = proto.parse()
            next(proto.parser)
        proto.receive_eof()
        self.open = False
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._join_timer, self._close_timer, self._pump_timer):
            if timer is not None:
                timer.cancel()
        self._join_timer = self._close_timer = self._pump_timer = None
        self._bulk = None
        self._bulk_bytes = 0
        self._pending.clear()
        self.pending_bytes = 0
        self.open = False
        if (
            self._join_task is not None
            and not self._join_task.done()
            and self.participant is None  # once seated, the join has nothing left to undo
        ):
            self._join_task.cancel()
        self.hub.disconnected(self)
        self.transport = None

    # inbound

    def _on_request(self, request: Request) -> None:
        proto = self.proto
        path, _, query = request.path.partition("?")
        if path != WS_PATH:
            response = proto.reject(404, f"Not Found: the websocket endpoint is {WS_PATH}\n")
        elif query:
            response = proto.reject(
                400, "Bad Request: no query parameters; send the invitation in the join message\n"
            )
        elif len(self.hub.connections) > self.hub.max_connections:
            response = proto.reject(503, "Service Unavailable: the relay is full; retry later\n")
        else:
            response = proto.accept(request)
        proto.send_response(response)
        self.open = proto.state is State.OPEN

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.BINARY or opcode is Opcode.TEXT:
            if not frame.fin:
                self._fragments = [frame.data] if opcode is Opcode.BINARY else None
                if opcode is Opcode.TEXT:
                    self.send_error(FrameError("send binary frames only", code="binary_only"))
                return
            if opcode is Opcode.TEXT:
                self.send_error(FrameError("send binary frames only", code="binary_only"))
                return
            self._on_message(frame.data)
        elif opcode is Opcode.CONT:
            if self._fragments is None:
                return  # the rest of a refused text message
            self._fragments.append(frame.data)
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), None
                self._on_message(data)
        # PING, PONG and CLOSE are answered by the sans-I/O protocol itself.

    def _on_message(self, data: bytes | bytearray | memoryview) -> None:
        if self.participant is not None:
            try:
                self.hub.switch(self, data)
            except Abuse as exc:
                self.send_error(exc)
                self.close(exc.close_code, exc.reason)
            except SwitchboardError as exc:
                # FrameError, Forbidden, MeetingEnded: the frame is refused, the
                # connection stays, and no one else notices.
                self.send_error(exc)
            except Exception:
                self._switch_failed()
            return
        if self._join_started:
            self.send_error(
                FrameError("wait for the welcome before sending frames", code="not_joined")
            )
            return
        try:
            request = wire.parse_join(data)
        except ProtocolError as exc:
            self.send_error(exc)
            self.close(exc.close_code, exc.reason)
            return
        self._join_started = True
        self._join_task = asyncio.get_running_loop().create_task(self._join(request))

    def _switch_failed(self) -> None:
        """Switching one of this sender's frames raised (a bug, not a refusal).

        This connection goes, the meeting goes on. The traceback names code,
        never the frame. Called inside the ``except`` block, by the hub's path and
        the core's lanes alike.
        """
        log.exception("switching failed; closing this connection")
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    async def _join(self, request: wire.JoinRequest) -> None:
        try:
            await self.hub.join(self, request)
        except SwitchboardError as exc:
            self.send_error(exc)
            self.close(exc.close_code, exc.reason)
        except Exception:
            log.exception("join failed")
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
        else:
            if self._join_timer is not None:
                self._join_timer.cancel()
                self._join_timer = None
        finally:
            self._join_task = None  # done: nothing to cancel, and no invitation kept around

    def _join_timed_out(self) -> None:
        self._join_timer = None
        if self.participant is None:
            if self.proto.state is State.CONNECTING:
                self._abort()
            else:
                self.close(CloseCode.JOIN_TIMEOUT, "no join message in time")

    def learn_layout(self, data: bytes | bytearray | memoryview, frame: wire.ClientFrame) -> None:
        """Keep the layout of the media header of ``data``, just parsed into ``frame``
        (see :func:`wire.read_media`), and the lane that switches the track's next
        frames in the core (see :meth:`Hub.media_lane`).

        As many are kept as a participant may publish tracks (``Limits.max_tracks``),
        the oldest giving way (a track republished with another media type): a
        participant sending on more tracks than lanes kept would relearn a lane on
        almost every frame. A participant whose headers have no layout stops being
        asked after :data:`_LAYOUT_MISSES` of them.
        """
        if self.participant is None or self.layout_misses >= _LAYOUT_MISSES:
            return
        header = bytes(data[: frame.payload_offset])  # copied only while a layout is sought
        layout = wire.media_layout(header, frame, self.participant.pid)
        if layout is None:
            self.layout_misses += 1
        else:
            lane = self.hub.media_lane(layout, self.participant.pid)
            kept = self.media_lanes
            self.media_lanes = (*kept[max(0, len(kept) + 1 - self.hub.limits.max_tracks) :], lane)
            self._offer_lanes()

    @property
    def layouts(self) -> tuple[wire.MediaLayout, ...]:
        """The layouts of this participant's media headers (its lanes'), newest last."""
        return tuple(lane.layout for lane in self.media_lanes)

    def learn_chat(self, prefix: bytes, head: bytes) -> None:
        """Switch this participant's next chat messages to everyone whose header is
        ``prefix`` (the bytes of a header just parsed) in the core, forwarded with
        ``head`` (see :meth:`Hub.chat_lane`)."""
        if self.participant is None:
            return
        lane = self._chat_lane
        if lane is None or lane.prefix != prefix:
            self._chat_lane = self.hub.chat_lane(prefix, head, self.participant.pid)
            self._offer_lanes()

    def _offer_lanes(self) -> None:
        # Media first: at tens of frames a second per track they are most of what comes.
        chat = self._chat_lane
        self.lanes = (*self.media_lanes, chat) if chat is not None else self.media_lanes

    # outbound

    @property
    def is_open(self) -> bool:
        """Frames may still be written."""
        return self.open and self.transport is not None

    @property
    def ends_seat(self) -> bool:
        """The connection ended in a way that gives up the seat (no reconnect grace).

        Either the client left (a normal close frame) or the relay closed it
        with a terminal code (abuse, protocol violation, message too big).
        """
        received = self.proto.close_rcvd
        if received is not None and received.code in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
            return True
        sent = self.proto.close_sent
        return sent is not None and not is_transient(sent.code)

    def buffered(self) -> int:
        """Bytes written to this connection and not yet sent (this turn's frames included)."""
        transport = self.transport
        if transport is None:
            return 0
        return transport.get_write_buffer_size() + self.pending_bytes

    def _too_slow(self) -> None:
        """This turn's write left more buffered than ``write_limit``: cut the receiver off."""
        if self.proto.state is State.OPEN:
            # The close frame queues behind the backlog; a receiver that does not
            # read it within a second is cut off without waiting for the handshake.
            self.close(
                CloseCode.TOO_SLOW, "receiver too slow; reconnect", timeout=_SLOW_CLOSE_TIMEOUT
            )

    def write_bulk(self, message: bytes) -> bool:
        """Queue a document frame: reliable, in order, and paced by the socket.

        Documents are large and must arrive whole, but must not crowd out media
        and chat or trip the slow-receiver cut-off while a healthy receiver is
        still reading. They wait in a per-connection queue and go to the socket
        only while less than 128 KiB is buffered for it. The queued objects are
        the same bytes every recipient got (encode once), so a broadcast costs
        one copy of the document, however many receivers queue it. A receiver
        whose queue passes ``bulk_limit`` is closed as too slow.
        """
        transport = self.transport
        if transport is None or self.proto.state is not State.OPEN:
            return False
        bulk = self._bulk
        if not bulk and self.buffered() < _BULK_HIGH:
            return self.write_frame(message)
        if bulk is None:
            bulk = self._bulk = deque()
        bulk.append(message)
        self._bulk_bytes += len(message)
        if self._bulk_bytes > self.bulk_limit:
            bulk.clear()
            self._bulk_bytes = 0
            self.close(
                CloseCode.TOO_SLOW, "receiver too slow; reconnect", timeout=_SLOW_CLOSE_TIMEOUT
            )
        elif self._pump_timer is None:
            # resume_writing() normally pumps; this covers a buffer that sits
            # between the water marks and so never triggers it.
            self._pump_timer = asyncio.get_running_loop().call_later(_BULK_PUMP_DELAY, self._pump)
        return True

    def pause_writing(self) -> None:
        """The socket buffer is over its high-water mark; the bulk queue waits."""

    def resume_writing(self) -> None:
        """The socket buffer drained below its low-water mark: feed the bulk queue."""
        self._pump()

    def _pump(self) -> None:
        self._pump_timer = None
        transport = self.transport
        if transport is None or self.proto.state is not State.OPEN:
            return
        self.flush_pending()  # frames queued this turn go first: order within a kind holds
        bulk = self._bulk
        while bulk and transport.get_write_buffer_size() < _BULK_HIGH:
            message = bulk.popleft()
            self._bulk_bytes -= len(message)
            transport.write(message)
        self.unsent = transport.get_write_buffer_size()
        if bulk and self._pump_timer is None:
            self._pump_timer = asyncio.get_running_loop().call_later(_BULK_PUMP_DELAY, self._pump)

    def send_control(self, op: str, **fields: Any) -> None:
        """Send one control frame to this participant only."""
        self.write_frame(binary_message(wire.encode_control(op, **fields)))

    def send_error(self, exc: SwitchboardError) -> None:
        """Tell this participant what was wrong; never echoes what it sent."""
        pid = self.participant.pid if self.participant is not None else 0
        log.debug("frame refused pid=%d code=%s", pid, exc.code)
        self.send_control("error", code=exc.code, reason=exc.reason)

    def ping(self) -> None:
        """Send a keepalive ping."""
        if self.is_open:
            self.proto.send_ping(b"")
            self._flush()

    def close(self, code: int, reason: str = "", *, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Start the closing handshake; the transport closes when it completes or times out."""
        if self.proto.state is State.OPEN:
            log.debug("closing connection code=%d", code)
            self.proto.send_close(code, _close_reason(reason))
            self.open = False
            self._flush(timeout)
        elif self.proto.state is State.CONNECTING:
            self._abort()

    def _flush(self, close_timeout: float = _CLOSE_TIMEOUT) -> None:
        transport = self.transport
        if transport is None:
            return
        data_to_send = self.proto.data_to_send()
        if not data_to_send:
            return
        # Pongs and close frames go after the frames already queued, never before.
        self.flush_pending()
        for data in data_to_send:
            if data:
                transport.write(data)
            else:
                transport.close()  # EOF: TLS cannot half-close, so close after flushing
                return
        self.unsent = transport.get_write_buffer_size()
        if self.proto.close_expected() and self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(close_timeout, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        self._pending.clear()
        self.pending_bytes = 0
        self.open = False
        self._abort()


class BufferedRelayConnection(RelayConnection):
    """A relay connection that the transport decrypts into a buffer it lends.

    Used with the aiofastnet transport (the default), whose buffered read path
    skips allocating a bytes object per read. The loop's own SSL transport
    keeps the plain :class:`RelayConnection`. ``get_buffer`` and
    ``buffer_updated`` are :class:`ConnectionCore`'s (one buffer shared by every
    connection); only saying so to aiofastnet is this class's.
    """

    __slots__ = ()

    def is_buffered_protocol(self) -> bool:
        """aiofastnet asks this instead of checking the class."""
        return True
