"""A live meeting's roster, moderation and routing decisions, as a state machine without I/O.

The relay owns one :class:`Meeting` per live meeting on its node. It asks the
meeting who may join, where a frame goes, what a control request changes and
when the meeting is over; the meeting answers with values (:class:`Route`,
events) and raises errors from :mod:`switchboard.errors`. It never sees a
socket or a clock: the caller passes the monotonic time in. It also meters
usage for the call record (:mod:`.records`).

State it keeps is routing metadata only: who is here, in the lobby or away
(reconnecting), roles, published tracks, mutes, open polls and their owners,
documents being shared and how many bytes they have carried. Never content.

Lifecycle: ``LIVE`` (frames switch) -> ``ENDING`` (nothing switches, no one
joins; the record is being written) -> ``ENDED`` (the record is committed).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import Forbidden, FrameError, MeetingEnded
from . import rules
from .limits import Limits, RateMeter
from .records import CallRecord, EndReason, UsageMeter, feature_of
from .rules import Audience, Role
from .wire import ClientFrame, Kind, Media

__all__ = [
    "Admitted",
    "Announce",
    "EndRequested",
    "KeyframeRequest",
    "Meeting",
    "MeetingState",
    "Participant",
    "Presence",
    "Removed",
    "Route",
]


class MeetingState(enum.StrEnum):
    """Where a meeting is in its life."""

    LIVE = "live"
    ENDING = "ending"
    ENDED = "ended"


class Presence(enum.StrEnum):
    """Where a participant is."""

    LOBBY = "lobby"
    """Waiting for a host to admit it; receives nothing from the meeting."""
    HERE = "here"
    """Admitted and connected."""
    AWAY = "away"
    """Admitted, connection lost, may resume within the grace period."""


_EMPTY_SET: frozenset[Any] = frozenset()
"""The shared empty set: most participants never turn anything off, and a set each
would cost an idle connection 650 bytes."""


@dataclass(slots=True, eq=False)
class Participant:
    """One participant: identity, role, and what it publishes and wants to receive.

    ``seat`` names its invitation redemption (for the record's distinct
    count); ``invitation_id`` is what an eject revokes.
    """

    pid: int
    role: Role
    name: str
    seat: str
    invitation_id: str
    presence: Presence = Presence.HERE
    tracks: dict[int, Media] = field(default_factory=dict)
    media_off: frozenset[int] = _EMPTY_SET
    """Media types this participant turned off (replaced, never changed in place)."""
    unsubscribed: frozenset[tuple[int, int | None]] = _EMPTY_SET
    """(sender, track or None for all) this participant turned off (replaced, not changed)."""
    awaiting_key: set[tuple[int, int]] | None = None
    """(sender, track) whose delta frames are skipped until a keyframe; made on first drop."""
    rate: RateMeter | None = None

    def public(self) -> dict[str, Any]:
        """What other participants see in the roster."""
        entry: dict[str, Any] = {"pid": self.pid, "role": self.role.value, "name": self.name}
        if self.tracks:
            entry["tracks"] = [[t, int(m)] for t, m in sorted(self.tracks.items())]
        if self.presence is Presence.AWAY:
            entry["away"] = True
        return entry

    def wants(self, sender: int, track: int, media: int) -> bool:
        """Whether this participant subscribes to ``sender``'s ``track``."""
        if media in self.media_off:
            return False
        unsub = self.unsubscribed
        return not unsub or ((sender, track) not in unsub and (sender, None) not in unsub)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a frame goes: everyone else, or the one participant ``target``."""

    audience: Audience
    target: int | None = None


_TO_EVERYONE = Route(Audience.EVERYONE)


# Events a control request produces; the relay turns them into frames and closes.


@dataclass(frozen=True, slots=True)
class Announce:
    """Tell every admitted participant: a control frame ``op`` with ``fields``."""

    op: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Admitted:
    """A participant left the lobby: welcome it, announce it, ask owners to sync it."""

    participant: Participant


@dataclass(frozen=True, slots=True)
class Removed:
    """A participant must go: denied from the lobby or ejected (``revoke``: its invitation)."""

    participant: Participant
    code: str
    reason: str
    revoke: bool


@dataclass(frozen=True, slots=True)
class KeyframeRequest:
    """Ask ``pid`` for a keyframe on ``track`` (already throttled)."""

    pid: int
    track: int


@dataclass(frozen=True, slots=True)
class EndRequested:
    """A host ended the meeting for everyone."""


Event = Announce | Admitted | Removed | KeyframeRequest | EndRequested

KEYFRAME_INTERVAL = 0.5
"""At most one keyframe request per track per this many seconds."""

_KIND_NAMES = {kind: kind.name.lower() for kind in Kind}
"""Limit names per kind, made once rather than per frame."""

_FEATURE_OF_KIND = {Kind.CHAT: "chat", Kind.POLL: "poll", Kind.DOCUMENT: "document"}


class Meeting:
    """Roster, moderation, routing decisions and usage metering of one live meeting."""

    def __init__(
        self,
        meeting_id: str,
        host_id: str,
        *,
        started_at: float,
        started_mono: float,
        max_participants: int,
        limits: Limits | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock`` reads the monotonic time (for participant-seconds); without one,
        time stands still at ``started_mono``."""
        self.meeting_id = meeting_id
        self._clock = clock or (lambda: started_mono)
        self.last_activity = started_mono
        """Monotonic time of the last join or switched frame (for the idle timeout)."""
        self.host_id = host_id
        self.started_at = started_at
        self.started_mono = started_mono
        self.max_participants = max_participants
        self.limits = limits or Limits()
        self.participants: dict[int, Participant] = {}
        """Admitted participants, here or away, in join order."""
        self.lobby: dict[int, Participant] = {}
        self.meter = UsageMeter(started_mono)
        self.state = MeetingState.LIVE
        self.end_reason: EndReason | None = None
        self.lobby_on = False
        self.locked = False
        self.webinar = False
        self.muted: set[tuple[int, int]] = set()
        self.polls: dict[int, int] = {}
        """Open polls: poll id -> owner pid."""
        self.documents: set[tuple[int, int]] = set()
        """Documents being shared to everyone: (owner pid, doc id)."""
        self._doc_bytes: dict[tuple[int, int, int | None], int] = {}
        self._doc_next: dict[tuple[int, int, int | None], int] = {}
        self._keyframe_asked: dict[tuple[int, int], float] = {}
        self._next_pid = 1

    # joining, leaving, reconnecting

    def join(self, *, role: Role, name: str, seat: str, invitation_id: str = "") -> Participant:
        """Add a participant, admitted or in the lobby; raise if it may not join now."""
        if self.state is not MeetingState.LIVE:
            raise MeetingEnded("the meeting has ended")
        if self.locked and role not in rules.JOIN_WHEN_LOCKED:
            raise Forbidden("the meeting is locked", code="meeting_locked")
        if len(self.participants) + len(self.lobby) >= self.max_participants:
            raise Forbidden(
                f"the meeting is full ({self.max_participants} participants)", code="meeting_full"
            )
        waits = self.lobby_on and role not in rules.SKIP_LOBBY
        participant = Participant(
            self._next_pid,
            role,
            name,
            seat,
            invitation_id,
            presence=Presence.LOBBY if waits else Presence.HERE,
            rate=RateMeter(self.limits),
        )
        self._next_pid += 1
        if waits:
            self.lobby[participant.pid] = participant
        else:
            self._admit(participant)
        return participant

    def _admit(self, participant: Participant) -> None:
        participant.presence = Presence.HERE
        self.participants[participant.pid] = participant
        now = self._clock()
        self.meter.joined(participant.seat, now)
        self.last_activity = max(self.last_activity, now)

    def leave(self, pid: int) -> Participant | None:
        """Remove a participant for good; ``None`` if it was not here."""
        participant = self.lobby.pop(pid, None)
        if participant is not None:
            return participant
        participant = self.participants.pop(pid, None)
        if participant is None:
            return None
        if participant.presence is Presence.HERE:
            self.meter.left(self._clock())
        self.polls = {poll: owner for poll, owner in self.polls.items() if owner != pid}
        self.documents = {d for d in self.documents if d[0] != pid}
        self._doc_bytes = {k: v for k, v in self._doc_bytes.items() if k[0] != pid}
        self._doc_next = {k: v for k, v in self._doc_next.items() if k[0] != pid}
        self.muted = {m for m in self.muted if m[0] != pid}
        self._keyframe_asked = {k: v for k, v in self._keyframe_asked.items() if k[0] != pid}
        return participant

    def away(self, pid: int) -> Participant | None:
        """An admitted participant lost its connection; it may resume."""
        participant = self.participants.get(pid)
        if participant is None or participant.presence is not Presence.HERE:
            return None
        participant.presence = Presence.AWAY
        participant.awaiting_key = None
        self.meter.left(self._clock())
        return participant

    def back(self, pid: int) -> Participant:
        """A participant resumed within the grace period."""
        if self.state is not MeetingState.LIVE:
            raise MeetingEnded("the meeting has ended")
        participant = self.participants.get(pid)
        if participant is None or participant.presence is not Presence.AWAY:
            raise FrameError("nothing to resume", code="resume_invalid")
        participant.presence = Presence.HERE
        self.meter.joined(participant.seat, self._clock())
        return participant

    @property
    def empty(self) -> bool:
        """No admitted participant is here or may come back."""
        return not self.participants

    def roster(self) -> list[dict[str, Any]]:
        """Every admitted participant, in join order."""
        return [p.public() for p in self.participants.values()]

    def sync_owners(self, newcomer: int) -> list[int]:
        """Who holds state a newcomer needs (documents shown, polls open), newcomer excluded."""
        owners = {owner for owner, _ in self.documents} | set(self.polls.values())
        owners.discard(newcomer)
        return sorted(p for p in owners if p in self.participants)

    # switching

    def route(
        self, sender: Participant, frame: ClientFrame, nbytes: int, now: float
    ) -> Route | None:
        """Decide where a data frame from ``sender`` goes, or raise why it may not.

        ``None`` means the frame is dropped on purpose (its track is muted).
        ``nbytes`` is the payload size; ``now`` the monotonic time.
        """
        if self.state is not MeetingState.LIVE:
            raise MeetingEnded("the meeting has ended")
        if sender.presence is not Presence.HERE:
            raise Forbidden("wait until a host admits you", code="in_lobby")
        kind = frame.kind
        assert sender.rate is not None
        sender.rate.admit(_KIND_NAMES[kind], nbytes, now)
        action = rules.action_of(frame)
        to = frame.to
        if kind is Kind.POLL and frame.op == "answer":
            audience = Audience.OWNER if to is None else Audience.ONE
        elif to is None:
            audience = Audience.EVERYONE
        else:
            if to == sender.pid or to not in self.participants:
                raise FrameError(
                    f"no other participant with id {to} in this meeting",
                    code="unknown_recipient",
                )
            audience = Audience.ONE
        rules.check(sender.role, action, audience, webinar=self.webinar)
        if kind is Kind.MEDIA:
            return self._route_media(sender, frame)
        if kind is Kind.POLL:
            return self._route_poll(sender, frame, audience)
        if kind is Kind.DOCUMENT:
            self._account_document(sender, frame, nbytes)
        return _TO_EVERYONE if to is None and audience is Audience.EVERYONE else Route(audience, to)

    def _route_media(self, sender: Participant, frame: ClientFrame) -> Route | None:
        track, media = frame.fields["track"], frame.fields["m"]
        published = sender.tracks.get(track)
        if published is None:
            raise FrameError(f"track {track} is not published", code="track_not_published")
        if published != media:
            raise FrameError(f"track {track} carries {published.name.lower()}", code="bad_field")
        if self.muted and (sender.pid, track) in self.muted:
            return None
        return _TO_EVERYONE

    def _route_poll(self, sender: Participant, frame: ClientFrame, audience: Audience) -> Route:
        poll, op = frame.fields["poll"], frame.op
        owner = self.polls.get(poll)
        if op == "answer":
            if owner is None:
                raise FrameError(f"poll {poll} is not open", code="poll_closed")
            if owner == sender.pid:
                raise FrameError("the owner does not answer its own poll", code="poll_owner")
            return Route(Audience.OWNER, owner)
        if op == "open":
            if owner is not None and owner != sender.pid:
                raise Forbidden(f"poll {poll} belongs to participant {owner}", code="poll_taken")
            if audience is Audience.EVERYONE:
                self.polls[poll] = sender.pid
        elif owner != sender.pid:
            raise Forbidden(f"only the owner of poll {poll} may do that", code="not_poll_owner")
        elif op == "close" and audience is Audience.EVERYONE:
            del self.polls[poll]
        return Route(audience, frame.to)

    def _account_document(self, sender: Participant, frame: ClientFrame, nbytes: int) -> None:
        doc, op = frame.fields["doc"], frame.op
        if op == "stop":
            if frame.to is not None:  # a stop for one participant ends only its copy
                self._doc_bytes.pop((sender.pid, doc, frame.to), None)
                return
            self.documents.discard((sender.pid, doc))
            for key in [k for k in self._doc_bytes if k[:2] == (sender.pid, doc)]:
                del self._doc_bytes[key]
            return
        if frame.to is None:
            self.documents.add((sender.pid, doc))
        if op != "chunk":
            return
        # Chunks of one share (sender, document, recipient) come in order from
        # seq 0; a share that broke a rule stays refused until it starts over,
        # so no receiver assembles a document with a hole in it.
        key = (sender.pid, doc, frame.to)
        seq = frame.fields["seq"]
        if seq == 0:
            total = nbytes
        elif key not in self._doc_bytes or self._doc_next.get(key) != seq:
            self._doc_bytes.pop(key, None)
            raise FrameError(
                f"chunk {seq} of document {doc} is out of order; start the share again at 0",
                code="chunk_out_of_order",
            )
        else:
            total = self._doc_bytes[key] + nbytes
        if total > self.limits.max_document_bytes:
            self._doc_bytes.pop(key, None)
            raise FrameError(
                f"documents are limited to {self.limits.max_document_bytes} bytes",
                code="document_too_large",
            )
        self._doc_bytes[key] = total
        self._doc_next[key] = seq + 1

    def switched(
        self, kind: Kind, media: int | None, nbytes: int, deliveries: int, dropped: int, now: float
    ) -> None:
        """Count one switched frame for the record."""
        feature = _FEATURE_OF_KIND.get(kind) or feature_of(kind, media)
        self.meter.switched(feature, nbytes, deliveries, dropped, now)
        self.last_activity = now

    def keyframe_due(self, pid: int, track: int, now: float) -> bool:
        """Whether a keyframe request for ``pid``'s ``track`` may go out now (throttle)."""
        last = self._keyframe_asked.get((pid, track))
        if last is not None and now - last < KEYFRAME_INTERVAL:
            return False
        self._keyframe_asked[(pid, track)] = now
        return True

    # control requests

    def control(self, actor: Participant, frame: ClientFrame, now: float) -> list[Event]:
        """Apply a control request from ``actor``; return what the relay must tell whom."""
        if actor.presence is not Presence.HERE:
            raise Forbidden("wait until a host admits you", code="in_lobby")
        assert actor.rate is not None
        actor.rate.admit("control", 0, now)
        action = rules.action_of(frame)
        audience = Audience.EVERYONE if frame.op == "publish" else Audience.RELAY
        # Withdrawing a track is always allowed, webinar or not.
        withdrawing = frame.op == "publish" and not frame.fields.get("on", True)
        rules.check(actor.role, action, audience, webinar=self.webinar and not withdrawing)
        return self.apply(actor, frame.op or "", dict(frame.fields), now)

    def apply(
        self, actor: Participant | None, op: str, args: dict[str, Any], now: float
    ) -> list[Event]:
        """Apply a control operation (``actor`` is ``None`` for the host API)."""
        if self.state is not MeetingState.LIVE:
            raise MeetingEnded("the meeting has ended")
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise FrameError(f"unknown control operation {op!r}", code="bad_op")
        events: list[Event] = handler(actor, args, now)
        return events

    def _target(self, args: dict[str, Any], *, lobby: bool = False) -> Participant:
        pid = args.get("pid")
        found = (self.lobby if lobby else self.participants).get(pid) if pid is not None else None
        if found is None:
            where = "in the lobby" if lobby else "in this meeting"
            raise FrameError(f"no participant with id {pid} {where}", code="unknown_participant")
        return found

    def _op_lobby(self, actor: Participant | None, args: dict[str, Any], now: float) -> list[Event]:
        self.lobby_on = args.get("on", True)
        events: list[Event] = [Announce("lobby", {"on": self.lobby_on})]
        if not self.lobby_on:
            for pid in list(self.lobby):
                events += self._op_admit(actor, {"pid": pid}, now)
        return events

    def _op_admit(self, actor: Participant | None, args: dict[str, Any], now: float) -> list[Event]:
        participant = self._target(args, lobby=True)
        del self.lobby[participant.pid]
        self._admit(participant)
        return [Admitted(participant)]

    def _op_deny(self, actor: Participant | None, args: dict[str, Any], now: float) -> list[Event]:
        participant = self._target(args, lobby=True)
        del self.lobby[participant.pid]
        return [Removed(participant, "denied", "a host did not admit you", revoke=False)]

    def _op_lock(self, actor: Participant | None, args: dict[str, Any], now: float) -> list[Event]:
        self.locked = args.get("on", True)
        return [Announce("locked", {"on": self.locked})]

    def _op_webinar(
        self, actor: Participant | None, args: dict[str, Any], now: float
    ) -> list[Event]:
        self.webinar = args.get("on", True)
        return [Announce("webinar", {"on": self.webinar})]

    def _op_eject(self, actor: Participant | None, args: dict[str, Any], now: float) -> list[Event]:
        pid = args.get("pid")
        in_lobby = pid in self.lobby
        participant = self._target(args, lobby=in_lobby)
        if actor is not None and participant.pid == actor.pid:
            raise FrameError("a host does not eject itself; leave instead", code="bad_field")
        self.leave(participant.pid)
        return [Removed(participant, "ejected", "a host removed you", revoke=True)]

    def _op_mute(self, actor: Participant | None, args: dict[str, Any], now: float) -> list[Event]:
        participant = self._target(args)
        track, on = args["track"], args.get("on", True)
        key = (participant.pid, track)
        if on:
            self.muted.add(key)
        else:
            self.muted.discard(key)
        return [Announce("muted", {"pid": participant.pid, "track": track, "on": on})]

    def _op_role(self, actor: Participant | None, args: dict[str, Any], now: float) -> list[Event]:
        participant = self._target(args)
        role = Role(args["role"])
        if participant.role is Role.HOST and role is not Role.HOST:
            hosts = [p for p in self.participants.values() if p.role is Role.HOST]
            if len(hosts) == 1:
                raise Forbidden(
                    "the meeting's last host keeps its role; make someone else host first",
                    code="last_host",
                )
        participant.role = role
        return [Announce("role", {"pid": participant.pid, "role": participant.role.value})]

    def _op_end(self, actor: Participant | None, args: dict[str, Any], now: float) -> list[Event]:
        return [EndRequested()]

    def _op_publish(
        self, actor: Participant | None, args: dict[str, Any], now: float
    ) -> list[Event]:
        assert actor is not None
        track, on = args["track"], args.get("on", True)
        if on:
            if track not in actor.tracks and len(actor.tracks) >= self.limits.max_tracks:
                raise FrameError(
                    f"at most {self.limits.max_tracks} tracks per participant", code="too_many"
                )
            actor.tracks[track] = Media(args["m"])
        else:
            actor.tracks.pop(track, None)
        fields = {"pid": actor.pid, "track": track, "m": args["m"], "on": on}
        return [Announce("track", fields)]

    def _op_subscribe(
        self, actor: Participant | None, args: dict[str, Any], now: float
    ) -> list[Event]:
        assert actor is not None
        pid, track = args["pid"], args.get("track")
        if args.get("on", True):
            if track is None:  # everything of pid again, whatever was turned off before
                actor.unsubscribed = frozenset(k for k in actor.unsubscribed if k[0] != pid)
            else:
                actor.unsubscribed = actor.unsubscribed - {(pid, track)}
        else:
            actor.unsubscribed = actor.unsubscribed | {(pid, track)}
        return []

    def _op_receive(
        self, actor: Participant | None, args: dict[str, Any], now: float
    ) -> list[Event]:
        assert actor is not None
        if args.get("on", True):
            actor.media_off = actor.media_off - {args["m"]}
        else:
            actor.media_off = actor.media_off | {args["m"]}
        return []

    def _op_keyframe(
        self, actor: Participant | None, args: dict[str, Any], now: float
    ) -> list[Event]:
        owner = self._target(args)
        track = args["track"]
        if track not in owner.tracks:
            raise FrameError(f"track {track} is not published", code="track_not_published")
        if self.keyframe_due(owner.pid, track, now):
            return [KeyframeRequest(owner.pid, track)]
        return []

    # ending

    def begin_end(self, reason: EndReason) -> bool:
        """Stop switching and joining. Return False if the meeting was already ending."""
        if self.state is not MeetingState.LIVE:
            return False
        self.state = MeetingState.ENDING
        self.end_reason = reason
        return True

    def finish(
        self,
        *,
        record_id: str,
        ended_at: float,
        ended_mono: float,
        nodes: tuple[str, ...] = (),
    ) -> CallRecord:
        """Produce the final record; the meeting is over."""
        if self.end_reason is None:
            raise RuntimeError("finish() before begin_end()")
        self.state = MeetingState.ENDED
        return self.meter.finish(
            record_id=record_id,
            meeting_id=self.meeting_id,
            host_id=self.host_id,
            started_at=self.started_at,
            ended_at=ended_at,
            ended_mono=ended_mono,
            end_reason=self.end_reason,
            nodes=nodes,
        )

    def checkpoint(
        self, *, record_id: str, at: float, at_mono: float, nodes: tuple[str, ...] = ()
    ) -> CallRecord:
        """The record as it stands: what a crash right now would leave (``relay_failure``)."""
        return self.meter.finish(
            record_id=record_id,
            meeting_id=self.meeting_id,
            host_id=self.host_id,
            started_at=self.started_at,
            ended_at=at,
            ended_mono=at_mono,
            end_reason=EndReason.RELAY_FAILURE,
            nodes=nodes,
        )
