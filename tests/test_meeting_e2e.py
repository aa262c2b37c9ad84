"""A meeting end to end: real TLS on loopback, the real SDK, a real SQLite store."""

from __future__ import annotations

import asyncio
import ssl

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from switchboard.client import (
    Chat,
    Disconnected,
    Ended,
    ErrorFrame,
    Joined,
    JoinRefused,
    Left,
    Participant,
    tls_context,
)
from switchboard.core.codes import CloseCode
from switchboard.core.wire import Kind, encode_join
from switchboard.node import Node

from .conftest import TIMEOUT, Host, next_event, signed_in_host


async def quiet(p: Participant, seconds: float = 0.3) -> list[object]:
    """Whatever ``p`` receives within ``seconds`` (expected: nothing)."""
    got: list[object] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                got.append(await p.recv())
    except TimeoutError:
        pass
    return got


async def test_chat_reaches_every_other_participant_and_no_one_else(host: Host) -> None:
    m1, m2 = await host.meeting(), await host.meeting()
    a = await host.join(m1, "host", "A")
    b = await host.join(m1, "attendee", "B")
    c = await host.join(m1, "presenter", "C")
    outsider = await host.join(m2, "attendee", "X")
    await next_event(a, Joined)
    await next_event(a, Joined)
    await next_event(b, Joined)

    await a.send_chat("hello meeting one")
    for p in (b, c):
        chat = await next_event(p, Chat)
        assert chat == Chat(sender=a.pid, payload=b"hello meeting one", private=False)
    assert [e for e in await quiet(a) if isinstance(e, Chat)] == []  # not echoed to the sender
    assert await quiet(outsider) == []  # nothing crosses meetings

    for p in (a, b, c, outsider):
        await p.leave()


async def test_sender_is_stamped_by_the_relay_not_the_client(host: Host) -> None:
    mid = await host.meeting()
    a = await host.join(mid)
    b = await host.join(mid)
    forged = msgpack.packb({"k": int(Kind.CHAT), "from": 999, "extra": "x"}) + b"payload"
    await a.send_raw(forged)
    chat = await next_event(b, Chat)
    assert chat.sender == a.pid
    assert chat.text == "payload"
    await a.leave()
    await b.leave()


async def test_private_chat_reaches_only_its_recipient(host: Host) -> None:
    mid = await host.meeting()
    a = await host.join(mid)
    b = await host.join(mid)
    c = await host.join(mid)
    await a.send_chat("just for b", to=b.pid)
    chat = await next_event(b, Chat)
    assert chat == Chat(sender=a.pid, payload=b"just for b", private=True)
    assert not [e for e in await quiet(c) if isinstance(e, Chat)]
    for p in (a, b, c):
        await p.leave()


async def test_roster_in_welcome_and_updates_on_join_and_leave(host: Host) -> None:
    mid = await host.meeting()
    a = await host.join(mid, "host", "Ada")
    b = await host.join(mid, "attendee", "Bob")
    assert set(b.roster) == {a.pid, b.pid}
    assert b.roster[a.pid] == {"pid": a.pid, "role": "host", "name": "Ada"}
    joined = await next_event(a, Joined)
    assert joined.participant == {"pid": b.pid, "role": "attendee", "name": "Bob"}
    assert set(a.roster) == {a.pid, b.pid}
    await b.leave()
    left = await next_event(a, Left)
    assert left.pid == b.pid
    assert set(a.roster) == {a.pid}
    await a.leave()


async def test_bad_frames_get_error_frames_and_the_connection_stays(host: Host) -> None:
    mid = await host.meeting()
    a = await host.join(mid)
    b = await host.join(mid)
    cases = {
        b"\xc1garbage": "malformed_header",
        msgpack.packb([1, 2, 3]): "malformed_header",
        msgpack.packb({"k": 77}): "unknown_kind",
        msgpack.packb({"k": int(Kind.CHAT), "to": "bob"}): "bad_recipient",
        msgpack.packb({"k": int(Kind.CHAT), "to": 4242}): "unknown_recipient",
        msgpack.packb({"k": int(Kind.CHAT), "to": a.pid}): "unknown_recipient",
    }
    for raw, code in cases.items():
        await a.send_raw(raw)
        error = await next_event(a, ErrorFrame)
        assert error.code == code
    await a.send_raw("text frames are not accepted")
    assert (await next_event(a, ErrorFrame)).code == "binary_only"
    # Still connected, still switching, and b saw none of it.
    await a.send_chat("still here")
    chat = await next_event(b, Chat)
    assert chat.text == "still here"
    assert not [e for e in await quiet(b) if not isinstance(e, Joined)]
    await a.leave()
    await b.leave()


