"""The switch: live meetings on this node, their connections, and local fan-out.

:meth:`Hub.switch` is the hot path. For each inbound frame it reads the routing
header, asks the meeting where the frame goes, encodes the outbound frame
*once* (relay header with the sender stamped, the payload bytes as they
arrived, websocket framing) and hands that one byte string to each recipient's
transport. There is no await, no task and no per-recipient encoding on this
path; a slow recipient costs the sender nothing (its own buffer fills and it is
closed, see :mod:`.connection`).

The hub also runs each meeting's lifecycle: it creates the meeting on the
first join, ends it when the host ends it or the last participant leaves, and
commits the call record *before* anyone is told the meeting ended.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from ..clock import Clock
from ..core import tokens, wire
from ..core.codes import CloseCode
from ..core.meeting import Meeting, MeetingState
from ..core.records import EndReason
from ..core.rules import Audience
from ..errors import MeetingEnded
from ..store import Redemption, Store, StoredRecord
from .connection import RelayConnection, binary_message

__all__ = ["Hub", "Room"]

log = logging.getLogger("switchboard.relay")


class Room:
    """A meeting live on this node and the connections of its participants."""

    __slots__ = ("conns", "done", "meeting")

    def __init__(self, meeting: Meeting) -> None:
        self.meeting = meeting
        self.conns: dict[int, RelayConnection] = {}
        self.done: asyncio.Future[StoredRecord] | None = None


class Hub:
    """Every live meeting of this relay node."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        max_participants: int = 500,
        max_connections: int = 10_000,
        ping_interval: float = 20.0,
    ) -> None:
        self.store = store
        self.clock = clock or Clock()
        self.max_participants = max_participants
        self.max_connections = max_connections
        self.ping_interval = ping_interval
        self.rooms: dict[str, Room] = {}
        self.connections: set[RelayConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keepalive: asyncio.Task[None] | None = None
        self._closing = False
        self._drained = asyncio.Event()
        self._drained.set()

    # lifecycle of the hub

    def start(self) -> None:
        """Start the keepalive sweep."""
        self._keepalive = asyncio.get_running_loop().create_task(self._keepalive_loop())

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            deadline = self.clock.mono() - 2 * self.ping_interval
            for conn in list(self.connections):
                if conn.last_rx < deadline:
                    conn.close(CloseCode.PING_TIMEOUT, "keepalive ping timeout")
                else:
                    conn.ping()

    async def shutdown(self) -> None:
        """End every live meeting (record committed), then close every connection."""
        self._closing = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        await asyncio.gather(
            *(self.end_meeting(mid, EndReason.RELAY_SHUTDOWN) for mid in list(self.rooms)),
            return_exceptions=True,
        )
        for conn in list(self.connections):
            conn.close(CloseCode.RELAY_SHUTDOWN, "relay shutting down; reconnect")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # joining and leaving

    async def join(self, conn: RelayConnection, request: wire.JoinRequest) -> None:
        """Redeem the invitation and seat ``conn`` in its meeting; raise why not.

        A redemption that does not end in a seat (the meeting is full or just
        ended, the client went away meanwhile) gives its use back, so a refused
        join never costs the invitee its invitation.
        """
        if self._closing:
            raise MeetingEnded("the relay is shutting down")
        redemption = await self.store.redeem_invitation(
            tokens.digest(request.invitation), self.clock.wall()
        )
        try:
            seated = await self._seat(conn, request, redemption)
        except BaseException:
            await self.store.release_invitation(redemption.invitation_id)
            raise
        if not seated:
            await self.store.release_invitation(redemption.invitation_id)

    async def _seat(
        self, conn: RelayConnection, request: wire.JoinRequest, redemption: Redemption
    ) -> bool:
        if not conn.is_open:
            return False  # the client left while the store answered
        mid = redemption.meeting_id
        if mid not in self.rooms:
            # The meeting may have ended (record committed, room gone) while the
            # invitation was redeemed; the store has the last word.
            row = await self.store.get_meeting(mid)
            if row is None or row.state == "ended":
                raise MeetingEnded("the meeting has ended")
            if not conn.is_open:
                return False
        room = self.rooms.get(mid)
        created = room is None
        if room is None:
            if self._closing:
                raise MeetingEnded("the relay is shutting down")
            room = Room(
                Meeting(
                    mid,
                    redemption.host_id,
                    started_at=self.clock.wall(),
                    started_mono=self.clock.mono(),
                    max_participants=self.max_participants,
                )
            )
            self.rooms[mid] = room
        meeting = room.meeting
        participant = meeting.join(role=redemption.role, name=request.name, seat=redemption.seat)
        conn.room, conn.participant = room, participant
        conn.send_control(
            "welcome",
            v=wire.PROTOCOL_VERSION,
            meeting=mid,
            pid=participant.pid,
            role=participant.role.value,
            roster=meeting.roster(),
        )
        joined = binary_message(wire.encode_control("joined", p=participant.public()))
        for pid, other in room.conns.items():
            if pid != participant.pid:
                other.write_frame(joined)
        room.conns[participant.pid] = conn
        log.info(
            "participant joined meeting=%s pid=%d role=%s",
            mid,
            participant.pid,
            participant.role.value,
        )
        if created:
            await self.store.meeting_started(mid, meeting.started_at)
        return True

    def connected(self, conn: RelayConnection) -> None:
        """A TLS connection was accepted."""
        self.connections.add(conn)
        self._drained.clear()

    async def drained(self) -> None:
        """Wait until no connection is left."""
        await self._drained.wait()

    def disconnected(self, conn: RelayConnection) -> None:
        """A connection is gone; update the roster and end the meeting if it is empty."""
        self.connections.discard(conn)
        if not self.connections:
            self._drained.set()
        room, participant = conn.room, conn.participant
        if room is None or participant is None:
            return
        conn.room = conn.participant = None
        room.conns.pop(participant.pid, None)
        meeting = room.meeting
        if meeting.leave(participant.pid) is None:
            return
        log.info("participant left meeting=%s pid=%d", meeting.meeting_id, participant.pid)
        if meeting.state is not MeetingState.LIVE:
            return
        left = binary_message(wire.encode_control("left", pid=participant.pid))
        for other in room.conns.values():
            other.write_frame(left)
        if meeting.empty:
            self._spawn(self.end_meeting(meeting.meeting_id, EndReason.LAST_LEFT))

    # switching

    def switch(self, conn: RelayConnection, data: bytes | bytearray | memoryview) -> None:
        """Switch one inbound frame from ``conn`` to its recipients (the hot path)."""
        room, sender = conn.room, conn.participant
        assert room is not None
        assert sender is not None
        frame = wire.parse_client_frame(data)
        meeting = room.meeting
        audience = meeting.route(sender, frame)
        payload = memoryview(data)[frame.payload_offset :]
        message = binary_message(wire.pack_data_header(frame.kind, sender.pid, frame.to), payload)
        if audience is Audience.EVERYONE:
            deliveries = 0
            me = sender.pid
            for pid, other in room.conns.items():
                if pid != me:
                    other.write_frame(message)
                    deliveries += 1
        else:
            room.conns[frame.to].write_frame(message)  # type: ignore[index]
            deliveries = 1
        meeting.switched(frame.kind, len(payload), deliveries, self.clock.mono())

    # ending

    async def end_meeting(self, meeting_id: str, reason: EndReason) -> StoredRecord | None:
        """End a live meeting: stop switching, commit its record, then tell everyone.

        Returns the committed record, or ``None`` when the meeting is not live on
        this node. Concurrent calls for one meeting return the same record.
        """
        room = self.rooms.get(meeting_id)
        if room is None:
            return None
        meeting = room.meeting
        if not meeting.begin_end(reason):
            assert room.done is not None
            return await asyncio.shield(room.done)
        room.done = asyncio.get_running_loop().create_future()
        try:
            record = meeting.finish(
                record_id=uuid.uuid4().hex,
                ended_at=self.clock.wall(),
                ended_mono=self.clock.mono(),
            )
            stored = await self.store.finish_meeting(record)
        except BaseException as exc:
            self.rooms.pop(meeting_id, None)
            log.error(
                "meeting record could not be committed meeting=%s error=%s",
                meeting_id,
                type(exc).__name__,
            )
            for conn in list(room.conns.values()):
                conn.close(CloseCode.INTERNAL_ERROR, "meeting ended: relay error")
            room.done.set_exception(exc)
            room.done.exception()  # retrieved: the caller sees it through the raise below
            raise
        self.rooms.pop(meeting_id, None)
        log.info(
            "meeting ended meeting=%s reason=%s record=%s",
            meeting_id,
            reason.value,
            stored.record.record_id,
        )
        code = (
            CloseCode.RELAY_SHUTDOWN
            if reason is EndReason.RELAY_SHUTDOWN
            else CloseCode.MEETING_ENDED
        )
        ended = binary_message(wire.encode_control("ended", reason=reason.value))
        for conn in list(room.conns.values()):
            conn.write_frame(ended)
            conn.close(code, f"meeting ended: {reason.value}")
        room.done.set_result(stored)
        return stored
