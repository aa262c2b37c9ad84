"""The Store contract (switchboard.store.base.Store), run against every backend.

Each backend is one param of the ``store_url`` fixture. Only ``sqlite`` exists
today; a PostgreSQL backend adds a param that yields a fresh database URL (and a
branch in :func:`table_columns`) and must pass every test here unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from switchboard.core import tokens
from switchboard.core.records import COLUMNS, FEATURES, GENESIS_HASH, CallRecord, FeatureUsage
from switchboard.core.rules import Role
from switchboard.core.tokens import TokenKind
from switchboard.errors import (
    Conflict,
    InvitationError,
    MeetingEnded,
    StoreError,
)
from switchboard.store import (
    ApiKey,
    HostAccount,
    HostSession,
    Invitation,
    MeetingRow,
    Redemption,
    Store,
    StoredRecord,
    open_store,
)

NOW = 1_700_000_000.0
HOUR = 3600.0


# --- backends ------------------------------------------------------------------


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/t.db"


BACKENDS: dict[str, Callable[[Path], str]] = {
    "sqlite": _sqlite_url,
    # "postgresql": a fresh database per test, e.g. from $SWITCHBOARD_TEST_POSTGRES_URL.
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path) -> str:
    return BACKENDS[backend](tmp_path)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def second_store(store_url: str, store: Store) -> AsyncIterator[Store]:
    """Another connection to the same database, as the CLI has while the server runs."""
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


def table_columns(store_url: str, table: str) -> list[str]:
    """Column names of ``table``, read without switchboard (backend-specific)."""
    if store_url.startswith("sqlite:///"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        try:
            return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        finally:
            conn.close()
    raise NotImplementedError(store_url)  # pragma: no cover


def raw_cdr_usage(store_url: str) -> list[str]:
    if store_url.startswith("sqlite:///"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        try:
            return [row[0] for row in conn.execute("SELECT usage FROM cdrs ORDER BY seq")]
        finally:
            conn.close()
    raise NotImplementedError(store_url)  # pragma: no cover


# --- helpers -------------------------------------------------------------------


async def make_host(store: Store, email: str = "ada@example.com") -> HostAccount:
    return await store.add_host(email, "$argon2id$v=19$m=65536,t=3,p=4$fake", NOW)


async def make_meeting(store: Store, host: HostAccount | None = None) -> MeetingRow:
    if host is None:
        host = await make_host(store)
    return await store.create_meeting(host.host_id, NOW)


async def make_invitation(
    store: Store,
    meeting: MeetingRow,
    *,
    role: Role = Role.ATTENDEE,
    max_uses: int = 1,
    expires_at: float = NOW + HOUR,
) -> tuple[bytes, Invitation]:
    _, digest = tokens.mint(TokenKind.INVITATION)
    inv = await store.create_invitation(
        meeting.meeting_id, role, digest, now=NOW, expires_at=expires_at, max_uses=max_uses
    )
    return digest, inv


def make_record(meeting: MeetingRow, n: int = 0, **changes: object) -> CallRecord:
    record = CallRecord(
        record_id=f"r_{meeting.meeting_id}_{n}",
        meeting_id=meeting.meeting_id,
        host_id=meeting.host_id,
        started_at=NOW + 10.125,
        ended_at=NOW + 70.5 + n,
        duration_seconds=60.375 + n,
        peak_participants=3 + n,
        distinct_participants=4 + n,
        end_reason="host_ended",
        features={
            "chat": FeatureUsage(
                frames=10 + n, bytes=999, deliveries=30, first_use=0.5, last_use=59.25
            )
        },
    )
    return dataclasses.replace(record, **changes)


async def redeem_error(store: Store, digest: bytes, now: float = NOW) -> InvitationError:
    with pytest.raises(InvitationError) as info:
        await store.redeem_invitation(digest, now)
    return info.value


# --- lifecycle -----------------------------------------------------------------


async def test_close_is_idempotent_and_closed_store_refuses(store_url: str) -> None:
    s = await open_store(store_url)
    await s.close()
    await s.close()
    with pytest.raises(StoreError):
        await s.host_by_email("a@example.com")


async def test_data_survives_reopen(store_url: str) -> None:
    s = await open_store(store_url)
    try:
        host = await make_host(s)
        meeting = await make_meeting(s, host)
        stored = await s.finish_meeting(make_record(meeting))
    finally:
        await s.close()
    s = await open_store(store_url)
    try:
        assert await s.host_by_email("ada@example.com") == host
        assert await s.get_record(meeting.meeting_id) == stored
        again = await s.get_meeting(meeting.meeting_id)
        assert again is not None
        assert again.state == "ended"
    finally:
        await s.close()


# --- hosts ---------------------------------------------------------------------


async def test_add_host_and_lookup(store: Store) -> None:
    host = await make_host(store, "Ada@Example.com")
    assert isinstance(host, HostAccount)
    assert host.email == "Ada@Example.com"
    assert host.created_at == NOW
    assert host.host_id
    assert await store.host_by_email("Ada@Example.com") == host
    assert await store.host_by_email("ada@example.com") == host
    assert await store.host_by_email("ADA@EXAMPLE.COM") == host
    assert await store.host_by_email("bob@example.com") is None


async def test_host_ids_are_unique(store: Store) -> None:
    hosts = [await make_host(store, f"h{i}@example.com") for i in range(10)]
    assert len({h.host_id for h in hosts}) == 10


@pytest.mark.parametrize("other", ["ada@example.com", "ADA@example.com", "Ada@EXAMPLE.COM"])
async def test_duplicate_email_is_conflict(store: Store, other: str) -> None:
    first = await make_host(store, "ada@example.com")
    with pytest.raises(Conflict) as info:
        await make_host(store, other)
    assert info.value.http_status == 409
    assert info.value.code == "email_taken"
    # The first account is untouched.
    assert await store.host_by_email("ada@example.com") == first


async def test_email_case_insensitive_beyond_ascii(store: Store) -> None:
    first = await make_host(store, "\u00c9mile@example.com")
    assert await store.host_by_email("\u00e9mile@example.com") == first
    with pytest.raises(Conflict):
        await make_host(store, "\u00e9mile@example.com")


async def test_set_password_hash(store: Store) -> None:
    host = await make_host(store)
    await store.set_password_hash(host.host_id, "$argon2id$new")
    found = await store.host_by_email(host.email)
    assert found is not None
    assert found.password_hash == "$argon2id$new"


# --- sessions ------------------------------------------------------------------


async def test_create_and_use_session_extends_idle(store: Store) -> None:
    host = await make_host(store)
    _, digest = tokens.mint(TokenKind.SESSION)
    session = await store.create_session(host.host_id, digest, NOW)
    assert isinstance(session, HostSession)
    assert (session.host_id, session.created_at, session.last_used_at) == (host.host_id, NOW, NOW)
    idle, life = 30.0, 1000.0
    # Each use within the idle window moves the window on: 29 s steps stay valid.
    for step in range(1, 6):
        used = await store.use_session(digest, NOW + 29 * step, idle, life)
        assert used is not None
        assert used.session_id == session.session_id
        assert used.host_id == host.host_id
        assert used.created_at == NOW
        assert used.last_used_at == NOW + 29 * step
    assert NOW + idle < NOW + 29 * 5  # well past the first idle deadline


async def test_session_refused_after_idle_timeout(store: Store) -> None:
    host = await make_host(store)
    _, digest = tokens.mint(TokenKind.SESSION)
    await store.create_session(host.host_id, digest, NOW)
    assert await store.use_session(digest, NOW + 10, 30.0, 1000.0) is not None
    # Exactly at the idle deadline (last use + idle) the session is over.
    assert await store.use_session(digest, NOW + 40, 30.0, 1000.0) is None
    assert await store.use_session(digest, NOW + 41, 30.0, 1000.0) is None


async def test_refused_use_does_not_extend(store: Store) -> None:
    host = await make_host(store)
    _, digest = tokens.mint(TokenKind.SESSION)
    await store.create_session(host.host_id, digest, NOW)
    assert await store.use_session(digest, NOW + 31, 30.0, 1000.0) is None
    # A failed use must not have moved last_used_at, so an earlier clock stays refused too.
    assert await store.use_session(digest, NOW + 30, 30.0, 1000.0) is None


async def test_session_refused_after_max_lifetime(store: Store) -> None:
    host = await make_host(store)
    _, digest = tokens.mint(TokenKind.SESSION)
    await store.create_session(host.host_id, digest, NOW)
    idle, life = 30.0, 100.0
    for t in (20.0, 40.0, 60.0, 80.0, 99.0):
        assert await store.use_session(digest, NOW + t, idle, life) is not None
    # Used 1 s ago, but the absolute lifetime is over.
    assert await store.use_session(digest, NOW + 100.0, idle, life) is None
    assert await store.use_session(digest, NOW + 101.0, idle, life) is None


async def test_unknown_session(store: Store) -> None:
    _, digest = tokens.mint(TokenKind.SESSION)
    assert await store.use_session(digest, NOW, 30.0, 100.0) is None
    assert await store.delete_session(digest) is False


async def test_delete_session(store: Store) -> None:
    host = await make_host(store)
    _, digest = tokens.mint(TokenKind.SESSION)
    _, other = tokens.mint(TokenKind.SESSION)
    await store.create_session(host.host_id, digest, NOW)
    await store.create_session(host.host_id, other, NOW)
    assert await store.delete_session(digest) is True
    assert await store.use_session(digest, NOW + 1, 30.0, 100.0) is None
    assert await store.delete_session(digest) is False
    # Other sessions of the same host are unaffected.
    assert await store.use_session(other, NOW + 1, 30.0, 100.0) is not None


# --- meetings ------------------------------------------------------------------


async def test_create_and_get_meeting(store: Store) -> None:
    host = await make_host(store)
    meeting = await store.create_meeting(host.host_id, NOW)
    assert isinstance(meeting, MeetingRow)
    assert meeting.host_id == host.host_id
    assert meeting.created_at == NOW
    assert meeting.state == "scheduled"
    assert (meeting.started_at, meeting.ended_at) == (None, None)
    assert await store.get_meeting(meeting.meeting_id) == meeting
    assert await store.get_meeting("m_nope") is None


async def test_list_meetings_only_own_newest_first(store: Store) -> None:
    ada = await make_host(store, "ada@example.com")
    bob = await make_host(store, "bob@example.com")
    ada_meetings = [await store.create_meeting(ada.host_id, NOW + i) for i in range(4)]
    bob_meetings = [await store.create_meeting(bob.host_id, NOW + 10 + i) for i in range(2)]
    assert list(await store.list_meetings(ada.host_id)) == ada_meetings[::-1]
    assert list(await store.list_meetings(bob.host_id)) == bob_meetings[::-1]
    assert list(await store.list_meetings("h_nobody")) == []


async def test_meeting_started_then_ended(store: Store) -> None:
    meeting = await make_meeting(store)
    await store.meeting_started(meeting.meeting_id, NOW + 5)
    live = await store.get_meeting(meeting.meeting_id)
    assert live is not None
    assert (live.state, live.started_at, live.ended_at) == ("live", NOW + 5, None)
    # Starting again (a second participant) keeps the first start.
    await store.meeting_started(meeting.meeting_id, NOW + 9)
    live = await store.get_meeting(meeting.meeting_id)
    assert live is not None
    assert live.started_at == NOW + 5
    await store.meeting_ended(meeting.meeting_id, NOW + 20)
    ended = await store.get_meeting(meeting.meeting_id)
    assert ended is not None
    assert (ended.state, ended.started_at, ended.ended_at) == ("ended", NOW + 5, NOW + 20)
    # Ending is final: neither a second end nor a start changes it.
    await store.meeting_ended(meeting.meeting_id, NOW + 30)
    await store.meeting_started(meeting.meeting_id, NOW + 40)
    assert await store.get_meeting(meeting.meeting_id) == ended


async def test_meeting_ended_without_start(store: Store) -> None:
    meeting = await make_meeting(store)
    await store.meeting_ended(meeting.meeting_id, NOW + 1)
    ended = await store.get_meeting(meeting.meeting_id)
    assert ended is not None
    assert (ended.state, ended.started_at, ended.ended_at) == ("ended", None, NOW + 1)


# --- invitations ---------------------------------------------------------------


async def test_create_and_list_invitations(store: Store) -> None:
    meeting = await make_meeting(store)
    other = await make_meeting(store, await make_host(store, "bob@example.com"))
    _, a = await make_invitation(store, meeting, role=Role.PRESENTER, max_uses=5)
    _, b = await make_invitation(store, meeting, role=Role.ATTENDEE, expires_at=NOW + 60)
    await make_invitation(store, other)
    assert isinstance(a, Invitation)
    assert (a.meeting_id, a.role, a.created_at, a.expires_at) == (
        meeting.meeting_id,
        Role.PRESENTER,
        NOW,
        NOW + HOUR,
    )
    assert (a.max_uses, a.uses, a.revoked) == (5, 0, False)
    listed = list(await store.list_invitations(meeting.meeting_id))
    assert sorted(listed, key=lambda i: i.invitation_id) == sorted(
        [a, b], key=lambda i: i.invitation_id
    )
    assert all(type(i.role) is Role for i in listed)
    assert list(await store.list_invitations("m_nope")) == []


def test_invitation_rows_carry_no_token() -> None:
    names = {f.name for f in dataclasses.fields(Invitation)}
    assert not names & {"token", "digest", "secret"}


async def test_revoke_invitation(store: Store) -> None:
    host = await make_host(store)
    meeting = await make_meeting(store, host)
    other = await make_meeting(store, host)
    _, inv = await make_invitation(store, meeting)
    # The invitation id only works with its own meeting.
    assert await store.revoke_invitation(other.meeting_id, inv.invitation_id) is False
    (still,) = await store.list_invitations(meeting.meeting_id)
    assert still.revoked is False
    assert await store.revoke_invitation(meeting.meeting_id, inv.invitation_id) is True
    (revoked,) = await store.list_invitations(meeting.meeting_id)
    assert revoked.revoked is True
    assert await store.revoke_invitation(meeting.meeting_id, "i_nope") is False


@pytest.mark.parametrize("role", list(Role))
async def test_redeem_invitation(store: Store, role: Role) -> None:
    host = await make_host(store)
    meeting = await make_meeting(store, host)
    digest, inv = await make_invitation(store, meeting, role=role, max_uses=2)
    first = await store.redeem_invitation(digest, NOW + 1)
    assert isinstance(first, Redemption)
    assert (first.invitation_id, first.meeting_id, first.host_id, first.role) == (
        inv.invitation_id,
        meeting.meeting_id,
        host.host_id,
        role,
    )
    assert type(first.role) is Role
    second = await store.redeem_invitation(digest, NOW + 2)
    assert second.seat != first.seat
    (listed,) = await store.list_invitations(meeting.meeting_id)
    assert listed.uses == 2


async def test_redeem_unknown(store: Store) -> None:
    await make_invitation(store, await make_meeting(store))
    _, digest = tokens.mint(TokenKind.INVITATION)
    error = await redeem_error(store, digest)
    assert error.code == "invitation_unknown"
    assert error.close_code == 4401


async def test_redeem_revoked(store: Store) -> None:
    meeting = await make_meeting(store)
    digest, inv = await make_invitation(store, meeting, max_uses=3)
    await store.revoke_invitation(meeting.meeting_id, inv.invitation_id)
    assert (await redeem_error(store, digest)).code == "invitation_revoked"
    (listed,) = await store.list_invitations(meeting.meeting_id)
    assert listed.uses == 0


@pytest.mark.parametrize("late", [0.0, 0.001, 86_400.0])
async def test_redeem_expired(store: Store, late: float) -> None:
    meeting = await make_meeting(store)
    digest, _ = await make_invitation(store, meeting, expires_at=NOW + 60)
    assert (await redeem_error(store, digest, NOW + 60 + late)).code == "invitation_expired"
    (listed,) = await store.list_invitations(meeting.meeting_id)
    assert listed.uses == 0


async def test_redeem_just_before_expiry(store: Store) -> None:
    meeting = await make_meeting(store)
    digest, _ = await make_invitation(store, meeting, expires_at=NOW + 60)
    await store.redeem_invitation(digest, NOW + 59.999)


async def test_redeem_used_up(store: Store) -> None:
    meeting = await make_meeting(store)
    digest, _ = await make_invitation(store, meeting, max_uses=2)
    await store.redeem_invitation(digest, NOW)
    await store.redeem_invitation(digest, NOW)
    assert (await redeem_error(store, digest)).code == "invitation_used"
    (listed,) = await store.list_invitations(meeting.meeting_id)
    assert listed.uses == 2


@pytest.mark.parametrize("how", ["meeting_ended", "finish_meeting"])
async def test_redeem_for_ended_meeting(store: Store, how: str) -> None:
    meeting = await make_meeting(store)
    digest, _ = await make_invitation(store, meeting, max_uses=5)
    await store.redeem_invitation(digest, NOW)
    if how == "meeting_ended":
        await store.meeting_ended(meeting.meeting_id, NOW + 1)
    else:
        await store.finish_meeting(make_record(meeting))
    with pytest.raises(MeetingEnded) as info:
        await store.redeem_invitation(digest, NOW + 2)
    assert info.value.close_code == 4410
    (listed,) = await store.list_invitations(meeting.meeting_id)
    assert listed.uses == 1


async def test_redeem_is_atomic_under_concurrency(store: Store) -> None:
    meeting = await make_meeting(store)
    digest, _ = await make_invitation(store, meeting, max_uses=3)
    results = await asyncio.gather(
        *(store.redeem_invitation(digest, NOW) for _ in range(20)), return_exceptions=True
    )
    wins = [r for r in results if isinstance(r, Redemption)]
    losses = [r for r in results if not isinstance(r, Redemption)]
    assert len(wins) == 3
    assert len({w.seat for w in wins}) == 3
    assert len(losses) == 17
    for loss in losses:
        assert isinstance(loss, InvitationError), repr(loss)
        assert loss.code == "invitation_used"
    (listed,) = await store.list_invitations(meeting.meeting_id)
    assert listed.uses == 3


async def test_redeem_is_atomic_across_connections(store: Store, second_store: Store) -> None:
    """Two connections on the same database (server and CLI) race for single-use invitations."""
    meeting = await make_meeting(store)
    digests = [(await make_invitation(store, meeting, max_uses=1))[0] for _ in range(25)]
    calls = []
    for digest in digests:
        calls += [
            store.redeem_invitation(digest, NOW),
            second_store.redeem_invitation(digest, NOW),
            second_store.redeem_invitation(digest, NOW),
            store.redeem_invitation(digest, NOW),
        ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for i, digest in enumerate(digests):
        mine = results[4 * i : 4 * i + 4]
        wins = [r for r in mine if isinstance(r, Redemption)]
        assert len(wins) == 1, (digest.hex(), mine)
        for r in mine:
            if not isinstance(r, Redemption):
                assert isinstance(r, InvitationError), repr(r)
                assert r.code == "invitation_used"
    for inv in await second_store.list_invitations(meeting.meeting_id):
        assert inv.uses == 1


async def test_redeem_is_atomic_across_threads_with_own_loops(store_url: str, store: Store) -> None:
    """Like two processes: each thread runs its own event loop and its own connection."""
    meeting = await make_meeting(store)
    digests = [(await make_invitation(store, meeting, max_uses=1))[0] for _ in range(30)]
    barrier = threading.Barrier(3)

    def worker() -> list[bytes | str]:
        async def run() -> list[bytes | str]:
            own = await open_store(store_url)
            try:
                barrier.wait(timeout=30)
                out: list[bytes | str] = []
                for digest in digests:
                    try:
                        await own.redeem_invitation(digest, NOW)
                    except InvitationError as exc:
                        out.append(exc.code)
                    else:
                        out.append(digest)
                return out
            finally:
                await own.close()

        return asyncio.run(run())

    results = await asyncio.gather(*(asyncio.to_thread(worker) for _ in range(3)))
    for i, digest in enumerate(digests):
        outcomes = [r[i] for r in results]
        assert outcomes.count(digest) == 1, outcomes
        assert outcomes.count("invitation_used") == 2, outcomes


_CHILD = """
import asyncio, json, sys
from switchboard.errors import InvitationError
from switchboard.store import open_store