@pytest.mark.parametrize(
    ("setup", "error", "close_code"),
    [
        ("unknown", "invitation_unknown", CloseCode.INVITATION_INVALID),
        ("revoked", "invitation_revoked", CloseCode.INVITATION_INVALID),
        ("expired", "invitation_expired", CloseCode.INVITATION_INVALID),
        ("used", "invitation_used", CloseCode.INVITATION_INVALID),
        ("ended", "meeting_ended", CloseCode.MEETING_ENDED),
    ],
)
async def test_bad_invitations_are_refused_with_a_clear_error_and_close_code(
    host: Host, setup: str, error: str, close_code: int
) -> None:
    mid = await host.meeting()
    if setup == "unknown":
        token = "sbi_" + "A" * 43
    elif setup == "revoked":
        inv = await host.api.invite(mid)
        await host.api.revoke(mid, inv["invitation_id"])
        token = inv["token"]
    elif setup == "expired":
        token = await host.invite(mid, expires_in=0.2)
        await asyncio.sleep(0.3)
    elif setup == "used":
        token = await host.invite(mid)
        first = await Participant.join(host.node.relay_url, token, ca_file=host.node.ca_file)
    else:
        token = await host.invite(mid, max_uses=2)
        await host.api.end_meeting(mid)
    with pytest.raises(JoinRefused) as refused:
        await Participant.join(
            host.node.relay_url, token, ca_file=host.node.ca_file, timeout=TIMEOUT
        )
    assert refused.value.error == error
    assert refused.value.code == close_code
    if setup == "used":
        await first.leave()


async def test_single_use_invitation_admits_exactly_one_of_many_racing_joins(host: Host) -> None:
    mid = await host.meeting()
    token = await host.invite(mid, max_uses=1)
    results = await asyncio.gather(
        *(
            Participant.join(host.node.relay_url, token, ca_file=host.node.ca_file)
            for _ in range(8)
        ),
        return_exceptions=True,
    )
    joined = [r for r in results if isinstance(r, Participant)]
    refused = [r for r in results if isinstance(r, JoinRefused)]
    assert len(joined) == 1
    assert len(refused) == 7
    assert {r.error for r in refused} == {"invitation_used"}
    await joined[0].leave()


async def test_host_ends_meeting_record_committed_and_everyone_closed(host: Host) -> None:
    mid = await host.meeting()
    people = [await host.join(mid, role) for role in ("host", "presenter", "attendee")]
    await people[0].send_chat("one")
    await next_event(people[1], Chat)
    ended = await host.api.end_meeting(mid)
    record = ended["record"]
    assert ended["meeting"]["state"] == "ended"
    assert record["end_reason"] == "host_ended"
    assert record["peak_participants"] == 3
    assert record["distinct_participants"] == 3
    assert record["features_used"] == ["chat"]
    assert record["usage"]["chat"]["frames"] == 1
    assert record["usage"]["chat"]["deliveries"] == 2
    assert record["duration_seconds"] >= 0
    for p in people:
        assert (await next_event(p, Ended)).reason == "host_ended"
        with pytest.raises(Disconnected) as closed:
            await p.recv(timeout=TIMEOUT)
        assert closed.value.code == CloseCode.MEETING_ENDED
    # The record is durable: it is in the store, once.
    page = await host.api.cdrs()
    assert [r["meeting_id"] for r in page["records"]] == [mid]
    # Ending again is harmless and returns the same record.
    again = await host.api.end_meeting(mid)
    assert again["record"]["record_id"] == record["record_id"]


async def test_last_participant_leaving_ends_the_meeting_with_a_record(host: Host) -> None:
    mid = await host.meeting()
    token = await host.invite(mid, max_uses=3)
    a = await Participant.join(host.node.relay_url, token, ca_file=host.node.ca_file)
    b = await Participant.join(host.node.relay_url, token, ca_file=host.node.ca_file)
    await a.leave()
    await b.leave()
    async with asyncio.timeout(TIMEOUT):
        while True:
            stored = await host.node.store.get_record(mid)
            if stored is not None:
                break
            await asyncio.sleep(0.02)
    assert stored.record.end_reason == "last_left"
    assert stored.record.distinct_participants == 2
    assert (await host.api.meeting(mid))["state"] == "ended"
    # Nobody can come back into an ended meeting, even with uses left.
    with pytest.raises(JoinRefused) as refused:
        await Participant.join(host.node.relay_url, token, ca_file=host.node.ca_file)
    assert refused.value.code == CloseCode.MEETING_ENDED
    assert refused.value.error == "meeting_ended"


async def test_join_must_come_first_and_be_well_formed(host: Host) -> None:
    ctx = tls_context(host.node.ca_file)
    async with connect(host.node.relay_url, ssl=ctx, compression=None) as ws:
        await ws.send(msgpack.packb({"k": 1}) + b"chat before join")
        error = msgpack.unpackb(await ws.recv(), raw=False)
        assert error["op"] == "error"
        assert error["code"] == "bad_join"
        await ws.wait_closed()
        assert ws.close_code == CloseCode.BAD_REQUEST


async def test_a_connection_that_never_joins_is_closed(tmp_path) -> None:
    from .conftest import make_settings

    async with Node(make_settings(tmp_path / "var", join_timeout=0.3)) as n:
        ctx = tls_context(n.ca_file)
        async with connect(n.relay_url, ssl=ctx, compression=None) as ws:
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert ws.close_code == CloseCode.JOIN_TIMEOUT


