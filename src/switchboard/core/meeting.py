"""A live meeting's roster and lifecycle, as a state machine without I/O.

The relay owns one :class:`Meeting` per live meeting on its node. It asks the
meeting who may join, where a frame goes and when the meeting is over; the
meeting answers with values and raises errors from :mod:`switchboard.errors`.
It also meters usage for the call record (:mod:`.records`).

Lifecycle: ``LIVE`` (frames switch) -> ``ENDING`` (nothing switches, no one
joins; the record is being written) -> ``ENDED`` (the record is committed).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ..errors import Forbidden, FrameError, MeetingEnded
from . import rules
from .records import CallRecord, EndReason, UsageMeter
from .rules import Audience, Role
from .wire import ClientFrame, Kind

__all__ = ["Meeting", "MeetingState", "Participant"]


class MeetingState(enum.StrEnum):
    """Where a meeting is in its life."""

    LIVE = "live"
    ENDING = "ending"
    ENDED = "ended"


@dataclass(slots=True)
class Participant:
    """One connected participant. ``seat`` names its invitation redemption."""

    pid: int
    role: Role
    name: str
    seat: str

    def public(self) -> dict[str, Any]:
        """What other participants see in the roster."""
        return {"pid": self.pid, "role": self.role.value, "name": self.name}


class Meeting:
    """Roster, routing decisions and usage metering of one live meeting."""

    __slots__ = (
        "_next_pid",
        "end_reason",
        "host_id",
        "max_participants",
        "meeting_id",
        "meter",
        "participants",
        "started_at",
        "started_mono",
        "state",
    )

    def __init__(
        self,
        meeting_id: str,
        host_id: str,
        *,
        started_at: float,
        started_mono: float,
        max_participants: int,
    ) -> None:
        self.meeting_id = meeting_id
        self.host_id = host_id
        self.started_at = started_at
        self.started_mono = started_mono
        self.max_participants = max_participants
        self.participants: dict[int, Participant] = {}
        self.meter = UsageMeter(started_mono)
        self.state = MeetingState.LIVE
        self.end_reason: EndReason | None = None
        self._next_pid = 1

    def join(self, *, role: Role, name: str, seat: str) -> Participant:
        """Add a participant; raise if the meeting is over or full."""
        if self.state is not MeetingState.LIVE:
            raise MeetingEnded("the meeting has ended")
        if len(self.participants) >= self.max_participants:
            raise Forbidden(
                f"the meeting is full ({self.max_participants} participants)", code="meeting_full"
            )
        participant = Participant(self._next_pid, role, name, seat)
        self._next_pid += 1
        self.participants[participant.pid] = participant
        self.meter.joined(seat)
        return participant

    def leave(self, pid: int) -> Participant | None:
        """Remove a participant; ``None`` if it was not (or no longer) here."""
        participant = self.participants.pop(pid, None)
        if participant is not None:
            self.meter.left()
        return participant

    @property
    def empty(self) -> bool:
        """No one is connected."""
        return not self.participants

    def route(self, sender: Participant, frame: ClientFrame) -> Audience:
        """Decide where ``frame`` from ``sender`` goes, or raise why it may not."""
        if self.state is not MeetingState.LIVE:
            raise MeetingEnded("the meeting has ended")
        if frame.to is None:
            audience = Audience.EVERYONE
        else:
            if frame.to == sender.pid or frame.to not in self.participants:
                raise FrameError(
                    f"no other participant with id {frame.to} in this meeting",
                    code="unknown_recipient",
                )
            audience = Audience.ONE
        rules.check(sender.role, frame.kind, audience)
        return audience

    def switched(self, kind: Kind, nbytes: int, deliveries: int, now_mono: float) -> None:
        """Count one switched frame for the record."""
        self.meter.switched(kind, nbytes, deliveries, now_mono)

    def roster(self) -> list[dict[str, Any]]:
        """Everyone connected, in join order."""
        return [p.public() for p in self.participants.values()]

    def begin_end(self, reason: EndReason) -> bool:
        """Stop switching and joining. Return False if the meeting was already ending."""
        if self.state is not MeetingState.LIVE:
            return False
        self.state = MeetingState.ENDING
        self.end_reason = reason
        return True

    def finish(self, *, record_id: str, ended_at: float, ended_mono: float) -> CallRecord:
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
        )
