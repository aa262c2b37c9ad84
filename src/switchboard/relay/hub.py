"""The switch: live meetings on this node, their connections, and local fan-out.

:meth:`Hub.switch` is the hot path. For each inbound frame it reads the routing
header, asks the meeting where the frame goes, encodes the outbound frame
*once* (relay header with the sender stamped, the payload bytes as they
arrived, websocket framing) and hands that one byte string to each recipient's
transport. There is no await, no task and no per-recipient encoding on this
path, and a sender is never slowed by a receiver:

* Reliable kinds (chat, poll, document, control) are always written; a
  receiver whose buffer passes ``write_buffer_limit`` is closed as too slow.
* Media is dropped for a congested receiver: video above
  ``drop_video_bytes`` buffered, screen above ``drop_screen_bytes``, audio
  only above ``drop_audio_bytes``. After a video or screen drop that receiver
  skips the track's delta frames until the next keyframe, and the sender is
  asked for one (at most once per track per 500 ms).

The hub also runs each meeting's lifecycle: it creates the meeting on the
first join, holds the seat of a participant whose connection dropped for
``reconnect_grace`` seconds (so a host keeps its role across a reconnect),
applies moderation, and ends the meeting when a host ends it or the last
participant is gone, committing the call record *before* anyone is told.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..clock import Clock
from ..core import rules, tokens, wire
from ..core.codes import CloseCode
from ..core.limits import Limits
from ..core.meeting import (
    Admitted,
    Announce,
    EndRequested,
    Event,
    KeyframeRequest,
    Meeting,
    MeetingState,
    Participant,
    Presence,
    Removed,
)
from ..core.records import CallRecord, EndReason, feature_of
from ..core.rules import Action, Audience, Role
from ..core.wire import Kind, Media
from ..errors import Forbidden, FrameError, InvitationError, MeetingEnded, NotFound
from ..ledger import Ledger
from ..store import Redemption, Store, StoredRecord
from .connection import (
    ChatLane,
    MediaLane,
    Outbox,
    RelayConnection,
    binary_message,
    fan_out,
    fan_out_media,
)

__all__ = ["DropPolicy", "Hub", "Room"]

log = logging.getLogger("switchboard.relay")


_KEEPALIVE_TICK = 0.05
_CHECKPOINT_BATCH = 100
"""Running records stored per transaction in a checkpoint round."""
"""Seconds between keepalive slices (each pings a share of the connections)."""


@dataclass(frozen=True, slots=True)
class DropPolicy:
    """Buffered bytes at which media to one receiver is dropped: video, then screen, audio."""

    video: int = 256 * 1024
    screen: int = 512 * 1024
    audio: int = 1024 * 1024

    def threshold(self, media: int) -> int:
        """The drop threshold of one media type."""
        if media == Media.AUDIO:
            return self.audio
        return self.video if media == Media.VIDEO else self.screen


@functools.cache
def _allows(action: Action) -> Callable[[Role, bool], bool]:
    """Whether the rules table lets a role take ``action`` towards everyone, in webinar
    mode or not: what a lane asks when the sender's role or the mode changed.

    One function per action, shared by every lane (the table does not change): a
    participant's lanes are made on its first frames, and a closure each would be
    two more objects per participant for the collector.
    """

    def allows(role: Role, webinar: bool) -> bool:
        try:
            rules.check(role, action, Audience.EVERYONE, webinar=webinar)
        except Forbidden:
            return False
        return True

    return allows


class Room:
    """A meeting live on this node: its connections, lobby, reconnect timers, resume tokens."""

    __slots__ = (
        "away_timers",
        "conns",
        "done",
        "lobby_conns",
        "meeting",
        "pending_sync",
        "record_id",
        "resume",
    )

    def __init__(self, meeting: Meeting, record_id: str = "") -> None:
        self.meeting = meeting
        self.record_id = record_id or uuid.uuid4().hex
        """The id of the meeting's record: its checkpoints and its final record share it."""
        self.conns: dict[int, RelayConnection] = {}
        """Connections of admitted participants who are here."""
        self.lobby_conns: dict[int, RelayConnection] = {}
        self.away_timers: dict[int, asyncio.TimerHandle] = {}
        self.resume: dict[int, bytes] = {}
        """pid -> digest of its current resume token."""
        self.pending_sync: dict[int, set[int]] = {}
        """owner pid -> newcomers that joined while the owner was reconnecting."""
        self.done: asyncio.Future[StoredRecord] | None = None

    def forget_resume(self, pid: int, tokens_by_digest: dict[bytes, tuple[str, int]]) -> None:
        """Invalidate ``pid``'s resume token (it left for good, or got a new one)."""
        digest = self.resume.pop(pid, None)
        if digest is not None:
            tokens_by_digest.pop(digest, None)

    def announce(self, op: str, **fields: Any) -> None:
        """Send one control frame to every admitted participant here (encoded once)."""
        message = binary_message(wire.encode_control(op, **fields))
        for conn in self.conns.values():
            conn.write_frame(message)

    def tell_hosts(self, op: str, **fields: Any) -> None:
        """Send one control frame to the hosts here."""
        message = binary_message(wire.encode_control(op, **fields))
        for conn in self.conns.values():
            if conn.participant is not None and conn.participant.role is Role.HOST:
                conn.write_frame(message)


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
        reconnect_grace: float = 30.0,
        limits: Limits | None = None,
        drop: DropPolicy | None = None,
        ledger: Ledger | None = None,
        checkpoint_interval: float = 30.0,
        idle_timeout: float = 4 * 3600.0,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.ledger = ledger or Ledger(store, node_id="")
        self.checkpoint_interval = checkpoint_interval
        self.idle_timeout = idle_timeout
        self.on_commit = on_commit
        """Called after each record is committed (the webhook sender listens)."""
        self.clock = clock or Clock()
        self.max_participants = max_participants
        self.max_connections = max_connections
        self.ping_interval = ping_interval
        self.reconnect_grace = reconnect_grace
        self.limits = limits or Limits()
        self.drop = drop or DropPolicy()
        self.rooms: dict[str, Room] = {}
        self.connections: set[RelayConnection] = set()
        self.outbox = Outbox()
        self._headers = wire.HeaderReader()  # one unpacker for every frame this hub reads
        """Frames switched in this event-loop turn, written per receiver at its end."""
        self._resume: dict[bytes, tuple[str, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keepalive: asyncio.Task[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None
        self._closing = False
        self._drained = asyncio.Event()
        self._drained.set()

    # lifecycle of the hub

    def start(self) -> None:
        """Start the keepalive sweep and the record checkpoints."""
        loop = asyncio.get_running_loop()
        self._keepalive = loop.create_task(self._keepalive_loop())
        self._checkpoints = loop.create_task(self._checkpoint_loop())

    def _nodes(self) -> tuple[str, ...]:
        return (self.ledger.node_id,) if self.ledger.node_id else ()

    def _snapshot(self, room: Room) -> CallRecord:
        return room.meeting.checkpoint(
            record_id=room.record_id,
            at=self.clock.wall(),
            at_mono=self.clock.mono(),
            nodes=self._nodes(),
        )

    async def _checkpoint_loop(self) -> None:
        """Every interval: store each live meeting's running record, end idle meetings,
        and retry records waiting in the spool."""
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            try:
                await self._checkpoint_round()
            except Exception:
                # Checkpoints, idle ends and spool replays must go on whatever happens.
                log.exception("checkpoint round failed")

    async def _checkpoint_round(self) -> None:
        now = self.clock.mono()
        batch: list[CallRecord] = []
        for mid, room in list(self.rooms.items()):
            if room.meeting.state is not MeetingState.LIVE:
                continue
            if now - room.meeting.last_activity > self.idle_timeout:
                self._spawn(self.end_meeting(mid, EndReason.IDLE_TIMEOUT))
                continue
            batch.append(self._snapshot(room))
            if len(batch) == _CHECKPOINT_BATCH:
                # One transaction per batch, not per meeting; the loop switches
                # frames between batches.
                await self.ledger.checkpoints(batch)
                batch = []
        if batch:
            await self.ledger.checkpoints(batch)
        if self.ledger.spool is not None and self.ledger.spool.pending():
            await self.ledger.replay(self.clock.wall())

    async def _keepalive_loop(self) -> None:
        # One round per interval, spread over it in slices: pinging thousands of
        # connections in one callback would stall switching for tens of ms.
        while True:
            round_ = list(self.connections)
            if not round_:
                await asyncio.sleep(self.ping_interval)
                continue
            slices = max(1, min(len(round_), int(self.ping_interval / _KEEPALIVE_TICK)))
            size = -(-len(round_) // slices)
            for first in range(0, slices * size, size or 1):
                await asyncio.sleep(self.ping_interval / slices)
                now = self.clock.mono()
                deadline = now - 2 * self.ping_interval
                # A client heard from within the last half interval is alive: no
                # ping (and no pong to read) for participants who talk or send
                # media. Half, not a whole one: a client heard only through its
                # pongs answered the last round's ping about one interval ago and
                # must be pinged again every round, or it nears the close deadline.
                quiet = now - self.ping_interval / 2
                for conn in round_[first : first + size]:
                    if conn.transport is None:
                        continue  # gone since the round began
                    last_rx = conn.last_rx
                    if last_rx < deadline:
                        conn.close(CloseCode.PING_TIMEOUT, "keepalive ping timeout")
                    elif last_rx < quiet:
                        conn.ping()

    async def shutdown(self) -> None:
        """End every live meeting (record committed), then close every connection."""
        self._closing = True
        for task in (self._keepalive, self._checkpoints):
            if task is not None:
                task.cancel()
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
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %s", type(task.exception()).__name__)

    def connected(self, conn: RelayConnection) -> None:
        """A TLS connection was accepted."""
        self.connections.add(conn)
        self._drained.clear()

    async def drained(self) -> None:
        """Wait until no connection is left."""
        await self._drained.wait()

    # joining

    async def join(self, conn: RelayConnection, request: wire.JoinRequest) -> None:
        """Seat ``conn``: resume a held seat, or redeem an invitation; raise why not.

        A redemption that does not end in a seat (the meeting is full, locked or
        just ended, the client went away meanwhile) gives its use back, so a
        refused join never costs the invitee its invitation.
        """
        if self._closing:
            raise MeetingEnded("the relay is shutting down")
        if request.resume:
            self._resume_seat(conn, request.invitation)
            return
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
            spool = self.ledger.spool
            if row is None or row.state == "ended" or (spool is not None and spool.has(mid)):
                # A spooled record means the meeting ended here; the store only
                # learns it when the spool is replayed.
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
                    limits=self.limits,
                    clock=self.clock.mono,
                )
            )
            self.rooms[mid] = room
        participant = room.meeting.join(
            role=redemption.role,
            name=request.name,
            seat=redemption.seat,
            invitation_id=redemption.invitation_id,
        )
        conn.room, conn.participant = room, participant
        if participant.presence is Presence.LOBBY:
            room.lobby_conns[participant.pid] = conn
            conn.send_control("lobby_wait", pid=participant.pid, meeting=mid)
            room.tell_hosts("waiting", p=participant.public())
            log.info("participant waiting meeting=%s pid=%d", mid, participant.pid)
        else:
            self._welcome(room, participant, conn)
        if created:
            # Not awaited here: the participant is seated, and nothing about the
            # seat may depend on (or be undone by) this bookkeeping write.
            self._spawn(self.store.meeting_started(mid, room.meeting.started_at))
            # The open record: from now on a crash leaves at most one interval unbilled.
            self._spawn(self.ledger.checkpoint(self._snapshot(room)))
        return True

    def _welcome(
        self, room: Room, participant: Participant, conn: RelayConnection, *, new: bool = True
    ) -> None:
        """Seat an admitted participant: welcome it, tell the others, ask owners to sync it.

        ``new=False`` for a resumed seat: the others already know it (``back``).
        """
        meeting = room.meeting
        token, digest = tokens.mint(tokens.TokenKind.RESUME)
        room.forget_resume(participant.pid, self._resume)
        room.resume[participant.pid] = digest
        self._resume[digest] = (meeting.meeting_id, participant.pid)
        welcome: dict[str, Any] = {
            "v": wire.PROTOCOL_VERSION,
            "meeting": meeting.meeting_id,
            "pid": participant.pid,
            "role": participant.role.value,
            "roster": meeting.roster(),
            "resume": token,
            "lobby": meeting.lobby_on,
            "locked": meeting.locked,
            "webinar": meeting.webinar,
            "muted": [[pid, track] for pid, track in sorted(meeting.muted)],
        }
        if participant.role is Role.HOST:
            welcome["waiting"] = [p.public() for p in meeting.lobby.values()]
        conn.send_control("welcome", **welcome)
        if new:
            room.announce("joined", p=participant.public())
        room.conns[participant.pid] = conn
        for owner in meeting.sync_owners(participant.pid):
            owner_conn = room.conns.get(owner)
            if owner_conn is not None:
                owner_conn.send_control("sync", pid=participant.pid)
            else:  # the owner is reconnecting: ask it when it is back
                room.pending_sync.setdefault(owner, set()).add(participant.pid)
        for newcomer in sorted(room.pending_sync.pop(participant.pid, ())):
            if newcomer in room.conns:
                conn.send_control("sync", pid=newcomer)
        log.info(
            "participant joined meeting=%s pid=%d role=%s",
            meeting.meeting_id,
            participant.pid,
            participant.role.value,
        )

    def _resume_seat(self, conn: RelayConnection, token: str) -> None:
        found = self._resume.pop(tokens.digest(token), None)
        room = self.rooms.get(found[0]) if found else None
        if found is None or room is None:
            raise InvitationError(
                "the resume token is unknown or its grace period is over", code="resume_invalid"
            )
        pid = found[1]
        participant = room.meeting.participants.get(pid)
        old = room.conns.get(pid)
        if participant is not None and participant.presence is Presence.HERE and old is not None:
            # The client reconnected before the relay noticed its old connection
            # die: the new connection takes the seat over.
            del room.conns[pid]
            old.room = old.participant = None
            old.close(CloseCode.REPLACED, "resumed on another connection")
        else:
            participant = room.meeting.back(pid)
            room.announce("back", pid=pid)
        timer = room.away_timers.pop(pid, None)
        if timer is not None:
            timer.cancel()
        room.resume.pop(pid, None)
        conn.room, conn.participant = room, participant
        self._welcome(room, participant, conn, new=False)

    # leaving

    def disconnected(self, conn: RelayConnection) -> None:
        """A connection is gone: leave the lobby, hold the seat for a reconnect, or leave."""
        self.connections.discard(conn)
        if not self.connections:
            self._drained.set()
        room, participant = conn.room, conn.participant
        conn.room = conn.participant = None
        if room is None or participant is None:
            return
        meeting = room.meeting
        pid = participant.pid
        if room.lobby_conns.get(pid) is conn:
            del room.lobby_conns[pid]
            meeting.leave(pid)
            room.tell_hosts("left", pid=pid)
            return
        if room.conns.get(pid) is not conn:
            return  # already replaced (resumed) or removed
        del room.conns[pid]
        if meeting.state is not MeetingState.LIVE:
            return
        if conn.ends_seat or self.reconnect_grace <= 0:
            self._leave(room, pid)
            return
        meeting.away(pid)
        room.announce("away", pid=pid)
        loop = asyncio.get_running_loop()
        room.away_timers[pid] = loop.call_later(self.reconnect_grace, self._grace_over, room, pid)
        log.info("participant away meeting=%s pid=%d", meeting.meeting_id, pid)

    def _grace_over(self, room: Room, pid: int) -> None:
        room.away_timers.pop(pid, None)
        participant = room.meeting.participants.get(pid)
        if participant is not None and participant.presence is Presence.AWAY:
            self._leave(room, pid)

    def _leave(self, room: Room, pid: int) -> None:
        meeting = room.meeting
        if meeting.leave(pid) is None:
            return
        room.forget_resume(pid, self._resume)
        room.pending_sync.pop(pid, None)
        log.info("participant left meeting=%s pid=%d", meeting.meeting_id, pid)
        if meeting.state is not MeetingState.LIVE:
            return
        room.announce("left", pid=pid)
        if meeting.empty:
            self._spawn(self.end_meeting(meeting.meeting_id, EndReason.LAST_LEFT))

    # switching

    def switch(self, conn: RelayConnection, data: bytes | bytearray | memoryview) -> None:
        """Switch one inbound frame from ``conn`` to its recipients.

        Media frames whose header has the SDK's layout, and chat to everyone under
        the sender's last header, are switched before they get here, by one of the
        connection's lanes (:class:`MediaLane`, :class:`ChatLane`), which make the
        same decisions; this path takes each track's and header's first frame (and
        learns the lane from it), every other kind, private chat, and whatever a
        lane leaves to it (refusals, rate limits, a changed role or track).
        """
        room, sender = conn.room, conn.participant
        assert room is not None
        assert sender is not None
        # Headers are parsed once per sender and track where they repeat; every
        # frame is still routed (rate, role, track, recipient) below.
        # - Media headers differ only in 'seq' and 'key': those of a track whose
        #   header has been parsed once are read by layout (wire.read_media).
        # - A sender's chat messages carry the same header message after message
        #   ({k: 1}, plus 'to' for a private one). A msgpack map ends where its
        #   encoding says, so a frame that starts with the bytes of the last
        #   one's header has that header: its parse and forwarded header are reused.
        repeat = conn.repeat
        hit = None
        for lane in conn.media_lanes:
            hit = wire.read_media(lane.layout, data)
            if hit is not None:
                break
        if hit is not None:
            frame, head = hit
        elif repeat is not None and data[: len(repeat[0])] == repeat[0]:
            frame, head = repeat[1], repeat[2]
        else:
            frame = self._headers.parse_client_frame(data)
            head = None
            if frame.kind is Kind.MEDIA:
                conn.learn_layout(data, frame)
            elif frame.kind is Kind.CHAT:
                # A chat frame goes where its 'to' says: the forwarded header is
                # known before routing.
                head = wire.pack_data_header(Kind.CHAT, sender.pid, frame.to, frame.fields)
                conn.repeat = (bytes(data[: frame.payload_offset]), frame, head)
                if frame.to is None:
                    conn.learn_chat(conn.repeat[0], head)
        meeting = room.meeting
        now = self.clock.mono()
        kind = frame.kind
        if kind is Kind.CONTROL:
            self._apply(room, meeting.control(sender, frame, now))
            return
        payload = memoryview(data)[frame.payload_offset :]
        nbytes = len(payload)
        route = meeting.route(sender, frame, nbytes, now)
        if route is None:
            return  # a muted track: dropped on purpose, not switched
        if route.audience is not Audience.EVERYONE:
            target = room.conns.get(route.target)  # type: ignore[arg-type]
            if target is None:
                raise FrameError(
                    f"participant {route.target} is reconnecting; try again", code="recipient_away"
                )
            if head is None:
                head = wire.pack_data_header(kind, sender.pid, route.target, frame.fields)
            message = binary_message(head, payload)
            if kind is Kind.DOCUMENT:
                written = target.write_bulk(message)
            else:
                written = target.write_frame(message)
            meeting.switched(kind, None, nbytes, int(written), 0, now)
            return
        if head is None:
            head = wire.pack_data_header(kind, sender.pid, None, frame.fields)
        message = binary_message(head, payload)
        me = sender.pid
        if kind is not Kind.MEDIA:
            if kind is Kind.DOCUMENT:
                deliveries = 0
                for pid, other in room.conns.items():
                    if pid != me and other.write_bulk(message):
                        deliveries += 1
            else:
                deliveries = fan_out(room.conns, me, message)
            meeting.switched(kind, None, nbytes, deliveries, 0, now)
            return
        self._fan_out_media(room, conn, sender, frame.fields, message, nbytes, now)

    def _fan_out_media(
        self,
        room: Room,
        conn: RelayConnection,
        sender: Participant,
        fields: Any,
        message: bytes,
        nbytes: int,
        now: float,
    ) -> None:
        me, track, media = sender.pid, fields["track"], fields["m"]
        deliveries, dropped, ask_keyframe = fan_out_media(
            room.conns,
            me,
            track,
            media,
            fields["key"],
            media != Media.AUDIO,
            self.drop.threshold(media),
            (me, track),
            message,
        )
        room.meeting.switched(Kind.MEDIA, media, nbytes, deliveries, dropped, now)
        if ask_keyframe and room.meeting.keyframe_due(me, track, now):
            conn.send_control("keyframe", track=track)

    def media_lane(self, layout: wire.MediaLayout, pid: int) -> MediaLane:
        """The lane that switches participant ``pid``'s media frames of ``layout`` in the
        connection's core (see :class:`Lane`), by this hub's rules, clock and drops."""
        return MediaLane(
            layout,
            media=Media(layout.m),
            keyed=layout.m != Media.AUDIO,
            threshold=self.drop.threshold(layout.m),
            pid=pid,
            kind_name="media",
            feature=feature_of(Kind.MEDIA, layout.m),
            clock=self.clock.mono,
            allows=_allows(rules.action_of_media(layout.m)),
        )

    def chat_lane(self, prefix: bytes, head: bytes, pid: int) -> ChatLane:
        """The lane that switches participant ``pid``'s chat to everyone under the header
        ``prefix`` in the connection's core, forwarded with ``head`` (see :class:`Lane`)."""
        return ChatLane(
            prefix,
            head,
            pid=pid,
            kind_name="chat",
            feature=feature_of(Kind.CHAT),
            clock=self.clock.mono,
            allows=_allows(Action.CHAT),
        )

    # moderation

    def _apply(self, room: Room, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Announce):
                room.announce(event.op, **event.fields)
                if event.op == "role" and event.fields.get("role") == Role.HOST.value:
                    # A new host learns who waits in the lobby.
                    new_host = room.conns.get(event.fields["pid"])
                    if new_host is not None:
                        for waiting in room.meeting.lobby.values():
                            new_host.send_control("waiting", p=waiting.public())
            elif isinstance(event, Admitted):
                conn = room.lobby_conns.pop(event.participant.pid, None)
                if conn is not None:
                    self._welcome(room, event.participant, conn)
            elif isinstance(event, Removed):
                self._remove(room, event)
            elif isinstance(event, KeyframeRequest):
                owner = room.conns.get(event.pid)
                if owner is not None:
                    owner.send_control("keyframe", track=event.track)
            elif isinstance(event, EndRequested):
                self._spawn(self.end_meeting(room.meeting.meeting_id, EndReason.HOST_ENDED))

    def _remove(self, room: Room, event: Removed) -> None:
        participant = event.participant
        pid = participant.pid
        conn = room.lobby_conns.pop(pid, None) or room.conns.pop(pid, None)
        timer = room.away_timers.pop(pid, None)
        if timer is not None:
            timer.cancel()
        room.forget_resume(pid, self._resume)
        if conn is not None:
            conn.room = conn.participant = None
            conn.send_error(Forbidden(event.reason, code=event.code))
            conn.close(CloseCode.FORBIDDEN, event.reason)
        if event.revoke:
            self._spawn(
                self.store.revoke_invitation(room.meeting.meeting_id, participant.invitation_id)
            )
        if participant.presence is not Presence.LOBBY:
            room.announce("left", pid=pid)
        else:
            room.tell_hosts("left", pid=pid)
        log.info(
            "participant removed meeting=%s pid=%d why=%s", room.meeting.meeting_id, pid, event.code
        )
        if room.meeting.empty:
            self._spawn(self.end_meeting(room.meeting.meeting_id, EndReason.LAST_LEFT))

    async def end_meetings_of(self, host_id: str, reason: EndReason) -> int:
        """End every live meeting of one host (its account was deleted); how many."""
        mids = [mid for mid, room in self.rooms.items() if room.meeting.host_id == host_id]
        await asyncio.gather(*(self.end_meeting(mid, reason) for mid in mids))
        return len(mids)

    def moderate(self, meeting_id: str, op: str, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Apply a host's control operation from the API; return the roster after it."""
        room = self.rooms.get(meeting_id)
        if room is None:
            raise NotFound("the meeting is not live")
        self._apply(room, room.meeting.apply(None, op, args, self.clock.mono()))
        return self.participants(meeting_id)

    def participants(self, meeting_id: str) -> list[dict[str, Any]]:
        """Admitted participants and those waiting in the lobby."""
        room = self.rooms.get(meeting_id)
        if room is None:
            return []
        waiting = [{**p.public(), "lobby": True} for p in room.meeting.lobby.values()]
        return room.meeting.roster() + waiting

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
        for timer in room.away_timers.values():
            timer.cancel()
        for digest in room.resume.values():
            self._resume.pop(digest, None)
        conns = [*room.conns.values(), *room.lobby_conns.values()]
        try:
            record = meeting.finish(
                record_id=room.record_id,
                ended_at=self.clock.wall(),
                ended_mono=self.clock.mono(),
                nodes=self._nodes(),
            )
            committed = await self.ledger.commit(record, self.clock.wall())
            # Spooled (the store is down): durable on local disk, committed later;
            # seq 0 says it has no place in the store's order yet.
            stored = committed if committed is not None else StoredRecord(0, record)
        except BaseException as exc:
            self.rooms.pop(meeting_id, None)
            log.error(
                "meeting record could not be committed meeting=%s error=%s",
                meeting_id,
                type(exc).__name__,
            )
            for conn in conns:
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
        code = CloseCode.MEETING_ENDED
        if reason is EndReason.RELAY_SHUTDOWN:
            code = CloseCode.RELAY_SHUTDOWN
        ended = binary_message(wire.encode_control("ended", reason=reason.value))
        for conn in conns:
            conn.write_frame(ended)
            conn.close(code, f"meeting ended: {reason.value}")
        room.done.set_result(stored)
        if committed is not None and self.on_commit is not None:
            self.on_commit()
        return stored