async def test_invitation_never_in_the_url_and_only_one_path(host: Host) -> None:
    ctx = tls_context(host.node.ca_file)
    base = host.node.relay_url
    with pytest.raises(InvalidStatus) as bad:
        await connect(base + "?inv=sbi_x", ssl=ctx)
    assert bad.value.response.status_code == 400
    with pytest.raises(InvalidStatus) as missing:
        await connect(base.replace("/v1/ws", "/elsewhere"), ssl=ctx)
    assert missing.value.response.status_code == 404


async def test_join_message_in_first_frame_works_with_a_raw_client(host: Host) -> None:
    """A client written from docs/protocol.md alone: raw websocket plus msgpack."""
    mid = await host.meeting()
    token = await host.invite(mid, "attendee")
    peer = await host.join(mid)
    ctx = ssl.create_default_context(cafile=str(host.node.ca_file))
    async with connect(host.node.relay_url, ssl=ctx, compression=None) as ws:
        await ws.send(encode_join(token, "raw"))
        welcome = msgpack.unpackb(await ws.recv(), raw=False)
        assert welcome["op"] == "welcome"
        assert welcome["v"] == 1
        assert welcome["meeting"] == mid
        assert {p["pid"] for p in welcome["roster"]} == {peer.pid, welcome["pid"]}
        await ws.send(msgpack.packb({"k": 1}) + b"\x00\xffopaque bytes")
        chat = await next_event(peer, Chat)
        assert chat.sender == welcome["pid"]
        assert chat.payload == b"\x00\xffopaque bytes"  # byte for byte, never decoded
    await peer.leave()


async def test_two_hosts_do_not_see_each_others_meetings(node: Node, host: Host) -> None:
    other = await signed_in_host(node)
    mid = await host.meeting()
    assert [m["meeting_id"] for m in await other.api.meetings()] == []
    from switchboard.client import ApiError

    with pytest.raises(ApiError) as err:
        await other.api.invite(mid)
    assert err.value.status == 404
    await other.api.close()


async def test_a_full_relay_answers_503_and_keeps_serving_the_others(tmp_path) -> None:
    from .conftest import make_settings

    async with Node(make_settings(tmp_path / "var", max_connections=1)) as n:
        ctx = tls_context(n.ca_file)
        async with connect(n.relay_url, ssl=ctx, compression=None) as first:
            with pytest.raises(InvalidStatus) as full:
                await connect(n.relay_url, ssl=ctx, compression=None)
            assert full.value.response.status_code == 503
            await first.send(encode_join("sbi_unknown"))
            refused = msgpack.unpackb(await first.recv(), raw=False)
            assert refused["code"] == "invitation_unknown"  # the first one is still served


async def test_a_refused_join_gives_its_invitation_use_back(tmp_path) -> None:
    from .conftest import make_settings

    async with Node(make_settings(tmp_path / "var", max_participants=1)) as n:
        h = await signed_in_host(n)
        mid = await h.meeting()
        first = await h.join(mid)
        inv = await h.api.invite(mid)
        with pytest.raises(JoinRefused) as full:
            await Participant.join(n.relay_url, inv["token"], ca_file=n.ca_file)
        assert full.value.error == "meeting_full"
        assert full.value.code == CloseCode.FORBIDDEN
        listed = {i["invitation_id"]: i for i in await h.api.invitations(mid)}
        assert listed[inv["invitation_id"]]["uses"] == 0
        await first.leave()
        await h.api.close()


def _silent_client(port: int, ca: str, token: str, interval: float) -> int | None:
    """Join, then never answer a ping; return the close code the relay sends."""
    import socket

    from websockets.client import ClientProtocol
    from websockets.frames import Close
    from websockets.uri import parse_uri

    proto = ClientProtocol(parse_uri(f"wss://localhost:{port}/v1/ws"))
    ctx = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        proto.send_request(proto.connect())
        for data in proto.data_to_send():
            sock.sendall(data)
        while proto.state.name == "CONNECTING":
            proto.receive_data(sock.recv(65536))
            proto.events_received()
        proto.send_binary(encode_join(token))
        for data in proto.data_to_send():
            sock.sendall(data)
        # From here on, read but never send: pings go unanswered.
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            proto.receive_data(chunk)
            for event in proto.events_received():
                if getattr(event, "opcode", None) is not None and event.opcode.name == "CLOSE":
                    return Close.parse(event.data).code


async def test_a_client_that_stops_answering_pings_is_closed(tmp_path) -> None:
    from .conftest import make_settings

    async with Node(make_settings(tmp_path / "var", ping_interval=0.2)) as n:
        h = await signed_in_host(n)
        mid = await h.meeting()
        token = await h.invite(mid)
        other = await h.join(mid)
        code = await asyncio.to_thread(_silent_client, n.relay_port, str(n.ca_file), token, 0.2)
        assert code == CloseCode.PING_TIMEOUT
        # The healthy participant (whose SDK answers pings) is still there.
        await other.send_chat("still alive")
        await h.api.close()
        await other.leave()
