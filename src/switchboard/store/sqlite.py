"""The embedded store: one SQLite file, written durably, off the event loop.

SQLite serves a small company with nothing to install. Every call runs on one
dedicated thread that owns the connection, so the event loop never blocks on
disk and statements never interleave. The database runs in WAL mode with
``synchronous=FULL``: a call record is on disk when :meth:`finish_meeting`
returns, which is what lets the relay acknowledge the end of a meeting. Other
processes (the CLI while the server runs) may open the same file; SQLite's
locking keeps them consistent and every multi-step change is one transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..core.records import GENESIS_HASH, CallRecord, FeatureUsage, canonical, chain_hash
from ..core.rules import Role
from ..errors import ConfigError, Conflict, InvitationError, MeetingEnded, NotFound, StoreError
from .base import (
    ApiKey,
    HostAccount,
    HostSession,
    Invitation,
    MeetingRow,
    Redemption,
    StoredRecord,
)

__all__ = ["SqliteStore"]

T = TypeVar("T")

_SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    host_id       TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    email_key     TEXT NOT NULL UNIQUE,  -- casefold(email): one account per address
    password_hash TEXT NOT NULL,
    created_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id    TEXT PRIMARY KEY,
    digest        BLOB NOT NULL UNIQUE,
    host_id       TEXT NOT NULL REFERENCES hosts(host_id),
    created_at    REAL NOT NULL,
    last_used_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meetings (
    meeting_id    TEXT PRIMARY KEY,
    host_id       TEXT NOT NULL REFERENCES hosts(host_id),
    created_at    REAL NOT NULL,
    state         TEXT NOT NULL DEFAULT 'scheduled',
    started_at    REAL,
    ended_at      REAL
);
CREATE INDEX IF NOT EXISTS meetings_by_host ON meetings(host_id, created_at);
CREATE TABLE IF NOT EXISTS invitations (
    invitation_id TEXT PRIMARY KEY,
    meeting_id    TEXT NOT NULL REFERENCES meetings(meeting_id),
    digest        BLOB NOT NULL UNIQUE,
    role          TEXT NOT NULL,
    created_at    REAL NOT NULL,
    expires_at    REAL NOT NULL,
    max_uses      INTEGER NOT NULL,
    uses          INTEGER NOT NULL DEFAULT 0,
    revoked       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS invitations_by_meeting ON invitations(meeting_id);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id        TEXT PRIMARY KEY,
    digest        BLOB NOT NULL UNIQUE,
    label         TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_at    REAL NOT NULL,
    last_used_at  REAL,
    revoked       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS cdrs (
    seq                   INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id             TEXT NOT NULL UNIQUE,
    meeting_id            TEXT NOT NULL UNIQUE,
    host_id               TEXT NOT NULL,
    started_at            REAL NOT NULL,
    ended_at              REAL NOT NULL,
    duration_seconds      REAL NOT NULL,
    peak_participants     INTEGER NOT NULL,
    distinct_participants INTEGER NOT NULL,
    end_reason            TEXT NOT NULL,
    schema_version        INTEGER NOT NULL,
    usage                 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cdrs_by_host ON cdrs(host_id, seq);
"""

# Each entry brings a database from the version before it to its own version.
_MIGRATIONS: dict[int, str] = {
    2: """
ALTER TABLE cdrs ADD COLUMN nodes TEXT NOT NULL DEFAULT '[]';
ALTER TABLE cdrs ADD COLUMN participant_seconds REAL NOT NULL DEFAULT 0;
ALTER TABLE cdrs ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE cdrs ADD COLUMN signature TEXT NOT NULL DEFAULT '';
ALTER TABLE cdrs ADD COLUMN chain_hash TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS cdrs_by_end ON cdrs(ended_at);
ALTER TABLE api_keys ADD COLUMN host_id TEXT REFERENCES hosts(host_id);
CREATE TABLE IF NOT EXISTS open_records (
    meeting_id    TEXT PRIMARY KEY,
    node          TEXT NOT NULL,
    record        TEXT NOT NULL,  -- the latest checkpoint, as the record's JSON
    updated_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    record_id     TEXT PRIMARY KEY REFERENCES cdrs(record_id),
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  REAL NOT NULL,
    delivered_at  REAL,
    last_status   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS webhook_due ON webhook_deliveries(delivered_at, next_attempt);
""",
    3: """
ALTER TABLE hosts ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN preferences TEXT NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN verified INTEGER NOT NULL DEFAULT 1;
ALTER TABLE hosts ADD COLUMN deactivated_at REAL;
ALTER TABLE hosts ADD COLUMN purged_at REAL;
ALTER TABLE sessions ADD COLUMN client TEXT NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS email_verifications (
    digest        BLOB PRIMARY KEY,
    host_id       TEXT NOT NULL REFERENCES hosts(host_id),
    expires_at    REAL NOT NULL
);
""",
}


