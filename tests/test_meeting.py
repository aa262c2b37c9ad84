"""The meeting state machine (core/meeting.py) and call records (core/records.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchboard.core import records
from switchboard.core.meeting import Meeting, MeetingState, Participant
from switchboard.core.records import (
    COLUMNS,
    FEATURES,
    CallRecord,
    EndReason,
    FeatureUsage,
    UsageMeter,
    iso_utc,
)
from switchboard.core.rules import Audience, Role
from switchboard.core.wire import ClientFrame, Kind
from switchboard.errors import Forbidden, FrameError, MeetingEnded

T0_WALL = 1_700_000_000.0
T0_MONO = 5_000.0


def new_meeting(max_participants: int = 10) -> Meeting:
    return Meeting(
        "m_1",
        "h_1",
        started_at=T0_WALL,
        started_mono=T0_MONO,
        max_participants=max_participants,
    )


def chat(to: int | None = None) -> ClientFrame:
    return ClientFrame(Kind.CHAT, to, 3)


# --- roster --------------------------------------------------------------------


def test_new_meeting_is_live_and_empty() -> None:
    meeting = new_meeting()
    assert meeting.state is MeetingState.LIVE
    assert meeting.empty
    assert meeting.roster() == []
    assert meeting.end_reason is None


def test_join_adds_to_roster_in_join_order() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.HOST, name="Ada", seat="i_1#1")
    b = meeting.join(role=Role.ATTENDEE, name="Bob", seat="i_2#1")
    assert isinstance(a, Participant)
    assert not meeting.empty
    assert meeting.roster() == [
        {"pid": a.pid, "role": "host", "name": "Ada"},
        {"pid": b.pid, "role": "attendee", "name": "Bob"},
    ]
    assert meeting.participants[a.pid] is a


def test_roster_never_shows_the_seat() -> None:
    meeting = new_meeting()
    meeting.join(role=Role.PRESENTER, name="P", seat="i_secret#1")
    assert "i_secret#1" not in repr(meeting.roster())


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
    assert meeting.route(a, chat()) is Audience.EVERYONE
    assert meeting.route(a, chat(b.pid)) is Audience.ONE
    assert meeting.route(b, chat(a.pid)) is Audience.ONE


def test_route_to_self_is_unknown_recipient() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.ATTENDEE, name="a", seat="s1")
    meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    with pytest.raises(FrameError) as info:
        meeting.route(a, chat(a.pid))
    assert info.value.code == "unknown_recipient"


@pytest.mark.parametrize("to", [0, -1, 99, 2**40])
def test_route_to_unknown_pid_is_unknown_recipient(to: int) -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.ATTENDEE, name="a", seat="s1")
    with pytest.raises(FrameError) as info:
        meeting.route(a, chat(to))
    assert info.value.code == "unknown_recipient"


def test_route_to_someone_who_left_is_unknown_recipient() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.ATTENDEE, name="a", seat="s1")
    b = meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    meeting.leave(b.pid)
    with pytest.raises(FrameError) as info:
        meeting.route(a, chat(b.pid))
    assert info.value.code == "unknown_recipient"


@pytest.mark.parametrize("role", list(Role))
def test_route_applies_the_rules_table(role: Role) -> None:
    meeting = new_meeting()
    sender = meeting.join(role=role, name="s", seat="s1")
    other = meeting.join(role=Role.ATTENDEE, name="o", seat="s2")
    with pytest.raises(Forbidden) as info:
        meeting.route(sender, ClientFrame(Kind.CONTROL, None, 3))
    assert info.value.code == "not_allowed"
    with pytest.raises(Forbidden):
        meeting.route(sender, ClientFrame(Kind.CONTROL, other.pid, 3))


def test_route_does_not_change_the_roster_or_meter() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.ATTENDEE, name="a", seat="s1")
    meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    before = meeting.roster()
    meeting.route(a, chat())
    with pytest.raises(FrameError):
        meeting.route(a, chat(99))
    assert meeting.roster() == before
    meeting.begin_end(EndReason.HOST_ENDED)
    record = meeting.finish(record_id="r", ended_at=T0_WALL, ended_mono=T0_MONO)
    assert record.features == {}


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


def test_no_join_or_route_after_begin_end() -> None:
    meeting = new_meeting()
    a = meeting.join(role=Role.HOST, name="a", seat="s1")
    b = meeting.join(role=Role.ATTENDEE, name="b", seat="s2")
    meeting.begin_end(EndReason.HOST_ENDED)
    with pytest.raises(MeetingEnded):
        meeting.join(role=Role.ATTENDEE, name="c", seat="s3")
    with pytest.raises(MeetingEnded):
        meeting.route(a, chat())
    with pytest.raises(MeetingEnded):
        meeting.route(a, chat(b.pid))
    assert [p["pid"] for p in meeting.roster()] == [a.pid, b.pid]


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
    meeting.switched(Kind.CHAT, 100, 1, T0_MONO + 2.0)
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
    meter.switched(Kind.CHAT, 10, 3, T0_MONO + 1.5)
    meter.switched(Kind.CHAT, 20, 0, T0_MONO + 4.25)
    meter.switched(Kind.CHAT, 5, 7, T0_MONO + 9.0)
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
        "chat": FeatureUsage(frames=3, bytes=35, deliveries=10, first_use=1.5, last_use=9.0)
    }
    # The record holds a snapshot: metering after finish does not change it.
    meter.switched(Kind.CHAT, 1000, 1000, T0_MONO + 11)
    assert record.features["chat"].frames == 3


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
                "first_use": 0.25,
                "last_use": 3599.5,
            }
        },
        "end_reason": "host_ended",
        "schema_version": records.SCHEMA_VERSION,
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
        features={"chat": FeatureUsage(frames, frames, frames, first, first)},
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


def test_columns_cover_every_feature_and_hold_no_content_fields() -> None:
    assert len(COLUMNS) == len(set(COLUMNS))
    for name in FEATURES:
        for counter in ("frames", "bytes", "deliveries"):
            assert f"{name}_{counter}" in COLUMNS
    assert set(FEATURES) == {k.name.lower() for k in Kind if k is not Kind.CONTROL}
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
