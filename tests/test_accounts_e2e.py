"""Host accounts and the data lifecycle, end to end: real nodes on loopback TLS, real processes.

A host edits its account, changes its password, sees and ends its sessions and deletes the
account; an operator restores or purges it, backs the database up and restores it with the
``switchboard`` command; sign-in attempts are throttled; people sign up through the operator's
verification hook; support staff only receive. Every check observes the system from outside:
HTTP answers, what participants receive on their own connections, the SQLite file itself, the
log lines a ``serve`` process writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from switchboard.client import (
    ApiClient,
    ApiError,
    Chat,
    Disconnected,
    DocumentReceived,
    Ended,
    ErrorFrame,
    Event,
    Joined,
    JoinRefused,
    Media,
    MediaFrame,
    Notice,
    Participant,
    Poll,
    tls_context,
)
from switchboard.clock import Clock
from switchboard.core import tokens
from switchboard.core.codes import CloseCode
from switchboard.node import Node

from .conftest import (
    TIMEOUT,
    Host,
    ServeProcess,
    host_add,
    make_settings,
    next_event,
    switchboard_cmd,
)

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a completely different passphrase"
DAY = 86400.0

# helpers: accounts without paying for Argon2 where the hash is not the subject

_HASH: str | None = None


async def quick_host(node: Node, email: str | None = None) -> tuple[str, str]:
    """A host whose password is PASSWORD (one real Argon2id hash, computed once); (email, id)."""
    global _HASH
    if _HASH is None:
        _HASH = await asyncio.to_thread(PasswordHasher().hash, PASSWORD)
    email = email or f"host-{secrets.token_hex(4)}@example.com"
    account = await node.store.add_host(email, _HASH, node.clock.wall())
    return email, account.host_id


async def mint_session(node: Node, host_id: str, client: str = "") -> tuple[str, str]:
    """A session as sign-in makes it, minted in the store (no Argon2); (token, session_id)."""
    token, digest = tokens.mint(tokens.TokenKind.SESSION)
    session = await node.store.create_session(host_id, digest, node.clock.wall(), client)
    return token, session.session_id


async def api_key(node: Node, *scopes: str, host_id: str | None = None) -> str:
    token, digest = tokens.mint(tokens.TokenKind.API_KEY)
    await node.store.create_api_key(
        digest, frozenset(scopes), "test", node.clock.wall(), host_id=host_id
    )
    return token


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def https(
    api_url: str, ca_file: Path | None, *, source: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTPS client of the API, optionally from another loopback address (127.0.0.x)."""
    context = tls_context(ca_file)
    transport = httpx.AsyncHTTPTransport(verify=context, local_address=source)
    async with httpx.AsyncClient(base_url=api_url, transport=transport, timeout=30) as http:
        yield http


def node_https(node: Node, *, source: str | None = None) -> Any:
    return https(node.api_url, node.ca_file, source=source)


async def sign_in(http: httpx.AsyncClient, email: str, password: str, **kw: Any) -> httpx.Response:
    return await http.post("/v1/sessions", json={"email": email, "password": password}, **kw)


