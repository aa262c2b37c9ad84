"""Every frame kind end to end: the permission table over the wire, polls, documents, media.

Real nodes on loopback, real TLS, the real SDK. Expectations about who may send what to whom are
derived from ``switchboard.core.rules.RULES`` (the one table), and what each participant receives
is observed on its own connection, never inferred.

Ordering makes the "and nobody else" checks exact instead of time based: the relay switches the
frames of one connection in order, synchronously, so after a participant's frame it sends

* a control frame with an unknown operation, which the relay refuses with ``bad_op`` (answered
  to the sender alone: everything the sender got before that answer is the answer to its
  frame), and
* a chat marker to everyone (everything another participant got before the marker came from
  that frame).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from switchboard.client import (
    Admitted,
    Chat,
    Disconnected,
    DocumentReceived,
    ErrorFrame,
    Event,
    Joined,
    KeyframeRequested,
    MediaFrame,
    Notice,
    Participant,
    Poll,
    SyncRequested,
)
from switchboard.client.participant import Document
from switchboard.core.rules import RULES, Action, Audience, Role
from switchboard.core.wire import Kind, Media, encode_control, encode_data
from switchboard.node import Node

from .conftest import TIMEOUT, Host, make_settings, next_event, signed_in_host

module_loop = pytest.mark.asyncio(loop_scope="module")
"""The tests share the module's node, so they run on the module's event loop."""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def h(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Host]:
    """One node for the whole module; rates high enough that the barriers never hit a limit.

    Buffers are the defaults: a 20 MiB document is paced through them (the bulk queue).
    """
    settings = make_settings(
        tmp_path_factory.mktemp("kinds") / "var",
        rate_chat=5000.0,
        rate_poll=5000.0,
        rate_control=5000.0,
    )
    async with Node(settings) as n:
        host = await signed_in_host(n)
        yield host
        await host.api.close()


async def join(h: Host, mid: str, role: str, name: str = "", **kw: Any) -> Participant:
    token = await h.invite(mid, role)
    return await Participant.join(
        h.node.relay_url, token, name=name or role, ca_file=h.node.ca_file, timeout=TIMEOUT, **kw
    )


# barriers


PING = encode_control("ping")
"""Not a control operation: the relay answers ``bad_op`` to the sender alone, at no rate cost."""


def is_ping_answer(event: Event) -> bool:
    return isinstance(event, ErrorFrame) and event.code == "bad_op"


async def until(p: Participant, done: Callable[[Event], bool]) -> list[Event]:
    """Events ``p`` receives before the first one ``done`` accepts (which is consumed)."""
    got: list[Event] = []
    async with asyncio.timeout(TIMEOUT * 2):
        while True:
            event = await p.recv()
            if done(event):
                return got
            got.append(event)


def seen(events: Sequence[Event]) -> list[Any]:
    """Events in comparable form: error frames by code (reasons are for people)."""
    return [("error", e.code) if isinstance(e, ErrorFrame) else e for e in events]


_markers = itertools.count()


MARKER_DOC = 0xFFFF_FFFF
"""A document id no test shares: its annotations mark the end of the document channel."""


async def barrier(
    sender: Participant, others: Sequence[Participant], *, documents: bool | None = None
) -> tuple[list[Any], dict]:
    """What ``sender`` and each of ``others`` received since ``sender``'s last frame.

    ``others`` must be everyone else who is connected (the sender itself is skipped), or a
    marker would stay queued and show up in a later barrier. Document frames travel in
    their own paced queue (docs/topics/backpressure.md), so later chat can overtake
    them: when the sender may share documents (a host or presenter, or ``documents=True``)
    a document-kind marker (an annotation, then a stop, of :data:`MARKER_DOC`) closes that
    channel too, and neither shows up in the result.
    """
    if documents is None:
        documents = sender.role in ("host", "presenter")
    others = [o for o in others if o is not sender]
    marker = f"marker-{next(_markers)}".encode()
    doc_marker = marker + b"-doc"
    if documents:
        await sender.send(Kind.DOCUMENT, doc_marker, op="annotate", doc=MARKER_DOC)
        await sender.send(Kind.DOCUMENT, b"", op="stop", doc=MARKER_DOC)
    await sender.send_raw(PING)
    await sender.send_raw(encode_data(Kind.CHAT, None, marker))

    def is_marker(event: Event) -> bool:
        return isinstance(event, Chat) and event.sender == sender.pid and event.payload == marker

    def is_doc_marker(event: Event) -> bool:
        return isinstance(event, Document) and event.doc == MARKER_DOC and event.op == "stop"

    def unmarked(events: list[Event]) -> list[Event]:
        return [e for e in events if not (isinstance(e, Document) and e.doc == MARKER_DOC)]

    async def collect(other: Participant) -> list[Event]:
        got = await until(other, is_marker)
        if not documents:
            return got
        if not any(is_doc_marker(e) for e in got):
            got += await until(other, is_doc_marker)
        return unmarked(got)

    mine, *theirs = await asyncio.gather(
        until(sender, is_ping_answer), *(collect(o) for o in others)
    )
    return seen(mine), {o.pid: seen(t) for o, t in zip(others, theirs, strict=True)}


async def settle(everyone: Sequence[Participant]) -> None:
    """Let every join announcement arrive (the last joiner's frames come after them)."""
    await barrier(everyone[-1], everyone[:-1])


# the permission table, exhaustively over the wire

_E, _1, _O, _R = Audience.EVERYONE, Audience.ONE, Audience.OWNER, Audience.RELAY
REACHABLE: dict[Action, frozenset[Audience]] = {
    Action.CHAT: frozenset({_E, _1}),
    Action.POLL_OPEN: frozenset({_E, _1}),
    Action.POLL_ANSWER: frozenset({_O, _1}),
    Action.POLL_RESULTS: frozenset({_E, _1}),
    Action.POLL_CLOSE: frozenset({_E, _1}),
    Action.DOCUMENT: frozenset({_E, _1}),
    Action.AUDIO: frozenset({_E, _1}),
    Action.VIDEO: frozenset({_E, _1}),
    Action.SCREEN: frozenset({_E, _1}),
    Action.MODERATE: frozenset({_R}),
    Action.RECEIVE: frozenset({_R}),
}
"""Which audiences a client can address with each action at all.

Data frames go to everyone (no ``to``) or to one (``to``); a poll answer without ``to`` goes to
the poll's owner; control requests go to the relay (publishing a track is announced to
everyone). No frame reaches the other cells, so the table must not grant them.
"""

MEDIA_OF = {Action.AUDIO: Media.AUDIO, Action.VIDEO: Media.VIDEO, Action.SCREEN: Media.SCREEN}
TRACK_OF = {Media.AUDIO: 10, Media.VIDEO: 11, Media.SCREEN: 12}
POLL_ACTIONS = {
    Action.POLL_OPEN: "open",
    Action.POLL_ANSWER: "answer",
    Action.POLL_RESULTS: "results",
    Action.POLL_CLOSE: "close",
}


def refusal(role: Role, action: Action, audience: Audience, webinar: bool) -> str | None:
    """The error code RULES implies for this cell, or None where it is allowed."""
    rule = RULES.get((role, action))
    if rule is None or audience not in rule.audiences:
        return "not_allowed"
    if webinar and not rule.in_webinar:
        return "webinar"
    return None


def test_the_table_grants_nothing_a_frame_cannot_reach() -> None:
    for (role, action), rule in RULES.items():
        assert rule.audiences <= REACHABLE[action], (role, action)
    assert set(REACHABLE) == set(Action)


@module_loop
async def test_permission_table_exhaustively_over_the_wire(h: Host) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host", auto_sync=False)
    pres = await join(h, mid, "presenter", auto_sync=False)
    att = await join(h, mid, "attendee", auto_sync=False)
    sup = await join(h, mid, "support", "support", auto_sync=False)
    bystander = await join(h, mid, "attendee", "bystander", auto_sync=False)
    everyone = [host, pres, att, sup, bystander]
    await settle(everyone)
    sender_of = {Role.HOST: host, Role.PRESENTER: pres, Role.ATTENDEE: att, Role.SUPPORT: sup}
    target = bystander  # the "one" of every to-one cell

    # Polls owned by someone else, for the answers: the host's and the presenter's.
    await host.send(Kind.POLL, b"host poll", op="open", poll=100)
    await barrier(host, [pres, att, sup, bystander])
    await pres.send(Kind.POLL, b"presenter poll", op="open", poll=101)
    await barrier(pres, [host, att, sup, bystander])
    answerable = {
        host.pid: (101, pres),
        pres.pid: (100, host),
        att.pid: (100, host),
        sup.pid: (100, host),
    }

    outcome: dict[tuple[Role, Action, Audience, bool], str] = {}
    exercised = 0
    for webinar in (False, True):
        if webinar:
            await host.webinar(True)
            mine, theirs = await barrier(host, [pres, att, sup, bystander])
            on = Notice("webinar", {"on": True})
            assert mine == [on]
            assert all(got == [on] for got in theirs.values())
        for role, action, audience in itertools.product(Role, Action, Audience):
            if audience not in REACHABLE[action]:
                continue
            s = sender_of[role]
            others = [p for p in everyone if p is not s]
            payload = f"{int(webinar)}/{role}/{action}/{audience}".encode()
            to = target.pid if audience is _1 else None
            own_poll, own_doc = 200 + 10 * s.pid + int(webinar), 300 + s.pid
            frames: list[bytes]
            expect: dict[int, list[Any]] = {p.pid: [] for p in everyone}
            deliver_to = others if audience is _E else [target]

            if action is Action.CHAT:
                frames = [encode_data(Kind.CHAT, to, payload)]
                for p in deliver_to:
                    expect[p.pid] = [Chat(s.pid, payload, audience is not _E)]
            elif action is Action.POLL_ANSWER:
                poll, owner = answerable[s.pid]
                if audience is _O:
                    deliver_to = [owner]
                frames = [encode_data(Kind.POLL, to, payload, op="answer", poll=poll)]
                for p in deliver_to:
                    expect[p.pid] = [Poll(s.pid, "answer", poll, payload, True)]
            elif action in POLL_ACTIONS:
                op = POLL_ACTIONS[action]
                if op != "open" and refusal(role, Action.POLL_OPEN, _E, webinar) is None:
                    # Results and close need a poll of one's own, open right now.
                    await s.send(Kind.POLL, b"q", op="open", poll=own_poll)
                    mine, _ = await barrier(s, others)
                    assert mine == []
                frames = [encode_data(Kind.POLL, to, payload, op=op, poll=own_poll)]
                for p in deliver_to:
                    expect[p.pid] = [Poll(s.pid, op, own_poll, payload, audience is not _E)]
            elif action is Action.DOCUMENT:
                frames = [
                    encode_data(
                        Kind.DOCUMENT,
                        to,
                        payload,
                        op="chunk",
                        doc=own_doc,
                        seq=0,
                        fin=True,
                        size=len(payload),
                    )
                ]
                for p in deliver_to:
                    expect[p.pid] = [DocumentReceived(s.pid, own_doc, payload, audience is not _E)]
            elif action in MEDIA_OF:
                m = MEDIA_OF[action]
                track = TRACK_OF[m]
                media = encode_data(
                    Kind.MEDIA, to, payload, track=track, m=int(m), seq=7, key=True, ts=1234
                )
                frame = MediaFrame(s.pid, track, m, 7, True, 1234, payload)
                if audience is _E:
                    # Publishing the track is this cell too: announced to everyone, sender included.
                    publish = encode_control("publish", track=track, m=int(m), on=True)
                    frames = [publish, media]
                    announced = Notice(
                        "track", {"pid": s.pid, "track": track, "m": int(m), "on": True}
                    )
                    for p in everyone:
                        expect[p.pid] = [announced]
                else:
                    frames = [media]
                for p in deliver_to:
                    expect[p.pid].append(frame)
            elif action is Action.MODERATE:
                frames = [encode_control("lock", on=False)]
                for p in everyone:
                    expect[p.pid] = [Notice("locked", {"on": False})]
            else:
                assert action is Action.RECEIVE
                frames = [encode_control("receive", m=int(Media.AUDIO), on=True)]

            code = refusal(role, action, audience, webinar)
            if code is not None:
                expect = {p.pid: [] for p in everyone}
                expect[s.pid] = [("error", code)] * len(frames)

            for frame_bytes in frames:
                await s.send_raw(frame_bytes)
            if role is Role.SUPPORT:
                # Support may not chat, so it cannot send the barrier's marker. Its
                # ping answer says the relay has handled its frames; the host's
                # barrier then collects what they caused everywhere.
                await s.send_raw(PING)
                mine = seen(await until(s, is_ping_answer))
                host_saw, theirs = await barrier(host, [p for p in everyone if p is not host])
                got = {**theirs, host.pid: host_saw, s.pid: mine + theirs[s.pid]}
            else:
                mine, theirs = await barrier(s, others)
                got = {s.pid: mine, **theirs}
            assert got == expect, (role, action, audience, webinar)
            outcome[(role, action, audience, webinar)] = code or "delivered"
            exercised += 1

    assert exercised == 2 * len(Role) * sum(len(a) for a in REACHABLE.values())
    # A few policy facts, stated here as well as in the table.
    assert outcome[(Role.ATTENDEE, Action.DOCUMENT, _E, False)] == "not_allowed"
    assert outcome[(Role.ATTENDEE, Action.DOCUMENT, _1, False)] == "not_allowed"
    assert outcome[(Role.ATTENDEE, Action.POLL_ANSWER, _O, False)] == "delivered"
    assert outcome[(Role.ATTENDEE, Action.POLL_ANSWER, _1, False)] == "not_allowed"
    assert outcome[(Role.ATTENDEE, Action.POLL_OPEN, _E, False)] == "not_allowed"
    assert outcome[(Role.ATTENDEE, Action.VIDEO, _E, False)] == "delivered"
    assert outcome[(Role.ATTENDEE, Action.VIDEO, _E, True)] == "webinar"
    assert outcome[(Role.ATTENDEE, Action.CHAT, _E, True)] == "delivered"
    assert outcome[(Role.PRESENTER, Action.VIDEO, _E, True)] == "delivered"
    assert outcome[(Role.PRESENTER, Action.MODERATE, _R, False)] == "not_allowed"
    assert outcome[(Role.HOST, Action.MODERATE, _R, True)] == "delivered"
    assert outcome[(Role.HOST, Action.VIDEO, _1, False)] == "not_allowed"
    for p in everyone:
        await p.leave()


@module_loop
async def test_attendee_cannot_share_a_document_with_the_sdk(h: Host) -> None:
    mid = await h.meeting()
    pres = await join(h, mid, "presenter")
    att = await join(h, mid, "attendee")
    other = await join(h, mid, "attendee")
    await settle([pres, att, other])
    await att.share_document(9, b"x" * 1000)
    mine, theirs = await barrier(att, [pres, other])
    assert mine == [("error", "not_allowed")]
    assert theirs == {pres.pid: [], other.pid: []}
    for p in (pres, att, other):
        await p.leave()


# polls


@module_loop
async def test_poll_answers_reach_only_the_owner_and_results_reach_everyone(h: Host) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    pres = await join(h, mid, "presenter")
    a1 = await join(h, mid, "attendee")
    a2 = await join(h, mid, "attendee")
    everyone = [host, pres, a1, a2]
    await settle(everyone)

    await pres.open_poll(7, b"Tea or coffee?")
    mine, theirs = await barrier(pres, [host, a1, a2])
    assert mine == []
    assert all(
        got == [Poll(pres.pid, "open", 7, b"Tea or coffee?", False)] for got in theirs.values()
    )

    for voter, answer in ((a1, b"tea"), (a2, b"coffee")):
        await voter.answer_poll(7, answer)
        mine, theirs = await barrier(voter, [p for p in everyone if p is not voter])
        assert mine == []
        for pid, got in theirs.items():
            expected = [Poll(voter.pid, "answer", 7, answer, True)] if pid == pres.pid else []
            assert got == expected, pid  # other attendees and the host receive nothing

    # Only the owner publishes results or closes; the owner does not answer itself.
    await host.send(Kind.POLL, b"forged", op="results", poll=7)
    await host.send(Kind.POLL, b"", op="close", poll=7)
    mine, theirs = await barrier(host, [pres, a1, a2])
    assert mine == [("error", "not_poll_owner"), ("error", "not_poll_owner")]
    assert all(got == [] for got in theirs.values())
    await pres.answer_poll(7, b"me")
    mine, theirs = await barrier(pres, [host, a1, a2])
    assert mine == [("error", "poll_owner")]
    assert all(got == [] for got in theirs.values())

    await pres.publish_results(7, b"tea 1, coffee 1")
    mine, theirs = await barrier(pres, [host, a1, a2])
    assert mine == []
    results = Poll(pres.pid, "results", 7, b"tea 1, coffee 1", False)
    assert all(got == [results] for got in theirs.values())

    # A late joiner gets the open poll and its results from the owner, privately.
    late = await join(h, mid, "attendee", "late")
    assert isinstance(await next_event(pres, SyncRequested), SyncRequested)
    await pres.synced()
    mine, theirs = await barrier(pres, [host, a1, a2, late])
    assert theirs[late.pid] == [
        Poll(pres.pid, "open", 7, b"Tea or coffee?", True),
        Poll(pres.pid, "results", 7, b"tea 1, coffee 1", True),
    ]
    for p in (host, a1, a2):
        assert [type(e) for e in theirs[p.pid]] == [Joined]
    everyone.append(late)

    await pres.close_poll(7)
    mine, theirs = await barrier(pres, [host, a1, a2, late])
    assert mine == []
    assert all(got == [Poll(pres.pid, "close", 7, b"", False)] for got in theirs.values())

    await a1.answer_poll(7, b"too late")
    mine, theirs = await barrier(a1, [host, pres, a2, late])
    assert mine == [("error", "poll_closed")]
    assert all(got == [] for got in theirs.values())
    for p in everyone:
        await p.leave()


# documents


@module_loop
async def test_a_20_mib_document_reaches_everyone_and_a_late_joiner_alone_gets_the_resend(
    h: Host,
) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    pres = await join(h, mid, "presenter")
    att = await join(h, mid, "attendee")
    await settle([host, pres, att])
    doc = os.urandom(20 << 20)

    await pres.share_document(5, doc)
    await pres.turn_page(5, 3)
    mine, theirs = await barrier(pres, [host, att])
    assert mine == []
    page = Document(pres.pid, "page", 5, b"", 3, False)
    for got in theirs.values():
        assert len(got) == 2
        assert got[0] == DocumentReceived(pres.pid, 5, doc, False)
        assert got[1] == page

    late = await join(h, mid, "attendee", "late")
    assert (await next_event(pres, SyncRequested)).pid == late.pid
    await pres.synced()
    mine, theirs = await barrier(pres, [host, att, late])
    assert mine == []
    resent = theirs[late.pid]
    assert len(resent) == 2
    assert isinstance(resent[0], DocumentReceived)
    assert resent[0].private is True
    assert resent[0].sender == pres.pid
    assert resent[0].doc == 5
    assert resent[0].data == doc  # byte for byte
    assert resent[1] == Document(pres.pid, "page", 5, b"", 3, True)
    # The others got only the news that someone joined: not a byte of the re-send.
    for p in (host, att):
        assert [type(e) for e in theirs[p.pid]] == [Joined]

    await att.share_document(6, doc[:4096])
    mine, theirs = await barrier(att, [host, pres, late])
    assert mine == [("error", "not_allowed")]
    assert all(got == [] for got in theirs.values())
    for p in (host, pres, att, late):
        await p.leave()


@module_loop
async def test_a_stopped_document_is_not_resent_and_the_lobby_gets_nothing_until_admitted(
    h: Host,
) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    pres = await join(h, mid, "presenter")
    await settle([host, pres])
    await pres.share_document(1, b"shown, then stopped")
    await pres.stop_document(1)
    await pres.share_document(2, b"still shown")
    mine, theirs = await barrier(pres, [host])
    assert mine == []
    assert theirs[host.pid] == [
        DocumentReceived(pres.pid, 1, b"shown, then stopped", False),
        Document(pres.pid, "stop", 1, b"", None, False),
        DocumentReceived(pres.pid, 2, b"still shown", False),
    ]

    await host.set_lobby(True)
    await barrier(host, [pres])
    token = await h.invite(mid, "attendee")
    waiting = await Participant.join(
        h.node.relay_url, token, ca_file=h.node.ca_file, timeout=TIMEOUT, wait_in_lobby=False
    )
    # No sync while it waits: the owner is not asked, so nothing can leak into the lobby.
    _, theirs = await barrier(host, [pres])
    assert [type(e) for e in theirs[pres.pid]] == []
    await host.admit(waiting.pid)
    assert seen([await waiting.recv(timeout=TIMEOUT)]) == [Admitted(waiting.pid)]
    assert (await next_event(pres, SyncRequested)).pid == waiting.pid
    await pres.synced()
    _, theirs = await barrier(pres, [host, waiting])
    assert theirs[waiting.pid] == [DocumentReceived(pres.pid, 2, b"still shown", True)]
    assert [type(e) for e in theirs[host.pid]] == [Joined]  # no re-send
    for p in (host, pres, waiting):
        await p.leave()


async def test_a_20_mib_document_with_default_settings_reaches_every_receiver(
    tmp_path: Path,
) -> None:
    """Every receiver gets it, at worst after resuming as docs/topics/backpressure.md says."""
    async with Node(make_settings(tmp_path / "var")) as n:
        h = await signed_in_host(n)
        mid = await h.meeting()
        pres = await h.join(mid, "presenter")
        receivers = [await h.join(mid, "attendee"), await h.join(mid, "host")]
        connected = [pres, *receivers]
        closes: list[int | None] = []
        try:
            doc = os.urandom(20 << 20)
            await pres.share_document(1, doc)
            for r in receivers:
                for _attempt in range(3):
                    try:
                        got = await next_event(r, DocumentReceived, timeout=TIMEOUT * 2)
                    except Disconnected as closed:
                        closes.append(closed.code)
                        assert r.resume_token is not None
                        r = await Participant.join(  # the resumed connection
                            n.relay_url, r.resume_token, resume=True, ca_file=n.ca_file
                        )
                        connected.append(r)
                        continue
                    assert got.data == doc
                    break
            assert closes == []
        finally:
            for p in connected:
                await p.leave()
            await h.api.close()


# media


@module_loop
async def test_media_read_by_header_layout_is_still_checked_frame_by_frame(h: Host) -> None:
    """Media headers without a timestamp are read by byte layout after a track's first frame
    (``wire.read_media``); the track is still checked on every frame, and a track republished
    with another media type is read right."""
    mid = await h.meeting()
    host = await join(h, mid, "host")
    pres = await join(h, mid, "presenter")
    att = await join(h, mid, "attendee")
    everyone = [host, pres, att]
    await settle(everyone)
    viewers = [host, att]

    def frame(seq: int, media: Media, key: bool) -> MediaFrame:
        return MediaFrame(pres.pid, 1, media, seq, key, None, b"m%d" % seq)

    await pres.publish(1, Media.AUDIO)
    await barrier(pres, viewers)
    sent = [(0, False), (1, True), (200, False), (70_000, True), (2**32 - 1, False)]
    for seq, key in sent:
        await pres.send_media(1, Media.AUDIO, seq, b"m%d" % seq, key=key)
    mine, theirs = await barrier(pres, viewers)
    assert mine == []
    expected = [frame(seq, Media.AUDIO, key) for seq, key in sent]
    assert theirs == {host.pid: expected, att.pid: expected}
    # The SDK's headers have the layout: after the first frame, no frame of the track was parsed.
    (conn,) = [c for c in h.node.hub.connections if c.participant and c.participant.pid == pres.pid]
    assert [(layout.track, layout.m) for layout in conn.layouts] == [(1, int(Media.AUDIO))]

    await pres.publish(1, Media.AUDIO, on=False)
    await pres.send_media(1, Media.AUDIO, 2, b"gone")
    mine, theirs = await barrier(pres, viewers)
    withdrawn = Notice("track", {"pid": pres.pid, "track": 1, "m": int(Media.AUDIO), "on": False})
    assert mine == [withdrawn, ("error", "track_not_published")]
    assert theirs == {host.pid: [withdrawn], att.pid: [withdrawn]}

    await pres.publish(1, Media.VIDEO)
    await pres.send_media(1, Media.VIDEO, 3, b"m3", key=True)
    await pres.send_media(1, Media.VIDEO, 4, b"m4")
    await pres.send_media(1, Media.AUDIO, 5, b"m5")  # the audio layout, on a video track now
    mine, theirs = await barrier(pres, viewers)
    published = Notice("track", {"pid": pres.pid, "track": 1, "m": int(Media.VIDEO), "on": True})
    assert mine == [published, ("error", "bad_field")]
    expected = [published, frame(3, Media.VIDEO, True), frame(4, Media.VIDEO, False)]
    assert theirs == {host.pid: expected, att.pid: expected}
    assert [(layout.track, layout.m) for layout in conn.layouts] == [
        (1, int(Media.AUDIO)),
        (1, int(Media.VIDEO)),
    ]
    for p in everyone:
        await p.leave()


@module_loop
async def test_media_publish_subscribe_receive_and_keyframe_requests(h: Host) -> None:
    mid = await h.meeting()
    host = await join(h, mid, "host")
    pres = await join(h, mid, "presenter")
    no_video = await join(h, mid, "attendee", "no video")
    no_audio = await join(h, mid, "attendee", "no audio")
    everyone = [host, pres, no_video, no_audio]
    await settle(everyone)
    viewers = [host, no_video, no_audio]

    await pres.publish(1, Media.VIDEO)
    await pres.publish(2, Media.AUDIO)
    mine, theirs = await barrier(pres, viewers)
    announced = [
        Notice("track", {"pid": pres.pid, "track": 1, "m": int(Media.VIDEO), "on": True}),
        Notice("track", {"pid": pres.pid, "track": 2, "m": int(Media.AUDIO), "on": True}),
    ]
    assert mine == announced
    assert all(got == announced for got in theirs.values())
    assert no_video.roster[pres.pid]["tracks"] == [[1, int(Media.VIDEO)], [2, int(Media.AUDIO)]]

    await no_video.receive(Media.VIDEO, on=False)
    assert (await barrier(no_video, everyone))[0] == []
    await no_audio.subscribe(pres.pid, 2, on=False)
    assert (await barrier(no_audio, everyone))[0] == []

    async def send_both(seq: int) -> dict[int, list[Any]]:
        await pres.send_media(1, Media.VIDEO, seq, b"v%d" % seq, key=True, ts=seq * 10)
        await pres.send_media(2, Media.AUDIO, seq, b"a%d" % seq, ts=seq * 10)
        mine, theirs = await barrier(pres, viewers)
        assert mine == []
        return theirs

    def video(seq: int) -> MediaFrame:
        return MediaFrame(pres.pid, 1, Media.VIDEO, seq, True, seq * 10, b"v%d" % seq)

    def audio(seq: int) -> MediaFrame:
        return MediaFrame(pres.pid, 2, Media.AUDIO, seq, False, seq * 10, b"a%d" % seq)

    theirs = await send_both(0)
    assert theirs[host.pid] == [video(0), audio(0)]
    assert theirs[no_video.pid] == [audio(0)]  # audio but no video
    assert theirs[no_audio.pid] == [video(0)]  # one track stopped, the other flows

    await no_video.receive(Media.VIDEO, on=True)
    await barrier(no_video, everyone)
    await no_audio.subscribe(pres.pid, 2, on=True)
    await barrier(no_audio, everyone)
    theirs = await send_both(1)
    assert all(got == [video(1), audio(1)] for got in theirs.values())

    # Media on a track that is not published, or not of that type, is refused.
    await pres.send_media(3, Media.VIDEO, 0, b"nope", key=True)
    await pres.send_media(2, Media.VIDEO, 0, b"wrong type", key=True)
    mine, theirs = await barrier(pres, viewers)
    assert mine == [("error", "track_not_published"), ("error", "bad_field")]
    assert all(got == [] for got in theirs.values())
    # Withdrawn tracks are not published any more.
    await pres.publish(2, Media.AUDIO, on=False)
    await pres.send_media(2, Media.AUDIO, 5, b"gone")
    mine, theirs = await barrier(pres, viewers)
    withdrawn = Notice("track", {"pid": pres.pid, "track": 2, "m": int(Media.AUDIO), "on": False})
    assert mine == [withdrawn, ("error", "track_not_published")]
    assert all(got == [withdrawn] for got in theirs.values())

    # Keyframe requests reach the track's owner, throttled to one per track per 0.5 s.
    await no_video.request_keyframe(pres.pid, 1)
    await no_video.request_keyframe(pres.pid, 1)
    mine, theirs = await barrier(no_video, [host, pres, no_audio])
    assert mine == []
    assert theirs[pres.pid] == [KeyframeRequested(1)]
    assert theirs[host.pid] == theirs[no_audio.pid] == []
    await no_audio.request_keyframe(pres.pid, 1)  # another requester, same track: throttled
    await no_audio.request_keyframe(pres.pid, 2)  # withdrawn track
    mine, theirs = await barrier(no_audio, [host, pres, no_video])
    assert mine == [("error", "track_not_published")]
    assert theirs[pres.pid] == []
    await asyncio.sleep(0.55)
    await no_video.request_keyframe(pres.pid, 1)
    mine, theirs = await barrier(no_video, [host, pres, no_audio])
    assert theirs[pres.pid] == [KeyframeRequested(1)]
    for p in everyone:
        await p.leave()