def _email_key(email: str) -> str:
    """Emails compare case-insensitively, Unicode included (SQLite's NOCASE folds ASCII only)."""
    return email.strip().casefold()


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(12)


class SqliteStore:
    """:class:`~switchboard.store.base.Store` on an SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
        if not url.startswith("sqlite:///"):
            raise ConfigError(f"not an sqlite URL: {url!r} (expected sqlite:///path)")
        return cls(Path(url.removeprefix("sqlite:///")))

    # plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._call, fn, *args))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"already exists or conflicts ({exc.sqlite_errorname})") from None
        except sqlite3.Error as exc:
            name = getattr(exc, "sqlite_errorname", type(exc).__name__)
            raise StoreError(f"database error ({name})") from None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is not open")
        return self._conn

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Accounts and password hashes are personal data: owner-only, whatever
        # the umask. SQLite gives its -wal and -shm files the database's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # Deleted and purged data is overwritten, not left in free pages.
        conn.execute("PRAGMA secure_delete = ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"database schema {version} is newer than this switchboard ({_SCHEMA_VERSION})"
            )
        if version == 0:
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "PRAGMA user_version = 1; COMMIT;")
            version = 1
        for target in range(version + 1, _SCHEMA_VERSION + 1):
            conn.executescript(
                "BEGIN IMMEDIATE;"
                + _MIGRATIONS[target]
                + f"PRAGMA user_version = {target}; COMMIT;"
            )
        self._conn = conn

    async def open(self) -> None:
        """Open the file (creating it and its folder) and create the schema."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="switchboard-sqlite")
        await self._run(self._open_sync)

    async def close(self) -> None:
        """Close the connection after pending calls finish."""
        if self._executor is None:
            return
        if self._conn is not None:
            await self._run(self._db.close)
            self._conn = None
        self._executor.shutdown(wait=True)
        self._executor = None

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    # hosts and sessions

    _HOST_COLS = (
        "host_id, email, password_hash, created_at, name, preferences, verified,"
        " deactivated_at, purged_at"
    )

    @staticmethod
    def _host(row: Sequence[Any]) -> HostAccount:
        return HostAccount(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            json.loads(row[5]),
            bool(row[6]),
            row[7],
            row[8],
        )

    async def add_host(
        self,
        email: str,
        password_hash: str,
        now: float,
        *,
        name: str = "",
        verified: bool = True,
    ) -> HostAccount:
        """See :class:`~switchboard.store.base.Store`."""
        host = HostAccount(_new_id("h_"), email, password_hash, now, name, {}, verified)

        def run() -> None:
            try:
                self._db.execute(
                    "INSERT INTO hosts (host_id, email, email_key, password_hash, created_at,"
                    " name, verified) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        host.host_id,
                        host.email,
                        _email_key(email),
                        host.password_hash,
                        host.created_at,
                        name,
                        int(verified),
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict("a host with this email exists", code="email_taken") from None

        await self._run(run)
        return host

    async def host_by_email(self, email: str) -> HostAccount | None:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> HostAccount | None:
            row = self._db.execute(
                f"SELECT {self._HOST_COLS} FROM hosts WHERE email_key = ?", (_email_key(email),)
            ).fetchone()
            return self._host(row) if row else None

        return await self._run(run)

    async def get_host(self, host_id: str) -> HostAccount | None:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> HostAccount | None:
            row = self._db.execute(
                f"SELECT {self._HOST_COLS} FROM hosts WHERE host_id = ?", (host_id,)
            ).fetchone()
            return self._host(row) if row else None

        return await self._run(run)

    async def update_host(
        self,
        host_id: str,
        *,
        name: str | None = None,
        email: str | None = None,
        preferences: dict[str, Any] | None = None,
    ) -> HostAccount:
        """See :class:`~switchboard.store.base.Store`."""

        def run(db: sqlite3.Connection) -> HostAccount:
            if name is not None:
                db.execute("UPDATE hosts SET name = ? WHERE host_id = ?", (name, host_id))
            if preferences is not None:
                db.execute(
                    "UPDATE hosts SET preferences = ? WHERE host_id = ?",
                    (json.dumps(preferences, sort_keys=True), host_id),
                )
            if email is not None:
                try:
                    db.execute(
                        "UPDATE hosts SET email = ?, email_key = ? WHERE host_id = ?",
                        (email, _email_key(email), host_id),
                    )
                except sqlite3.IntegrityError:
                    raise Conflict("a host with this email exists", code="email_taken") from None
            row = db.execute(
                f"SELECT {self._HOST_COLS} FROM hosts WHERE host_id = ?", (host_id,)
            ).fetchone()
            if row is None:
                raise NotFound("no such host")
            return self._host(row)

        return await self._run(self._tx, run)

    async def create_verification(self, host_id: str, digest: bytes, expires_at: float) -> None:
        """See :class:`~switchboard.store.base.Store`."""
        await self._run(
            self._db.execute,
            "INSERT INTO email_verifications (digest, host_id, expires_at) VALUES (?, ?, ?)",
            (digest, host_id, expires_at),
        )

    async def verify_email(self, digest: bytes, now: float) -> str | None:
        """See :class:`~switchboard.store.base.Store`."""

        def run(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "DELETE FROM email_verifications WHERE digest = ? AND expires_at > ?"
                " RETURNING host_id",
                (digest, now),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE hosts SET verified = 1 WHERE host_id = ?", (row[0],))
            return str(row[0])

        return await self._run(self._tx, run)

    async def set_password_hash(self, host_id: str, password_hash: str) -> None:
        """See :class:`~switchboard.store.base.Store`."""
        await self._run(
            self._db.execute,
            "UPDATE hosts SET password_hash = ? WHERE host_id = ?",
            (password_hash, host_id),
        )

    async def deactivate_host(self, host_id: str, now: float) -> None:
        """See :class:`~switchboard.store.base.Store`."""

        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE hosts SET deactivated_at = ? WHERE host_id = ? AND deactivated_at IS NULL",
                (now, host_id),
            )
            db.execute("DELETE FROM sessions WHERE host_id = ?", (host_id,))
            db.execute("UPDATE api_keys SET revoked = 1 WHERE host_id = ?", (host_id,))
            db.execute(
                "UPDATE invitations SET revoked = 1 WHERE meeting_id IN"
                " (SELECT meeting_id FROM meetings WHERE host_id = ? AND state != 'ended')",
                (host_id,),
            )

        await self._run(self._tx, run)

    async def restore_host(self, email: str) -> HostAccount | None:
        """See :class:`~switchboard.store.base.Store`."""

        def run(db: sqlite3.Connection) -> HostAccount | None:
            row = db.execute(
                "UPDATE hosts SET deactivated_at = NULL WHERE email_key = ?"
                " AND deactivated_at IS NOT NULL AND purged_at IS NULL"
                f" RETURNING {self._HOST_COLS}",
                (_email_key(email),),
            ).fetchone()
            return self._host(row) if row else None

        return await self._run(self._tx, run)

    async def purge_hosts(self, deactivated_before: float, now: float) -> int:
        """See :class:`~switchboard.store.base.Store`."""

        def run(db: sqlite3.Connection) -> int:
            # The placeholder email keeps the UNIQUE columns unique and says what happened.
            cur = db.execute(
                "UPDATE hosts SET email = 'purged:' || host_id, email_key = 'purged:' || host_id,"
                " name = '', password_hash = '', preferences = '{}', purged_at = ?"
                " WHERE deactivated_at IS NOT NULL AND deactivated_at < ? AND purged_at IS NULL",
                (now, deactivated_before),
            )
            db.execute(
                "DELETE FROM sessions WHERE host_id IN"
                " (SELECT host_id FROM hosts WHERE purged_at IS NOT NULL)"
            )
            return cur.rowcount

        purged: int = await self._run(self._tx, run)
        if purged:
            # Push the purge out of the write-ahead log into the (securely
            # overwritten) database file now, rather than at some later checkpoint.
            await self._run(self._checkpoint_wal)
        return purged

    def _checkpoint_wal(self) -> None:
        # fetchall(): the PRAGMA's statement must finish, or it keeps a transaction open.
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    async def create_session(
        self, host_id: str, digest: bytes, now: float, client: str = ""
    ) -> HostSession:
        """See :class:`~switchboard.store.base.Store`."""
        session = HostSession(_new_id("s_"), host_id, now, now, client[:80])
        await self._run(
            self._db.execute,
            "INSERT INTO sessions (session_id, digest, host_id, created_at, last_used_at, client)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (session.session_id, digest, host_id, now, now, session.client),
        )
        return session

    async def use_session(
        self, digest: bytes, now: float, idle_timeout: float, max_lifetime: float
    ) -> HostSession | None:
        """See :class:`~switchboard.store.base.Store`."""

        valid = (
            " WHERE digest = ? AND last_used_at + ? > ? AND created_at + ? > ?"
            " AND host_id IN (SELECT host_id FROM hosts"
            "  WHERE deactivated_at IS NULL AND verified = 1)"
        )
        args = (digest, idle_timeout, now, max_lifetime, now)

        def run() -> HostSession | None:
            try:
                row = self._db.execute(
                    "UPDATE sessions SET last_used_at = ?"
                    + valid
                    + " RETURNING session_id, host_id, created_at, last_used_at, client",
                    (now, *args),
                ).fetchone()
            except sqlite3.OperationalError:
                # The database refuses writes (locked, full): recording the use is
                # best effort, checking the session is not. A locked store must not
                # stop a host from ending a meeting, whose record goes to the spool.
                row = self._db.execute(
                    "SELECT session_id, host_id, created_at, last_used_at, client FROM sessions"
                    + valid,
                    args,
                ).fetchone()
            return HostSession(*row) if row else None

        return await self._run(run)

    async def list_sessions(self, host_id: str) -> Sequence[tuple[HostSession, bytes]]:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> list[tuple[HostSession, bytes]]:
            rows = self._db.execute(
                "SELECT session_id, host_id, created_at, last_used_at, client, digest"
                " FROM sessions WHERE host_id = ? ORDER BY created_at DESC, session_id",
                (host_id,),
            ).fetchall()
            return [(HostSession(*row[:5]), row[5]) for row in rows]

        return await self._run(run)

    async def end_sessions(
        self, host_id: str, *, keep: bytes | None = None, session_id: str | None = None
    ) -> int:
        """See :class:`~switchboard.store.base.Store`."""
        args: tuple[Any, ...]
        if session_id is not None:
            sql, args = (
                "DELETE FROM sessions WHERE host_id = ? AND session_id = ?",
                (host_id, session_id),
            )
        elif keep is not None:
            sql, args = "DELETE FROM sessions WHERE host_id = ? AND digest != ?", (host_id, keep)
        else:
            sql, args = "DELETE FROM sessions WHERE host_id = ?", (host_id,)
        cur = await self._run(self._db.execute, sql, args)
        return int(cur.rowcount)

    async def delete_session(self, digest: bytes) -> bool:
        """See :class:`~switchboard.store.base.Store`."""
        cur = await self._run(self._db.execute, "DELETE FROM sessions WHERE digest = ?", (digest,))
        return cur.rowcount > 0

    async def delete_expired(
        self, now: float, *, idle_timeout: float, max_lifetime: float, unverified_before: float
    ) -> int:
        """See :class:`~switchboard.store.base.Store`."""

        def run(db: sqlite3.Connection) -> int:
            gone = db.execute(
                "DELETE FROM sessions WHERE last_used_at + ? <= ? OR created_at + ? <= ?",
                (idle_timeout, now, max_lifetime, now),
            ).rowcount
            gone += db.execute(
                "DELETE FROM email_verifications WHERE expires_at <= ?", (now,)
            ).rowcount
            stale = (
                "SELECT host_id FROM hosts WHERE verified = 0 AND created_at < ?"
                " AND host_id NOT IN (SELECT host_id FROM meetings)"
            )
            db.execute(
                f"DELETE FROM email_verifications WHERE host_id IN ({stale})",
                (unverified_before,),
            )
            db.execute(f"DELETE FROM sessions WHERE host_id IN ({stale})", (unverified_before,))
            gone += db.execute(
                f"DELETE FROM hosts WHERE host_id IN ({stale})", (unverified_before,)
            ).rowcount
            return int(gone)

        return await self._run(self._tx, run)

    async def backup(self, path: Path) -> None:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
            except OSError as exc:
                raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
            target = sqlite3.connect(path)
            try:
                self._db.backup(target)  # SQLite's online backup API: consistent, live
            finally:
                target.close()

        await self._run(run)

    # meetings and invitations

    _MEETING_COLS = "meeting_id, host_id, created_at, state, started_at, ended_at"

    async def create_meeting(self, host_id: str, now: float) -> MeetingRow:
        """See :class:`~switchboard.store.base.Store`."""
        meeting = MeetingRow(_new_id("m_"), host_id, now, "scheduled", None, None)
        await self._run(
            self._db.execute,
            f"INSERT INTO meetings ({self._MEETING_COLS}) VALUES (?, ?, ?, ?, NULL, NULL)",
            (meeting.meeting_id, host_id, now, meeting.state),
        )
        return meeting

    async def get_meeting(self, meeting_id: str) -> MeetingRow | None:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> MeetingRow | None:
            row = self._db.execute(
                f"SELECT {self._MEETING_COLS} FROM meetings WHERE meeting_id = ?", (meeting_id,)
            ).fetchone()
            return MeetingRow(*row) if row else None

        return await self._run(run)

    async def list_meetings(self, host_id: str) -> Sequence[MeetingRow]:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> list[MeetingRow]:
            rows = self._db.execute(
                f"SELECT {self._MEETING_COLS} FROM meetings WHERE host_id = ?"
                " ORDER BY created_at DESC, meeting_id",
                (host_id,),
            ).fetchall()
            return [MeetingRow(*row) for row in rows]

        return await self._run(run)

    async def meeting_started(self, meeting_id: str, now: float) -> None:
        """See :class:`~switchboard.store.base.Store`."""
        await self._run(
            self._db.execute,
            "UPDATE meetings SET state = 'live', started_at = ?"
            " WHERE meeting_id = ? AND state = 'scheduled'",
            (now, meeting_id),
        )

    async def meeting_ended(self, meeting_id: str, now: float) -> None:
        """See :class:`~switchboard.store.base.Store`."""
        await self._run(
            self._db.execute,
            "UPDATE meetings SET state = 'ended', ended_at = ?"
            " WHERE meeting_id = ? AND state != 'ended'",
            (now, meeting_id),
        )

    _INVITATION_COLS = (
        "invitation_id, meeting_id, role, created_at, expires_at, max_uses, uses, revoked"
    )

    @staticmethod
    def _invitation(row: Sequence[Any]) -> Invitation:
        return Invitation(
            row[0], row[1], Role(row[2]), row[3], row[4], row[5], row[6], bool(row[7])
        )

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
        """See :class:`~switchboard.store.base.Store`."""
        inv = Invitation(_new_id("i_"), meeting_id, role, now, expires_at, max_uses, 0, False)
        await self._run(
            self._db.execute,
            f"INSERT INTO invitations ({self._INVITATION_COLS}, digest)"
            " VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?)",
            (inv.invitation_id, meeting_id, role.value, now, expires_at, max_uses, digest),
        )
        return inv

    async def list_invitations(self, meeting_id: str) -> Sequence[Invitation]:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> list[Invitation]:
            rows = self._db.execute(
                f"SELECT {self._INVITATION_COLS} FROM invitations WHERE meeting_id = ?"
                " ORDER BY created_at, invitation_id",
                (meeting_id,),
            ).fetchall()
            return [self._invitation(row) for row in rows]

        return await self._run(run)

    async def revoke_invitation(self, meeting_id: str, invitation_id: str) -> bool:
        """See :class:`~switchboard.store.base.Store`."""
        cur = await self._run(
            self._db.execute,
            "UPDATE invitations SET revoked = 1 WHERE meeting_id = ? AND invitation_id = ?",
            (meeting_id, invitation_id),
        )
        return cur.rowcount > 0

    async def redeem_invitation(self, digest: bytes, now: float) -> Redemption:
        """See :class:`~switchboard.store.base.Store`."""

        def run(db: sqlite3.Connection) -> Redemption:
            row = db.execute(
                "UPDATE invitations SET uses = uses + 1"
                " WHERE digest = ? AND revoked = 0 AND uses < max_uses AND expires_at > ?"
                " AND meeting_id IN (SELECT meeting_id FROM meetings WHERE state != 'ended')"
                " RETURNING invitation_id, meeting_id, role, uses",
                (digest, now),
            ).fetchone()
            if row is not None:
                invitation_id, meeting_id, role, uses = row
                (host_id,) = db.execute(
                    "SELECT host_id FROM meetings WHERE meeting_id = ?", (meeting_id,)
                ).fetchone()
                return Redemption(
                    f"{invitation_id}#{uses}", invitation_id, meeting_id, host_id, Role(role)
                )
            found = db.execute(
                "SELECT i.revoked, i.uses, i.max_uses, i.expires_at, m.state"
                " FROM invitations i JOIN meetings m USING (meeting_id) WHERE i.digest = ?",
                (digest,),
            ).fetchone()
            if found is None:
                raise InvitationError("the invitation is not recognised", code="invitation_unknown")
            revoked, uses, max_uses, expires_at, state = found
            if state == "ended":
                raise MeetingEnded("the meeting has ended")
            if revoked:
                raise InvitationError("the invitation was revoked", code="invitation_revoked")
            if expires_at <= now:
                raise InvitationError("the invitation has expired", code="invitation_expired")
            raise InvitationError(
                f"the invitation was already used {uses} of {max_uses} times",
                code="invitation_used",
            )

        return await self._run(self._tx, run)

    async def release_invitation(self, invitation_id: str) -> None:
        """See :class:`~switchboard.store.base.Store`."""
        await self._run(
            self._db.execute,
            "UPDATE invitations SET uses = uses - 1 WHERE invitation_id = ? AND uses > 0",
            (invitation_id,),
        )

    # API keys

    _KEY_COLS = "key_id, label, scopes, created_at, last_used_at, revoked, host_id"

    @staticmethod
    def _api_key(row: Sequence[Any]) -> ApiKey:
        return ApiKey(
            row[0], row[1], frozenset(row[2].split()), row[3], row[4], bool(row[5]), row[6]
        )

    async def create_api_key(
        self,
        digest: bytes,
        scopes: frozenset[str],
        label: str,
        now: float,
        host_id: str | None = None,
    ) -> ApiKey:
        """See :class:`~switchboard.store.base.Store`."""
        key = ApiKey(_new_id("k_"), label, scopes, now, None, False, host_id)
        await self._run(
            self._db.execute,
            "INSERT INTO api_keys (key_id, digest, label, scopes, created_at, host_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key.key_id, digest, label, " ".join(sorted(scopes)), now, host_id),
        )
        return key

    async def use_api_key(self, digest: bytes, now: float) -> ApiKey | None:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> ApiKey | None:
            try:
                row = self._db.execute(
                    "UPDATE api_keys SET last_used_at = ? WHERE digest = ? AND revoked = 0"
                    f" RETURNING {self._KEY_COLS}",
                    (now, digest),
                ).fetchone()
            except sqlite3.OperationalError:  # best effort, as for sessions
                row = self._db.execute(
                    f"SELECT {self._KEY_COLS} FROM api_keys WHERE digest = ? AND revoked = 0",
                    (digest,),
                ).fetchone()
            return self._api_key(row) if row else None

        return await self._run(run)

    async def list_api_keys(self) -> Sequence[ApiKey]:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> list[ApiKey]:
            rows = self._db.execute(
                f"SELECT {self._KEY_COLS} FROM api_keys ORDER BY created_at, key_id"
            ).fetchall()
            return [self._api_key(row) for row in rows]

        return await self._run(run)

    async def revoke_api_key(self, key_id: str) -> bool:
        """See :class:`~switchboard.store.base.Store`."""
        cur = await self._run(
            self._db.execute, "UPDATE api_keys SET revoked = 1 WHERE key_id = ?", (key_id,)
        )
        return cur.rowcount > 0

    # records

    _CDR_COLS = (
        "seq, record_id, meeting_id, host_id, started_at, ended_at, duration_seconds,"
        " peak_participants, distinct_participants, end_reason, schema_version, usage,"
        " nodes, participant_seconds, prev_hash, signature"
    )

    @staticmethod
    def _stored(row: Sequence[Any]) -> StoredRecord:
        usage = json.loads(row[11])
        record = CallRecord(
            record_id=row[1],
            meeting_id=row[2],
            host_id=row[3],
            started_at=row[4],
            ended_at=row[5],
            duration_seconds=row[6],
            peak_participants=row[7],
            distinct_participants=row[8],
            end_reason=row[9],
            schema_version=row[10],
            features={name: FeatureUsage(**use) for name, use in usage.items()},
            nodes=tuple(json.loads(row[12])),
            participant_seconds=row[13],
            prev_hash=row[14],
            signature=row[15],
        )
        return StoredRecord(row[0], record)

    _SAVE_CHECKPOINT = (
        "INSERT INTO open_records (meeting_id, node, record, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (meeting_id) DO UPDATE SET record = excluded.record,"
        " updated_at = excluded.updated_at"
    )

    @staticmethod
    def _checkpoint_row(record: CallRecord) -> tuple[str, str, str, float]:
        node = record.nodes[0] if record.nodes else ""
        return (record.meeting_id, node, json.dumps(record.to_dict()), record.ended_at)

    async def save_checkpoint(self, record: CallRecord) -> None:
        """See :class:`~switchboard.store.base.Store`."""
        await self._run(self._db.execute, self._SAVE_CHECKPOINT, self._checkpoint_row(record))

    async def save_checkpoints(self, records: Sequence[CallRecord]) -> None:
        """See :class:`~switchboard.store.base.Store`."""
        if not records:
            return

        def run(db: sqlite3.Connection) -> None:
            db.executemany(self._SAVE_CHECKPOINT, [self._checkpoint_row(r) for r in records])

        await self._run(self._tx, run)

    async def open_checkpoints(self, node: str) -> Sequence[CallRecord]:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> list[CallRecord]:
            rows = self._db.execute(
                "SELECT record FROM open_records WHERE node = ? ORDER BY updated_at", (node,)
            ).fetchall()
            return [CallRecord.from_dict(json.loads(row[0])) for row in rows]

        return await self._run(run)

    async def finish_meeting(
        self,
        record: CallRecord,
        *,
        sign: Callable[[bytes], str] | None = None,
        deliver: bool = False,
        now: float = 0.0,
    ) -> StoredRecord:
        """See :class:`~switchboard.store.base.Store`."""

        def run(db: sqlite3.Connection) -> StoredRecord:
            row = db.execute(
                f"SELECT {self._CDR_COLS} FROM cdrs WHERE meeting_id = ?", (record.meeting_id,)
            ).fetchone()
            if row is not None:  # already final: exactly one record per meeting
                db.execute("DELETE FROM open_records WHERE meeting_id = ?", (record.meeting_id,))
                return self._stored(row)
            last = db.execute("SELECT chain_hash FROM cdrs ORDER BY seq DESC LIMIT 1").fetchone()
            final = dataclasses.replace(
                record, prev_hash=last[0] if last and last[0] else GENESIS_HASH, signature=""
            )
            if sign is not None:
                final = dataclasses.replace(final, signature=sign(canonical(final.to_dict())))
            link = chain_hash(final.to_dict())
            usage = json.dumps(
                {name: use.to_dict() for name, use in final.features.items()}, sort_keys=True
            )
            db.execute(
                "INSERT INTO cdrs (record_id, meeting_id, host_id, started_at, ended_at,"
                " duration_seconds, peak_participants, distinct_participants, end_reason,"
                " schema_version, usage, nodes, participant_seconds, prev_hash, signature,"
                " chain_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    final.record_id,
                    final.meeting_id,
                    final.host_id,
                    final.started_at,
                    final.ended_at,
                    final.duration_seconds,
                    final.peak_participants,
                    final.distinct_participants,
                    final.end_reason,
                    final.schema_version,
                    usage,
                    json.dumps(list(final.nodes)),
                    final.participant_seconds,
                    final.prev_hash,
                    final.signature,
                    link,
                ),
            )
            db.execute("DELETE FROM open_records WHERE meeting_id = ?", (record.meeting_id,))
            db.execute(
                "UPDATE meetings SET state = 'ended', ended_at = ?"
                " WHERE meeting_id = ? AND state != 'ended'",
                (final.ended_at, final.meeting_id),
            )
            if deliver:
                db.execute(
                    "INSERT INTO webhook_deliveries (record_id, next_attempt) VALUES (?, ?)",
                    (final.record_id, now),
                )
            row = db.execute(
                f"SELECT {self._CDR_COLS} FROM cdrs WHERE meeting_id = ?", (record.meeting_id,)
            ).fetchone()
            return self._stored(row)

        return await self._run(self._tx, run)

    async def get_record(self, meeting_id: str) -> StoredRecord | None:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> StoredRecord | None:
            row = self._db.execute(
                f"SELECT {self._CDR_COLS} FROM cdrs WHERE meeting_id = ?", (meeting_id,)
            ).fetchone()
            return self._stored(row) if row else None

        return await self._run(run)

    async def list_records(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        host_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Sequence[StoredRecord]:
        """See :class:`~switchboard.store.base.Store`."""
        where, args = ["seq > ?"], [after]
        if host_id is not None:
            where.append("host_id = ?")
            args.append(host_id)  # type: ignore[arg-type]
        if since is not None:
            where.append("CAST(ROUND(ended_at * 1000) AS INTEGER) >= ?")
            args.append(round(since * 1000))
        if until is not None:
            where.append("CAST(ROUND(ended_at * 1000) AS INTEGER) < ?")
            args.append(round(until * 1000))
        sql = f"SELECT {self._CDR_COLS} FROM cdrs WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"

        def run() -> list[StoredRecord]:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
            return [self._stored(row) for row in rows]

        return await self._run(run)

    # webhook deliveries

    async def due_deliveries(
        self, now: float, limit: int = 50
    ) -> Sequence[tuple[StoredRecord, int]]:
        """See :class:`~switchboard.store.base.Store`."""
        cols = ", ".join(f"c.{c.strip()}" for c in self._CDR_COLS.split(","))

        def run() -> list[tuple[StoredRecord, int]]:
            rows = self._db.execute(
                f"SELECT {cols}, d.attempts FROM webhook_deliveries d"
                " JOIN cdrs c USING (record_id)"
                " WHERE d.delivered_at IS NULL AND d.next_attempt <= ?"
                " ORDER BY c.seq LIMIT ?",
                (now, limit),
            ).fetchall()
            return [(self._stored(row[:-1]), row[-1]) for row in rows]

        return await self._run(run)

    async def delivery_done(
        self, record_id: str, *, ok: bool, status: str, now: float, retry_at: float
    ) -> None:
        """See :class:`~switchboard.store.base.Store`."""
        if ok:
            sql = (
                "UPDATE webhook_deliveries SET attempts = attempts + 1, delivered_at = ?,"
                " last_status = ? WHERE record_id = ?"
            )
            args: tuple[Any, ...] = (now, status, record_id)
        else:
            sql = (
                "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt = ?,"
                " last_status = ? WHERE record_id = ?"
            )
            args = (retry_at, status, record_id)
        await self._run(self._db.execute, sql, args)

    async def delivery_state(self, record_id: str) -> tuple[int, float | None] | None:
        """See :class:`~switchboard.store.base.Store`."""

        def run() -> tuple[int, float | None] | None:
            row = self._db.execute(
                "SELECT attempts, delivered_at FROM webhook_deliveries WHERE record_id = ?",
                (record_id,),
            ).fetchone()
            return (row[0], row[1]) if row else None

        return await self._run(run)
