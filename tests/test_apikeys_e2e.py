"""API keys as operators make them (``switchboard apikey``) and as host apps and billing use them.

A running node on loopback TLS and the real CLI on the same data directory: keys are created,
listed and revoked with the command an operator types, then used over HTTPS (and the wss relay)
the way a host app or a billing system does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import uuid
from typing import Any

import httpx
import pytest

from switchboard.client import ApiClient, ApiError, Participant, tls_context
from switchboard.core.records import CallRecord, iso_utc
from switchboard.node import Node

from .conftest import TIMEOUT, Host, add_host, signed_in_host, switchboard_cmd


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        switchboard_cmd(*args),
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 6,
        check=False,
    )


async def apikey_create(node: Node, *scopes: str, host: str | None = None, label: str = "") -> str:
    """``switchboard apikey create``; return the key it printed."""
    args = ["apikey", "create", "--data-dir", str(node.settings.data_dir)]
    for scope in scopes:
        args += ["--scope", scope]
    if host is not None:
        args += ["--host", host]
    if label:
        args += ["--label", label]
    done = await asyncio.to_thread(cli, *args)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("sbk_")
    assert "shown only now" in done.stderr
    return key


async def apikey_list(node: Node) -> tuple[str, list[dict[str, str]]]:
    """``switchboard apikey list``: its raw output and its rows by column name."""
    done = await asyncio.to_thread(cli, "apikey", "list", "--data-dir", str(node.settings.data_dir))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = lines[0].split("\t")
    assert header == ["key_id", "scopes", "host_id", "label", "created", "last_used", "state"]
    return done.stdout, [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


async def cdrs(node: Node, token: str, **params: Any) -> tuple[int, dict[str, Any]]:
    """``GET /v1/cdrs`` with any query parameters: (status, body)."""
    async with httpx.AsyncClient(verify=tls_context(node.ca_file)) as http:
        response = await http.get(
            f"{node.api_url}/v1/cdrs",
            params=params,
            headers={"authorization": f"Bearer {token}"},
        )
    return response.status_code, response.json()


async def finished_meeting(host: Host) -> dict[str, Any]:
    """A meeting with one participant, ended by its host: its record."""
    mid = await host.meeting()
    p = await host.join(mid, "host")
    record: dict[str, Any] = (await host.api.end_meeting(mid))["record"]
    await p.leave()
    return record


def ids(body: dict[str, Any]) -> list[str]:
    return [r["meeting_id"] for r in body["records"]]


def parse(label: str) -> dt.datetime:
    return dt.datetime.fromisoformat(label.replace("Z", "+00:00"))


def between(earlier: str, later: str) -> str:
    """An ISO time halfway between two record labels (microsecond precision)."""
    a, b = parse(earlier), parse(later)
    return (a + (b - a) / 2).isoformat().replace("+00:00", "Z")


# meetings:write keys act for one host


async def test_a_meetings_write_key_creates_meetings_and_invites_for_its_host_only(
    node: Node,
) -> None:
    alice, bob = await signed_in_host(node), await signed_in_host(node)
    try:
        bobs_meeting = await bob.meeting()
        bobs_record = await finished_meeting(bob)
        key = await apikey_create(node, "meetings:write", host=alice.email, label="alice's app")
        async with ApiClient(node.api_url, ca_file=node.ca_file, token=key) as app:
            meeting = await app.create_meeting()
            mid = meeting["meeting_id"]
            assert meeting["host_id"] == alice.host_id
            assert [m["meeting_id"] for m in await app.meetings()] == [mid]
            assert [m["meeting_id"] for m in await alice.api.meetings()] == [mid]
            invitation = await app.invite(mid, "host")
            p = await Participant.join(
                node.relay_url, invitation["token"], ca_file=node.ca_file, timeout=TIMEOUT
            )
            assert (p.meeting_id, p.role) == (mid, "host")
            # Bob's meetings do not exist for this key.
            for call in (app.meeting, app.invite, app.participants, app.end_meeting):
                with pytest.raises(ApiError) as err:
                    await call(bobs_meeting)
                assert err.value.status == 404
            # Without cdr:read it reads no records, not even its host's.
            with pytest.raises(ApiError) as err:
                await app.cdrs()
            assert (err.value.status, err.value.code) == (403, "scope_missing")
            ended = await app.end_meeting(mid)
            await p.leave()
            assert ended["record"]["host_id"] == alice.host_id

        # With cdr:read as well, it reads its host's records, and only those.
        both = await apikey_create(node, "meetings:write", "cdr:read", host=alice.email)
        status, body = await cdrs(node, both)
        assert status == 200
        assert ids(body) == [mid]
        status, body = await cdrs(node, both, host_id=alice.host_id)
        assert (status, ids(body)) == (200, [mid])
        status, body = await cdrs(node, both, host_id=bob.host_id)
        assert (status, body["error"]) == (403, "not_yours")
        assert bobs_record["record_id"] not in str(body)
    finally:
        await alice.api.close()
        await bob.api.close()


async def test_apikey_create_refuses_a_meetings_write_key_without_a_known_host(
    node: Node,
) -> None:
    data = str(node.settings.data_dir)
    done = cli("apikey", "create", "--scope", "meetings:write", "--data-dir", data)
    assert done.returncode == 2
    assert "--host" in done.stderr
    assert "sbk_" not in done.stdout + done.stderr
    unknown = ["--host", "nobody@example.com"]
    done = cli("apikey", "create", "--scope", "meetings:write", *unknown, "--data-dir", data)
    assert done.returncode == 2
    assert "nobody@example.com" in done.stderr
    done = cli("apikey", "create", "--scope", "meetings:read", "--data-dir", data)
    assert done.returncode == 2
    _, rows = await apikey_list(node)
    assert rows == []


# listing and revoking


async def test_apikey_list_shows_every_key_never_its_secret_and_when_it_was_last_used(
    node: Node,
) -> None:
    host = await signed_in_host(node)
    try:
        billing = await apikey_create(node, "cdr:read", label="billing")
        app = await apikey_create(node, "meetings:write", host=host.email, label="app")
        out, rows = await apikey_list(node)
        for secret in (billing, app, billing[4:], app[4:]):
            assert secret not in out
        assert "sbk_" not in out
        assert [(r["scopes"], r["host_id"], r["label"], r["state"]) for r in rows] == [
            ("cdr:read", "-", "billing", "active"),
            ("meetings:write", host.host_id, "app", "active"),
        ]
        assert all(r["last_used"] == "never" for r in rows)
        assert all(r["key_id"].startswith("k_") for r in rows)

        before = iso_utc(node.clock.wall())
        status, _ = await cdrs(node, billing)
        assert status == 200
        after = iso_utc(node.clock.wall())
        _, rows = await apikey_list(node)
        used = {r["label"]: r["last_used"] for r in rows}
        assert used["app"] == "never"
        assert before <= used["billing"] <= after  # ISO 8601 UTC sorts as time
        assert rows[0]["created"] <= used["billing"]

        await asyncio.sleep(0.01)
        status, _ = await cdrs(node, billing)
        _, rows = await apikey_list(node)
        assert rows[0]["last_used"] > used["billing"]
    finally:
        await host.api.close()


async def test_a_revoked_key_gets_401_everywhere_at_once(node: Node) -> None:
    host = await signed_in_host(node)
    try:
        billing = await apikey_create(node, "cdr:read", label="billing")
        app = await apikey_create(node, "meetings:write", host=host.email, label="app")
        async with ApiClient(node.api_url, ca_file=node.ca_file, token=app) as client:
            mid = (await client.create_meeting())["meeting_id"]
            assert (await cdrs(node, billing))[0] == 200
            _, rows = await apikey_list(node)
            key_ids = {r["label"]: r["key_id"] for r in rows}
            data = str(node.settings.data_dir)
            for label in ("billing", "app"):
                done = await asyncio.to_thread(
                    cli, "apikey", "revoke", key_ids[label], "--data-dir", data
                )
                assert done.returncode == 0, done.stderr
                assert key_ids[label] in done.stderr

            status, body = await cdrs(node, billing)
            assert (status, body["error"]) == (401, "unauthorized")
            for call in (client.create_meeting, client.meetings, lambda: client.invite(mid)):
                with pytest.raises(ApiError) as err:
                    await call()
                assert err.value.status == 401
        _, rows = await apikey_list(node)
        assert {r["state"] for r in rows} == {"revoked"}
        done = cli("apikey", "revoke", "k_doesnotexist", "--data-dir", data)
        assert done.returncode == 1
        assert "no API key" in done.stderr
        # The host itself is not affected.
        assert [m["meeting_id"] for m in await host.api.meetings()] == [mid]
    finally:
        await host.api.close()


# record filters and who may use them


async def test_record_filters_host_since_until_for_billing_and_hosts_see_only_their_own(
    node: Node,
) -> None:
    alice, bob = await signed_in_host(node), await signed_in_host(node)
    try:
        records = []
        for who in (alice, bob, alice, bob):
            records.append(await finished_meeting(who))
            await asyncio.sleep(0.01)  # distinct end times, millisecond labels apart
        a1, b1, a2, b2 = (r["meeting_id"] for r in records)
        ended = [r["ended_at"] for r in records]
        assert ended == sorted(ended)
        assert len(set(ended)) == 4

        # boundaries strictly between two records' end times (labels are truncated to ms)
        cut = [""] + [between(ended[i - 1], ended[i]) for i in range(1, 4)]

        billing = await apikey_create(node, "cdr:read", label="billing")
        status, body = await cdrs(node, billing)
        assert (status, ids(body)) == (200, [a1, b1, a2, b2])
        assert (await cdrs(node, billing, host_id=alice.host_id))[1]["records"] == [
            records[0],
            records[2],
        ]
        assert ids((await cdrs(node, billing, host_id=bob.host_id))[1]) == [b1, b2]
        assert ids((await cdrs(node, billing, since=cut[2]))[1]) == [a2, b2]
        assert ids((await cdrs(node, billing, until=cut[2]))[1]) == [a1, b1]
        assert ids((await cdrs(node, billing, since=cut[1], until=cut[3]))[1]) == [b1, a2]
        assert ids((await cdrs(node, billing, host_id=bob.host_id, since=cut[2]))[1]) == [b2]
        assert ids((await cdrs(node, billing, until=ended[0]))[1]) == []  # until is exclusive
        assert ids((await cdrs(node, billing, host_id="h_nobody"))[1]) == []
        # filters page with the cursor like everything else
        status, first = await cdrs(node, billing, host_id=alice.host_id, limit=1)
        assert ids(first) == [a1]
        status, second = await cdrs(
            node, billing, host_id=alice.host_id, limit=1, after=first["next_cursor"]
        )
        assert ids(second) == [a2]
        status, third = await cdrs(
            node, billing, host_id=alice.host_id, limit=1, after=second["next_cursor"]
        )
        assert (ids(third), third["next_cursor"]) == ([], second["next_cursor"])
        # a bad time is a clear 422
        status, body = await cdrs(node, billing, since="last tuesday")
        assert (status, body["error"]) == (422, "invalid_request")

        # a host session: its own records; another host's through host_id is 403
        session = alice.api.token
        assert session is not None
        assert ids((await cdrs(node, session))[1]) == [a1, a2]
        assert ids((await cdrs(node, session, host_id=alice.host_id))[1]) == [a1, a2]
        assert ids((await cdrs(node, session, since=cut[1]))[1]) == [a2]
        status, body = await cdrs(node, session, host_id=bob.host_id)
        assert (status, body["error"]) == (403, "not_yours")
        assert "records" not in body

        # a cdr:read key issued for one host reads that host's records only
        bobs = await apikey_create(node, "cdr:read", host=bob.email)
        assert ids((await cdrs(node, bobs))[1]) == [b1, b2]
        assert (await cdrs(node, bobs, host_id=alice.host_id))[0] == 403
        async with ApiClient(node.api_url, ca_file=node.ca_file, token=bobs) as reader:
            with pytest.raises(ApiError) as err:
                await reader.create_meeting()
            assert (err.value.status, err.value.code) == (403, "scope_missing")
    finally:
        await alice.api.close()
        await bob.api.close()


async def test_api_keys_are_stored_as_digests_only(node: Node) -> None:
    host = await signed_in_host(node)
    try:
        key = await apikey_create(node, "meetings:write", "cdr:read", host=host.email)
        async with ApiClient(node.api_url, ca_file=node.ca_file, token=key) as app:
            await app.create_meeting()
        data = node.settings.data_dir
        everything = b"".join(
            path.read_bytes() for path in data.glob("switchboard.db*") if path.is_file()
        )
        assert key.encode() not in everything
        assert key[4:].encode() not in everything
    finally:
        await host.api.close()


async def test_since_a_records_own_ended_at_label_includes_that_record(node: Node) -> None:
    _, _, host_id = await add_host(node)
    ended_at = 1_700_000_000.0229995
    label = iso_utc(ended_at)
    assert label == "2023-11-14T22:13:20.023Z"
    meeting = await node.store.create_meeting(host_id, ended_at - 60)
    record = CallRecord(
        record_id=uuid.uuid4().hex,
        meeting_id=meeting.meeting_id,
        host_id=host_id,
        started_at=ended_at - 60,
        ended_at=ended_at,
        duration_seconds=60.0,
        peak_participants=1,
        distinct_participants=1,
        end_reason="host_ended",
        nodes=(node.node_id,),
    )
    await node.store.finish_meeting(record, sign=node.signer.sign, now=ended_at)
    billing = await apikey_create(node, "cdr:read")
    status, body = await cdrs(node, billing)
    assert status == 200
    assert [r["ended_at"] for r in body["records"]] == [label]
    status, body = await cdrs(node, billing, since=label)
    assert (status, ids(body)) == (200, [meeting.meeting_id])
