"""Host controls, reconnects and limits end to end: real nodes, real TLS, the real SDK.

Every moderation operation is exercised twice: as a host's control frame over the websocket and
as ``POST /v1/meetings/{id}/moderation`` over the HTTPS API; both must have the same effects.
"What everyone received" is read with the ordering barriers of :mod:`tests.test_kinds_e2e`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from websockets.exceptions import ConnectionClosed

from switchboard.client import (
    Admitted,
    ApiError,
    Away,
    Back,
    Chat,
    Disconnected,
    DocumentReceived,
    Ended,
    ErrorFrame,
    Event,
    Joined,
    JoinRefused,
    Left,
    MediaFrame,
    Notice,
    Participant,
)
from switchboard.core.codes import CloseCode
from switchboard.core.wire import Media
from switchboard.node import Node

from .conftest import TIMEOUT, Host, make_settings, next_event, signed_in_host
from .test_kinds_e2e import PING, barrier, is_ping_answer, join, seen, settle, until

module_loop = pytest.mark.asyncio(loop_scope="module")
"""Tests that share a module node run on the module's event loop."""

HIGH_RATES = {"rate_chat": 5000.0, "rate_poll": 5000.0, "rate_control": 5000.0}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def h(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Host]:
    """The node of the moderation tests (rates high enough for the barriers)."""
    async with Node(make_settings(tmp_path_factory.mktemp("mod") / "var", **HIGH_RATES)) as n:
        host = await signed_in_host(n)
        yield host
        await host.api.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Host]:
    """The node of the reconnect tests: a seat is held for 2 seconds."""
    settings = make_settings(
        tmp_path_factory.mktemp("grace") / "var", reconnect_grace=2, **HIGH_RATES
    )
    async with Node(settings) as n:
        host = await signed_in_host(n)
        yield host
        await host.api.close()


async def closed_with(p: Participant) -> tuple[list[Any], int | None]:
    """Everything ``p`` receives until its connection closes, and the close code."""
    got: list[Event] = []
    with pytest.raises(Disconnected) as closed:
        async with asyncio.timeout(TIMEOUT):
            while True:
                got.append(await p.recv())
    return seen(got), closed.value.code


async def join_waiting(h: Host, mid: str, role: str = "attendee", name: str = "") -> Participant:
    token = await h.invite(mid, role)
    return await Participant.join(
        h.node.relay_url,
        token,
        name=name,
        ca_file=h.node.ca_file,
        timeout=TIMEOUT,
        wait_in_lobby=False,
    )


class Moderator:
    """A host's moderation, over the websocket (its control frames) or over the HTTPS API."""

    def __init__(self, via: str, h: Host, mid: str, host: Participant) -> None:
        self.via, self.h, self.mid, self.host = via, h, mid, host

    async def __call__(self, op: str, **fields: Any) -> None:
        if self.via == "ws":
            await self.host.control(op, **fields)
        else:
            roster = await self.h.api.moderate(self.mid, op, **fields)
            assert roster == await self.h.api.participants(self.mid)


VIA = pytest.mark.parametrize("via", ["ws", "api"])


# lobby


