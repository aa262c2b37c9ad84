"""Request and response bodies of the HTTPS API, as pydantic models.

They are the API's contract: OpenAPI (``/openapi.json``) is generated from
them, and every request body is bounded (lengths, ranges) so a client cannot
make the server do unbounded work.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..core.rules import Role

__all__ = [
    "CallRecordOut",
    "CallRecordPage",
    "EndMeetingOut",
    "ErrorOut",
    "InvitationCreate",
    "InvitationCreated",
    "InvitationOut",
    "MeetingOut",
    "ModerationOp",
    "ModerationRequest",
    "ParticipantOut",
    "PublicKeyOut",
    "SessionCreate",
    "SessionOut",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    """Every error response: a stable code and a human reason."""

    error: str = Field(examples=["invitation_expired"])
    reason: str
    details: list[dict[str, Any]] | None = Field(
        default=None, description="for invalid_request: which fields, and why"
    )


class SessionCreate(_Strict):
    """Sign in as a host."""

    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class SessionOut(BaseModel):
    """A new host session. The token is shown once; send it as ``Authorization: Bearer``."""

    token: str
    token_type: str = "bearer"  # noqa: S105 - the scheme name, not a secret
    host_id: str
    expires_at: str
    idle_timeout_seconds: float
    max_lifetime_seconds: float


class MeetingOut(BaseModel):
    """A meeting's metadata; there is no content to show."""

    meeting_id: str
    host_id: str
    state: str = Field(description="scheduled, live or ended")
    created_at: str
    started_at: str | None
    ended_at: str | None
    participants: int = Field(description="participants connected now (live meetings)")


class InvitationCreate(_Strict):
    """Invite someone to a meeting."""

    role: Role = Role.ATTENDEE
    expires_in: float | None = Field(
        default=None, gt=0, description="seconds until the invitation expires (default 24 h)"
    )
    max_uses: int = Field(default=1, ge=1, description="how many joins it allows")


class InvitationOut(BaseModel):
    """An invitation, without its token (tokens are shown once, at creation)."""

    invitation_id: str
    meeting_id: str
    role: Role
    created_at: str
    expires_at: str
    max_uses: int
    uses: int
    revoked: bool


class InvitationCreated(InvitationOut):
    """A new invitation and its token: pass the token to the invitee over a private channel."""

    token: str
    join_url: str = Field(description="the wss endpoint to present the token to")


class ModerationOp(enum.StrEnum):
    """What a host can do to a live meeting over the API (as over the websocket)."""

    LOBBY = "lobby"
    ADMIT = "admit"
    DENY = "deny"
    LOCK = "lock"
    EJECT = "eject"
    MUTE = "mute"
    ROLE = "role"
    WEBINAR = "webinar"


class ModerationRequest(_Strict):
    """One moderation operation; the fields it needs are as in ``docs/protocol.md``."""

    op: ModerationOp
    pid: int | None = Field(default=None, ge=0, description="admit, deny, eject, mute, role")
    track: int | None = Field(default=None, ge=0, le=65535, description="mute")
    on: bool = Field(default=True, description="lobby, lock, webinar, mute: on or off")
    role: Role | None = Field(default=None, description="role: the new role")


class ParticipantOut(BaseModel):
    """A participant of a live meeting (no address, nothing it said)."""

    pid: int
    role: Role
    name: str
    tracks: list[list[int]] = Field(default_factory=list, description="[track, media] pairs")
    away: bool = Field(default=False, description="connection lost; its seat is held")
    lobby: bool = Field(default=False, description="waiting for a host to admit it")


class CallRecordOut(BaseModel):
    """One call-detail record; see ``docs/topics/records.md``."""

    model_config = ConfigDict(extra="allow")

    cursor: int | None = Field(
        description="position in commit order; null while the record waits in the local spool"
    )
    record_id: str
    meeting_id: str
    host_id: str
    started_at: str
    ended_at: str
    duration_seconds: float
    peak_participants: int
    distinct_participants: int
    features_used: list[str]
    usage: dict[str, dict[str, Any]]
    end_reason: str
    schema_version: int
    nodes: list[str] = Field(default_factory=list, description="relay nodes that hosted it")
    participant_seconds: float = Field(description="presence summed over participants")
    prev_hash: str = Field(description="chain_hash of the record committed before this one")
    signature: str = Field(description="base64 Ed25519 signature of the canonical record")


class PublicKeyOut(BaseModel):
    """The key that verifies call records (``switchboard cdr verify``)."""

    algorithm: str = "Ed25519"
    public_key_pem: str


class CallRecordPage(BaseModel):
    """A page of records in commit order. Pass ``next_cursor`` as ``after`` for the next."""

    records: list[CallRecordOut]
    next_cursor: int


class EndMeetingOut(BaseModel):
    """The ended meeting and its record (``null`` if no one ever joined)."""

    meeting: MeetingOut
    record: CallRecordOut | None
