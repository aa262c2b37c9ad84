"""The HTTPS API over real TLS: sessions, meetings, invitations, records, and who may do what."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from switchboard.client import ApiClient, ApiError, tls_context
from switchboard.core import tokens
from switchboard.node import Node

from .conftest import Host, add_host, make_settings, signed_in_host


async def billing_key(node: Node, scopes: frozenset[str] = frozenset({"cdr:read"})) -> str:
    token, digest = tokens.mint(tokens.TokenKind.API_KEY)
    await node.store.create_api_key(digest, scopes, "billing", node.clock.wall())
    return token


async def test_openapi_is_served_and_lists_the_endpoints(node: Node) -> None:
    async with httpx.AsyncClient(verify=tls_context(node.ca_file)) as http:
        spec = (await http.get(f"{node.api_url}/openapi.json")).json()
    paths = set(spec["paths"])
    assert {
        "/v1/sessions",
        "/v1/meetings",
        "/v1/meetings/{meeting_id}/invitations",
        "/v1/meetings/{meeting_id}/invitations/{invitation_id}",
        "/v1/meetings/{meeting_id}/end",
        "/v1/cdrs",
    } <= paths


async def test_sign_in_wrong_password_and_unknown_email_look_the_same(node: Node) -> None:
    email, _, _ = await add_host(node)
    async with ApiClient(node.api_url, ca_file=node.ca_file) as api:
        with pytest.raises(ApiError) as wrong:
            await api.sign_in(email, "not the password at all")
        with pytest.raises(ApiError) as unknown:
            await api.sign_in("nobody@example.com", "not the password at all")
    assert (wrong.value.status, wrong.value.code) == (401, "invalid_credentials")
    assert (unknown.value.status, unknown.value.code, unknown.value.reason) == (
        401,
        "invalid_credentials",
        wrong.value.reason,
    )


async def test_session_token_is_stored_only_as_a_digest(host: Host) -> None:
    token = host.api.token
    assert token is not None
    assert token.startswith("sbs_")
    db = (host.node.settings.data_dir / "switchboard.db").read_bytes()
    wal = host.node.settings.data_dir / "switchboard.db-wal"
    everything = db + (wal.read_bytes() if wal.exists() else b"")
    assert token.encode() not in everything
    assert tokens.digest(token) in everything


async def test_no_or_bad_credentials_get_401(node: Node) -> None:
    async with ApiClient(node.api_url, ca_file=node.ca_file) as api:
        for token in (None, "sbs_forged", "sbk_forged", "something-else"):
            api.token = token
            with pytest.raises(ApiError) as err:
                await api.meetings()
            assert err.value.status == 401


async def test_session_idle_timeout_forces_a_new_sign_in(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "var", session_idle_timeout=0.5)
    async with Node(settings) as node:
        h = await signed_in_host(node)
        await h.api.meetings()  # fresh: fine
        await asyncio.sleep(0.3)
        await h.api.meetings()  # used within the idle timeout: extended
        await asyncio.sleep(0.3)
        await h.api.meetings()  # 0.6 s after sign-in but only 0.3 s idle: still fine
        await asyncio.sleep(0.7)
        with pytest.raises(ApiError) as err:
            await h.api.meetings()
        assert (err.value.status, err.value.code) == (401, "session_expired")
        await h.api.close()


async def test_session_absolute_lifetime_ends_even_a_busy_session(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "var", session_max_lifetime=0.6)
    async with Node(settings) as node:
        h = await signed_in_host(node)
        for _ in range(3):
            await h.api.meetings()
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.4)
        with pytest.raises(ApiError) as err:
            await h.api.meetings()
        assert err.value.code == "session_expired"
        await h.api.close()


async def test_sign_out_ends_the_session(host: Host) -> None:
    token = host.api.token
    await host.api.sign_out()
    host.api.token = token
    with pytest.raises(ApiError) as err:
        await host.api.meetings()
    assert err.value.status == 401


async def test_meetings_invitations_lifecycle(host: Host) -> None:
    meeting = await host.api.create_meeting()
    mid = meeting["meeting_id"]
    assert meeting["state"] == "scheduled"
    assert meeting["host_id"] == host.host_id
    assert [m["meeting_id"] for m in await host.api.meetings()] == [mid]

    inv = await host.api.invite(mid, "presenter", expires_in=600, max_uses=3)
    assert inv["token"].startswith("sbi_")
    assert len(inv["token"]) >= 4 + 43  # 256 bits, base64url
    assert inv["join_url"] == host.node.relay_url
    assert (inv["role"], inv["max_uses"], inv["uses"], inv["revoked"]) == ("presenter", 3, 0, False)
    listed = await host.api.invitations(mid)
    assert [i["invitation_id"] for i in listed] == [inv["invitation_id"]]
    assert "token" not in listed[0]

    await host.api.revoke(mid, inv["invitation_id"])
    assert (await host.api.invitations(mid))[0]["revoked"] is True
    with pytest.raises(ApiError) as err:
        await host.api.revoke(mid, "i_nonexistent")
    assert err.value.status == 404

    ended = await host.api.end_meeting(mid)  # no one ever joined: no record
    assert ended["record"] is None
    assert ended["meeting"]["state"] == "ended"
    with pytest.raises(ApiError) as gone:
        await host.api.invite(mid)
    assert gone.value.status == 410


@pytest.mark.parametrize(
    "body",
    [
        {"role": "superuser"},
        {"max_uses": 0},
        {"expires_in": -1},
        {"expires_in": 10**9},
        {"max_uses": 10**6},
        {"role": "attendee", "unexpected": True},
    ],
)
async def test_invalid_invitation_requests_get_422_with_a_reason(host: Host, body: dict) -> None:
    mid = await host.meeting()
    async with httpx.AsyncClient(verify=tls_context(host.node.ca_file)) as http:
        response = await http.post(
            f"{host.node.api_url}/v1/meetings/{mid}/invitations",
            json=body,
            headers={"authorization": f"Bearer {host.api.token}"},
        )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert response.json()["reason"]


async def test_oversized_bodies_are_refused_with_413(host: Host) -> None:
    async with httpx.AsyncClient(verify=tls_context(host.node.ca_file)) as http:
        response = await http.post(
            f"{host.node.api_url}/v1/sessions",
            content=b'{"email": "' + b"x" * 100_000 + b'"}',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


async def test_billing_key_reads_all_records_and_can_do_nothing_else(node: Node) -> None:
    h1, h2 = await signed_in_host(node), await signed_in_host(node)
    for h in (h1, h2):
        mid = await h.meeting()
        p = await h.join(mid)
        await h.api.end_meeting(mid)
        await p.leave()
    key = await billing_key(node)
    async with ApiClient(node.api_url, ca_file=node.ca_file, token=key) as billing:
        page = await billing.cdrs()
        assert {r["host_id"] for r in page["records"]} == {h1.host_id, h2.host_id}
        for forbidden in (billing.create_meeting(), billing.meetings()):
            with pytest.raises(ApiError) as err:
                await forbidden
            assert err.value.status == 403
    # A key without the scope cannot read records either.
    other = await billing_key(node, frozenset())
    async with ApiClient(node.api_url, ca_file=node.ca_file, token=other) as nobody:
        with pytest.raises(ApiError) as err:
            await nobody.cdrs()
        assert err.value.status == 403
    # A host session reads its own records only.
    mine = await h1.api.cdrs()
    assert {r["host_id"] for r in mine["records"]} == {h1.host_id}
    for h in (h1, h2):
        await h.api.close()


async def test_record_pagination_by_cursor(host: Host) -> None:
    mids = []
    for _ in range(5):
        mid = await host.meeting()
        p = await host.join(mid)
        await host.api.end_meeting(mid)
        await p.leave()
        mids.append(mid)
    seen: list[str] = []
    cursor = 0
    while True:
        page = await host.api.cdrs(after=cursor, limit=2)
        if not page["records"]:
            break
        assert len(page["records"]) <= 2
        seen += [r["meeting_id"] for r in page["records"]]
        cursor = page["next_cursor"]
    assert seen == mids  # commit order, no gap, no duplicate


async def test_unknown_paths_and_methods_answer_in_the_error_shape(node: Node) -> None:
    async with httpx.AsyncClient(verify=tls_context(node.ca_file)) as http:
        missing = await http.get(f"{node.api_url}/v1/nothing-here")
        wrong = await http.put(f"{node.api_url}/v1/sessions")
        spec = (await http.get(f"{node.api_url}/openapi.json")).json()
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    invite = spec["paths"]["/v1/meetings/{meeting_id}/invitations"]["post"]["responses"]
    assert invite["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")


async def test_an_invitation_needs_no_body(host: Host) -> None:
    mid = await host.meeting()
    async with httpx.AsyncClient(verify=tls_context(host.node.ca_file)) as http:
        response = await http.post(
            f"{host.node.api_url}/v1/meetings/{mid}/invitations",
            headers={"authorization": f"Bearer {host.api.token}"},
        )
    assert response.status_code == 201
    body = response.json()
    assert (body["role"], body["max_uses"]) == ("attendee", 1)