@module_loop
@VIA
async def test_lobby_waiting_admit_and_deny(h: Host, via: str) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host", "H")
    att = await join(h, mid, "attendee", "A")
    await settle([host, att])
    mod = Moderator(via, h, mid, host)

    await mod("lobby", on=True)
    mine, theirs = await barrier(host, [att])
    assert mine == theirs[att.pid] == [Notice("lobby", {"on": True})]

    w = await join_waiting(h, mid, name="W")
    assert w.waiting is True
    assert w.roster == {}
    mine, theirs = await barrier(host, [att])
    waiting = Notice("waiting", {"p": {"pid": w.pid, "role": "attendee", "name": "W"}})
    assert mine == [waiting]
    assert theirs[att.pid] == []  # only hosts hear about the lobby
    # Hosts skip the lobby, and learn who waits from their welcome.
    cohost = await join_waiting(h, mid, "host", "C")
    assert cohost.waiting is False
    assert cohost.welcome["waiting"] == [{"pid": w.pid, "role": "attendee", "name": "W"}]
    assert cohost.welcome["lobby"] is True
    await settle([host, att, cohost])
    roster = await h.api.participants(mid)
    assert [(p["pid"], p["lobby"]) for p in roster] == [
        (host.pid, False),
        (att.pid, False),
        (cohost.pid, False),
        (w.pid, True),
    ]

    # The meeting goes on; the waiting one gets none of it.
    await att.publish(1, Media.AUDIO)
    await att.send_media(1, Media.AUDIO, 0, b"voice")
    await att.send_chat("not for the lobby")
    await barrier(att, [host, cohost])
    await host.send_chat("nor this")
    await barrier(host, [att, cohost])
    # Whatever had reached w would be queued before this answer.
    await w.send_chat("let me in")
    assert seen([await w.recv(timeout=TIMEOUT)]) == [("error", "in_lobby")]
    await w.control("receive", m=int(Media.VIDEO), on=False)
    assert seen([await w.recv(timeout=TIMEOUT)]) == [("error", "in_lobby")]
    # Nor can anyone reach it privately.
    await att.send_chat("psst", to=w.pid)
    mine, _ = await barrier(att, [host, cohost])
    assert mine == [("error", "unknown_recipient")]

    await mod("admit", pid=w.pid)
    mine, theirs = await barrier(host, [att, cohost, w])
    joined = Joined({"pid": w.pid, "role": "attendee", "name": "W"})
    assert mine == theirs[att.pid] == theirs[cohost.pid] == [joined]
    assert theirs[w.pid] == [Admitted(w.pid)]  # first thing it gets: the welcome
    assert w.waiting is False
    assert set(w.roster) == {host.pid, att.pid, cohost.pid, w.pid}
    assert w.roster[att.pid]["tracks"] == [[1, int(Media.AUDIO)]]
    await att.send_chat("now you hear me")
    _, theirs = await barrier(att, [host, cohost, w])
    assert theirs[w.pid] == [Chat(att.pid, b"now you hear me", False)]

    # Deny: an error frame, then close 4403; the hosts hear it left.
    inv = await h.api.invite(mid, "attendee", max_uses=2)
    d = await Participant.join(
        h.node.relay_url, inv["token"], ca_file=h.node.ca_file, wait_in_lobby=False
    )
    mine, theirs = await barrier(host, [att, cohost, w])
    assert (
        mine
        == theirs[cohost.pid]
        == [Notice("waiting", {"p": {"pid": d.pid, "role": "attendee", "name": ""}})]
    )
    await mod("deny", pid=d.pid)
    assert await closed_with(d) == ([("error", "denied")], CloseCode.FORBIDDEN)
    mine, theirs = await barrier(host, [att, cohost, w])
    assert mine == theirs[cohost.pid] == [Left(d.pid)]
    assert theirs[att.pid] == theirs[w.pid] == []
    assert d.pid not in {p["pid"] for p in await h.api.participants(mid)}
    revoked = {i["invitation_id"]: i["revoked"] for i in await h.api.invitations(mid)}
    assert revoked[inv["invitation_id"]] is False  # denied, not banned: it may knock again

    # A client that waits inside join() is refused there.
    blocked = asyncio.create_task(
        Participant.join(
            h.node.relay_url, inv["token"], ca_file=h.node.ca_file, name="B", timeout=TIMEOUT
        )
    )
    mine, _ = await barrier(host, [att, cohost, w])
    async with asyncio.timeout(TIMEOUT):
        while not mine:  # the join is under way: wait until the hosts hear it knock
            mine, _ = await barrier(host, [att, cohost, w])
    (knock,) = mine
    assert isinstance(knock, Notice)
    assert knock.op == "waiting"
    await mod("deny", pid=knock.fields["p"]["pid"])
    with pytest.raises(JoinRefused) as refused:
        await blocked
    assert (refused.value.error, refused.value.code) == ("denied", CloseCode.FORBIDDEN)
    await barrier(host, [att, cohost, w])

    # Turning the lobby off admits whoever waits.
    late = await join_waiting(h, mid, name="L")
    await barrier(host, [att, cohost, w])
    await mod("lobby", on=False)
    assert seen([await late.recv(timeout=TIMEOUT)]) == [Admitted(late.pid)]
    mine, _ = await barrier(host, [att, cohost, w, late])
    assert mine == [
        Notice("lobby", {"on": False}),
        Joined({"pid": late.pid, "role": "attendee", "name": "L"}),
    ]
    for p in (host, att, cohost, w, late):
        await p.leave()


# lock


