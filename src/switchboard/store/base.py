"""The storage interface: accounts, sessions, meetings, invitations, API keys, records.

One narrow async interface, implemented by each backend (SQLite embedded
today; PostgreSQL for scale-out). Everything above it speaks these types only,
and the contract suite in ``tests/test_store_contract.py`` runs against every
backend. Backends translate their driver's exceptions into
:mod:`switchboard.errors` at this boundary.

What is stored is metadata only. There is deliberately no method that could
store frame content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..core.records import CallRecord
from ..core.rules import Role

__all__ = [
    "ApiKey",
    "HostAccount",
    "HostSession",
    "Invitation",
    "MeetingRow",
    "Redemption",
    "Store",
    "StoredRecord",
]


@dataclass(frozen=True, slots=True)
class HostAccount:
    """A host: someone who may create meetings. ``password_hash`` is an Argon2id string."""

    host_id: str
    email: str
    password_hash: str
    created_at: float
    name: str = ""
    preferences: dict[str, Any] = field(default_factory=dict)
    verified: bool = True
    deactivated_at: float | None = None
    """Set when the host deleted its account; personal data is purged after retention."""
    purged_at: float | None = None

    @property
    def active(self) -> bool:
        """May sign in and act: verified and not deleted."""
        return self.verified and self.deactivated_at is None


@dataclass(frozen=True, slots=True)
class HostSession:
    """A signed-in host session, as the store knows it (the token itself is never stored)."""

    session_id: str
    host_id: str
    created_at: float
    last_used_at: float
    client: str = ""
    """What the client said it is (user agent, truncated); never its address."""


@dataclass(frozen=True, slots=True)
class MeetingRow:
    """A meeting's metadata. ``state`` is ``scheduled``, ``live`` or ``ended``."""

    meeting_id: str
    host_id: str
    created_at: float
    state: str
    started_at: float | None
    ended_at: float | None


@dataclass(frozen=True, slots=True)
class Invitation:
    """An invitation to a meeting, without its token."""

    invitation_id: str
    meeting_id: str
    role: Role
    created_at: float
    expires_at: float
    max_uses: int
    uses: int
    revoked: bool


@dataclass(frozen=True, slots=True)
class Redemption:
    """One successful use of an invitation: the right to join once."""

    seat: str
    invitation_id: str
    meeting_id: str
    host_id: str
    role: Role


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key for a billing system or host app; ``scopes`` bound what it may do."""

    key_id: str
    label: str
    scopes: frozenset[str]
    created_at: float
    last_used_at: float | None
    revoked: bool
    host_id: str | None = None
    """For ``meetings:write`` keys: the host the key acts for."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A committed call record and its position in commit order (the cursor)."""

    seq: int
    record: CallRecord