def answer(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body["reason"]


def parse(label: str) -> dt.datetime:
    return dt.datetime.fromisoformat(label.replace("Z", "+00:00"))


async def join(node: Node | ServeProcess, token: str, name: str = "", **kw: Any) -> Participant:
    return await Participant.join(
        node.relay_url, token, name=name, ca_file=node.ca_file, timeout=TIMEOUT, **kw
    )


async def events_until(p: Participant, done: Callable[[Event], bool]) -> list[Event]:
    """Every event up to and including the first one ``done`` accepts."""
    got: list[Event] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            got.append(await p.recv())
            if done(got[-1]):
                return got


async def drain(p: Participant) -> list[Event]:
    """Everything ``p`` received so far.

    The relay answers a keyframe request for no one (which every role may send, support
    included) in order, after everything queued to ``p`` before it. The pause keeps
    a walk of many drains under the relay's control-frame rate limit (20/s).
    """
    await asyncio.sleep(0.06)
    await p.control("keyframe", pid=0, track=0)
    marker = ErrorFrame("unknown_participant", "no participant with id 0 in this meeting")
    return (await events_until(p, lambda e: e == marker))[:-1]


async def until_closed(p: Participant) -> tuple[list[Event], Disconnected]:
    """Every event until the connection closes, and how it closed."""
    got: list[Event] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                got.append(await p.recv())
    except Disconnected as closed:
        return got, closed


def pids(node: Node, meeting_id: str) -> set[int]:
    return {p["pid"] for p in node.hub.participants(meeting_id)}


def cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        switchboard_cmd(*args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 6,
        check=False,
        env={**os.environ, **env} if env else None,
    )


async def acli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The CLI in a thread, so an in-process node keeps serving meanwhile."""
    return await asyncio.to_thread(cli, *args, **kw)


_QUERIES = {
    "hosts": "SELECT * FROM hosts ORDER BY host_id",
    "meetings": "SELECT * FROM meetings ORDER BY meeting_id",
    "cdrs": "SELECT * FROM cdrs ORDER BY seq",
    "invitations": "SELECT * FROM invitations ORDER BY invitation_id",
    "api_keys": "SELECT * FROM api_keys ORDER BY key_id",
}


def rows(db: Path, table: str, where: str = "", *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``table`` read straight from the SQLite file (read-only)."""
    query = _QUERIES[table]
    if where:
        query = query.replace(" ORDER BY", f" WHERE {where} ORDER BY")
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(query, args).fetchall()


def host_row(db: Path, host_id: str) -> dict[str, Any]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM hosts WHERE host_id = ?", (host_id,)).fetchone()
        return dict(row)


def database(node: Node) -> Path:
    return node.settings.data_dir / "switchboard.db"


async def finished_meeting(node: Node | ServeProcess, api: ApiClient) -> dict[str, Any]:
    """A meeting with one participant, ended by its host: its record."""
    mid = (await api.create_meeting())["meeting_id"]
    p = await join(node, (await api.invite(mid, "host"))["token"])
    record: dict[str, Any] = (await api.end_meeting(mid))["record"]
    await p.leave()
    return record


# editing the account


async def test_a_host_edits_name_email_and_preferences_and_reads_them_back(node: Node) -> None:
    email, host_id = await quick_host(node, "ada@example.com")
    await quick_host(node, "grace@example.com")
    token, _ = await mint_session(node, host_id)
    billing = await api_key(node, "cdr:read")
    async with node_https(node) as http:
        got = await http.get("/v1/account", headers=bearer(token))
        assert got.status_code == 200
        before = got.json()
        assert before == {
            "host_id": host_id,
            "email": email,
            "name": "",
            "preferences": {},
            "created_at": before["created_at"],
        }
        change = {
            "name": "Ada L.",
            "email": "ada.l@example.com",
            "preferences": {"product_news": False, "digest": "weekly", "reminders": 3},
        }
        edited = await http.patch("/v1/account", json=change, headers=bearer(token))
        assert edited.status_code == 200
        assert edited.json() == {**before, **change}
        assert (await http.get("/v1/account", headers=bearer(token))).json() == {**before, **change}
        # Omitted fields stay as they are.
        renamed = await http.patch("/v1/account", json={"name": "Ada"}, headers=bearer(token))
        assert renamed.json() == {**before, **change, "name": "Ada"}

        # Another host's address, in any case, is taken; nothing of the edit is applied.
        for taken in ("grace@example.com", "GRACE@Example.com"):
            conflict = await http.patch(
                "/v1/account", json={"name": "Not applied", "email": taken}, headers=bearer(token)
            )
            assert (conflict.status_code, conflict.json()["error"]) == (409, "email_taken")
        after = (await http.get("/v1/account", headers=bearer(token))).json()
        assert (after["name"], after["email"]) == ("Ada", "ada.l@example.com")

        for bad in (
            {"email": "not an email"},
            {"preferences": {"nested": {"no": 1}}},
            {"host_id": "h_someone_else"},
            {"password_hash": "x"},
        ):
            refused = await http.patch("/v1/account", json=bad, headers=bearer(token))
            assert (refused.status_code, refused.json()["error"]) == (422, "invalid_request")

        # Only a signed-in host has an account to manage.
        for method in ("GET", "PATCH"):
            denied = await http.request(
                method, "/v1/account", json={"name": "x"}, headers=bearer(billing)
            )
            assert (denied.status_code, denied.json()["error"]) == (403, "session_required")
        assert (await http.get("/v1/account")).status_code == 401

        # The new email signs in; the old one is nobody's now.
        assert (await sign_in(http, "ada.l@example.com", PASSWORD)).status_code == 201
        assert (await sign_in(http, email, PASSWORD)).status_code == 401


# the password


async def test_a_password_change_needs_the_current_password_and_ends_every_other_session(
    node: Node,
) -> None:
    email, host_id = await quick_host(node)
    others = [(await mint_session(node, host_id, "other device"))[0] for _ in range(2)]
    async with node_https(node) as http:
        mine = (await sign_in(http, email, PASSWORD)).json()["token"]
        wrong = await http.post(
            "/v1/account/password",
            json={"current_password": "not my password", "new_password": NEW_PASSWORD},
            headers=bearer(mine),
        )
        assert answer(wrong)[:2] == (401, "invalid_credentials")
        too_short = await http.post(
            "/v1/account/password",
            json={"current_password": PASSWORD, "new_password": "short"},
            headers=bearer(mine),
        )
        assert too_short.status_code == 422
        for token in (mine, *others):  # a refused change ends nothing
            assert (await http.get("/v1/account", headers=bearer(token))).status_code == 200

        changed = await http.post(
            "/v1/account/password",
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            headers=bearer(mine),
        )
        assert changed.status_code == 204
        for token in others:
            gone = await http.get("/v1/meetings", headers=bearer(token))
            assert gone.status_code == 401
        assert (await http.get("/v1/account", headers=bearer(mine))).status_code == 200
        assert (await http.post("/v1/meetings", headers=bearer(mine))).status_code == 201
        listed = (await http.get("/v1/sessions", headers=bearer(mine))).json()
        assert [s["current"] for s in listed] == [True]

        assert answer(await sign_in(http, email, PASSWORD))[:2] == (401, "invalid_credentials")
        assert (await sign_in(http, email, NEW_PASSWORD)).status_code == 201


# sessions


async def test_sessions_list_clients_and_the_current_one_never_tokens_and_end_one_or_all(
    node: Node,
) -> None:
    email, _ = await quick_host(node)
    _, stranger_id = await quick_host(node)
    stranger, stranger_session = await mint_session(node, stranger_id, "stranger")
    agents = ["Laptop/1.0 (Firefox)", "Phone/2.0 (Safari)", "Script/" + "x" * 200]
    async with node_https(node) as http:
        signed = [
            (await sign_in(http, email, PASSWORD, headers={"user-agent": ua})).json()["token"]
            for ua in agents
        ]
        laptop, phone, script = signed
        response = await http.get("/v1/sessions", headers=bearer(laptop))
        assert response.status_code == 200
        listed = response.json()
        assert all(
            set(s) == {"session_id", "created_at", "last_used_at", "client", "current"}
            for s in listed
        )
        assert sorted(s["client"] for s in listed) == sorted([agents[0], agents[1], agents[2][:80]])
        assert [s["client"] for s in listed if s["current"]] == [agents[0]]
        for token in signed:
            assert token not in response.text
            assert token.removeprefix("sbs_") not in response.text
            assert tokens.digest(token).hex() not in response.text
        assert "sbs_" not in response.text
        by_client = {s["client"]: s["session_id"] for s in listed}
        seen_by_phone = (await http.get("/v1/sessions", headers=bearer(phone))).json()
        assert [s["client"] for s in seen_by_phone if s["current"]] == [agents[1]]

        # One session ends; the others keep working.
        ended = await http.delete(f"/v1/sessions/{by_client[agents[1]]}", headers=bearer(laptop))
        assert ended.status_code == 204
        assert (await http.get("/v1/meetings", headers=bearer(phone))).status_code == 401
        for token in (laptop, script):
            assert (await http.get("/v1/meetings", headers=bearer(token))).status_code == 200
        again = await http.delete(f"/v1/sessions/{by_client[agents[1]]}", headers=bearer(laptop))
        assert again.status_code == 404
        # Another host's session is not ours to end.
        theirs = await http.delete(f"/v1/sessions/{stranger_session}", headers=bearer(laptop))
        assert theirs.status_code == 404
        assert (await http.get("/v1/meetings", headers=bearer(stranger))).status_code == 200
        remaining = (await http.get("/v1/sessions", headers=bearer(laptop))).json()
        assert len(remaining) == 2

        # Signing out everywhere ends every session, this one included, and no one else's.
        assert (await http.delete("/v1/sessions", headers=bearer(script))).status_code == 204
        for token in (laptop, script):
            assert (await http.get("/v1/account", headers=bearer(token))).status_code == 401
        assert (await http.get("/v1/account", headers=bearer(stranger))).status_code == 200


# deleting the account


async def test_deleting_the_account_stops_it_at_once_ends_live_meetings_and_keeps_records(
    node: Node,
) -> None:
    email, host_id = await quick_host(node)
    bystander, _ = await quick_host(node)
    other, _ = await mint_session(node, host_id, "other device")
    app = await api_key(node, "meetings:write", "cdr:read", host_id=host_id)
    billing = await api_key(node, "cdr:read")
    async with node_https(node) as http, ApiClient(node.api_url, ca_file=node.ca_file) as me:
        await me.sign_in(email, PASSWORD)
        live = (await me.create_meeting())["meeting_id"]
        chair = await join(node, (await me.invite(live, "host"))["token"], "chair")
        guest = await join(node, (await me.invite(live))["token"], "guest")
        unused_live = (await me.invite(live))["token"]
        later = (await me.create_meeting())["meeting_id"]
        unused_later = (await me.invite(later, "presenter", max_uses=10))["token"]
        assert (await http.get("/v1/meetings", headers=bearer(app))).status_code == 200

        refused = await http.request(
            "DELETE", "/v1/account", json={"password": "not my password"}, headers=bearer(me.token)
        )
        assert answer(refused)[:2] == (401, "invalid_credentials")
        assert (await me.meetings())[0]["meeting_id"] == later  # nothing happened
        assert pids(node, live) == {chair.pid, guest.pid}

        deleted = await http.request(
            "DELETE", "/v1/account", json={"password": PASSWORD}, headers=bearer(me.token)
        )
        assert deleted.status_code == 202
        body = deleted.json()
        assert body["status"] == "deleted"
        purge_after = parse(body["purge_after"]).timestamp()
        assert purge_after == pytest.approx(time.time() + 90 * DAY, abs=60)

        # The live meeting ended before the answer, its record committed, for everyone in it.
        assert live not in node.hub.rooms
        page = await http.get("/v1/cdrs", params={"host_id": host_id}, headers=bearer(billing))
        assert page.status_code == 200
        [record] = page.json()["records"]
        assert (record["meeting_id"], record["host_id"]) == (live, host_id)
        assert (record["end_reason"], record["distinct_participants"]) == ("host_ended", 2)
        for p in (chair, guest):
            events, closed = await until_closed(p)
            assert Ended("host_ended") in events
            assert closed.code == CloseCode.MEETING_ENDED == 4410

        # Every session, and every API key bound to the host, stopped working.
        for token in (me.token, other):
            assert (await http.get("/v1/account", headers=bearer(token))).status_code == 401
        for path in ("/v1/meetings", "/v1/cdrs"):
            assert (await http.get(path, headers=bearer(app))).status_code == 401
        # Outstanding invitations are void.
        with pytest.raises(JoinRefused) as revoked:
            await join(node, unused_later)
        assert (revoked.value.error, revoked.value.code) == ("invitation_revoked", 4401)
        with pytest.raises(JoinRefused) as over:
            await join(node, unused_live)
        assert over.value.error == "meeting_ended"

        # Signing in answers exactly as a wrong password does.
        as_deleted = await sign_in(http, email, PASSWORD)
        as_wrong = await sign_in(http, bystander, "not the password at all")
        assert answer(as_deleted) == answer(as_wrong)
        assert answer(as_deleted)[:2] == (401, "invalid_credentials")
        assert as_deleted.headers.get("www-authenticate") == as_wrong.headers.get(
            "www-authenticate"
        )

        # The record stays, for billing.
        still = await http.get("/v1/cdrs", headers=bearer(billing))
        assert [r["record_id"] for r in still.json()["records"]] == [record["record_id"]]


# purge and restore


async def test_purge_erases_personal_fields_keeps_records_and_then_restore_is_refused(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "var")
    email, name = "erin.example@example.com", "Erin Example"
    async with Node(settings, clock=Clock()) as node:
        _, host_id = await quick_host(node, email)
        token, _ = await mint_session(node, host_id)
        billing = await api_key(node, "cdr:read")
        async with ApiClient(node.api_url, ca_file=node.ca_file, token=token) as me:
            await me.update_account(name=name, preferences={"a": 1})
            record = await finished_meeting(node, me)
            # The host deleted its account longer ago than the retention period: the node's
            # clock is set back for the deletion (the CLI reads the real clock).
            retention = settings.account_retention_days * DAY
            node.clock.offset = -(retention + DAY)
            deleted = await me.delete_account(PASSWORD)
            node.clock.offset = 0.0
        assert parse(deleted["purge_after"]).timestamp() < time.time()
        data = str(settings.data_dir)

        # Not yet past a longer retention: nothing is purged.
        longer = {"SWITCHBOARD_ACCOUNT_RETENTION_DAYS": str(settings.account_retention_days + 2)}
        kept = await acli("purge", "--data-dir", data, env=longer)
        assert kept.returncode == 0, kept.stderr
        assert "of 0 deleted" in kept.stdout
        assert host_row(database(node), host_id)["email"] == email

        purged = await acli("purge", "--data-dir", data)
        assert purged.returncode == 0, purged.stderr
        assert "of 1 deleted" in purged.stdout
        row = host_row(database(node), host_id)
        assert row["email"] != email
        assert (row["name"], row["password_hash"], row["preferences"]) == ("", "", "{}")
        assert row["purged_at"] is not None
        everything = json.dumps([rows(database(node), t) for t in ("hosts", "meetings", "cdrs")])
        for personal in (email, name, _HASH):
            assert personal not in everything
        # The records stay, under the same (now pseudonymous) host id.
        cdr_hosts = rows(database(node), "cdrs", "meeting_id = ?", record["meeting_id"])
        assert [r[3] for r in cdr_hosts] == [host_id]
        async with node_https(node) as http:
            page = (await http.get("/v1/cdrs", headers=bearer(billing))).json()
            assert [(r["record_id"], r["host_id"]) for r in page["records"]] == [
                (record["record_id"], host_id)
            ]
            assert (await sign_in(http, email, PASSWORD)).status_code == 401

        restored = await acli("host", "restore", email, "--data-dir", data)
        assert restored.returncode == 1
        assert "no deleted, unpurged account" in restored.stderr
        again = await acli("purge", "--data-dir", data)
        assert "of 0 deleted" in again.stdout
    # Once the server has stopped (its WAL checkpointed), no file holds the address.
    for f in settings.data_dir.rglob("*"):
        if f.is_file():
            assert email.encode() not in f.read_bytes(), f


async def test_after_a_purge_no_database_file_holds_the_email(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "var")
    email = "frank.purged@example.com"
    async with Node(settings) as node:
        _, host_id = await quick_host(node, email)
    # Restarted later (the account is old, checkpointed), the host deletes it.
    async with Node(settings) as node:
        token, _ = await mint_session(node, host_id)
        async with ApiClient(node.api_url, ca_file=node.ca_file, token=token) as me:
            node.clock.offset = -(settings.account_retention_days + 1) * DAY
            await me.delete_account(PASSWORD)
            node.clock.offset = 0.0
        purged = await acli("purge", "--data-dir", str(settings.data_dir))
        assert "of 1 deleted" in purged.stdout
        assert host_row(database(node), host_id)["email"] != email
        holding = [
            f.name
            for f in settings.data_dir.iterdir()
            if f.is_file() and email.encode() in f.read_bytes()
        ]
        assert holding == []


async def test_the_node_purges_at_start_once_its_clock_is_past_the_retention(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "var")
    async with Node(settings) as node:
        email, host_id = await quick_host(node)
        token, _ = await mint_session(node, host_id)
        async with ApiClient(node.api_url, ca_file=node.ca_file, token=token) as me:
            record = await finished_meeting(node, me)
            await me.delete_account(PASSWORD)
    retention = settings.account_retention_days * DAY
    async with Node(settings, clock=Clock(offset=retention - DAY)) as node:
        await asyncio.sleep(0.2)  # the daily purge runs once at start
        account = await node.store.get_host(host_id)
        assert account is not None
        assert (account.email, account.purged_at) == (email, None)
    async with Node(settings, clock=Clock(offset=retention + DAY)) as node:
        async with asyncio.timeout(TIMEOUT):
            while (account := await node.store.get_host(host_id)) and account.purged_at is None:
                await asyncio.sleep(0.02)
        assert account is not None
        assert account.email == f"purged:{host_id}"
        assert (account.name, account.password_hash, account.preferences) == ("", "", {})
        assert await node.store.restore_host(email) is None
        stored = await node.store.get_record(record["meeting_id"])
        assert stored is not None
        assert stored.record.host_id == host_id


async def test_an_operator_restores_a_deleted_account_before_the_purge(node: Node) -> None:
    email, host_id = await quick_host(node)
    token, _ = await mint_session(node, host_id)
    async with node_https(node) as http:
        await http.patch("/v1/account", json={"name": "Kept"}, headers=bearer(token))
        deleted = await http.request(
            "DELETE", "/v1/account", json={"password": PASSWORD}, headers=bearer(token)
        )
        assert deleted.status_code == 202
        assert (await sign_in(http, email, PASSWORD)).status_code == 401

        data = str(node.settings.data_dir)
        done = await acli("host", "restore", email.upper(), "--data-dir", data)
        assert done.returncode == 0, done.stderr
        assert host_id in done.stdout
        signed = await sign_in(http, email, PASSWORD)
        assert signed.status_code == 201
        mine = signed.json()["token"]
        account = (await http.get("/v1/account", headers=bearer(mine))).json()
        assert (account["host_id"], account["email"], account["name"]) == (host_id, email, "Kept")
        assert (await http.post("/v1/meetings", headers=bearer(mine))).status_code == 201

        # Nothing to restore: an active account, an unknown address.
        for address in (email, "nobody@example.com"):
            again = await acli("host", "restore", address, "--data-dir", data)
            assert again.returncode == 1
            assert "no deleted, unpurged account" in again.stderr


# support staff


async def test_support_staff_only_receive_until_a_host_gives_them_a_role(host: Host) -> None:
    node = host.node
    mid = await host.meeting()
    support_max = node.settings.support_max_ttl
    assert support_max < node.settings.invitation_ttl  # so the cap is what is tested

    invitation = await host.api.invite(mid, "support")
    assert invitation["role"] == "support"
    lifetime = parse(invitation["expires_at"]) - parse(invitation["created_at"])
    assert 0 < lifetime.total_seconds() <= support_max
    with pytest.raises(ApiError) as too_long:
        await host.api.invite(mid, "support", expires_in=support_max + 1)
    assert (too_long.value.status, too_long.value.code) == (422, "invalid_request")
    short = await host.api.invite(mid, "support", expires_in=60)
    assert parse(short["expires_at"]) - parse(short["created_at"]) == dt.timedelta(seconds=60)

    chair = await host.join(mid, "host", "chair")
    speaker = await host.join(mid, "presenter", "speaker")
    guest = await host.join(mid, "attendee", "guest")
    others = [chair, speaker, guest]
    staff = await join(node, invitation["token"], "Support desk")
    assert staff.role == "support"
    assert {pid: p["role"] for pid, p in staff.roster.items()} == {
        chair.pid: "host",
        speaker.pid: "presenter",
        guest.pid: "attendee",
        staff.pid: "support",
    }
    for p in others:
        joined = await next_event(p, Joined)
        while joined.participant["pid"] != staff.pid:
            joined = await next_event(p, Joined)
        assert (joined.participant["role"], joined.participant["name"]) == (
            "support",
            "Support desk",
        )
        assert p.roster[staff.pid]["role"] == "support"
    roster = {p["pid"]: p["role"] for p in await host.api.participants(mid)}
    assert roster[staff.pid] == "support"
    late = await host.join(mid, "attendee", "late")
    assert late.roster[staff.pid]["role"] == "support"
    others.append(late)
    for p in others:
        await drain(p)
    await drain(staff)

    # It receives chat, polls and media.
    await guest.send_chat("hello everyone")
    assert await next_event(staff, Chat) == Chat(guest.pid, b"hello everyone", False)
    await chair.open_poll(7, b"lunch?")
    poll = await next_event(staff, Poll)
    assert (poll.sender, poll.op, poll.poll) == (chair.pid, "open", 7)
    await speaker.publish(1, Media.VIDEO)
    await speaker.send_media(1, Media.VIDEO, 0, b"frame", key=True, ts=5)
    assert await next_event(staff, MediaFrame) == MediaFrame(
        speaker.pid, 1, Media.VIDEO, 0, True, 5, b"frame"
    )
    for p in others:
        await drain(p)

    # Every send is refused, and reaches no one.
    await staff.send_chat("may I?")
    await staff.send_chat("psst", to=chair.pid)
    await staff.answer_poll(7, b"yes")
    await staff.publish(2, Media.AUDIO)
    await staff.send_media(2, Media.AUDIO, 0, b"audio")
    await staff.share_document(3, b"%PDF- a document")
    got = await drain(staff)
    refusals = [e for e in got if isinstance(e, ErrorFrame)]
    assert [e.code for e in refusals] == ["not_allowed"] * 6
    assert not [e for e in got if isinstance(e, (Chat, Poll, MediaFrame, DocumentReceived))]
    for p in others:
        received = await drain(p)
        assert not [e for e in received if getattr(e, "sender", None) == staff.pid], received
        assert not [e for e in received if isinstance(e, Notice) and e.op == "track"]

    # A host gives it a role; now it can talk.
    await chair.set_role(staff.pid, "attendee")
    notice = await next_event(staff, Notice)
    assert notice == Notice("role", {"pid": staff.pid, "role": "attendee"})
    assert staff.role == "attendee"
    await staff.send_chat("thanks")
    for p in others:
        assert await next_event(p, Chat) == Chat(staff.pid, b"thanks", False)
    for p in [*others, staff]:
        await p.leave()


# backup and restore


async def test_backup_online_then_restore_gives_back_exactly_the_backed_up_state(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    data = tmp_path / "var"
    host_add(data, "ops@example.com", PASSWORD)
    sp = serve_factory(data_dir=data)
    backup = tmp_path / "backups" / "switchboard-backup.db"
    async with ApiClient(sp.api_url, ca_file=sp.ca_file) as api:
        await api.sign_in("ops@example.com", PASSWORD)
        await api.update_account(name="Before")
        first = await finished_meeting(sp, api)
        scheduled = (await api.create_meeting())["meeting_id"]
        await api.invite(scheduled)

        done = await acli("backup", str(backup), "--data-dir", str(data))  # the server runs
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600

        # Changes after the backup, which the restore must undo.
        await api.update_account(name="After")
        later = await finished_meeting(sp, api)
        made = await acli("apikey", "create", "--scope", "cdr:read", "--data-dir", str(data))
        assert made.returncode == 0, made.stderr
        later_key = made.stdout.strip()
    tables = ("hosts", "meetings", "cdrs", "invitations", "api_keys")
    snapshot = {t: rows(backup, t) for t in tables}
    assert [r[2] for r in snapshot["meetings"] if r[0] == first["meeting_id"]] == [
        r[2] for r in rows(data / "switchboard.db", "meetings") if r[0] == first["meeting_id"]
    ]
    assert await asyncio.to_thread(sp.stop) == 0
    for table in ("hosts", "meetings", "cdrs", "api_keys"):
        assert rows(data / "switchboard.db", table) != snapshot[table]

    done = await acli("restore", str(backup), "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert {t: rows(data / "switchboard.db", t) for t in tables} == snapshot
    assert stat.S_IMODE((data / "switchboard.db").stat().st_mode) == 0o600

    sp = serve_factory(data_dir=data)
    async with ApiClient(sp.api_url, ca_file=sp.ca_file) as api:
        await api.sign_in("ops@example.com", PASSWORD)
        assert (await api.account())["name"] == "Before"
        assert {m["meeting_id"] for m in await api.meetings()} == {
            first["meeting_id"],
            scheduled,
        }
        page = await api.cdrs()
        assert [r["record_id"] for r in page["records"]] == [first["record_id"]]
        assert page["records"][0] == {**first, "cursor": page["records"][0]["cursor"]}
    async with ApiClient(sp.api_url, ca_file=sp.ca_file, token=later_key) as billing:
        with pytest.raises(ApiError) as unknown:
            await billing.cdrs()
        assert unknown.value.status == 401
    exported = await acli("cdr", "export", "--data-dir", str(data))
    assert [json.loads(line)["record_id"] for line in exported.stdout.splitlines()] == [
        first["record_id"]
    ]
    assert later["record_id"] not in exported.stdout


async def test_restore_refuses_while_a_server_runs(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    data = tmp_path / "var"
    sp = serve_factory(data_dir=data)
    backup = tmp_path / "backup.db"
    assert (await acli("backup", str(backup), "--data-dir", str(data))).returncode == 0
    async with https(sp.api_url, sp.ca_file) as http:
        assert (await http.get("/v1/health")).status_code == 200  # it serves, idle
    done = await acli("restore", str(backup), "--data-dir", str(data))
    assert done.returncode == 2
    assert "in use" in done.stderr


async def test_restore_refuses_files_that_are_not_switchboard_backups(tmp_path: Path) -> None:
    data = tmp_path / "var"
    made = await acli("apikey", "create", "--scope", "cdr:read", "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    before = rows(data / "switchboard.db", "api_keys")
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE hosts (x)")
        conn.commit()
    paths = (text, other, tmp_path / "missing.db")
    done = await asyncio.gather(
        *(acli("restore", str(path), "--data-dir", str(data)) for path in paths)
    )
    for path, result in zip(paths, done, strict=True):
        assert result.returncode == 2, (path, result.stdout, result.stderr)
        assert "not a switchboard backup" in result.stderr
    assert rows(data / "switchboard.db", "api_keys") == before


# sign-in throttling


async def failing_until_throttled(
    node: Node, email: str, source: str, limit: int = 8
) -> list[httpx.Response]:
    """Wrong passwords for ``email`` from ``source`` until the first 429 (at most ``limit``)."""
    answers: list[httpx.Response] = []
    async with node_https(node, source=source) as http:
        while len(answers) < limit:
            answers.append(await sign_in(http, email, "wrong password, again"))
            if answers[-1].status_code == 429:
                break
    return answers


def throttled_shape(response: httpx.Response) -> tuple[int, str, str, int]:
    assert response.status_code == 429
    assert set(response.json()) == {"error", "reason"}
    retry_after = int(response.headers["retry-after"])
    return (*answer(response), retry_after)


class SteppedClock(Clock):
    """Wall time as usual; monotonic time (what the throttle measures) moves when told to.

    Waiting is then exact instead of racing a 0.2 s window on a busy machine.
    """

    __slots__ = ("now",)

    def __init__(self) -> None:
        super().__init__()
        self.now = time.monotonic()

    def mono(self) -> float:
        return self.now


@pytest.fixture
async def fast_throttle(tmp_path: Path) -> AsyncIterator[Node]:
    settings = make_settings(tmp_path / "var", signin_throttle_base=0.2, signin_throttle_max=1)
    async with Node(settings, clock=SteppedClock()) as n:
        yield n


def wait(node: Node, seconds: float) -> None:
    assert isinstance(node.clock, SteppedClock)
    node.clock.now += seconds


async def test_failed_sign_ins_back_off_per_account_alike_for_known_and_unknown_emails(
    fast_throttle: Node,
) -> None:
    node = fast_throttle
    alice, _ = await quick_host(node)
    bob, _ = await quick_host(node)
    known, unknown = await asyncio.gather(
        failing_until_throttled(node, alice, "127.0.0.2"),
        failing_until_throttled(node, "nobody-here@example.com", "127.0.0.3"),
    )
    statuses = [r.status_code for r in known]
    assert statuses[:3] == [401, 401, 401]  # three failures are free
    assert statuses[-1] == 429
    assert [r.status_code for r in unknown] == statuses
    assert throttled_shape(known[-1]) == throttled_shape(unknown[-1])
    assert throttled_shape(known[-1])[1] == "too_many_requests"
    assert throttled_shape(known[-1])[3] >= 1
    assert [answer(r) for r in known[:-1]] == [answer(r) for r in unknown[:-1]]

    # While it waits, even the right password of that account is refused, from any address;
    # another account from another address is not affected.
    async with node_https(node, source="127.0.0.2") as http:
        assert (await sign_in(http, alice, PASSWORD)).status_code == 429
    async with node_https(node, source="127.0.0.5") as http:
        assert (await sign_in(http, alice, PASSWORD)).status_code == 429
    async with node_https(node, source="127.0.0.4") as http:
        assert (await sign_in(http, bob, PASSWORD)).status_code == 201

    # Not long enough (the first wait is signin_throttle_base), then as long as Retry-After said.
    async with node_https(node, source="127.0.0.2") as http:
        wait(node, node.settings.signin_throttle_base / 2)
        assert (await sign_in(http, alice, PASSWORD)).status_code == 429
        wait(node, throttled_shape(known[-1])[3])
        assert (await sign_in(http, alice, PASSWORD)).status_code == 201


async def test_failed_sign_ins_are_counted_per_address_across_different_emails(
    fast_throttle: Node,
) -> None:
    node = fast_throttle
    carol, _ = await quick_host(node)
    answers: list[int] = []
    async with node_https(node, source="127.0.0.6") as http:
        for n in range(8):
            response = await sign_in(http, f"guess-{n}@example.com", "wrong password, again")
            answers.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                break
        assert answers[:3] == [401, 401, 401]
        assert answers[-1] == 429  # though each email was tried at most once
        # From that address, even another account's right password waits...
        assert (await sign_in(http, carol, PASSWORD)).status_code == 429
    # ...while from another address it goes through.
    async with node_https(node, source="127.0.0.7") as http:
        assert (await sign_in(http, carol, PASSWORD)).status_code == 201


async def test_the_attempt_after_three_free_failures_waits(fast_throttle: Node) -> None:
    node = fast_throttle
    dave, _ = await quick_host(node)
    answers = await failing_until_throttled(node, dave, "127.0.0.8", limit=4)
    assert [r.status_code for r in answers] == [401, 401, 401, 429]


# self sign-up


def verification_hook(tmp_path: Path) -> tuple[Path, Path]:
    """An executable hook that appends the JSON it gets on stdin to a file; (hook, file)."""
    out = tmp_path / "mail.jsonl"
    hook = tmp_path / "send-verification"
    hook.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"with open({str(out)!r}, 'a') as fh:\n"
        "    fh.write(sys.stdin.read().strip() + '\\n')\n"
    )
    hook.chmod(0o755)
    return hook, out


async def test_self_sign_up_is_off_unless_the_operator_turns_it_on(node: Node) -> None:
    async with node_https(node) as http:
        response = await http.post(
            "/v1/accounts", json={"email": "new@example.com", "password": PASSWORD}
        )
    assert answer(response)[:2] == (403, "signup_disabled")
    assert await node.store.host_by_email("new@example.com") is None


async def test_self_sign_up_verifies_the_email_through_the_hook_before_sign_in(
    tmp_path: Path,
) -> None:
    hook, mail = verification_hook(tmp_path)
    settings = make_settings(tmp_path / "var", self_signup=True, verification_hook=str(hook))
    async with Node(settings) as node, node_https(node) as http:
        email = "newbie@example.com"
        signup = {"email": email, "password": PASSWORD, "name": "Newbie"}
        first = await http.post("/v1/accounts", json=signup)
        assert (first.status_code, first.json()) == (202, {"status": "verification_sent"})
        [message] = [json.loads(line) for line in mail.read_text().splitlines()]
        assert set(message) == {"email", "link", "token"}
        assert message["email"] == email
        assert message["token"].startswith("sbv_")
        assert message["link"] == f"{node.api_url}/v1/accounts/verify?token={message['token']}"

        # Not verified yet: sign-in answers as for a wrong password.
        assert answer(await sign_in(http, email, PASSWORD)) == answer(
            await sign_in(http, "nobody@example.com", PASSWORD)
        )

        # Signing up again with the same address answers the same, and takes nothing over.
        again = await http.post(
            "/v1/accounts", json={**signup, "email": email.upper(), "password": NEW_PASSWORD}
        )
        assert (again.status_code, again.json()) == (first.status_code, first.json())

        for bad in ({**signup, "email": "no-at-sign"}, {**signup, "password": "short"}):
            assert (await http.post("/v1/accounts", json=bad)).status_code == 422

        verified = await http.get(message["link"])
        assert (verified.status_code, verified.json()) == (200, {"verified": True})
        used = await http.get(message["link"])
        assert answer(used)[:2] == (422, "invalid_request")
        used = await http.post("/v1/accounts/verify", json={"token": message["token"]})
        assert answer(used)[:2] == (422, "invalid_request")

        signed = await sign_in(http, email, PASSWORD)
        assert signed.status_code == 201
        account = (await http.get("/v1/account", headers=bearer(signed.json()["token"]))).json()
        assert (account["email"], account["name"]) == (email, "Newbie")
        assert (await sign_in(http, email, NEW_PASSWORD)).status_code == 401


# no way into a meeting but an invitation


EXPECTED_ROUTES = {
    ("GET", "/v1/health"),
    ("GET", "/v1/sessions"),
    ("POST", "/v1/sessions"),
    ("DELETE", "/v1/sessions"),
    ("DELETE", "/v1/sessions/current"),
    ("DELETE", "/v1/sessions/{session_id}"),
    ("GET", "/v1/meetings"),
    ("POST", "/v1/meetings"),
    ("GET", "/v1/meetings/{meeting_id}"),
    ("POST", "/v1/meetings/{meeting_id}/invitations"),
    ("GET", "/v1/meetings/{meeting_id}/invitations"),
    ("DELETE", "/v1/meetings/{meeting_id}/invitations/{invitation_id}"),
    ("GET", "/v1/meetings/{meeting_id}/participants"),
    ("POST", "/v1/meetings/{meeting_id}/moderation"),
    ("POST", "/v1/meetings/{meeting_id}/end"),
    ("GET", "/v1/cdrs"),
    ("GET", "/v1/cdrs/public-key"),
    ("POST", "/v1/accounts"),
    ("GET", "/v1/accounts/verify"),
    ("POST", "/v1/accounts/verify"),
    ("GET", "/v1/account"),
    ("PATCH", "/v1/account"),
    ("DELETE", "/v1/account"),
    ("POST", "/v1/account/password"),
}
"""Every route, reviewed: none of them seats anyone. A new route fails the test until added."""


async def test_no_api_route_seats_anyone_in_a_live_meeting(tmp_path: Path) -> None:
    hook, _ = verification_hook(tmp_path)
    settings = make_settings(tmp_path / "var", self_signup=True, verification_hook=str(hook))
    async with Node(settings) as node, node_https(node) as http:
        email, host_id = await quick_host(node)
        owner, _ = await mint_session(node, host_id)
        async with ApiClient(node.api_url, ca_file=node.ca_file, token=owner) as api:
            live = (await api.create_meeting())["meeting_id"]
            chair = await join(node, (await api.invite(live, "host"))["token"], "chair")
            guest = await join(node, (await api.invite(live))["token"], "guest")
            await drain(chair)  # the guest's arrival
            spare_invitation = (await api.invite(live))["invitation_id"]
            spare_meeting = (await api.create_meeting())["meeting_id"]
        seated = {chair.pid, guest.pid}
        assert pids(node, live) == seated
        spec = (await http.get("/openapi.json")).json()
        routes = [(m.upper(), path) for path, ops in spec["paths"].items() for m in ops]
        assert set(routes) == EXPECTED_ROUTES
        # Deleting the account ends the meeting: it goes last.
        routes.sort(key=lambda route: route == ("DELETE", "/v1/account"))
        signups = iter(range(100))
        bogus_verification = "sbv_" + secrets.token_urlsafe(32)

        async def request(method: str, path: str, token: str) -> httpx.Response:
            _, session_id = await mint_session(node, host_id, "walker")
            url = path.format(
                meeting_id=spare_meeting if path.endswith("/end") else live,
                invitation_id=spare_invitation,
                session_id=session_id,
            )
            bodies: dict[tuple[str, str], Any] = {
                ("POST", "/v1/sessions"): {"email": email, "password": PASSWORD},
                ("POST", "/v1/meetings/{meeting_id}/invitations"): {"role": "host", "max_uses": 9},
                ("POST", "/v1/meetings/{meeting_id}/moderation"): {"op": "lobby", "on": False},
                ("POST", "/v1/accounts"): {
                    "email": f"walker-{next(signups)}@example.com",
                    "password": PASSWORD,
                },
                ("POST", "/v1/accounts/verify"): {"token": bogus_verification},
                ("PATCH", "/v1/account"): {"name": "Walker", "preferences": {"x": True}},
                ("DELETE", "/v1/account"): {"password": PASSWORD},
                ("POST", "/v1/account/password"): {
                    "current_password": PASSWORD,
                    "new_password": PASSWORD,
                },
            }
            params = {"token": bogus_verification} if "verify" in path else None
            return await http.request(
                method,
                url,
                json=bodies.get((method, path)),
                params=params,
                headers=bearer(token),
            )

        billing = await api_key(node, "cdr:read")
        app = await api_key(node, "meetings:write", "cdr:read", host_id=host_id)
        statuses: dict[str, dict[tuple[str, str], int]] = {}
        for who in ("billing key", "host app key", "host session"):
            statuses[who] = {}
            for method, path in routes:
                if who == "host session":
                    token = (await mint_session(node, host_id, "walker"))[0]
                else:
                    token = billing if who == "billing key" else app
                response = await request(method, path, token)
                statuses[who][method, path] = response.status_code
                assert response.status_code < 500, (who, method, path, response.text)
                if (method, path) != ("DELETE", "/v1/account") or who != "host session":
                    assert pids(node, live) == seated, (who, method, path)
                    assert not [e for e in await drain(chair) if isinstance(e, Joined)]
        # The walk did act: routes answered with success for the host, not only refusals.
        assert statuses["host session"]["POST", "/v1/meetings/{meeting_id}/invitations"] == 201
        assert statuses["host session"]["DELETE", "/v1/account"] == 202
        assert statuses["billing key"]["GET", "/v1/cdrs"] == 200
        # The last route ended the meeting; until then no one else came in.
        events, closed = await until_closed(chair)
        assert not [e for e in events if isinstance(e, Joined)]
        assert Ended("host_ended") in events
        assert closed.code == 4410
        await until_closed(guest)


async def test_no_cli_command_seats_anyone_in_a_live_meeting(host: Host, tmp_path: Path) -> None:
    node = host.node
    data = str(node.settings.data_dir)

    async def listed(*command: str) -> list[str]:
        done = await acli(*command, "--help")
        assert done.returncode == 0, done.stderr
        return re.findall(r"^ {4}([a-z][\w-]*) {2,}", done.stdout, flags=re.MULTILINE)

    top = await listed()
    subs = await asyncio.gather(*(listed(c) for c in top))
    leaves = {(c, *([s] if s else [])) for c, ss in zip(top, subs, strict=True) for s in ss or [""]}
    assert leaves == {
        ("serve",),  # the relay itself: seats exactly the invited (the other tests)
        ("demo",),  # a throwaway relay in a temporary directory
        ("bench",),  # only meetings it makes: on its own relay, or with a host app's key
        ("host", "add"),
        ("host", "restore"),
        ("purge",),
        ("backup",),
        ("restore",),
        ("apikey", "create"),
        ("apikey", "list"),
        ("apikey", "revoke"),
        ("cdr", "export"),
        ("cdr", "verify"),
    }

    mid = await host.meeting()
    chair = await host.join(mid, "host", "chair")
    seated = pids(node, mid)
    await finished_meeting(node, host.api)
    export = tmp_path / "cdrs.jsonl"
    export.write_text((await acli("cdr", "export", "--data-dir", data)).stdout)
    not_a_backup = tmp_path / "not-a-backup.txt"
    not_a_backup.write_text("no")
    runs: dict[tuple[str, ...], tuple[list[str], str | None, int]] = {
        ("host", "add"): (["walker@example.com", "--password-stdin"], PASSWORD, 0),
        ("host", "restore"): ([host.email], None, 1),
        ("purge",): ([], None, 0),
        ("backup",): ([str(tmp_path / "backup.db")], None, 0),
        # A real restore under a running server is the bug of test_restore_refuses_while_...
        ("restore",): ([str(not_a_backup)], None, 2),
        ("apikey", "create"): (["--scope", "meetings:write", "--host", host.email], None, 0),
        ("apikey", "list"): ([], None, 0),
        ("apikey", "revoke"): (["k_no_such_key"], None, 1),
        ("cdr", "export"): ([], None, 0),
        ("cdr", "verify"): ([str(export)], None, 0),
    }
    assert set(runs) == leaves - {("serve",), ("demo",), ("bench",)}
    done = await asyncio.gather(
        *(
            acli(*command, *args, "--data-dir", data, stdin=stdin)
            for command, (args, stdin, _) in runs.items()
        )
    )
    for (command, (_, _, status)), result in zip(runs.items(), done, strict=True):
        assert result.returncode == status, (command, result.stderr)
    assert pids(node, mid) == seated
    assert not [e for e in await drain(chair) if isinstance(e, Joined)]
    await chair.leave()


async def test_the_relay_seats_no_one_with_a_secret_that_is_not_an_invitation(
    host: Host,
) -> None:
    node = host.node
    mid = await host.meeting()
    chair = await host.join(mid, "host", "chair")
    unused = await host.api.invite(mid)
    other = await host.meeting()
    gone = await host.join(other)
    stale_resume = gone.resume_token
    assert stale_resume is not None
    await host.api.end_meeting(other)
    await until_closed(gone)
    key = await api_key(node, "cdr:read", "meetings:write", host_id=host.host_id)
    session = host.api.token
    assert session is not None

    not_invitations = {
        "session token": session,
        "API key": key,
        "meeting id": mid,
        "invitation id": unused["invitation_id"],
        "host id": host.host_id,
        "resume token of another meeting": stale_resume,
        "own resume token": chair.resume_token,
    }
    for what, secret in not_invitations.items():
        with pytest.raises(JoinRefused) as refused:
            await join(node, secret)  # type: ignore[arg-type]
        assert (refused.value.error, refused.value.code) == ("invitation_unknown", 4401), what
    not_resume_tokens = {
        "session token": session,
        "API key": key,
        "meeting id": mid,
        "invitation": unused["token"],
        "resume token of another meeting": stale_resume,
    }
    for what, secret in not_resume_tokens.items():
        with pytest.raises(JoinRefused) as refused:
            await join(node, secret, resume=True)
        assert (refused.value.error, refused.value.code) == ("resume_invalid", 4401), what
    assert pids(node, mid) == {chair.pid}
    assert not [e for e in await drain(chair) if isinstance(e, Joined)]

    # The invitation itself was not spent by any of that: it still seats its invitee.
    invitee = await join(node, unused["token"], "invitee")
    assert (await next_event(chair, Joined)).participant["pid"] == invitee.pid
    assert pids(node, mid) == {chair.pid, invitee.pid}
    for p in (chair, invitee):
        await p.leave()


# password hashing


def argon2_parameters(encoded: str) -> dict[str, Any]:
    """``$argon2id$v=19$m=65536,t=3,p=4$salt$hash`` -> its variant and parameters."""
    _, variant, version, params, salt, digest = encoded.split("$")
    found: dict[str, Any] = {"variant": variant, "version": version}
    found.update({k: int(v) for k, v in (p.split("=") for p in params.split(","))})
    found["salt_chars"], found["hash_chars"] = len(salt), len(digest)
    return found


async def test_password_hashes_meet_the_owasp_minimum_and_weak_ones_are_upgraded_at_sign_in(
    node: Node,
) -> None:
    data = node.settings.data_dir
    await asyncio.to_thread(host_add, data, "ops@example.com", PASSWORD)
    account = await node.store.host_by_email("ops@example.com")
    assert account is not None
    stored = host_row(database(node), account.host_id)["password_hash"]
    params = argon2_parameters(stored)
    assert (params["variant"], params["version"]) == ("argon2id", "v=19")
    assert params["m"] >= 19 * 1024  # KiB: OWASP's minimum for Argon2id is 19 MiB, t=2, p=1
    assert params["t"] >= 2
    assert params["p"] >= 1
    assert params["salt_chars"] >= 22  # >= 16 random bytes
    assert PASSWORD not in stored

    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    await node.store.set_password_hash(account.host_id, weak)
    assert argon2_parameters(host_row(database(node), account.host_id)["password_hash"])["m"] == (
        8 * 1024
    )
    async with node_https(node) as http:
        assert (await sign_in(http, "ops@example.com", PASSWORD)).status_code == 201
        upgraded = host_row(database(node), account.host_id)["password_hash"]
        assert upgraded != weak
        assert {k: v for k, v in argon2_parameters(upgraded).items() if k in "mtp"} == {
            k: v for k, v in params.items() if k in "mtp"
        }
        assert (await sign_in(http, "ops@example.com", PASSWORD)).status_code == 201
        assert host_row(database(node), account.host_id)["password_hash"] == upgraded
        # A password changed through the API is hashed as strongly.
        token = (await sign_in(http, "ops@example.com", PASSWORD)).json()["token"]
        changed = await http.post(
            "/v1/account/password",
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            headers=bearer(token),
        )
        assert changed.status_code == 204
    after = argon2_parameters(host_row(database(node), account.host_id)["password_hash"])
    assert after["variant"] == "argon2id"
    assert (after["m"], after["t"]) == (params["m"], params["t"])


# logs


async def test_logs_keep_client_addresses_as_configured_and_json_is_one_object_per_line(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    configs = {
        "json-truncated": 'log_format = "json"\nclient_ip_logging = "truncated"\n',
        "text-none": 'log_format = "text"\nclient_ip_logging = "none"\n',
    }
    for name, toml in configs.items():
        (tmp_path / f"{name}.toml").write_text(toml)
    started = await asyncio.gather(
        *(
            asyncio.to_thread(
                serve_factory, "--config", str(tmp_path / f"{name}.toml"), data_dir=tmp_path / name
            )
            for name in configs
        )
    )
    served = dict(zip(configs, started, strict=True))
    for sp in served.values():
        async with https(sp.api_url, sp.ca_file) as http:
            assert (await http.get("/v1/health")).status_code == 200
            assert (await http.get("/v1/no-such-thing")).status_code == 404
    logs: dict[str, list[str]] = {}
    for name, sp in served.items():
        assert await asyncio.to_thread(sp.stop) == 0
        logs[name] = [line for line in sp.log_file.read_text().splitlines() if line]

    events = [json.loads(line) for line in logs["json-truncated"]]  # every line is JSON
    assert all(isinstance(e, dict) and {"ts", "level", "logger", "msg"} <= set(e) for e in events)
    assert {"uvicorn.access", "switchboard"} <= {e["logger"] for e in events}
    access = [e["msg"] for e in events if e["logger"] == "uvicorn.access"]
    assert len(access) == 2
    # The /24 of 127.0.0.1, with the port: enough to see a pattern, not who it was.
    assert all(re.match(r'127\.0\.0\.0:\d+ - "GET /v1/', msg) for msg in access), access
    assert "127.0.0.1" not in "\n".join(logs["json-truncated"])

    lines = logs["text-none"]
    assert all(line.startswith("ts=") and " level=" in line for line in lines)
    access_text = [line for line in lines if " logger=uvicorn.access " in line]
    assert len(access_text) == 2
    assert all('msg="- - \\"GET /v1/' in line for line in access_text), access_text
    assert not any(re.search(r"127\.0\.0\.\d", line) for line in access_text)