@module_loop
@VIA
async def test_a_locked_meeting_refuses_new_attendees_but_not_hosts(h: Host, via: str) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    att = await join(h, mid, "attendee")
    await settle([host, att])
    mod = Moderator(via, h, mid, host)

    await mod("lock", on=True)
    mine, theirs = await barrier(host, [att])
    assert mine == theirs[att.pid] == [Notice("locked", {"on": True})]
    inv = await h.api.invite(mid, "attendee")
    with pytest.raises(JoinRefused) as refused:
        await Participant.join(
            h.node.relay_url, inv["token"], ca_file=h.node.ca_file, timeout=TIMEOUT
        )
    assert refused.value.error == "meeting_locked"
    assert refused.value.code == CloseCode.FORBIDDEN
    uses = {i["invitation_id"]: i["uses"] for i in await h.api.invitations(mid)}
    assert uses[inv["invitation_id"]] == 0  # a refused join costs no use

    cohost = await join(h, mid, "host", "co-host")
    assert cohost.welcome["locked"] is True
    await mod("lock", on=False)
    late = await Participant.join(
        h.node.relay_url, inv["token"], ca_file=h.node.ca_file, timeout=TIMEOUT
    )
    assert late.welcome["locked"] is False
    for p in (host, att, cohost, late):
        await p.leave()


# eject


@module_loop
@VIA
async def test_eject_closes_revokes_and_keeps_the_ejected_out(h: Host, via: str) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    other = await join(h, mid, "attendee")
    inv = await h.api.invite(mid, "attendee", max_uses=3)
    target = await Participant.join(
        h.node.relay_url, inv["token"], ca_file=h.node.ca_file, timeout=TIMEOUT
    )
    await settle([host, other, target])
    mod = Moderator(via, h, mid, host)

    await mod("eject", pid=target.pid)
    assert await closed_with(target) == ([("error", "ejected")], CloseCode.FORBIDDEN)
    mine, theirs = await barrier(host, [other])
    assert mine == theirs[other.pid] == [Left(target.pid)]
    assert target.pid not in {p["pid"] for p in await h.api.participants(mid)}

    async with asyncio.timeout(TIMEOUT):
        while True:
            listed = {i["invitation_id"]: i for i in await h.api.invitations(mid)}
            if listed[inv["invitation_id"]]["revoked"]:
                break
            await asyncio.sleep(0.02)
    assert listed[inv["invitation_id"]]["uses"] < listed[inv["invitation_id"]]["max_uses"]
    with pytest.raises(JoinRefused) as refused:
        await Participant.join(
            h.node.relay_url, inv["token"], ca_file=h.node.ca_file, timeout=TIMEOUT
        )
    assert refused.value.error == "invitation_revoked"
    assert refused.value.code == CloseCode.INVITATION_INVALID
    # Its resume token died with its seat.
    assert target.resume_token is not None
    with pytest.raises(JoinRefused) as resumed:
        await Participant.join(
            h.node.relay_url,
            target.resume_token,
            resume=True,
            ca_file=h.node.ca_file,
            timeout=TIMEOUT,
        )
    assert resumed.value.error == "resume_invalid"
    for p in (host, other):
        await p.leave()


@module_loop
async def test_a_host_does_not_eject_itself_over_the_websocket(h: Host) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    await host.eject(host.pid)
    mine, _ = await barrier(host, [])
    assert mine == [("error", "bad_field")]
    await host.leave()


# mute, role, webinar


@module_loop
@VIA
async def test_a_muted_track_is_dropped_by_the_relay_until_unmuted(h: Host, via: str) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    pres = await join(h, mid, "presenter")
    att = await join(h, mid, "attendee")
    everyone = [host, pres, att]
    await settle(everyone)
    mod = Moderator(via, h, mid, host)
    await pres.publish(1, Media.AUDIO)
    await pres.publish(2, Media.VIDEO)
    await barrier(pres, everyone)

    def audio(seq: int) -> MediaFrame:
        return MediaFrame(pres.pid, 1, Media.AUDIO, seq, False, None, b"a")

    def video(seq: int) -> MediaFrame:
        return MediaFrame(pres.pid, 2, Media.VIDEO, seq, True, None, b"v")

    async def send(seq: int) -> dict[int, list[Any]]:
        await pres.send_media(1, Media.AUDIO, seq, b"a")
        await pres.send_media(2, Media.VIDEO, seq, b"v", key=True)
        mine, theirs = await barrier(pres, everyone)
        assert mine == []  # dropped on purpose: the sender is not told off
        return theirs

    await mod("mute", pid=pres.pid, track=1)
    muted = Notice("muted", {"pid": pres.pid, "track": 1, "on": True})
    mine, theirs = await barrier(host, everyone)
    assert mine == theirs[pres.pid] == theirs[att.pid] == [muted]
    assert await send(0) == {host.pid: [video(0)], att.pid: [video(0)]}

    await mod("mute", pid=pres.pid, track=1, on=False)
    unmuted = Notice("muted", {"pid": pres.pid, "track": 1, "on": False})
    mine, theirs = await barrier(host, everyone)
    assert mine == theirs[pres.pid] == theirs[att.pid] == [unmuted]
    assert await send(1) == {host.pid: [audio(1), video(1)], att.pid: [audio(1), video(1)]}
    for p in everyone:
        await p.leave()