class Store(Protocol):
    """What switchboard needs from a database. Every method is safe to call concurrently."""

    async def open(self) -> None:
        """Connect and create or migrate the schema."""

    async def close(self) -> None:
        """Release connections; pending writes are finished first."""

    # hosts and sessions
    async def add_host(
        self,
        email: str,
        password_hash: str,
        now: float,
        *,
        name: str = "",
        verified: bool = True,
    ) -> HostAccount:
        """Create a host; raise :class:`~switchboard.errors.Conflict` if the email is taken."""

    async def host_by_email(self, email: str) -> HostAccount | None:
        """Look a host up by email (case-insensitive)."""

    async def set_password_hash(self, host_id: str, password_hash: str) -> None:
        """Replace a host's password hash (rehash after a parameter change)."""

    async def create_session(
        self, host_id: str, digest: bytes, now: float, client: str = ""
    ) -> HostSession:
        """Record a new session under the token's digest."""

    async def list_sessions(self, host_id: str) -> Sequence[tuple[HostSession, bytes]]:
        """A host's sessions with their digests (to mark the caller's own), newest first."""

    async def end_sessions(
        self, host_id: str, *, keep: bytes | None = None, session_id: str | None = None
    ) -> int:
        """End a host's sessions (all, all but ``keep``, or one by id); how many ended."""

    async def get_host(self, host_id: str) -> HostAccount | None:
        """One host by id."""

    async def update_host(
        self,
        host_id: str,
        *,
        name: str | None = None,
        email: str | None = None,
        preferences: dict[str, Any] | None = None,
    ) -> HostAccount:
        """Change a host's own details; ``Conflict`` if the new email is taken."""

    async def create_verification(self, host_id: str, digest: bytes, expires_at: float) -> None:
        """Store an email-verification token's digest for a self-registered host."""

    async def verify_email(self, digest: bytes, now: float) -> str | None:
        """Use a verification token once: mark its host verified and return its id."""

    async def deactivate_host(self, host_id: str, now: float) -> None:
        """Delete an account, reversibly until purged: sign-in refused, sessions ended,
        API keys and outstanding invitations revoked, in one transaction."""

    async def restore_host(self, email: str) -> HostAccount | None:
        """Undo a deletion that was not purged yet; ``None`` if there is nothing to restore."""

    async def purge_hosts(self, deactivated_before: float, now: float) -> int:
        """Erase personal data (email, name, password hash, preferences) of hosts deleted
        before ``deactivated_before``; records stay under the pseudonymous host id."""

    async def delete_expired(
        self, now: float, *, idle_timeout: float, max_lifetime: float, unverified_before: float
    ) -> int:
        """Forget what has expired: sessions, verification tokens, and sign-ups never
        verified (created before ``unverified_before``). How many rows went."""

    async def backup(self, path: Path) -> None:
        """Write a consistent copy of the whole database to ``path`` (online)."""

    async def use_session(
        self, digest: bytes, now: float, idle_timeout: float, max_lifetime: float
    ) -> HostSession | None:
        """Validate a session and mark it used, atomically; ``None`` if unknown or expired."""

    async def delete_session(self, digest: bytes) -> bool:
        """End a session; whether it existed."""

    # meetings and invitations
    async def create_meeting(self, host_id: str, now: float) -> MeetingRow:
        """Create a meeting owned by ``host_id``."""

    async def get_meeting(self, meeting_id: str) -> MeetingRow | None:
        """One meeting, or ``None``."""

    async def list_meetings(self, host_id: str) -> Sequence[MeetingRow]:
        """A host's meetings, newest first."""

    async def meeting_started(self, meeting_id: str, now: float) -> None:
        """The first participant joined: the meeting is live."""

    async def meeting_ended(self, meeting_id: str, now: float) -> None:
        """Mark a meeting ended without a record (it never went live)."""

    async def create_invitation(
        self,
        meeting_id: str,
        role: Role,
        digest: bytes,
        *,
        now: float,
        expires_at: float,
        max_uses: int,
    ) -> Invitation:
        """Store a new invitation under its token's digest."""

    async def list_invitations(self, meeting_id: str) -> Sequence[Invitation]:
        """A meeting's invitations, without tokens."""

    async def revoke_invitation(self, meeting_id: str, invitation_id: str) -> bool:
        """Revoke an invitation; whether it existed."""

    async def redeem_invitation(self, digest: bytes, now: float) -> Redemption:
        """Use an invitation once, atomically.

        Of any number of concurrent redemptions of an invitation with ``n`` uses
        left, exactly ``n`` succeed. Raise
        :class:`~switchboard.errors.InvitationError` (unknown, expired, revoked,
        used up) or :class:`~switchboard.errors.MeetingEnded`.
        """

    async def release_invitation(self, invitation_id: str) -> None:
        """Give back one use of an invitation whose redemption did not lead to a seat."""

    # API keys
    async def create_api_key(
        self,
        digest: bytes,
        scopes: frozenset[str],
        label: str,
        now: float,
        host_id: str | None = None,
    ) -> ApiKey:
        """Store a new API key under its token's digest (``host_id``: the host it acts for)."""

    async def use_api_key(self, digest: bytes, now: float) -> ApiKey | None:
        """Look a key up and record its use; ``None`` if unknown or revoked."""

    async def list_api_keys(self) -> Sequence[ApiKey]:
        """Every API key, revoked ones included, oldest first (never the secret)."""

    async def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key for good; whether it existed."""

    # records
    async def save_checkpoint(self, record: CallRecord) -> None:
        """Store the running record of a live meeting (open record; replaces the last one).

        ``record.nodes[0]`` names the node that owns the meeting, so that node
        (and only it) closes the record after a crash.
        """

    async def save_checkpoints(self, records: Sequence[CallRecord]) -> None:
        """Store several running records at once, all or none (one transaction).

        A relay checkpoints every live meeting each interval: one commit for a
        batch instead of one per meeting keeps that round cheap at thousands of
        meetings.
        """
        for record in records:
            await self.save_checkpoint(record)

    async def open_checkpoints(self, node: str) -> Sequence[CallRecord]:
        """Checkpoints of meetings that ``node`` never finished (it crashed)."""

    async def finish_meeting(
        self,
        record: CallRecord,
        *,
        sign: Callable[[bytes], str] | None = None,
        deliver: bool = False,
        now: float = 0.0,
    ) -> StoredRecord:
        """Commit a meeting's final record and mark it ended, in one durable transaction.

        The record is linked to the one committed before it (``prev_hash``) and
        signed with ``sign`` over its canonical bytes; its open checkpoint is
        removed; with ``deliver`` a webhook delivery is queued. Exactly once per
        meeting: a second call returns the record already stored.
        """

    async def get_record(self, meeting_id: str) -> StoredRecord | None:
        """The record of one meeting, if it has one."""

    async def list_records(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        host_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Sequence[StoredRecord]:
        """Records in commit order with ``seq > after``; filters: host, end time range."""

    # webhook deliveries
    async def due_deliveries(
        self, now: float, limit: int = 50
    ) -> Sequence[tuple[StoredRecord, int]]:
        """Undelivered records whose next attempt is due, with the attempts so far."""

    async def delivery_done(
        self, record_id: str, *, ok: bool, status: str, now: float, retry_at: float
    ) -> None:
        """Record one delivery attempt: delivered, or retry at ``retry_at``."""

    async def delivery_state(self, record_id: str) -> tuple[int, float | None] | None:
        """(attempts, delivered_at) of a record's delivery, or ``None`` if none is queued."""
