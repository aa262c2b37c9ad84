"""The meeting state machine (core/meeting.py) and call records (core/records.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchboard.config import Settings
from switchboard.core import records, wire
from switchboard.core.codes import CloseCode
from switchboard.core.limits import KindLimit, Limits
from switchboard.core.meeting import (
    KEYFRAME_INTERVAL,
    Admitted,
    Announce,
    EndRequested,
    KeyframeRequest,
    Meeting,
    MeetingState,
    Participant,
    Presence,
    Removed,
    Route,
)
from switchboard.core.records import (
    COLUMNS,
    FEATURES,
    CallRecord,
    EndReason,
    FeatureUsage,
    UsageMeter,
    feature_of,
    iso_utc,
)
from switchboard.core.rules import Audience, Role
from switchboard.core.wire import ClientFrame, Kind, Media
from switchboard.errors import Abuse, Forbidden, FrameError, MeetingEnded

T0_WALL = 1_700_000_000.0
T0_MONO = 5_000.0
NOW = T0_MONO + 10.0

_SEATS = itertools.count(1)


def new_meeting(max_participants: int = 10, limits: Limits | None = None) -> Meeting:
    return Meeting(
        "m_1",
        "h_1",
        started_at=T0_WALL,
        started_mono=T0_MONO,
        max_participants=max_participants,
        limits=limits,
    )


def join(meeting: Meeting, role: Role = Role.ATTENDEE, name: str = "p") -> Participant:
    n = next(_SEATS)
    return meeting.join(role=role, name=name, seat=f"i_{n}#1", invitation_id=f"i_{n}")


def data(kind: Kind, to: int | None = None, **fields: Any) -> ClientFrame:
    """A data frame as the relay sees it: encoded as a client does, then parsed."""
    return wire.parse_client_frame(wire.encode_data(kind, to, b"", **fields))


def chat(to: int | None = None) -> ClientFrame:
    return data(Kind.CHAT, to)


def poll(op: str, poll_id: int, to: int | None = None) -> ClientFrame:
    return data(Kind.POLL, to, op=op, poll=poll_id)


def chunk(doc: int, seq: int, to: int | None = None) -> ClientFrame:
    return data(Kind.DOCUMENT, to, op="chunk", doc=doc, seq=seq)


def document(op: str, doc: int, to: int | None = None, **fields: Any) -> ClientFrame:
    return data(Kind.DOCUMENT, to, op=op, doc=doc, **fields)


def media(track: int, m: Media, to: int | None = None, *, key: bool = False) -> ClientFrame:
    return data(Kind.MEDIA, to, track=track, m=int(m), seq=0, key=key)


def ctl(op: str, **fields: Any) -> ClientFrame:
    return wire.parse_client_frame(wire.encode_control(op, **fields))


def control(
    meeting: Meeting, actor: Participant, op: str, now: float = NOW, **fields: Any
) -> list[Any]:
    return meeting.control(actor, ctl(op, **fields), now)


def route(
    meeting: Meeting, sender: Participant, frame: ClientFrame, nbytes: int = 10, now: float = NOW
) -> Route | None:
    return meeting.route(sender, frame, nbytes, now)


def publish(meeting: Meeting, p: Participant, track: int, m: Media, *, on: bool = True) -> None:
    control(meeting, p, "publish", track=track, m=int(m), on=on)


def refused(call: Any, *args: Any, **kwargs: Any) -> Forbidden | FrameError:
    """The error ``call`` raises (a Forbidden or a FrameError; anything else fails)."""
    with pytest.raises((Forbidden, FrameError)) as info:
        call(*args, **kwargs)
    return info.value


def code_of(call: Any, *args: Any, **kwargs: Any) -> str:
    return refused(call, *args, **kwargs).code


# --- roster --------------------------------------------------------------------


def test_new_meeting_is_live_and_empty() -> None:
    meeting = new_meeting()
    assert meeting.state is MeetingState.LIVE
    assert meeting.empty
    assert meeting.roster() == []
    assert meeting.end_reason is None
    assert (meeting.lobby_on, meeting.locked, meeting.webinar) == (False, False, False)
    assert meeting.limits == Limits()


def test_join_adds_to_roster_in_join_order() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.HOST, name="Ada", seat="i_1#1")
    b = meeting.join(role=Role.ATTENDEE, name="Bob", seat="i_2#1")
    assert isinstance(a, Participant)
    assert a.presence is Presence.HERE
    assert not meeting.empty
    assert meeting.roster() == [
        {"pid": a.pid, "role": "host", "name": "Ada"},
        {"pid": b.pid, "role": "attendee", "name": "Bob"},
    ]
    assert meeting.participants[a.pid] is a


def test_join_keeps_the_invitation_id_for_an_eject() -> None:
    meeting = new_meeting()
    p = meeting.join(role=Role.ATTENDEE, name="n", seat="i_9#1", invitation_id="i_9")
    assert (p.seat, p.invitation_id) == ("i_9#1", "i_9")


def test_roster_never_shows_the_seat_or_invitation() -> None:
    meeting = new_meeting()
    meeting.join(role=Role.PRESENTER, name="P", seat="i_secret#1", invitation_id="i_secret")
    assert "i_secret" not in repr(meeting.roster())


def test_roster_shows_tracks_and_away() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER, "P")
    join(meeting, Role.ATTENDEE, "A")
    publish(meeting, p, 2, Media.VIDEO)
    publish(meeting, p, 1, Media.AUDIO)
    assert p.public() == {
        "pid": p.pid,
        "role": "presenter",
        "name": "P",
        "tracks": [[1, 0], [2, 1]],
    }
    meeting.away(p.pid)
    assert meeting.roster()[0]["away"] is True
    assert "away" not in meeting.roster()[1]


def test_pids_are_unique_and_increasing_even_after_leaves() -> None:
    meeting = new_meeting(max_participants=3)
    seen: list[int] = []
    for i in range(20):
        p = meeting.join(role=Role.ATTENDEE, name=f"p{i}", seat=f"s{i}")
        seen.append(p.pid)
        if i % 2 == 0:
            assert meeting.leave(p.pid) is p
        if len(meeting.participants) == 3:
            meeting.leave(next(iter(meeting.participants)))
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert all(pid > 0 for pid in seen)


def test_leave_returns_participant_once_then_none() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.ATTENDEE, name="a", seat="s1")
    assert meeting.leave(a.pid) is a
    assert meeting.leave(a.pid) is None
    assert meeting.leave(12345) is None
    assert meeting.empty
    # A double leave does not make the meter count below zero.
    assert meeting.meter.current == 0


def test_max_participants_refuses_with_meeting_full() -> None:
    meeting = new_meeting(max_participants=2)
    a = meeting.join(role=Role.HOST, name="a", seat="s1")
    meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    with pytest.raises(Forbidden) as info:
        meeting.join(role=Role.ATTENDEE, name="c", seat="s3")
    assert info.value.code == "meeting_full"
    assert len(meeting.participants) == 2
    # A seat frees up when someone leaves.
    meeting.leave(a.pid)
    c = meeting.join(role=Role.ATTENDEE, name="c", seat="s3")
    assert c.pid in meeting.participants


def test_refused_join_is_not_metered() -> None:
    meeting = new_meeting(max_participants=1)
    meeting.join(role=Role.HOST, name="a", seat="s1")
    with pytest.raises(Forbidden):
        meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    assert meeting.meter.peak == 1
    meeting.begin_end(EndReason.HOST_ENDED)
    record = meeting.finish(record_id="r", ended_at=T0_WALL + 1, ended_mono=T0_MONO + 1)
    assert record.distinct_participants == 1


# --- routing -------------------------------------------------------------------


def test_route_without_to_is_everyone_and_with_to_is_one() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.ATTENDEE, name="a", seat="s1")
    b = meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    assert route(meeting, a, chat()) == Route(Audience.EVERYONE)
    assert route(meeting, a, chat(b.pid)) == Route(Audience.ONE, b.pid)
    assert route(meeting, b, chat(a.pid)) == Route(Audience.ONE, a.pid)
    assert Route(Audience.EVERYONE).target is None


def test_route_to_self_is_unknown_recipient() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.ATTENDEE, name="a", seat="s1")
    meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    assert code_of(route, meeting, a, chat(a.pid)) == "unknown_recipient"


@pytest.mark.parametrize("to", [0, -1, 99, 2**40])
def test_route_to_unknown_pid_is_unknown_recipient(to: int) -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.ATTENDEE, name="a", seat="s1")
    with pytest.raises(FrameError) as info:
        meeting.route(a, ClientFrame(Kind.CHAT, to, 3), 1, NOW)
    assert info.value.code == "unknown_recipient"


def test_route_to_someone_who_left_is_unknown_recipient() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.ATTENDEE, name="a", seat="s1")
    b = meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    meeting.leave(b.pid)
    assert code_of(route, meeting, a, chat(b.pid)) == "unknown_recipient"


@pytest.mark.parametrize("role", list(Role))
def test_route_applies_the_rules_table(role: Role) -> None:
    meeting = new_meeting()
    sender = meeting.join(role=role, name="s", seat="s1")
    other = meeting.join(role=Role.ATTENDEE, name="o", seat="s2")
    # A control request is never switched to participants as data.
    with pytest.raises(Forbidden) as info:
        meeting.route(sender, ClientFrame(Kind.CONTROL, None, 3), 0, NOW)
    assert info.value.code == "not_allowed"
    with pytest.raises(Forbidden):
        meeting.route(sender, ClientFrame(Kind.CONTROL, other.pid, 3), 0, NOW)


def test_route_does_not_change_the_roster_or_meter() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.ATTENDEE, name="a", seat="s1")
    meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    before = meeting.roster()
    route(meeting, a, chat())
    with pytest.raises(FrameError):
        route(meeting, a, chat(99))
    assert meeting.roster() == before
    meeting.begin_end(EndReason.HOST_ENDED)
    record = meeting.finish(record_id="r", ended_at=T0_WALL, ended_mono=T0_MONO)
    assert record.features == {}


def test_chat_to_an_away_participant_still_routes_to_it() -> None:
    # The seat is held while it reconnects; the relay decides what to do with the frame.
    meeting = new_meeting()
    a = join(meeting)
    b = join(meeting)
    meeting.away(b.pid)
    assert route(meeting, a, chat(b.pid)) == Route(Audience.ONE, b.pid)


# --- lobby ---------------------------------------------------------------------


def test_lobby_on_keeps_everyone_but_hosts_waiting() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    assert control(meeting, host, "lobby", on=True) == [Announce("lobby", {"on": True})]
    assert meeting.lobby_on
    attendee = join(meeting, Role.ATTENDEE)
    presenter = join(meeting, Role.PRESENTER)
    host2 = join(meeting, Role.HOST)
    assert attendee.presence is Presence.LOBBY
    assert presenter.presence is Presence.LOBBY
    assert host2.presence is Presence.HERE
    assert meeting.lobby == {attendee.pid: attendee, presenter.pid: presenter}
    assert list(meeting.participants) == [host.pid, host2.pid]
    assert [p["pid"] for p in meeting.roster()] == [host.pid, host2.pid]
    # Waiting is not attending: the record counts admitted participants only.
    assert (meeting.meter.current, meeting.meter.peak) == (2, 2)


def test_lobby_participants_send_nothing_and_receive_nothing() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    control(meeting, host, "lobby")
    waiting = join(meeting, Role.PRESENTER)
    assert code_of(route, meeting, waiting, chat()) == "in_lobby"
    assert code_of(route, meeting, waiting, chat(host.pid)) == "in_lobby"
    assert code_of(control, meeting, waiting, "receive", m=1, on=False) == "in_lobby"
    # Nobody can address it either.
    assert code_of(route, meeting, host, chat(waiting.pid)) == "unknown_recipient"


def test_admit_lets_a_waiting_participant_in() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    control(meeting, host, "lobby")
    waiting = join(meeting)
    assert control(meeting, host, "admit", pid=waiting.pid) == [Admitted(waiting)]
    assert waiting.presence is Presence.HERE
    assert meeting.lobby == {}
    assert meeting.participants[waiting.pid] is waiting
    assert meeting.meter.current == 2
    assert route(meeting, waiting, chat()) == Route(Audience.EVERYONE)
    # Only the lobby can be admitted from.
    assert code_of(control, meeting, host, "admit", pid=waiting.pid) == "unknown_participant"
    assert code_of(control, meeting, host, "admit", pid=999) == "unknown_participant"


def test_deny_turns_a_waiting_participant_away() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    other = join(meeting)
    control(meeting, host, "lobby")
    waiting = join(meeting)
    events = control(meeting, host, "deny", pid=waiting.pid)
    assert len(events) == 1
    removed = events[0]
    assert isinstance(removed, Removed)
    assert removed.participant is waiting
    assert removed.code == "denied"
    assert removed.reason
    assert removed.revoke is False
    assert waiting.pid not in meeting.lobby
    assert waiting.pid not in meeting.participants
    assert meeting.meter.current == 2
    # deny is for the lobby; an admitted participant is ejected instead.
    assert code_of(control, meeting, host, "deny", pid=other.pid) == "unknown_participant"


def test_turning_the_lobby_off_admits_everyone_waiting() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    control(meeting, host, "lobby", on=True)
    a = join(meeting)
    b = join(meeting, Role.PRESENTER)
    events = control(meeting, host, "lobby", on=False)
    assert events == [Announce("lobby", {"on": False}), Admitted(a), Admitted(b)]
    assert not meeting.lobby_on
    assert meeting.lobby == {}
    assert a.presence is b.presence is Presence.HERE
    assert list(meeting.participants) == [host.pid, a.pid, b.pid]
    assert join(meeting).presence is Presence.HERE


@pytest.mark.parametrize("role", [Role.PRESENTER, Role.ATTENDEE])
@pytest.mark.parametrize("op", ["lobby", "admit", "deny", "lock", "webinar", "end"])
def test_only_hosts_moderate(role: Role, op: str) -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    control(meeting, host, "lobby")
    actor = join(meeting, role)
    control(meeting, host, "admit", pid=actor.pid)
    waiting = join(meeting)
    assert code_of(control, meeting, actor, op, pid=waiting.pid) == "not_allowed"
    # Nothing changed.
    assert meeting.lobby_on
    assert not meeting.locked
    assert not meeting.webinar
    assert waiting.pid in meeting.lobby


def test_lobby_counts_towards_max_participants() -> None:
    meeting = new_meeting(max_participants=2)
    host = join(meeting, Role.HOST)
    control(meeting, host, "lobby")
    join(meeting)
    assert code_of(join, meeting) == "meeting_full"


def test_a_meeting_with_only_the_lobby_left_is_empty() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    control(meeting, host, "lobby")
    join(meeting)
    meeting.leave(host.pid)
    assert meeting.empty


def test_leaving_from_the_lobby_is_not_metered() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    control(meeting, host, "lobby")
    waiting = join(meeting)
    assert meeting.leave(waiting.pid) is waiting
    assert meeting.lobby == {}
    assert meeting.meter.current == 1


# --- lock ----------------------------------------------------------------------


def test_lock_refuses_everyone_but_hosts() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    assert control(meeting, host, "lock") == [Announce("locked", {"on": True})]
    assert meeting.locked
    for role in (Role.ATTENDEE, Role.PRESENTER):
        error = refused(join, meeting, role)
        assert isinstance(error, Forbidden)
        assert error.code == "meeting_locked"
    assert join(meeting, Role.HOST).presence is Presence.HERE
    assert len(meeting.participants) == 2
    assert meeting.meter.peak == 2
    assert control(meeting, host, "lock", on=False) == [Announce("locked", {"on": False})]
    assert not meeting.locked
    assert join(meeting).presence is Presence.HERE


def test_a_locked_meeting_does_not_fill_its_lobby() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    control(meeting, host, "lobby")
    control(meeting, host, "lock")
    assert code_of(join, meeting) == "meeting_locked"
    assert meeting.lobby == {}
    # A host still comes straight in.
    assert join(meeting, Role.HOST).presence is Presence.HERE


def test_lock_via_the_api() -> None:
    meeting = new_meeting()
    join(meeting, Role.HOST)
    assert meeting.apply(None, "lock", {"on": True}, NOW) == [Announce("locked", {"on": True})]
    assert code_of(join, meeting) == "meeting_locked"


def test_join_checks_locked_before_full() -> None:
    meeting = new_meeting(max_participants=1)
    host = join(meeting, Role.HOST)
    control(meeting, host, "lock")
    assert code_of(join, meeting) == "meeting_locked"
    assert code_of(join, meeting, Role.HOST) == "meeting_full"


def test_a_resume_is_not_checked_against_lock_or_lobby() -> None:
    meeting = new_meeting(max_participants=2)
    host = join(meeting, Role.HOST)
    a = join(meeting)
    meeting.away(a.pid)
    control(meeting, host, "lock")
    control(meeting, host, "lobby")
    assert meeting.back(a.pid) is a
    assert a.presence is Presence.HERE
    assert meeting.lobby == {}


# --- eject and leaving -----------------------------------------------------------


def busy_presenter(meeting: Meeting, host: Participant, poll_id: int = 7) -> Participant:
    """A presenter with an open poll, a shared document (3) and a muted track (1)."""
    presenter = join(meeting, Role.PRESENTER)
    route(meeting, presenter, poll("open", poll_id))
    route(meeting, presenter, chunk(3, 0))
    publish(meeting, presenter, 1, Media.AUDIO)
    control(meeting, host, "mute", pid=presenter.pid, track=1)
    assert meeting.polls[poll_id] == presenter.pid
    assert (presenter.pid, 3) in meeting.documents
    assert (presenter.pid, 1) in meeting.muted
    return presenter


def test_eject_removes_and_revokes() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    other = join(meeting)
    presenter = busy_presenter(meeting, host)
    events = control(meeting, host, "eject", pid=presenter.pid)
    assert len(events) == 1
    removed = events[0]
    assert isinstance(removed, Removed)
    assert removed.participant is presenter
    assert (removed.code, removed.revoke) == ("ejected", True)
    assert removed.reason
    assert presenter.pid not in meeting.participants
    assert meeting.meter.current == 2
    # What it owned goes with it.
    assert meeting.polls == {}
    assert meeting.documents == set()
    assert meeting.muted == set()
    assert meeting.sync_owners(other.pid) == []
    assert code_of(route, meeting, other, poll("answer", 7)) == "poll_closed"
    assert code_of(route, meeting, other, chat(presenter.pid)) == "unknown_recipient"


def test_leaving_cleans_up_polls_documents_and_mutes() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    presenter = busy_presenter(meeting, host)
    meeting.leave(presenter.pid)
    assert (meeting.polls, meeting.documents, meeting.muted) == ({}, set(), set())
    # The poll id is free for someone else now.
    successor = join(meeting, Role.PRESENTER)
    assert route(meeting, successor, poll("open", 7)) == Route(Audience.EVERYONE)
    assert meeting.polls == {7: successor.pid}


def test_leaving_keeps_what_others_own() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    keeper = busy_presenter(meeting, host)
    leaver = busy_presenter(meeting, host, poll_id=8)
    meeting.leave(leaver.pid)
    assert meeting.polls == {7: keeper.pid}
    assert meeting.documents == {(keeper.pid, 3)}
    assert meeting.muted == {(keeper.pid, 1)}


def test_eject_from_the_lobby_revokes_too() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    control(meeting, host, "lobby")
    waiting = join(meeting)
    [removed] = control(meeting, host, "eject", pid=waiting.pid)
    assert isinstance(removed, Removed)
    assert removed.participant is waiting
    assert (removed.code, removed.revoke) == ("ejected", True)
    assert meeting.lobby == {}


def test_eject_errors() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    attendee = join(meeting)
    assert code_of(control, meeting, host, "eject", pid=host.pid) == "bad_field"
    assert code_of(control, meeting, host, "eject", pid=999) == "unknown_participant"
    assert code_of(control, meeting, attendee, "eject", pid=host.pid) == "not_allowed"
    assert set(meeting.participants) == {host.pid, attendee.pid}


def test_eject_via_the_api() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    [removed] = meeting.apply(None, "eject", {"pid": host.pid}, NOW)
    assert isinstance(removed, Removed)
    assert removed.participant is host
    assert meeting.empty


def test_apply_unknown_operation() -> None:
    meeting = new_meeting()
    with pytest.raises(FrameError) as info:
        meeting.apply(None, "explode", {}, NOW)
    assert info.value.code == "bad_op"


def test_end_is_requested_by_hosts_only() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    presenter = join(meeting, Role.PRESENTER)
    assert code_of(control, meeting, presenter, "end") == "not_allowed"
    assert control(meeting, host, "end") == [EndRequested()]
    # Ending is the relay's job (it writes the record); the request changes nothing yet.
    assert meeting.state is MeetingState.LIVE


# --- mute ----------------------------------------------------------------------


def test_mute_drops_the_muted_track_only() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    p = join(meeting, Role.PRESENTER)
    q = join(meeting, Role.PRESENTER)
    publish(meeting, p, 1, Media.AUDIO)
    publish(meeting, p, 2, Media.VIDEO)
    publish(meeting, q, 1, Media.AUDIO)
    assert route(meeting, p, media(1, Media.AUDIO)) == Route(Audience.EVERYONE)
    events = control(meeting, host, "mute", pid=p.pid, track=1)
    assert events == [Announce("muted", {"pid": p.pid, "track": 1, "on": True})]
    assert route(meeting, p, media(1, Media.AUDIO)) is None
    assert route(meeting, p, media(2, Media.VIDEO)) == Route(Audience.EVERYONE)
    assert route(meeting, q, media(1, Media.AUDIO)) == Route(Audience.EVERYONE)
    # A muted participant still chats.
    assert route(meeting, p, chat()) == Route(Audience.EVERYONE)
    events = control(meeting, host, "mute", pid=p.pid, track=1, on=False)
    assert events == [Announce("muted", {"pid": p.pid, "track": 1, "on": False})]
    assert route(meeting, p, media(1, Media.AUDIO)) == Route(Audience.EVERYONE)


def test_a_mute_survives_republishing_the_track() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    p = join(meeting, Role.PRESENTER)
    publish(meeting, p, 1, Media.AUDIO)
    control(meeting, host, "mute", pid=p.pid, track=1)
    publish(meeting, p, 1, Media.AUDIO, on=False)
    publish(meeting, p, 1, Media.AUDIO)
    assert route(meeting, p, media(1, Media.AUDIO)) is None


def test_a_track_may_be_muted_before_it_is_published() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    p = join(meeting, Role.PRESENTER)
    control(meeting, host, "mute", pid=p.pid, track=3)
    publish(meeting, p, 3, Media.VIDEO)
    assert route(meeting, p, media(3, Media.VIDEO)) is None


def test_mute_errors() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    p = join(meeting, Role.PRESENTER)
    assert code_of(control, meeting, host, "mute", pid=999, track=1) == "unknown_participant"
    assert code_of(control, meeting, p, "mute", pid=host.pid, track=1) == "not_allowed"
    assert meeting.muted == set()


def test_mute_via_the_api() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    publish(meeting, p, 4, Media.SCREEN)
    meeting.apply(None, "mute", {"pid": p.pid, "track": 4, "on": True}, NOW)
    assert route(meeting, p, media(4, Media.SCREEN)) is None


# --- roles -------------------------------------------------------------------------


def test_role_changes_take_effect_at_once() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    a = join(meeting, Role.ATTENDEE)
    assert code_of(route, meeting, a, poll("open", 1)) == "not_allowed"
    assert code_of(route, meeting, a, chunk(1, 0)) == "not_allowed"
    events = control(meeting, host, "role", pid=a.pid, role="presenter")
    assert events == [Announce("role", {"pid": a.pid, "role": "presenter"})]
    assert a.role is Role.PRESENTER
    assert meeting.roster()[1]["role"] == "presenter"
    assert route(meeting, a, poll("open", 1)) == Route(Audience.EVERYONE)
    assert route(meeting, a, chunk(1, 0)) == Route(Audience.EVERYONE)
    assert code_of(control, meeting, a, "lock") == "not_allowed"
    control(meeting, host, "role", pid=a.pid, role="host")
    assert control(meeting, a, "lock") == [Announce("locked", {"on": True})]
    # And back down: the former host loses moderation.
    control(meeting, a, "role", pid=host.pid, role="attendee")
    assert code_of(control, meeting, host, "lock", on=False) == "not_allowed"
    assert code_of(route, meeting, host, poll("open", 2)) == "not_allowed"


def test_a_host_may_step_down_only_if_another_host_remains() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    assert code_of(control, meeting, host, "role", pid=host.pid, role="presenter") == "last_host"
    assert host.role is Role.HOST
    other = join(meeting)
    control(meeting, host, "role", pid=other.pid, role="host")
    events = control(meeting, host, "role", pid=host.pid, role="presenter")
    assert events == [Announce("role", {"pid": host.pid, "role": "presenter"})]
    assert code_of(control, meeting, host, "lock") == "not_allowed"
    assert code_of(control, meeting, other, "role", pid=other.pid, role="attendee") == "last_host"


def test_role_errors() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    a = join(meeting)
    assert code_of(control, meeting, host, "role", pid=999, role="host") == "unknown_participant"
    assert code_of(control, meeting, a, "role", pid=a.pid, role="host") == "not_allowed"
    assert a.role is Role.ATTENDEE


# --- webinar -----------------------------------------------------------------------


def test_webinar_blocks_attendee_media_only() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    presenter = join(meeting, Role.PRESENTER)
    attendee = join(meeting, Role.ATTENDEE)
    publish(meeting, attendee, 1, Media.AUDIO)
    publish(meeting, presenter, 1, Media.VIDEO)
    route(meeting, presenter, poll("open", 4))
    assert control(meeting, host, "webinar") == [Announce("webinar", {"on": True})]
    assert meeting.webinar
    # Attendees may neither publish nor send media on a track published before.
    assert code_of(control, meeting, attendee, "publish", track=2, m=1) == "webinar"
    assert code_of(route, meeting, attendee, media(1, Media.AUDIO)) == "webinar"
    assert 2 not in attendee.tracks
    # They still chat, answer polls and choose what to receive.
    assert route(meeting, attendee, chat()) == Route(Audience.EVERYONE)
    assert route(meeting, attendee, poll("answer", 4)) == Route(Audience.OWNER, presenter.pid)
    assert control(meeting, attendee, "receive", m=1, on=False) == []
    # Presenters and hosts are not affected.
    assert route(meeting, presenter, media(1, Media.VIDEO)) == Route(Audience.EVERYONE)
    publish(meeting, host, 1, Media.SCREEN)
    assert route(meeting, host, media(1, Media.SCREEN)) == Route(Audience.EVERYONE)
    # Off again: attendees send media again.
    assert control(meeting, host, "webinar", on=False) == [Announce("webinar", {"on": False})]
    assert route(meeting, attendee, media(1, Media.AUDIO)) == Route(Audience.EVERYONE)
    publish(meeting, attendee, 2, Media.VIDEO)
    assert attendee.tracks == {1: Media.AUDIO, 2: Media.VIDEO}


def test_promotion_lifts_the_webinar_restriction() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    attendee = join(meeting)
    control(meeting, host, "webinar")
    assert code_of(control, meeting, attendee, "publish", track=1, m=0) == "webinar"
    control(meeting, host, "role", pid=attendee.pid, role="presenter")
    publish(meeting, attendee, 1, Media.AUDIO)
    assert route(meeting, attendee, media(1, Media.AUDIO)) == Route(Audience.EVERYONE)


# --- polls ---------------------------------------------------------------------


@pytest.fixture
def poll_room() -> tuple[Meeting, Participant, Participant, Participant, Participant]:
    """A meeting with a host, a presenter that owns open poll 5, and two attendees."""
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    owner = join(meeting, Role.PRESENTER)
    a = join(meeting)
    b = join(meeting)
    assert route(meeting, owner, poll("open", 5)) == Route(Audience.EVERYONE)
    return meeting, host, owner, a, b


PollRoom = tuple[Meeting, Participant, Participant, Participant, Participant]


def test_poll_open_registers_its_owner(poll_room: PollRoom) -> None:
    meeting, _, owner, _, _ = poll_room
    assert meeting.polls == {5: owner.pid}
    # Reopening one's own poll is fine.
    assert route(meeting, owner, poll("open", 5)) == Route(Audience.EVERYONE)
    assert meeting.polls == {5: owner.pid}


def test_poll_answers_go_to_the_owner_only(poll_room: PollRoom) -> None:
    meeting, host, owner, a, b = poll_room
    assert route(meeting, a, poll("answer", 5)) == Route(Audience.OWNER, owner.pid)
    assert route(meeting, host, poll("answer", 5)) == Route(Audience.OWNER, owner.pid)
    # Never to anyone else, even when asked.
    assert code_of(route, meeting, a, poll("answer", 5, to=b.pid)) == "not_allowed"
    assert code_of(route, meeting, a, poll("answer", 5, to=owner.pid)) == "not_allowed"


def test_poll_owner_does_not_answer_its_own_poll(poll_room: PollRoom) -> None:
    meeting, _, owner, _, _ = poll_room
    assert code_of(route, meeting, owner, poll("answer", 5)) == "poll_owner"


def test_answer_to_a_closed_or_unknown_poll(poll_room: PollRoom) -> None:
    meeting, _, owner, a, _ = poll_room
    assert code_of(route, meeting, a, poll("answer", 6)) == "poll_closed"
    assert route(meeting, owner, poll("close", 5)) == Route(Audience.EVERYONE)
    assert meeting.polls == {}
    assert code_of(route, meeting, a, poll("answer", 5)) == "poll_closed"


def test_results_keep_the_poll_open(poll_room: PollRoom) -> None:
    meeting, _, owner, a, _ = poll_room
    assert route(meeting, owner, poll("results", 5)) == Route(Audience.EVERYONE)
    assert meeting.polls == {5: owner.pid}
    assert route(meeting, a, poll("answer", 5)) == Route(Audience.OWNER, owner.pid)


@pytest.mark.parametrize("op", ["results", "close"])
def test_results_and_close_by_anyone_but_the_owner(poll_room: PollRoom, op: str) -> None:
    meeting, host, owner, a, _ = poll_room
    other = join(meeting, Role.PRESENTER)
    error = refused(route, meeting, other, poll(op, 5))
    assert isinstance(error, Forbidden)
    assert error.code == "not_poll_owner"
    # Not even a host.
    assert code_of(route, meeting, host, poll(op, 5)) == "not_poll_owner"
    assert code_of(route, meeting, other, poll(op, 5, to=a.pid)) == "not_poll_owner"
    # Attendees are refused by the rules before ownership is considered.
    assert code_of(route, meeting, a, poll(op, 5)) == "not_allowed"
    assert meeting.polls == {5: owner.pid}


def test_a_poll_id_owned_by_another_is_taken(poll_room: PollRoom) -> None:
    meeting, host, owner, a, _ = poll_room
    other = join(meeting, Role.PRESENTER)
    error = refused(route, meeting, other, poll("open", 5))
    assert isinstance(error, Forbidden)
    assert error.code == "poll_taken"
    assert code_of(route, meeting, host, poll("open", 5, to=a.pid)) == "poll_taken"
    assert meeting.polls == {5: owner.pid}
    # Another id is free.
    assert route(meeting, other, poll("open", 6)) == Route(Audience.EVERYONE)
    assert meeting.polls == {5: owner.pid, 6: other.pid}


def test_poll_sync_to_one_does_not_change_ownership(poll_room: PollRoom) -> None:
    meeting, _, owner, _, _ = poll_room
    newcomer = join(meeting)
    assert route(meeting, owner, poll("open", 5, to=newcomer.pid)) == Route(
        Audience.ONE, newcomer.pid
    )
    assert route(meeting, owner, poll("results", 5, to=newcomer.pid)) == Route(
        Audience.ONE, newcomer.pid
    )
    assert route(meeting, owner, poll("close", 5, to=newcomer.pid)) == Route(
        Audience.ONE, newcomer.pid
    )
    assert meeting.polls == {5: owner.pid}
    # Opening a fresh id to one participant does not claim it either.
    other = join(meeting, Role.PRESENTER)
    assert route(meeting, other, poll("open", 9, to=newcomer.pid)) == Route(
        Audience.ONE, newcomer.pid
    )
    assert meeting.polls == {5: owner.pid}
    assert code_of(route, meeting, newcomer, poll("answer", 9)) == "poll_closed"


def test_attendees_do_not_open_polls(poll_room: PollRoom) -> None:
    meeting, _, owner, a, b = poll_room
    assert code_of(route, meeting, a, poll("open", 11)) == "not_allowed"
    assert code_of(route, meeting, a, poll("open", 11, to=b.pid)) == "not_allowed"
    assert meeting.polls == {5: owner.pid}


# --- documents -----------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(wire.DOCUMENT_OPS))
def test_documents_come_from_presenters_and_hosts_only(op: str) -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    presenter = join(meeting, Role.PRESENTER)
    attendee = join(meeting)
    frame = document(op, 1, seq=0, page=0)
    assert code_of(route, meeting, attendee, frame) == "not_allowed"
    assert code_of(route, meeting, attendee, document(op, 1, to=host.pid, seq=0, page=0)) == (
        "not_allowed"
    )
    assert route(meeting, presenter, frame) == Route(Audience.EVERYONE)
    assert route(meeting, host, frame) == Route(Audience.EVERYONE)


def test_sharing_registers_and_stop_clears() -> None:
    meeting = new_meeting()
    presenter = join(meeting, Role.PRESENTER)
    newcomer = join(meeting)
    route(meeting, presenter, chunk(1, 0))
    assert meeting.documents == {(presenter.pid, 1)}
    assert meeting.sync_owners(newcomer.pid) == [presenter.pid]
    assert route(meeting, presenter, document("page", 1, page=3)) == Route(Audience.EVERYONE)
    assert route(meeting, presenter, document("stop", 1)) == Route(Audience.EVERYONE)
    assert meeting.documents == set()
    assert meeting.sync_owners(newcomer.pid) == []


def test_a_document_sent_to_one_is_not_a_shared_document() -> None:
    meeting = new_meeting()
    presenter = join(meeting, Role.PRESENTER)
    newcomer = join(meeting)
    assert route(meeting, presenter, chunk(1, 0, to=newcomer.pid)) == Route(
        Audience.ONE, newcomer.pid
    )
    route(meeting, presenter, document("page", 1, to=newcomer.pid, page=2))
    assert meeting.documents == set()
    assert meeting.sync_owners(newcomer.pid) == []


def small_documents() -> Meeting:
    return new_meeting(limits=Limits(max_document_bytes=100))


def test_document_bytes_are_counted_up_to_the_limit() -> None:
    meeting = small_documents()
    p = join(meeting, Role.PRESENTER)
    assert route(meeting, p, chunk(1, 0), nbytes=60) == Route(Audience.EVERYONE)
    assert route(meeting, p, chunk(1, 1), nbytes=40) == Route(Audience.EVERYONE)
    error = refused(route, meeting, p, chunk(1, 2), nbytes=1)
    assert isinstance(error, FrameError)
    assert error.code == "document_too_large"
    # Page turns and annotations are not part of the document's bytes.
    assert route(meeting, p, document("page", 1, page=1), nbytes=0) == Route(Audience.EVERYONE)
    assert route(meeting, p, document("annotate", 1), nbytes=50) == Route(Audience.EVERYONE)


def test_a_single_chunk_over_the_document_limit() -> None:
    meeting = small_documents()
    p = join(meeting, Role.PRESENTER)
    assert code_of(route, meeting, p, chunk(1, 0), nbytes=101) == "document_too_large"
    assert route(meeting, p, chunk(1, 0), nbytes=100) == Route(Audience.EVERYONE)


def test_seq_zero_starts_a_document_again() -> None:
    meeting = small_documents()
    p = join(meeting, Role.PRESENTER)
    route(meeting, p, chunk(1, 0), nbytes=100)
    assert code_of(route, meeting, p, chunk(1, 1), nbytes=1) == "document_too_large"
    assert route(meeting, p, chunk(1, 0), nbytes=100) == Route(Audience.EVERYONE)
    assert code_of(route, meeting, p, chunk(1, 1), nbytes=1) == "document_too_large"


def test_stop_clears_the_byte_count() -> None:
    meeting = small_documents()
    p = join(meeting, Role.PRESENTER)
    route(meeting, p, chunk(1, 0), nbytes=100)
    route(meeting, p, document("stop", 1))
    with pytest.raises(FrameError) as after_stop:
        route(meeting, p, chunk(1, 1), nbytes=100)
    assert after_stop.value.code == "chunk_out_of_order"
    assert route(meeting, p, chunk(1, 0), nbytes=100) == Route(Audience.EVERYONE)


def test_chunks_come_in_order_and_a_refused_share_stays_refused_until_it_restarts() -> None:
    meeting = small_documents()
    p = join(meeting, Role.PRESENTER)
    route(meeting, p, chunk(1, 0), nbytes=10)
    with pytest.raises(FrameError) as skipped:
        route(meeting, p, chunk(1, 2), nbytes=10)
    assert skipped.value.code == "chunk_out_of_order"
    # The share broke: even the chunk that would have been next is refused now,
    # so no receiver assembles a document with a hole in it.
    with pytest.raises(FrameError) as broken:
        route(meeting, p, chunk(1, 1), nbytes=10)
    assert broken.value.code == "chunk_out_of_order"
    assert route(meeting, p, chunk(1, 0), nbytes=10) == Route(Audience.EVERYONE)
    assert route(meeting, p, chunk(1, 1), nbytes=10) == Route(Audience.EVERYONE)


def test_document_bytes_are_counted_per_sharer_document_and_audience() -> None:
    meeting = small_documents()
    p = join(meeting, Role.PRESENTER)
    q = join(meeting, Role.PRESENTER)
    newcomer = join(meeting)
    route(meeting, p, chunk(1, 0), nbytes=100)
    # Another document, another sharer, a sync to one: each has its own count.
    assert route(meeting, p, chunk(2, 0), nbytes=100) == Route(Audience.EVERYONE)
    assert route(meeting, q, chunk(1, 0), nbytes=100) == Route(Audience.EVERYONE)
    assert route(meeting, p, chunk(1, 0, to=newcomer.pid), nbytes=100) == Route(
        Audience.ONE, newcomer.pid
    )
    assert code_of(route, meeting, p, chunk(1, 1, to=newcomer.pid), nbytes=1) == (
        "document_too_large"
    )
    assert code_of(route, meeting, p, chunk(1, 1), nbytes=1) == "document_too_large"


def test_sync_owners_lists_sharers_and_poll_owners_but_not_the_newcomer() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    p = join(meeting, Role.PRESENTER)
    q = join(meeting, Role.PRESENTER)
    join(meeting)
    route(meeting, q, poll("open", 1))
    route(meeting, p, chunk(1, 0))
    route(meeting, p, poll("open", 2))
    newcomer = join(meeting)
    assert meeting.sync_owners(newcomer.pid) == [p.pid, q.pid]
    # The owner itself needs no sync of its own state.
    assert meeting.sync_owners(p.pid) == [q.pid]
    assert meeting.sync_owners(q.pid) == [p.pid]
    assert host.pid not in meeting.sync_owners(newcomer.pid)


# --- media -----------------------------------------------------------------------


def test_media_needs_a_published_track_of_the_same_type() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    join(meeting)
    assert code_of(route, meeting, p, media(1, Media.AUDIO)) == "track_not_published"
    events = control(meeting, p, "publish", track=1, m=int(Media.AUDIO))
    assert events == [Announce("track", {"pid": p.pid, "track": 1, "m": 0, "on": True})]
    assert p.tracks == {1: Media.AUDIO}
    assert route(meeting, p, media(1, Media.AUDIO)) == Route(Audience.EVERYONE)
    assert code_of(route, meeting, p, media(1, Media.VIDEO)) == "bad_field"
    assert code_of(route, meeting, p, media(2, Media.AUDIO)) == "track_not_published"
    events = control(meeting, p, "publish", track=1, m=int(Media.AUDIO), on=False)
    assert events == [Announce("track", {"pid": p.pid, "track": 1, "m": 0, "on": False})]
    assert p.tracks == {}
    assert code_of(route, meeting, p, media(1, Media.AUDIO)) == "track_not_published"


def test_media_is_never_sent_to_one() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    q = join(meeting)
    publish(meeting, p, 1, Media.VIDEO)
    assert code_of(route, meeting, p, media(1, Media.VIDEO, to=q.pid)) == "not_allowed"


def test_tracks_are_per_participant() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    q = join(meeting, Role.PRESENTER)
    publish(meeting, p, 1, Media.AUDIO)
    assert code_of(route, meeting, q, media(1, Media.AUDIO)) == "track_not_published"


def test_publish_limit() -> None:
    meeting = new_meeting(limits=Limits(max_tracks=2))
    p = join(meeting, Role.PRESENTER)
    publish(meeting, p, 1, Media.AUDIO)
    publish(meeting, p, 2, Media.VIDEO)
    assert code_of(control, meeting, p, "publish", track=3, m=2) == "too_many"
    # Republishing a track does not need a new slot; withdrawing one frees a slot.
    publish(meeting, p, 2, Media.SCREEN)
    assert p.tracks == {1: Media.AUDIO, 2: Media.SCREEN}
    publish(meeting, p, 1, Media.AUDIO, on=False)
    publish(meeting, p, 3, Media.SCREEN)
    assert p.tracks == {2: Media.SCREEN, 3: Media.SCREEN}


def test_default_publish_limit_is_eight_tracks() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    for track in range(8):
        publish(meeting, p, track, Media.AUDIO)
    assert code_of(control, meeting, p, "publish", track=8, m=0) == "too_many"


def test_receive_preferences_drive_wants() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    viewer = join(meeting)
    assert viewer.wants(p.pid, 1, Media.AUDIO)
    assert viewer.wants(p.pid, 2, Media.VIDEO)
    assert control(meeting, viewer, "receive", m=int(Media.VIDEO), on=False) == []
    assert not viewer.wants(p.pid, 2, Media.VIDEO)
    assert not viewer.wants(p.pid, 7, int(Media.VIDEO))
    assert viewer.wants(p.pid, 1, Media.AUDIO)
    assert viewer.wants(p.pid, 3, Media.SCREEN)
    # Preferences are the viewer's own.
    assert p.wants(viewer.pid, 2, Media.VIDEO)
    control(meeting, viewer, "receive", m=int(Media.VIDEO), on=True)
    assert viewer.wants(p.pid, 2, Media.VIDEO)


def test_subscribe_preferences_drive_wants() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    q = join(meeting, Role.PRESENTER)
    viewer = join(meeting)
    assert control(meeting, viewer, "subscribe", pid=p.pid, track=1, on=False) == []
    assert not viewer.wants(p.pid, 1, Media.AUDIO)
    assert viewer.wants(p.pid, 2, Media.AUDIO)
    assert viewer.wants(q.pid, 1, Media.AUDIO)
    control(meeting, viewer, "subscribe", pid=p.pid, track=1, on=True)
    assert viewer.wants(p.pid, 1, Media.AUDIO)
    # Without a track: all of a participant's tracks.
    control(meeting, viewer, "subscribe", pid=p.pid, on=False)
    assert not viewer.wants(p.pid, 1, Media.AUDIO)
    assert not viewer.wants(p.pid, 2, Media.SCREEN)
    assert viewer.wants(q.pid, 1, Media.AUDIO)
    control(meeting, viewer, "subscribe", pid=p.pid, on=True)
    assert viewer.wants(p.pid, 1, Media.AUDIO)
    assert viewer.wants(p.pid, 2, Media.SCREEN)


def test_subscribe_to_a_participant_as_a_whole_turns_all_its_tracks_back_on() -> None:
    # A track turned off on its own stays off while the participant is switched on
    # track by track; switching the whole participant on clears every entry for it.
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    viewer = join(meeting)
    control(meeting, viewer, "subscribe", pid=p.pid, on=False)
    control(meeting, viewer, "subscribe", pid=p.pid, track=1, on=True)
    assert not viewer.wants(p.pid, 1, Media.AUDIO)  # the whole participant is still off
    control(meeting, viewer, "subscribe", pid=p.pid, on=True)
    assert viewer.wants(p.pid, 1, Media.AUDIO)
    control(meeting, viewer, "subscribe", pid=p.pid, track=1, on=False)
    assert not viewer.wants(p.pid, 1, Media.AUDIO)
    assert viewer.wants(p.pid, 2, Media.AUDIO)
    control(meeting, viewer, "subscribe", pid=p.pid, on=True)
    assert viewer.wants(p.pid, 1, Media.AUDIO)
    assert viewer.wants(p.pid, 2, Media.AUDIO)


def test_subscribe_and_receive_combine() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    viewer = join(meeting)
    control(meeting, viewer, "receive", m=int(Media.VIDEO), on=False)
    control(meeting, viewer, "subscribe", pid=p.pid, track=1, on=True)
    # Subscribing to a track does not override turning its media type off.
    assert not viewer.wants(p.pid, 1, Media.VIDEO)
    assert viewer.wants(p.pid, 1, Media.AUDIO)


# --- keyframes -----------------------------------------------------------------------


def test_keyframe_due_throttles_per_track() -> None:
    meeting = new_meeting()
    assert KEYFRAME_INTERVAL == 0.5
    assert meeting.keyframe_due(1, 1, 100.0)
    assert not meeting.keyframe_due(1, 1, 100.0)
    assert not meeting.keyframe_due(1, 1, 100.25)
    assert not meeting.keyframe_due(1, 1, 100.49)
    assert meeting.keyframe_due(1, 1, 100.5)
    assert not meeting.keyframe_due(1, 1, 100.75)
    # Other tracks, other participants: their own throttle.
    assert meeting.keyframe_due(1, 2, 100.75)
    assert meeting.keyframe_due(2, 1, 100.75)
    assert meeting.keyframe_due(1, 1, 101.0)


def test_keyframe_request_control() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    viewer = join(meeting)
    assert code_of(control, meeting, viewer, "keyframe", pid=p.pid, track=2) == (
        "track_not_published"
    )
    assert code_of(control, meeting, viewer, "keyframe", pid=999, track=2) == (
        "unknown_participant"
    )
    publish(meeting, p, 2, Media.VIDEO)
    assert control(meeting, viewer, "keyframe", pid=p.pid, track=2, now=NOW) == [
        KeyframeRequest(p.pid, 2)
    ]
    assert control(meeting, viewer, "keyframe", pid=p.pid, track=2, now=NOW + 0.1) == []
    assert control(meeting, viewer, "keyframe", pid=p.pid, track=2, now=NOW + 0.5) == [
        KeyframeRequest(p.pid, 2)
    ]


def test_keyframe_requests_and_drops_share_one_throttle() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    viewer = join(meeting)
    publish(meeting, p, 2, Media.VIDEO)
    assert meeting.keyframe_due(p.pid, 2, NOW)
    assert control(meeting, viewer, "keyframe", pid=p.pid, track=2, now=NOW + 0.1) == []


# --- away and back -------------------------------------------------------------------


def test_away_and_back() -> None:
    meeting = new_meeting()
    a = join(meeting)
    join(meeting)
    assert meeting.meter.current == 2
    assert meeting.away(a.pid) is a
    assert a.presence is Presence.AWAY
    assert meeting.participants[a.pid] is a
    assert meeting.meter.current == 1
    assert not meeting.empty
    assert meeting.away(a.pid) is None
    assert meeting.back(a.pid) is a
    assert a.presence is Presence.HERE
    assert (meeting.meter.current, meeting.meter.peak) == (2, 2)
    assert code_of(meeting.back, a.pid) == "resume_invalid"
    assert code_of(meeting.back, 999) == "resume_invalid"
    meeting.begin_end(EndReason.LAST_LEFT)
    record = meeting.finish(record_id="r", ended_at=T0_WALL, ended_mono=NOW)
    # Reconnecting is not another participant.
    assert record.distinct_participants == 2


def test_away_participants_send_nothing() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    join(meeting)
    meeting.away(host.pid)
    with pytest.raises(Forbidden):
        route(meeting, host, chat())
    with pytest.raises(Forbidden):
        control(meeting, host, "lock")
    assert not meeting.locked


def test_away_forgets_pending_keyframes_and_keeps_what_it_owns() -> None:
    meeting = new_meeting()
    p = join(meeting, Role.PRESENTER)
    join(meeting)
    route(meeting, p, poll("open", 1))
    publish(meeting, p, 1, Media.VIDEO)
    p.awaiting_key = {(5, 1)}
    meeting.away(p.pid)
    assert not p.awaiting_key
    assert meeting.polls == {1: p.pid}
    assert p.tracks == {1: Media.VIDEO}


def test_empty_only_when_no_one_admitted_is_left() -> None:
    meeting = new_meeting()
    a = join(meeting)
    b = join(meeting)
    meeting.away(a.pid)
    meeting.leave(b.pid)
    # a may still come back.
    assert not meeting.empty
    assert meeting.meter.current == 0
    assert meeting.leave(a.pid) is a
    assert meeting.empty
    # Leaving while away was already counted as gone.
    assert meeting.meter.current == 0


def test_only_admitted_participants_go_away() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    control(meeting, host, "lobby")
    waiting = join(meeting)
    assert meeting.away(waiting.pid) is None
    assert meeting.away(999) is None
    assert waiting.presence is Presence.LOBBY


def test_no_resume_after_the_meeting_ends() -> None:
    meeting = new_meeting()
    a = join(meeting)
    meeting.away(a.pid)
    meeting.begin_end(EndReason.LAST_LEFT)
    with pytest.raises(MeetingEnded):
        meeting.back(a.pid)


# --- rate and size limits --------------------------------------------------------


def tight(**changes: Any) -> Limits:
    base = {
        "chat": KindLimit(rate=1, burst=2, max_bytes=10),
        "control": KindLimit(rate=1, burst=1, max_bytes=0),
        "abuse_strikes": 3,
        "abuse_window": 10.0,
    }
    return Limits(**{**base, **changes})


def test_route_rate_limits_each_participant() -> None:
    meeting = new_meeting(limits=tight())
    a = join(meeting)
    b = join(meeting)
    route(meeting, a, chat(), now=NOW)
    route(meeting, a, chat(), now=NOW)
    error = refused(route, meeting, a, chat(), now=NOW)
    assert isinstance(error, FrameError)
    assert error.code == "rate_limited"
    # b has its own bucket.
    assert route(meeting, b, chat(), now=NOW) == Route(Audience.EVERYONE)
    # A second later, one more token.
    assert route(meeting, a, chat(), now=NOW + 1) == Route(Audience.EVERYONE)
    assert code_of(route, meeting, a, chat(), now=NOW + 1) == "rate_limited"


def test_route_refuses_payloads_over_the_kind_limit() -> None:
    meeting = new_meeting(limits=tight())
    a = join(meeting)
    assert route(meeting, a, chat(), nbytes=10) == Route(Audience.EVERYONE)
    error = refused(route, meeting, a, chat(), nbytes=11)
    assert isinstance(error, FrameError)
    assert error.code == "too_large"


def test_kinds_have_their_own_buckets() -> None:
    meeting = new_meeting(limits=tight())
    p = join(meeting, Role.PRESENTER)
    route(meeting, p, chat())
    route(meeting, p, chat())
    assert code_of(route, meeting, p, chat()) == "rate_limited"
    assert route(meeting, p, poll("open", 1)) == Route(Audience.EVERYONE)
    assert route(meeting, p, chunk(1, 0)) == Route(Audience.EVERYONE)


def test_control_requests_are_rate_limited() -> None:
    meeting = new_meeting(limits=tight())
    a = join(meeting)
    assert control(meeting, a, "receive", m=1, on=False, now=NOW) == []
    assert code_of(control, meeting, a, "receive", m=1, on=True, now=NOW) == "rate_limited"
    assert 1 in a.media_off
    assert control(meeting, a, "receive", m=1, on=True, now=NOW + 1) == []


def test_repeated_refusals_are_abuse() -> None:
    meeting = new_meeting(limits=tight())
    a = join(meeting)
    for _ in range(2):
        assert code_of(route, meeting, a, chat(), nbytes=11) == "too_large"
    with pytest.raises(Abuse) as info:
        route(meeting, a, chat(), nbytes=11)
    assert info.value.code == "abuse"
    assert info.value.close_code == CloseCode.ABUSE == 4429
    assert not isinstance(info.value, FrameError)


def test_rate_refusals_count_as_strikes_too() -> None:
    meeting = new_meeting(limits=tight())
    a = join(meeting)
    route(meeting, a, chat())
    route(meeting, a, chat())
    assert code_of(route, meeting, a, chat()) == "rate_limited"
    assert code_of(route, meeting, a, chat()) == "rate_limited"
    with pytest.raises(Abuse):
        route(meeting, a, chat())


def test_strikes_outside_the_window_are_forgotten() -> None:
    meeting = new_meeting(limits=tight())
    a = join(meeting)
    assert code_of(route, meeting, a, chat(), nbytes=11, now=NOW) == "too_large"
    assert code_of(route, meeting, a, chat(), nbytes=11, now=NOW + 1) == "too_large"
    assert code_of(route, meeting, a, chat(), nbytes=11, now=NOW + 20) == "too_large"
    assert code_of(route, meeting, a, chat(), nbytes=11, now=NOW + 21) == "too_large"
    with pytest.raises(Abuse):
        route(meeting, a, chat(), nbytes=11, now=NOW + 22)


def test_rules_refusals_are_not_strikes() -> None:
    # Only rate and size refusals count towards abuse; a forbidden frame is an answer.
    meeting = new_meeting(limits=tight(poll=KindLimit(rate=100, burst=100, max_bytes=10)))
    a = join(meeting)
    for _ in range(10):
        assert code_of(route, meeting, a, poll("open", 1)) == "not_allowed"


def test_limits_from_settings() -> None:
    settings = Settings(rate_chat=1.0, max_chat_bytes=100)
    meeting = new_meeting(limits=settings.limits())
    a = join(meeting)
    assert code_of(route, meeting, a, chat(), nbytes=101) == "too_large"
    # Bursts of at least ten.
    for _ in range(10):
        assert route(meeting, a, chat(), nbytes=100) == Route(Audience.EVERYONE)
    assert code_of(route, meeting, a, chat()) == "rate_limited"


def test_checks_happen_in_the_documented_order() -> None:
    # docs/protocol.md: live, admitted, rate and size limits, recipient, table, the kind's rules.
    meeting = new_meeting(limits=tight(poll=KindLimit(rate=100, burst=100, max_bytes=10)))
    attendee = join(meeting)
    presenter = join(meeting, Role.PRESENTER)
    # Size before recipient, and size before the table.
    assert code_of(route, meeting, attendee, chat(999), nbytes=11) == "too_large"
    assert code_of(route, meeting, attendee, poll("open", 1), nbytes=11) == "too_large"
    # Recipient before the table.
    assert code_of(route, meeting, attendee, chunk(1, 0, to=999)) == "unknown_recipient"
    # The table before the kind's own rules (published tracks, poll ownership).
    assert code_of(route, meeting, attendee, media(1, Media.AUDIO, to=presenter.pid)) == (
        "not_allowed"
    )
    assert code_of(route, meeting, attendee, poll("close", 1)) == "not_allowed"
    assert code_of(route, meeting, presenter, media(1, Media.AUDIO)) == "track_not_published"


# --- lifecycle -----------------------------------------------------------------


def test_begin_end_once() -> None:
    meeting = new_meeting()
    assert meeting.begin_end(EndReason.HOST_ENDED) is True
    assert meeting.state is MeetingState.ENDING
    assert meeting.end_reason is EndReason.HOST_ENDED
    # A second end does not change the reason.
    assert meeting.begin_end(EndReason.LAST_LEFT) is False
    assert meeting.end_reason is EndReason.HOST_ENDED
    assert meeting.state is MeetingState.ENDING


def test_no_join_route_or_control_after_begin_end() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.HOST, name="a", seat="s1")
    b = meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    meeting.begin_end(EndReason.HOST_ENDED)
    with pytest.raises(MeetingEnded):
        meeting.join(role=Role.ATTENDEE, name="c", seat="s3")
    with pytest.raises(MeetingEnded):
        route(meeting, a, chat())
    with pytest.raises(MeetingEnded):
        route(meeting, a, chat(b.pid))
    with pytest.raises(MeetingEnded):
        control(meeting, a, "lock")
    with pytest.raises(MeetingEnded):
        meeting.join(role=Role.HOST, name="h", seat="s4")
    assert [p["pid"] for p in meeting.roster()] == [a.pid, b.pid]
    assert not meeting.locked


def test_no_one_is_admitted_through_the_api_after_begin_end() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    control(meeting, host, "lobby")
    waiting = join(meeting)
    meeting.begin_end(EndReason.HOST_ENDED)
    with pytest.raises(MeetingEnded):
        meeting.apply(None, "admit", {"pid": waiting.pid}, NOW)
    assert waiting.pid not in meeting.participants
    assert meeting.meter.current == 1


def test_meeting_ended_takes_precedence_over_full() -> None:
    meeting = new_meeting(max_participants=1)
    meeting.join(role=Role.HOST, name="a", seat="s1")
    meeting.begin_end(EndReason.HOST_ENDED)
    with pytest.raises(MeetingEnded):
        meeting.join(role=Role.ATTENDEE, name="b", seat="s2")


def test_finish_before_begin_end_is_refused() -> None:
    meeting = new_meeting()
    with pytest.raises(RuntimeError):
        meeting.finish(record_id="r", ended_at=T0_WALL + 1, ended_mono=T0_MONO + 1)
    assert meeting.state is MeetingState.LIVE


def test_finish_produces_the_record_and_ends_the_meeting() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.HOST, name="a", seat="s1")
    meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    meeting.switched(Kind.CHAT, None, 100, 1, 0, T0_MONO + 2.0)
    meeting.leave(a.pid)
    meeting.begin_end(EndReason.LAST_LEFT)
    record = meeting.finish(record_id="r_1", ended_at=T0_WALL + 60, ended_mono=T0_MONO + 60)
    assert meeting.state is MeetingState.ENDED
    assert record.record_id == "r_1"
    assert record.meeting_id == "m_1"
    assert record.host_id == "h_1"
    assert record.started_at == T0_WALL
    assert record.ended_at == T0_WALL + 60
    assert record.duration_seconds == 60
    assert record.peak_participants == 2
    assert record.distinct_participants == 2
    assert record.end_reason == "last_left"
    assert set(record.features) == {"chat"}
    with pytest.raises(MeetingEnded):
        meeting.join(role=Role.ATTENDEE, name="late", seat="s9")


@pytest.mark.parametrize("jump", [-86_400.0, -3_600.0, 0.0, 3_600.0, 10 * 365 * 86_400.0])
def test_duration_comes_from_the_monotonic_clock(jump: float) -> None:
    # The wall clock steps by ``jump`` during the meeting; the bill must not move.
    meeting = new_meeting()
    meeting.join(role=Role.HOST, name="a", seat="s1")
    meeting.begin_end(EndReason.HOST_ENDED)
    record = meeting.finish(
        record_id="r", ended_at=T0_WALL + 120 + jump, ended_mono=T0_MONO + 120.0
    )
    assert record.duration_seconds == 120.0
    assert record.to_dict()["duration_seconds"] == 120.0
    assert record.ended_at == T0_WALL + 120 + jump


# --- switched: what the record counts -------------------------------------------------


def test_switched_counts_deliveries_and_drops_per_feature() -> None:
    meeting = new_meeting()
    meeting.switched(Kind.CHAT, None, 100, 3, 0, T0_MONO + 1)
    meeting.switched(Kind.MEDIA, Media.AUDIO, 50, 2, 1, T0_MONO + 2)
    meeting.switched(Kind.MEDIA, int(Media.AUDIO), 50, 3, 0, T0_MONO + 3)
    meeting.switched(Kind.MEDIA, Media.VIDEO, 1000, 1, 2, T0_MONO + 4)
    meeting.switched(Kind.MEDIA, Media.SCREEN, 5000, 0, 3, T0_MONO + 5)
    meeting.switched(Kind.POLL, None, 7, 1, 0, T0_MONO + 6)
    meeting.switched(Kind.DOCUMENT, None, 9, 2, 0, T0_MONO + 7)
    meeting.begin_end(EndReason.HOST_ENDED)
    record = meeting.finish(record_id="r", ended_at=T0_WALL + 10, ended_mono=T0_MONO + 10)
    assert record.features == {
        "chat": FeatureUsage(frames=1, bytes=100, deliveries=3, first_use=1, last_use=1),
        "audio": FeatureUsage(
            frames=2, bytes=100, deliveries=5, first_use=2, last_use=3, dropped=1
        ),
        "video": FeatureUsage(
            frames=1, bytes=1000, deliveries=1, first_use=4, last_use=4, dropped=2
        ),
        "screen": FeatureUsage(
            frames=1, bytes=5000, deliveries=0, first_use=5, last_use=5, dropped=3
        ),
        "poll": FeatureUsage(frames=1, bytes=7, deliveries=1, first_use=6, last_use=6),
        "document": FeatureUsage(frames=1, bytes=9, deliveries=2, first_use=7, last_use=7),
    }
    data = record.to_dict()
    assert data["features_used"] == ["audio", "chat", "document", "poll", "screen", "video"]
    assert data["usage"]["video"]["dropped"] == 2
    row = record.csv_row()
    assert (row["audio_frames"], row["audio_deliveries"], row["audio_dropped"]) == (2, 5, 1)
    assert (row["screen_bytes"], row["screen_dropped"]) == (5000, 3)
    assert row["chat_dropped"] == 0


def test_feature_of_every_kind_and_media() -> None:
    assert feature_of(Kind.CHAT) == "chat"
    assert feature_of(Kind.POLL) == "poll"
    assert feature_of(Kind.DOCUMENT) == "document"
    assert feature_of(Kind.MEDIA, Media.AUDIO) == "audio"
    assert feature_of(Kind.MEDIA, Media.VIDEO) == "video"
    assert feature_of(Kind.MEDIA, int(Media.SCREEN)) == "screen"
    data_kinds = [k for k in Kind if k is not Kind.CONTROL]
    named = {feature_of(k, m) for k in data_kinds for m in Media}
    assert named == set(FEATURES)


# --- usage meter ---------------------------------------------------------------


def test_meter_peak_and_distinct() -> None:
    meter = UsageMeter(T0_MONO)
    meter.joined("a#1")
    meter.joined("b#1")
    meter.joined("c#1")
    assert (meter.current, meter.peak) == (3, 3)
    meter.left()
    meter.left()
    assert (meter.current, meter.peak) == (1, 3)
    meter.joined("a#1")  # the same seat reconnects: not a new participant
    meter.joined("d#1")
    assert (meter.current, meter.peak) == (3, 3)
    meter.joined("e#1")
    assert (meter.current, meter.peak) == (4, 4)
    record = meter.finish(
        record_id="r",
        meeting_id="m",
        host_id="h",
        started_at=T0_WALL,
        ended_at=T0_WALL + 1,
        ended_mono=T0_MONO + 1,
        end_reason=EndReason.RELAY_SHUTDOWN,
    )
    assert record.peak_participants == 4
    assert record.distinct_participants == 5
    assert record.end_reason == "relay_shutdown"


def test_meter_feature_counters() -> None:
    meter = UsageMeter(T0_MONO)
    meter.switched("chat", 10, 3, 0, T0_MONO + 1.5)
    meter.switched("chat", 20, 0, 0, T0_MONO + 4.25)
    meter.switched("chat", 5, 7, 0, T0_MONO + 9.0)
    meter.switched("video", 500, 1, 4, T0_MONO + 2.0)
    meter.switched("video", 500, 5, 0, T0_MONO + 3.0)
    record = meter.finish(
        record_id="r",
        meeting_id="m",
        host_id="h",
        started_at=T0_WALL,
        ended_at=T0_WALL + 10,
        ended_mono=T0_MONO + 10,
        end_reason=EndReason.HOST_ENDED,
    )
    assert record.features == {
        "chat": FeatureUsage(frames=3, bytes=35, deliveries=10, first_use=1.5, last_use=9.0),
        "video": FeatureUsage(
            frames=2, bytes=1000, deliveries=6, first_use=2.0, last_use=3.0, dropped=4
        ),
    }
    # The record holds a snapshot: metering after finish does not change it.
    meter.switched("chat", 1000, 1000, 1000, T0_MONO + 11)
    assert record.features["chat"].frames == 3
    assert record.features["chat"].dropped == 0


def test_meter_without_traffic_has_no_features() -> None:
    meter = UsageMeter(T0_MONO)
    record = meter.finish(
        record_id="r",
        meeting_id="m",
        host_id="h",
        started_at=T0_WALL,
        ended_at=T0_WALL,
        ended_mono=T0_MONO,
        end_reason=EndReason.LAST_LEFT,
    )
    assert record.features == {}
    assert record.to_dict()["features_used"] == []
    assert record.duration_seconds == 0.0
    assert (record.peak_participants, record.distinct_participants) == (0, 0)


def test_meter_duration_never_negative() -> None:
    meter = UsageMeter(T0_MONO)
    record = meter.finish(
        record_id="r",
        meeting_id="m",
        host_id="h",
        started_at=T0_WALL,
        ended_at=T0_WALL,
        ended_mono=T0_MONO - 5,
        end_reason=EndReason.LAST_LEFT,
    )
    assert record.duration_seconds == 0.0


# --- records -------------------------------------------------------------------


def sample_record(**changes: object) -> CallRecord:
    record = CallRecord(
        record_id="r_abc",
        meeting_id="m_abc",
        host_id="h_abc",
        started_at=1_700_000_000.125,
        ended_at=1_700_003_600.5,
        duration_seconds=3600.375,
        peak_participants=7,
        distinct_participants=9,
        end_reason=EndReason.HOST_ENDED.value,
        features={
            "chat": FeatureUsage(
                frames=12, bytes=3456, deliveries=60, first_use=0.25, last_use=3599.5
            )
        },
    )
    return dataclasses.replace(record, **changes)


def test_to_dict_shape() -> None:
    data = sample_record().to_dict()
    assert data == {
        "record_id": "r_abc",
        "meeting_id": "m_abc",
        "host_id": "h_abc",
        "started_at": "2023-11-14T22:13:20.125Z",
        "ended_at": "2023-11-14T23:13:20.500Z",
        "duration_seconds": 3600.375,
        "peak_participants": 7,
        "distinct_participants": 9,
        "features_used": ["chat"],
        "usage": {
            "chat": {
                "frames": 12,
                "bytes": 3456,
                "deliveries": 60,
                "dropped": 0,
                "first_use": 0.25,
                "last_use": 3599.5,
            }
        },
        "end_reason": "host_ended",
        "schema_version": records.SCHEMA_VERSION,
        "nodes": [],
        "participant_seconds": 0.0,
        "prev_hash": "",
        "signature": "",
    }


def test_to_dict_from_dict_round_trip() -> None:
    record = sample_record()
    assert CallRecord.from_dict(record.to_dict()) == record


def test_from_dict_accepts_epoch_numbers() -> None:
    data = sample_record().to_dict()
    data["started_at"] = 1_700_000_000.125
    data["ended_at"] = 1_700_003_600
    record = CallRecord.from_dict(data)
    assert record.started_at == 1_700_000_000.125
    assert record.ended_at == 1_700_003_600.0


def test_from_dict_without_usage_or_schema_version() -> None:
    data = sample_record().to_dict()
    del data["usage"]
    del data["schema_version"]
    record = CallRecord.from_dict(data)
    assert record.features == {}
    assert record.schema_version == records.SCHEMA_VERSION


@given(
    started=st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False),
    length=st.floats(min_value=0, max_value=10_000_000, allow_nan=False),
    frames=st.integers(min_value=0, max_value=2**53),
    first=st.floats(min_value=0, max_value=1e7, allow_nan=False),
)
def test_to_dict_is_stable_through_from_dict(
    started: float, length: float, frames: int, first: float
) -> None:
    record = sample_record(
        started_at=started,
        ended_at=started + length,
        duration_seconds=length,
        features={
            "chat": FeatureUsage(frames, frames, frames, first, first),
            "video": FeatureUsage(frames, frames, frames, first, first, frames),
        },
    )
    once = record.to_dict()
    assert CallRecord.from_dict(once).to_dict() == once


def test_csv_row_keys_are_exactly_columns() -> None:
    for record in (sample_record(), sample_record(features={})):
        row = record.csv_row()
        assert list(row) == list(COLUMNS)


def test_csv_row_values() -> None:
    row = sample_record().csv_row()
    assert row["features_used"] == "chat"
    assert row["chat_frames"] == 12
    assert row["chat_bytes"] == 3456
    assert row["chat_deliveries"] == 60
    assert row["started_at"] == "2023-11-14T22:13:20.125Z"
    empty = sample_record(features={}).csv_row()
    assert empty["features_used"] == ""
    assert (empty["chat_frames"], empty["chat_bytes"], empty["chat_deliveries"]) == (0, 0, 0)
    assert empty["chat_dropped"] == 0
    assert all(empty[f"{name}_dropped"] == 0 for name in FEATURES)


def test_media_features_round_trip_with_their_drops() -> None:
    record = sample_record(
        features={
            "audio": FeatureUsage(1, 2, 3, 0.5, 0.75, 4),
            "screen": FeatureUsage(5, 6, 7, 1.0, 2.0, 8),
        }
    )
    data = record.to_dict()
    assert data["features_used"] == ["audio", "screen"]
    assert data["usage"]["audio"] == {
        "frames": 1,
        "bytes": 2,
        "deliveries": 3,
        "dropped": 4,
        "first_use": 0.5,
        "last_use": 0.75,
    }
    assert CallRecord.from_dict(data) == record
    row = record.csv_row()
    assert row["features_used"] == "audio screen"
    assert (row["screen_frames"], row["screen_dropped"], row["video_frames"]) == (5, 8, 0)


def test_columns_cover_every_feature_and_hold_no_content_fields() -> None:
    assert len(COLUMNS) == len(set(COLUMNS))
    for name in FEATURES:
        for counter in ("frames", "bytes", "deliveries", "dropped"):
            assert f"{name}_{counter}" in COLUMNS
    # The data kinds, with media split by type so billing can tell audio from video.
    assert FEATURES == ("chat", "poll", "document", "audio", "video", "screen")
    assert "media" not in FEATURES
    assert "control" not in FEATURES
    assert len(COLUMNS) == 15 + 4 * len(FEATURES)
    forbidden = ("name", "email", "payload", "content", "text", "message", "address", "ip")
    for column in COLUMNS:
        for word in forbidden:
            assert word not in column.split("_"), column


ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1_700_000_000.0, "2023-11-14T22:13:20.000Z"),
        (1_700_000_000.5, "2023-11-14T22:13:20.500Z"),
        (1_700_000_000.125, "2023-11-14T22:13:20.125Z"),
        (951_782_400.0, "2000-02-29T00:00:00.000Z"),
    ],
)
def test_iso_utc(epoch: float, text: str) -> None:
    assert iso_utc(epoch) == text


@given(st.floats(min_value=0, max_value=253_402_300_000, allow_nan=False))
def test_iso_utc_format_and_meaning(epoch: float) -> None:
    text = iso_utc(epoch)
    assert ISO_RE.match(text), text
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    # Millisecond precision, never later than the instant it labels.
    assert -0.001 <= epoch - parsed < 0.0011


def test_a_document_stop_sent_to_one_participant_does_not_end_the_share() -> None:
    meeting = new_meeting()
    presenter = join(meeting, Role.PRESENTER)
    late = join(meeting)
    route(meeting, presenter, document("chunk", 5, seq=0, fin=True))
    assert meeting.documents == {(presenter.pid, 5)}
    route(meeting, presenter, document("stop", 5, to=late.pid))
    assert meeting.documents == {(presenter.pid, 5)}
    assert meeting.sync_owners(99) == [presenter.pid]
    route(meeting, presenter, document("stop", 5))
    assert meeting.documents == set()


def test_an_attendee_may_withdraw_its_track_in_webinar_mode() -> None:
    meeting = new_meeting()
    host = join(meeting, Role.HOST)
    attendee = join(meeting)
    publish(meeting, attendee, 3, Media.AUDIO)
    control(meeting, host, "webinar", on=True)
    with pytest.raises(Forbidden) as refused:
        publish(meeting, attendee, 4, Media.AUDIO)
    assert refused.value.code == "webinar"
    publish(meeting, attendee, 3, Media.AUDIO, on=False)
    assert attendee.tracks == {}


def test_leaving_forgets_the_keyframe_throttle_of_the_leaver() -> None:
    meeting = new_meeting()
    presenter = join(meeting, Role.PRESENTER)
    assert meeting.keyframe_due(presenter.pid, 1, NOW)
    assert not meeting.keyframe_due(presenter.pid, 1, NOW + 0.1)
    meeting.leave(presenter.pid)
    assert meeting.keyframe_due(presenter.pid, 1, NOW + 0.2)