@module_loop
@VIA
async def test_an_attendee_made_presenter_can_share_a_document(h: Host, via: str) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    att = await join(h, mid, "attendee")
    other = await join(h, mid, "attendee")
    everyone = [host, att, other]
    await settle(everyone)
    mod = Moderator(via, h, mid, host)

    await att.share_document(4, b"slides")
    mine, theirs = await barrier(att, everyone)
    assert mine == [("error", "not_allowed")]
    assert theirs == {host.pid: [], other.pid: []}

    await mod("role", pid=att.pid, role="presenter")
    promoted = Notice("role", {"pid": att.pid, "role": "presenter"})
    mine, theirs = await barrier(host, everyone)
    assert mine == theirs[att.pid] == theirs[other.pid] == [promoted]
    assert att.role == "presenter"
    assert other.roster[att.pid]["role"] == "presenter"
    roles = {p["pid"]: p["role"] for p in await h.api.participants(mid)}
    assert roles[att.pid] == "presenter"

    await att.share_document(4, b"slides")
    mine, theirs = await barrier(att, everyone)
    assert mine == []
    assert theirs == {
        host.pid: [DocumentReceived(att.pid, 4, b"slides", False)],
        other.pid: [DocumentReceived(att.pid, 4, b"slides", False)],
    }
    for p in everyone:
        await p.leave()


@module_loop
@VIA
async def test_webinar_mode_leaves_attendees_receiving_only(h: Host, via: str) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    pres = await join(h, mid, "presenter")
    att = await join(h, mid, "attendee")
    everyone = [host, pres, att]
    await settle(everyone)
    mod = Moderator(via, h, mid, host)

    await mod("webinar", on=True)
    mine, theirs = await barrier(host, everyone)
    on = Notice("webinar", {"on": True})
    assert mine == theirs[pres.pid] == theirs[att.pid] == [on]

    await att.publish(1, Media.VIDEO)
    await att.send_chat("questions still welcome")
    mine, theirs = await barrier(att, everyone)
    assert mine == [("error", "webinar")]
    question = Chat(att.pid, b"questions still welcome", False)
    assert theirs == {host.pid: [question], pres.pid: [question]}
    await pres.publish(1, Media.VIDEO)
    mine, theirs = await barrier(pres, everyone)
    track = Notice("track", {"pid": pres.pid, "track": 1, "m": int(Media.VIDEO), "on": True})
    assert mine == theirs[host.pid] == theirs[att.pid] == [track]
    late = await join(h, mid, "attendee")
    assert late.welcome["webinar"] is True
    everyone.append(late)
    await settle(everyone)

    await mod("webinar", on=False)
    await barrier(host, everyone)
    await att.publish(1, Media.VIDEO)
    mine, _ = await barrier(att, everyone)
    assert mine == [
        Notice("track", {"pid": att.pid, "track": 1, "m": int(Media.VIDEO), "on": True})
    ]
    for p in everyone:
        await p.leave()


@module_loop
async def test_a_repeated_chat_header_is_routed_afresh_each_time(h: Host) -> None:
    """The relay reuses its parse of a chat header that a sender repeats (``Hub.switch``), never
    the routing: the same bytes are refused once the sender may no longer chat and flow again
    when it may, and public and private messages in turn each reach their own audience."""
    mid = await h.meeting()
    host = await join(h, mid, "host")
    att = await join(h, mid, "attendee")
    other = await join(h, mid, "attendee")
    everyone = [host, att, other]
    await settle(everyone)
    hello = Chat(att.pid, b"hello", False)
    psst = Chat(att.pid, b"psst", True)

    await att.send_chat("hello")
    await att.send_chat("hello")
    mine, theirs = await barrier(att, everyone)
    assert mine == []
    assert theirs == {host.pid: [hello, hello], other.pid: [hello, hello]}

    await host.control("role", pid=att.pid, role="support")
    await barrier(host, everyone)
    await att.send_chat("hello")
    await att.send_raw(PING)  # a support participant's barrier marker (a chat) would be refused
    assert seen(await until(att, is_ping_answer)) == [("error", "not_allowed")]
    mine, theirs = await barrier(host, everyone)
    assert theirs == {att.pid: [], other.pid: []}

    await host.control("role", pid=att.pid, role="attendee")
    await barrier(host, everyone)
    await att.send_chat("hello")
    await att.send_chat("psst", to=other.pid)
    await att.send_chat("hello")
    await att.send_chat("psst", to=host.pid)
    await att.send_chat("psst", to=host.pid)
    mine, theirs = await barrier(att, everyone)
    assert mine == []
    assert theirs == {host.pid: [hello, hello, psst, psst], other.pid: [hello, psst, hello]}
    for p in everyone:
        await p.leave()