async def main():
    url, now = sys.argv[1], float(sys.argv[2])
    digests = [bytes.fromhex(h) for h in sys.stdin.readline().split()]
    store = await open_store(url)
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        won = []
        for digest in digests:
            try:
                await store.redeem_invitation(digest, now)
            except InvitationError as exc:
                assert exc.code == "invitation_used", exc.code
            else:
                won.append(digest.hex())
    finally:
        await store.close()
    print(json.dumps(won), flush=True)

asyncio.run(main())
"""


async def test_redeem_is_atomic_across_processes(store_url: str, store: Store) -> None:
    meeting = await make_meeting(store)
    digests = [(await make_invitation(store, meeting, max_uses=1))[0] for _ in range(40)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        store_url,
        str(NOW),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write((" ".join(d.hex() for d in digests) + "\n").encode())
    await proc.stdin.drain()
    ready = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert ready == b"ready\n", (ready, await proc.communicate())
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()

    async def mine() -> set[bytes]:
        won = set()
        for digest in digests:
            try:
                await store.redeem_invitation(digest, NOW)
            except InvitationError as exc:
                assert exc.code == "invitation_used"
            else:
                won.add(digest)
        return won

    my_wins, (out, err) = await asyncio.gather(mine(), proc.communicate())
    assert proc.returncode == 0, err.decode()
    child_wins = {bytes.fromhex(h) for h in json.loads(out)}
    assert not my_wins & child_wins
    assert my_wins | child_wins == set(digests)


# --- API keys ------------------------------------------------------------------


async def test_api_keys(store: Store) -> None:
    _, digest = tokens.mint(TokenKind.API_KEY)
    scopes = frozenset({"records:read", "meetings:write"})
    key = await store.create_api_key(digest, scopes, "billing", NOW)
    assert isinstance(key, ApiKey)
    assert (key.label, key.scopes, key.created_at, key.last_used_at, key.revoked) == (
        "billing",
        scopes,
        NOW,
        None,
        False,
    )
    used = await store.use_api_key(digest, NOW + 5)
    assert used is not None
    assert (used.key_id, used.label, used.scopes, used.created_at) == (
        key.key_id,
        "billing",
        scopes,
        NOW,
    )
    assert used.last_used_at == NOW + 5
    used = await store.use_api_key(digest, NOW + 50)
    assert used is not None
    assert used.last_used_at == NOW + 50


async def test_api_key_with_no_scopes(store: Store) -> None:
    _, digest = tokens.mint(TokenKind.API_KEY)
    await store.create_api_key(digest, frozenset(), "empty", NOW)
    used = await store.use_api_key(digest, NOW)
    assert used is not None
    assert used.scopes == frozenset()


async def test_unknown_api_key(store: Store) -> None:
    _, digest = tokens.mint(TokenKind.API_KEY)
    _, other = tokens.mint(TokenKind.API_KEY)
    await store.create_api_key(other, frozenset({"records:read"}), "x", NOW)
    assert await store.use_api_key(digest, NOW) is None


# --- records -------------------------------------------------------------------


async def test_finish_meeting_writes_the_record_and_ends_the_meeting(store: Store) -> None:
    meeting = await make_meeting(store)
    await store.meeting_started(meeting.meeting_id, NOW + 10)
    record = dataclasses.replace(make_record(meeting), prev_hash=GENESIS_HASH)
    stored = await store.finish_meeting(record)
    assert isinstance(stored, StoredRecord)
    assert stored.seq > 0
    assert stored.record == record
    assert await store.get_record(meeting.meeting_id) == stored
    ended = await store.get_meeting(meeting.meeting_id)
    assert ended is not None
    assert (ended.state, ended.ended_at) == ("ended", record.ended_at)
    assert ended.started_at == NOW + 10


async def test_finish_meeting_is_idempotent(store: Store) -> None:
    meeting = await make_meeting(store)
    first = await store.finish_meeting(make_record(meeting, 0))
    # A retry (say after a crash) with a different record id and numbers.
    second = await store.finish_meeting(make_record(meeting, 1))
    assert second == first
    assert second.record.record_id == make_record(meeting, 0).record_id
    # And the exact same record again.
    assert await store.finish_meeting(make_record(meeting, 0)) == first
    records = await store.list_records()
    assert [r.record.meeting_id for r in records] == [meeting.meeting_id]
    assert await store.get_record(meeting.meeting_id) == first
    ended = await store.get_meeting(meeting.meeting_id)
    assert ended is not None
    assert ended.ended_at == make_record(meeting, 0).ended_at


async def test_finish_meeting_concurrently_writes_one_record(
    store: Store, second_store: Store
) -> None:
    meeting = await make_meeting(store)
    results = await asyncio.gather(
        *(
            (store if i % 2 else second_store).finish_meeting(make_record(meeting, i))
            for i in range(6)
        )
    )
    assert len({r.seq for r in results}) == 1
    assert all(r == results[0] for r in results)
    assert len(await store.list_records()) == 1


async def test_finish_meeting_without_features(store: Store) -> None:
    meeting = await make_meeting(store)
    record = make_record(meeting, features={})
    stored = await store.finish_meeting(record)
    assert stored.record == dataclasses.replace(record, prev_hash=GENESIS_HASH)


async def test_get_record_unknown(store: Store) -> None:
    meeting = await make_meeting(store)
    assert await store.get_record(meeting.meeting_id) is None
    assert await store.get_record("m_nope") is None


async def test_list_records_in_commit_order_with_cursor(store: Store) -> None:
    ada = await make_host(store, "ada@example.com")
    bob = await make_host(store, "bob@example.com")
    meetings = [await make_meeting(store, ada if i % 3 else bob) for i in range(9)]
    order = [4, 0, 7, 2, 8, 1, 5, 3, 6]  # commit order differs from creation order
    committed = [await store.finish_meeting(make_record(meetings[i], i)) for i in order]
    seqs = [s.seq for s in committed]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)

    everything = list(await store.list_records())
    assert everything == committed

    # Page through with every page size; each record appears once, in order.
    for limit in (1, 2, 4, 9, 100):
        seen: list[StoredRecord] = []
        cursor = 0
        while True:
            page = list(await store.list_records(after=cursor, limit=limit))
            assert len(page) <= limit
            if not page:
                break
            seen += page
            cursor = page[-1].seq
        assert seen == committed

    # Starting from a cursor in the middle.
    middle = committed[3].seq
    assert list(await store.list_records(after=middle)) == committed[4:]
    assert list(await store.list_records(after=committed[-1].seq)) == []

    # Host filter, also paged.
    for host in (ada, bob):
        own = [s for s in committed if s.record.host_id == host.host_id]
        assert own
        assert list(await store.list_records(host_id=host.host_id)) == own
        seen = []
        cursor = 0
        while page := list(await store.list_records(after=cursor, limit=2, host_id=host.host_id)):
            seen += page
            cursor = page[-1].seq
        assert seen == own
    assert list(await store.list_records(host_id="h_nobody")) == []


# --- durability and content ----------------------------------------------------


async def test_sqlite_file_is_in_wal_mode(backend: str, store_url: str) -> None:
    if backend != "sqlite":
        pytest.skip("sqlite only")
    s = await open_store(store_url)
    meeting = await make_meeting(s)
    await s.finish_meeting(make_record(meeting))
    await s.close()
    conn = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    try:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        assert mode.lower() == "wal"
        (count,) = conn.execute("SELECT count(*) FROM cdrs").fetchone()
        assert count == 1
    finally:
        conn.close()


async def test_sqlite_connection_is_synchronous_full(backend: str, store: Store) -> None:
    if backend != "sqlite":
        pytest.skip("sqlite only")

    # White-box: synchronous is per connection, so ask the store's own connection.
    def read() -> tuple[int, int]:
        db = store._db  # type: ignore[attr-defined]
        return (
            db.execute("PRAGMA synchronous").fetchone()[0],
            db.execute("PRAGMA foreign_keys").fetchone()[0],
        )

    synchronous, foreign_keys = await store._run(read)  # type: ignore[attr-defined]
    assert synchronous == 2  # FULL
    assert foreign_keys == 1


async def test_cdr_columns_are_on_the_allow_list(store_url: str, store: Store) -> None:
    columns = table_columns(store_url, "cdrs")
    assert columns, "no cdrs table"
    # chain_hash: the hash the next record links to (derived from the record itself).
    allowed = set(COLUMNS) | {"seq", "usage", "chain_hash"}
    assert set(columns) <= allowed, set(columns) - allowed


async def test_cdr_usage_holds_only_counters(store_url: str, store: Store) -> None:
    meeting = await make_meeting(store)
    await store.finish_meeting(make_record(meeting))
    (usage_text,) = raw_cdr_usage(store_url)
    usage = json.loads(usage_text)
    assert set(usage) <= set(FEATURES)
    for counters in usage.values():
        assert set(counters) == {f.name for f in dataclasses.fields(FeatureUsage)}
        assert all(isinstance(v, int | float) for v in counters.values())


async def test_only_metadata_tables_exist(backend: str, store_url: str, store: Store) -> None:
    if backend != "sqlite":
        pytest.skip("sqlite only")
    conn = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    try:
        tables = {
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not row[0].startswith("sqlite_")
        }
    finally:
        conn.close()
    # A new table is a design change: review it for content before adding it here.
    # open_records holds checkpoints (records, no content); webhook_deliveries, delivery state.
    assert tables == {
        "hosts",
        "sessions",
        "meetings",
        "invitations",
        "api_keys",
        "cdrs",
        "open_records",
        "webhook_deliveries",
        "email_verifications",
    }


def test_store_interface_has_no_content_method() -> None:
    methods = {name for name in dir(Store) if not name.startswith("_")}
    for word in ("payload", "content", "message", "frame", "chat"):
        assert not [m for m in methods if word in m], word


# --- checkpoints ---------------------------------------------------------------


async def test_checkpoints_saved_in_one_batch_replace_earlier_ones_per_meeting(
    store: Store,
) -> None:
    host = await make_host(store)
    meetings = [await make_meeting(store, host) for _ in range(3)]
    await store.save_checkpoint(make_record(meetings[0], 0, nodes=("n1",)))
    await store.save_checkpoints(
        [make_record(m, 1, nodes=("n1",)) for m in meetings[:2]]
        + [make_record(meetings[2], 2, nodes=("n2",))]
    )
    await store.save_checkpoints([])  # an empty round stores nothing and fails nothing
    mine = await store.open_checkpoints("n1")
    assert sorted((r.meeting_id, r.peak_participants) for r in mine) == sorted(
        (m.meeting_id, 4) for m in meetings[:2]
    )  # the batch's versions (n=1), the earlier one of meetings[0] replaced
    assert [(r.meeting_id, r.peak_participants) for r in await store.open_checkpoints("n2")] == [
        (meetings[2].meeting_id, 5)
    ]