# end, and who may moderate


@module_loop
async def test_a_host_ends_the_meeting_over_the_websocket(h: Host) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    pres = await join(h, mid, "presenter")
    att = await join(h, mid, "attendee")
    await settle([host, pres, att])
    await att.send_chat("bye")
    await barrier(att, [host, pres])

    await host.end()
    for p in (host, pres, att):
        assert await closed_with(p) == ([Ended("host_ended")], CloseCode.MEETING_ENDED)
    stored = await h.node.store.get_record(mid)
    assert stored is not None
    assert stored.record.end_reason == "host_ended"
    assert stored.record.peak_participants == 3
    assert stored.record.to_dict()["features_used"] == ["chat"]
    assert (await h.api.meeting(mid))["state"] == "ended"
    records = (await h.api.cdrs(limit=1000))["records"]
    assert [r["meeting_id"] for r in records].count(mid) == 1


MODERATION_OPS = ("lobby", "admit", "deny", "lock", "eject", "mute", "role", "webinar", "end")


@module_loop
async def test_presenters_and_attendees_may_not_moderate(h: Host) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    pres = await join(h, mid, "presenter")
    att = await join(h, mid, "attendee")
    everyone = [host, pres, att]
    await settle(everyone)
    roster = await h.api.participants(mid)
    for actor in (pres, att):
        victim = att if actor is pres else pres
        requests: dict[str, dict[str, Any]] = {
            "lobby": {"on": True},
            "admit": {"pid": victim.pid},
            "deny": {"pid": victim.pid},
            "lock": {"on": True},
            "eject": {"pid": host.pid},
            "mute": {"pid": host.pid, "track": 1},
            "role": {"pid": actor.pid, "role": "host"},
            "webinar": {"on": True},
            "end": {},
        }
        assert set(requests) == set(MODERATION_OPS)
        for op, fields in requests.items():
            await actor.control(op, **fields)
        mine, theirs = await barrier(actor, everyone)
        assert mine == [("error", "not_allowed")] * len(MODERATION_OPS)
        assert all(got == [] for got in theirs.values())
    # Nothing changed: same roster, not locked, no lobby, still live.
    assert await h.api.participants(mid) == roster
    assert pres.role == "presenter"
    newcomer = await join(h, mid, "attendee")
    assert newcomer.waiting is False
    assert (newcomer.welcome["lobby"], newcomer.welcome["locked"]) == (False, False)
    assert newcomer.welcome["webinar"] is False
    for p in (*everyone, newcomer):
        await p.leave()


@module_loop
async def test_api_roster_and_moderation_of_meetings_that_are_not_live(h: Host) -> None:
    mid = await h.meeting()
    assert await h.api.participants(mid) == []
    with pytest.raises(ApiError) as not_live:
        await h.api.moderate(mid, "lock", on=True)
    assert not_live.value.status == 404

    host = await join(h, mid, "host", "Ada")
    pres = await join(h, mid, "presenter", "Pat")
    await pres.publish(3, Media.SCREEN)
    await barrier(pres, [host])
    await host.set_lobby(True)
    await barrier(host, [pres])
    waiting = await join_waiting(h, mid, name="Wes")
    assert await h.api.participants(mid) == [
        {
            "pid": host.pid,
            "role": "host",
            "name": "Ada",
            "tracks": [],
            "away": False,
            "lobby": False,
        },
        {
            "pid": pres.pid,
            "role": "presenter",
            "name": "Pat",
            "tracks": [[3, int(Media.SCREEN)]],
            "away": False,
            "lobby": False,
        },
        {
            "pid": waiting.pid,
            "role": "attendee",
            "name": "Wes",
            "tracks": [],
            "away": False,
            "lobby": True,
        },
    ]
    with pytest.raises(ApiError) as unknown:
        await h.api.moderate(mid, "admit", pid=9999)
    assert (unknown.value.status, unknown.value.code) == (400, "unknown_participant")
    with pytest.raises(ApiError) as missing:
        await h.api.moderate(mid, "mute", pid=pres.pid)
    assert missing.value.status == 400  # mute needs a track

    await h.api.end_meeting(mid)
    for p in (host, pres):
        got, code = await closed_with(p)
        assert (got[-1], code) == (Ended("host_ended"), CloseCode.MEETING_ENDED)
    # The lobby is told too, and nothing else.
    assert await closed_with(waiting) == ([Ended("host_ended")], CloseCode.MEETING_ENDED)
    with pytest.raises(ApiError) as ended:
        await h.api.moderate(mid, "lock", on=True)
    assert ended.value.status == 404
    assert await h.api.participants(mid) == []


# reconnects


@module_loop
async def test_a_dropped_host_resumes_with_its_pid_and_role(gh: Host) -> None:
    mid = await gh.meeting()
    host = await join(gh, mid, "host", "H")
    att = await join(gh, mid, "attendee", "A")
    await settle([host, att])
    token, pid = host.resume_token, host.pid
    assert token is not None

    await host.drop()
    assert await until(att, lambda e: isinstance(e, Away)) == []
    assert att.roster[pid]["away"] is True
    away = {p["pid"]: p["away"] for p in await gh.api.participants(mid)}
    assert away == {pid: True, att.pid: False}

    back = await Participant.join(
        gh.node.relay_url, token, resume=True, ca_file=gh.node.ca_file, timeout=TIMEOUT
    )
    assert (back.pid, back.role) == (pid, "host")
    assert set(back.roster) == {pid, att.pid}
    assert back.resume_token not in (None, token)
    assert await until(att, lambda e: isinstance(e, Back) and e.pid == pid) == []
    assert "away" not in att.roster[pid]
    # Still a host: it can moderate.
    await back.lock(True)
    mine, theirs = await barrier(back, [att])
    assert mine == theirs[att.pid] == [Notice("locked", {"on": True})]
    # A resume token works once.
    with pytest.raises(JoinRefused) as again:
        await Participant.join(
            gh.node.relay_url, token, resume=True, ca_file=gh.node.ca_file, timeout=TIMEOUT
        )
    assert (again.value.error, again.value.code) == ("resume_invalid", CloseCode.INVITATION_INVALID)
    for p in (back, att):
        await p.leave()


@module_loop
async def test_a_dropped_participant_is_left_after_the_grace_period(gh: Host) -> None:
    mid = await gh.meeting()
    host = await join(gh, mid, "host")
    att = await join(gh, mid, "attendee")
    await settle([host, att])
    token = att.resume_token
    assert token is not None
    await att.drop()
    await next_event(host, Away)
    dropped = time.monotonic()
    assert await until(host, lambda e: isinstance(e, Left) and e.pid == att.pid) == []
    assert time.monotonic() - dropped > 1.5
    assert att.pid not in {p["pid"] for p in await gh.api.participants(mid)}
    with pytest.raises(JoinRefused) as late:
        await Participant.join(
            gh.node.relay_url, token, resume=True, ca_file=gh.node.ca_file, timeout=TIMEOUT
        )
    assert (late.value.error, late.value.code) == ("resume_invalid", CloseCode.INVITATION_INVALID)
    await host.leave()


@module_loop
async def test_a_meeting_whose_only_host_dropped_waits_out_the_grace(gh: Host) -> None:
    mid = await gh.meeting()
    host = await join(gh, mid, "host")
    token = host.resume_token
    assert token is not None
    await live(gh, mid)  # see test_a_first_joiner_that_drops_at_once_still_started_the_meeting
    await host.drop()
    await asyncio.sleep(1.0)  # half the grace period
    assert (await gh.api.meeting(mid))["state"] == "live"
    assert await gh.node.store.get_record(mid) is None
    assert [p["away"] for p in await gh.api.participants(mid)] == [True]
    back = await Participant.join(
        gh.node.relay_url, token, resume=True, ca_file=gh.node.ca_file, timeout=TIMEOUT
    )
    assert (back.pid, back.role) == (host.pid, "host")
    await asyncio.sleep(1.2)  # past the first grace period: the resumed seat is kept
    assert (await gh.api.meeting(mid))["state"] == "live"
    await back.leave()
    async with asyncio.timeout(TIMEOUT):
        while (stored := await gh.node.store.get_record(mid)) is None:
            await asyncio.sleep(0.02)
    assert stored.record.end_reason == "last_left"


async def live(h: Host, mid: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while (await h.api.meeting(mid))["state"] != "live":
            await asyncio.sleep(0.01)


@module_loop
async def test_a_first_joiner_that_drops_at_once_still_started_the_meeting(gh: Host) -> None:
    seen_states: list[tuple[str, int]] = []
    for _ in range(10):  # the window is a few milliseconds wide: try it ten times
        mid = await gh.meeting()
        inv = await gh.api.invite(mid, "host", max_uses=1)
        first = await Participant.join(
            gh.node.relay_url, inv["token"], ca_file=gh.node.ca_file, timeout=TIMEOUT
        )
        await first.drop()
        async with asyncio.timeout(TIMEOUT):  # until the relay has seen the drop
            while not all(p["away"] for p in await gh.api.participants(mid)):
                await asyncio.sleep(0.01)
        uses = {i["invitation_id"]: i["uses"] for i in await gh.api.invitations(mid)}
        seen_states.append(((await gh.api.meeting(mid))["state"], uses[inv["invitation_id"]]))
    # Live, and the seat (held for a resume) still counts as the invitation's one use.
    assert seen_states == [("live", 1)] * 10


@module_loop
async def test_a_clean_leave_is_left_at_once_without_away(gh: Host) -> None:
    mid = await gh.meeting()
    host = await join(gh, mid, "host")
    att = await join(gh, mid, "attendee")
    await settle([host, att])
    token = att.resume_token
    assert token is not None
    left_at = time.monotonic()
    await att.leave()
    assert await until(host, lambda e: isinstance(e, Left) and e.pid == att.pid) == []
    assert time.monotonic() - left_at < 1.0  # not after the 2 s grace
    with pytest.raises(JoinRefused) as gone:
        await Participant.join(
            gh.node.relay_url, token, resume=True, ca_file=gh.node.ca_file, timeout=TIMEOUT
        )
    assert gone.value.error == "resume_invalid"
    await host.leave()


@module_loop
async def test_resuming_on_a_new_connection_replaces_the_old_one(gh: Host) -> None:
    mid = await gh.meeting()
    host = await join(gh, mid, "host")
    att = await join(gh, mid, "attendee")
    await settle([host, att])
    assert att.resume_token is not None
    again = await Participant.join(
        gh.node.relay_url, att.resume_token, resume=True, ca_file=gh.node.ca_file, timeout=TIMEOUT
    )
    assert again.pid == att.pid
    assert await closed_with(att) == ([], CloseCode.REPLACED)
    # For the others the participant never left: no away, back, left or joined.
    mine, theirs = await barrier(host, [again])
    assert mine == theirs[again.pid] == []
    await again.send_chat("same seat")
    _, theirs = await barrier(again, [host])
    assert theirs[host.pid] == [Chat(att.pid, b"same seat", False)]
    for p in (host, again):
        await p.leave()


@module_loop
async def test_an_unknown_resume_token_is_refused(gh: Host) -> None:
    with pytest.raises(JoinRefused) as refused:
        await Participant.join(
            gh.node.relay_url,
            "sbr_" + "A" * 43,
            resume=True,
            ca_file=gh.node.ca_file,
            timeout=TIMEOUT,
        )
    assert refused.value.error == "resume_invalid"
    assert refused.value.code == CloseCode.INVITATION_INVALID


# limits


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Host]:
    """The node of the limit tests: 5 chats a second (bursts of 10), chats of 1 KiB at most."""
    settings = make_settings(
        tmp_path_factory.mktemp("limits") / "var", rate_chat=5.0, max_chat_bytes=1024
    )
    async with Node(settings) as n:
        host = await signed_in_host(n)
        yield host
        await host.api.close()


async def answered(p: Participant) -> list[Any]:
    """What ``p`` got for its frames so far (the ping of the barriers, without the marker)."""
    await p.send_raw(PING)
    return seen(
        await until(p, lambda event: isinstance(event, ErrorFrame) and event.code == "bad_op")
    )


async def delivered(sender: Participant, others: list[Participant]) -> dict[int, list[Any]]:
    """What ``others`` got from ``sender`` so far: its media track 9 carries the marker."""
    await sender.send_media(9, Media.AUDIO, 0, b"marker")

    def is_marker(event: Event) -> bool:
        return isinstance(event, MediaFrame) and event.sender == sender.pid and event.track == 9

    got = await asyncio.gather(*(until(o, is_marker) for o in others))
    return {o.pid: seen(g) for o, g in zip(others, got, strict=True)}


@module_loop
async def test_flooding_chat_is_rate_limited_and_disturbs_no_one_else(lh: Host) -> None:
    mid = await lh.meeting()
    flooder = await join(lh, mid, "attendee")
    calm = await join(lh, mid, "attendee")
    reader = await join(lh, mid, "attendee")
    await settle([flooder, calm, reader])
    await flooder.publish(9, Media.AUDIO)
    assert await answered(flooder) == [
        Notice("track", {"pid": flooder.pid, "track": 9, "m": 0, "on": True})
    ]
    await calm.publish(9, Media.AUDIO)
    assert await answered(calm) == [
        Notice("track", {"pid": flooder.pid, "track": 9, "m": 0, "on": True}),
        Notice("track", {"pid": calm.pid, "track": 9, "m": 0, "on": True}),
    ]
    await delivered(calm, [flooder, reader])
    await delivered(flooder, [calm, reader])

    for i in range(30):
        await flooder.send_chat(f"flood {i}")
    refused = await answered(flooder)
    got = await delivered(flooder, [calm, reader])
    assert got[calm.pid] == got[reader.pid]
    texts = [e.text for e in got[reader.pid]]
    assert set(refused) == {("error", "rate_limited")}
    assert len(refused) + len(texts) == 30
    assert texts[:10] == [f"flood {i}" for i in range(10)]  # the burst gets through
    assert len(refused) >= 15

    for i in range(8):
        await calm.send_chat(f"calm {i}")
    assert await answered(calm) == []
    got = await delivered(calm, [flooder, reader])
    assert [e.text for e in got[reader.pid]] == [f"calm {i}" for i in range(8)]

    await calm.send_raw(b"\x91\x01")  # not a map: answered, not counted against the rate
    await calm.send_chat("x" * 1025)
    await calm.send_chat("x" * 1024)
    assert await answered(calm) == [("error", "malformed_header"), ("error", "too_large")]
    got = await delivered(calm, [flooder, reader])
    assert got[reader.pid] == [Chat(calm.pid, b"x" * 1024, False)]
    for p in (flooder, calm, reader):
        await p.leave()


async def flood_until_closed(p: Participant, frames: int = 200) -> tuple[list[Any], int | None]:
    with pytest.raises(ConnectionClosed):
        for i in range(frames):
            await p.send_chat(f"spam {i}")
            await asyncio.sleep(0)
    return await closed_with(p)


@module_loop
async def test_a_participant_that_keeps_flooding_is_closed_with_4429(lh: Host) -> None:
    mid = await lh.meeting()
    host = await join(lh, mid, "host")
    abuser = await join(lh, mid, "attendee")
    reader = await join(lh, mid, "attendee")
    await settle([host, abuser, reader])

    refused, code = await flood_until_closed(abuser)
    assert code == CloseCode.ABUSE
    # Fifty refusals within ten seconds (Limits.abuse_strikes): the last one says why.
    assert refused == [("error", "rate_limited")] * 49 + [("error", "abuse")]
    # Everyone else carries on; of the flood they got the burst the rate allowed, nothing more.
    await host.send_chat("still here")
    before = await until(reader, lambda e: isinstance(e, Chat) and e.sender == host.pid)
    spam = [e.text for e in before if isinstance(e, Chat)]
    assert spam == [f"spam {i}" for i in range(len(spam))]
    assert 10 <= len(spam) <= 12
    assert all(isinstance(e, Chat | Away | Left) for e in before)
    await reader.send_chat("me too")
    before = await until(host, lambda e: isinstance(e, Chat) and e.sender == reader.pid)
    assert [e.text for e in before if isinstance(e, Chat)] == spam
    for p in (host, reader):
        await p.leave()


@module_loop
async def test_an_abusive_participant_loses_its_seat(lh: Host) -> None:
    mid = await lh.meeting()
    host = await join(lh, mid, "host")
    abuser = await join(lh, mid, "attendee")
    await settle([host, abuser])
    token = abuser.resume_token
    assert token is not None
    _, code = await flood_until_closed(abuser)
    assert code == CloseCode.ABUSE
    gone = await next_event(host, (Left, Away))
    resumed: Participant | None = None
    try:
        resumed = await Participant.join(
            lh.node.relay_url, token, resume=True, ca_file=lh.node.ca_file, timeout=TIMEOUT
        )
    except JoinRefused as refused:
        assert refused.error == "resume_invalid"
    finally:
        if resumed is not None:
            await resumed.leave()
        await host.leave()
    assert (gone, resumed) == (Left(abuser.pid), None)
