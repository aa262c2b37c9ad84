"""The frame codec (switchboard.core.wire): bytes in, values out, no sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchboard.core import tokens, wire
from switchboard.core.wire import (
    MAX_HEADER_BYTES,
    MAX_NAME_CHARS,
    ClientFrame,
    JoinRequest,
    Kind,
    Media,
)
from switchboard.errors import FrameError, ProtocolError


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def header_of_size(size: int, **fields: object) -> bytes:
    """A msgpack map with ``fields`` plus a ``pad`` string, exactly ``size`` bytes long."""
    base = len(pack({**fields, "pad": ""}))
    for pad in range(size):
        packed = pack({**fields, "pad": "x" * pad})
        if len(packed) == size:
            return packed
    raise AssertionError(f"cannot build a {size}-byte header from a {base}-byte base")


# --- split_frame ---------------------------------------------------------------


def test_split_frame_returns_header_and_exact_payload_offset() -> None:
    header = pack({"k": 1, "to": 7})
    payload = b"\x00\x01payload bytes\xff"
    data = header + payload
    decoded, offset = wire.split_frame(data)
    assert decoded == {"k": 1, "to": 7}
    assert offset == len(header)
    assert data[offset:] == payload


def test_split_frame_header_only_has_offset_at_end() -> None:
    data = pack({"k": 0, "op": "ping"})
    decoded, offset = wire.split_frame(data)
    assert decoded == {"k": 0, "op": "ping"}
    assert offset == len(data)


@pytest.mark.parametrize("data_type", [bytes, bytearray, memoryview])
def test_split_frame_accepts_every_bytes_like(data_type: type) -> None:
    header = pack({"k": 1})
    payload = b"abc"
    decoded, offset = wire.split_frame(data_type(header + payload))
    assert decoded == {"k": 1}
    assert offset == len(header)


@pytest.mark.parametrize(
    "payload",
    [
        pack({"k": 0, "op": "join", "inv": "sbi_x", "to": 99}),  # a whole second header
        pack([1, 2, 3]),
        b"\x80",  # an empty msgpack map
        b"\xdf\xff\xff\xff\xff",  # a map32 header promising 4 billion entries
        b"\xc1",  # the one byte msgpack never uses
        b"",
    ],
    ids=["second-header", "array", "empty-map", "huge-map32", "never-used", "empty"],
)
def test_payload_that_looks_like_msgpack_is_located_not_read(payload: bytes) -> None:
    header = pack({"k": 1})
    data = header + payload
    frame = wire.parse_client_frame(data)
    assert frame.payload_offset == len(header)
    assert data[frame.payload_offset :] == payload
    # The payload never influences the routing fields.
    assert frame.kind is Kind.CHAT
    assert frame.to is None


def test_header_exactly_max_header_bytes_is_accepted() -> None:
    header = header_of_size(MAX_HEADER_BYTES, k=1)
    assert len(header) == MAX_HEADER_BYTES
    data = header + b"P" * 5000
    frame = wire.parse_client_frame(data)
    assert frame.payload_offset == MAX_HEADER_BYTES
    assert frame.kind is Kind.CHAT


def test_header_larger_than_max_header_bytes_is_refused() -> None:
    header = header_of_size(MAX_HEADER_BYTES + 1, k=1)
    with pytest.raises(FrameError) as info:
        wire.split_frame(header + b"payload")
    assert info.value.code == "malformed_header"
    with pytest.raises(FrameError) as info:
        wire.parse_client_frame(header)
    assert info.value.code == "malformed_header"


def test_huge_header_is_refused_without_reading_it_all() -> None:
    data = pack({"k": 1, "pad": "x" * 1_000_000})
    with pytest.raises(FrameError) as info:
        wire.parse_client_frame(data)
    assert info.value.code == "malformed_header"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x81",  # a map promising one entry, then nothing
        pack({"k": 1})[:-1],  # truncated
        pack([1, 2]),  # an array, not a map
        pack("k"),  # a string
        pack(1),  # an integer
        pack(None),
        b"\xc1",  # never-used byte
        pack({1: 2}),  # non-string key
        b"\x81\xa1k\xd4\x01\x00",  # an ext type in the header
        b"\x81\xa2\xff\xfe\x01",  # invalid UTF-8 in a key
    ],
    ids=[
        "empty",
        "map-without-entries",
        "truncated",
        "array",
        "string",
        "integer",
        "nil",
        "never-used",
        "int-key",
        "ext",
        "bad-utf8",
    ],
)
def test_malformed_header_raises_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError) as info:
        wire.split_frame(data)
    assert info.value.code == "malformed_header"
    with pytest.raises(FrameError) as info:
        wire.parse_client_frame(data)
    assert info.value.code == "malformed_header"


def test_frame_error_is_a_protocol_error_and_keeps_the_connection() -> None:
    # FrameError answers one frame; it must still be catchable as a ProtocolError.
    with pytest.raises(ProtocolError):
        wire.parse_client_frame(b"")


def test_frame_error_message_never_contains_payload_bytes() -> None:
    secret = "very-secret-content-123"
    data = pack({"k": 99}) + secret.encode()
    with pytest.raises(FrameError) as info:
        wire.parse_client_frame(data)
    assert secret not in str(info.value)
    # Error frames never echo a string the client put in the header either.
    for header in ({"k": secret}, {"k": 1, "to": secret}, {"k": [secret]}):
        with pytest.raises(FrameError) as info:
            wire.parse_client_frame(pack(header))
        assert secret not in str(info.value)


# --- parse_client_frame: kinds and recipients ------------------------------------

_U16 = (1 << 16) - 1
_U32 = (1 << 32) - 1
_U63 = (1 << 63) - 1

MINIMAL: dict[Kind, dict[str, Any]] = {
    Kind.CONTROL: {"op": "end"},
    Kind.CHAT: {},
    Kind.POLL: {"op": "open", "poll": 1},
    Kind.DOCUMENT: {"op": "page", "doc": 1, "page": 2},
    Kind.MEDIA: {"track": 1, "m": int(Media.AUDIO), "seq": 0},
}
"""The smallest valid header fields of each kind."""

PARSED: dict[Kind, tuple[str | None, dict[str, Any]]] = {
    Kind.CONTROL: ("end", {}),
    Kind.CHAT: (None, {}),
    Kind.POLL: ("open", {"op": "open", "poll": 1}),
    Kind.DOCUMENT: ("page", {"op": "page", "doc": 1, "page": 2}),
    Kind.MEDIA: (None, {"track": 1, "m": 0, "seq": 0, "key": False}),
}
"""What the relay reads (op, fields) from each MINIMAL header."""

FIELD_NAMES: dict[Kind, set[str]] = {
    Kind.CONTROL: {"pid", "track", "on", "m", "role"},
    Kind.CHAT: set(),
    Kind.POLL: {"op", "poll"},
    Kind.DOCUMENT: {"op", "doc", "seq", "fin", "size", "page"},
    Kind.MEDIA: {"track", "m", "seq", "key", "ts"},
}
"""Every key a parsed frame's ``fields`` may ever hold, per kind."""

FRAME_ERROR_CODES = {
    "malformed_header",
    "unknown_kind",
    "bad_recipient",
    "bad_op",
    "missing_field",
    "bad_field",
    "already_joined",
}


def parse(header: dict[str, Any], payload: bytes = b"") -> ClientFrame:
    return wire.parse_client_frame(pack(header) + payload)


def frame_error(header: dict[str, Any]) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse(header)
    return info.value


def kind_header(kind: Kind, **changes: Any) -> dict[str, Any]:
    """The minimal header of ``kind`` with ``changes`` (a value of None removes the key)."""
    header: dict[str, Any] = {"k": int(kind), **MINIMAL[kind], **changes}
    return {key: value for key, value in header.items() if value is not None}


def test_minimal_headers_cover_every_kind() -> None:
    assert set(MINIMAL) == set(Kind) == set(PARSED) == set(FIELD_NAMES)
    assert [int(k) for k in Kind] == [0, 1, 2, 3, 4]
    assert [int(m) for m in Media] == [0, 1, 2]


@pytest.mark.parametrize("kind", list(Kind))
def test_parse_client_frame_every_kind(kind: Kind) -> None:
    header = pack(kind_header(kind))
    frame = wire.parse_client_frame(header + b"x")
    op, fields = PARSED[kind]
    assert frame == ClientFrame(kind, None, len(header), op, fields)
    assert type(frame.kind) is Kind
    assert dict(frame.fields) == fields


def test_client_frame_defaults_have_no_op_and_no_fields() -> None:
    frame = ClientFrame(Kind.CHAT, None, 3)
    assert frame.op is None
    assert dict(frame.fields) == {}


@pytest.mark.parametrize(
    "k",
    [max(Kind) + 1, -1, 255, "1", 1.0, True, False, None, [1], b"\x01"],
    ids=repr,
)
def test_unknown_kind(k: object) -> None:
    with pytest.raises(FrameError) as info:
        wire.parse_client_frame(pack({"k": k}) + b"payload")
    assert info.value.code == "unknown_kind"


def test_missing_kind_is_unknown_kind() -> None:
    with pytest.raises(FrameError) as info:
        wire.parse_client_frame(pack({"to": 1}))
    assert info.value.code == "unknown_kind"


@pytest.mark.parametrize(
    "to", ["2", 2.0, True, [2], {"pid": 2}, b"\x02", -1, _U32 + 1, 2**63], ids=repr
)
def test_bad_recipient(to: object) -> None:
    with pytest.raises(FrameError) as info:
        wire.parse_client_frame(pack({"k": int(Kind.CHAT), "to": to}))
    assert info.value.code == "bad_recipient"


@pytest.mark.parametrize("to", [0, 1, _U32])
def test_recipient_range(to: int) -> None:
    assert parse({"k": int(Kind.CHAT), "to": to}).to == to


def test_to_nil_means_everyone() -> None:
    frame = wire.parse_client_frame(pack({"k": int(Kind.CHAT), "to": None}))
    assert frame.to is None


@pytest.mark.parametrize("kind", list(Kind))
def test_recipient_is_checked_before_the_kind_fields(kind: Kind) -> None:
    # Every kind reads ``to`` the same way.
    assert frame_error({"k": int(kind), "to": "x"}).code == "bad_recipient"
    assert parse(kind_header(kind, to=5)).to == 5


def test_unknown_header_keys_are_ignored() -> None:
    header = pack({"k": int(Kind.CHAT), "to": 3, "from": 999, "x-extra": [1, 2], "z": {"a": 1}})
    frame = wire.parse_client_frame(header + b"body")
    assert frame == ClientFrame(Kind.CHAT, 3, len(header))
    assert dict(frame.fields) == {}


JUNK = {"from": 999, "x-extra": [1, 2], "z": {"a": 1}, "secret": "content", "k2": 4}
"""Keys no kind reads; a sender may not smuggle anything to recipients with them."""


@pytest.mark.parametrize("kind", list(Kind))
def test_unknown_keys_are_never_forwarded(kind: Kind) -> None:
    header = kind_header(kind, **JUNK)
    frame = parse(header)
    assert dict(frame.fields) == PARSED[kind][1]
    assert not set(frame.fields) & set(JUNK)
    # Nor do they reach the header the relay forwards.
    forwarded, _ = wire.split_frame(wire.pack_data_header(kind, 7, None, frame.fields))
    assert forwarded == {"k": int(kind), "from": 7, **PARSED[kind][1]}


@pytest.mark.parametrize("kind", [Kind.CHAT, Kind.MEDIA])
def test_op_is_not_read_for_chat_and_media(kind: Kind) -> None:
    frame = parse(kind_header(kind, op="open"))
    assert frame.op is None
    assert "op" not in frame.fields


# --- poll frames -------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(wire.POLL_OPS))
def test_every_poll_op(op: str) -> None:
    frame = parse(kind_header(Kind.POLL, op=op, poll=9))
    assert frame.op == op
    assert dict(frame.fields) == {"op": op, "poll": 9}


def test_poll_ops_are_the_documented_four() -> None:
    assert frozenset({"open", "answer", "results", "close"}) == wire.POLL_OPS


@pytest.mark.parametrize("op", [None, "", "vote", "OPEN", 1, ["open"], "chunk", "join"])
def test_poll_bad_op(op: object) -> None:
    error = frame_error(kind_header(Kind.POLL, op=op))
    assert error.code == "bad_op"


def test_poll_needs_poll_id() -> None:
    error = frame_error(kind_header(Kind.POLL, poll=None))
    assert error.code == "missing_field"
    assert "'poll'" in error.reason


@pytest.mark.parametrize("poll", [-1, _U32 + 1, "1", 1.5, True, [1], b"1"], ids=repr)
def test_poll_bad_poll_id(poll: object) -> None:
    error = frame_error(kind_header(Kind.POLL, poll=poll))
    assert error.code == "bad_field"
    assert "'poll'" in error.reason


@pytest.mark.parametrize("poll", [0, _U32])
def test_poll_id_range(poll: int) -> None:
    assert parse(kind_header(Kind.POLL, poll=poll)).fields["poll"] == poll


# --- document frames ---------------------------------------------------------------


def test_document_ops_are_the_documented_four() -> None:
    assert frozenset({"chunk", "page", "annotate", "stop"}) == wire.DOCUMENT_OPS


def test_document_chunk_fields() -> None:
    frame = parse({"k": 3, "op": "chunk", "doc": 4, "seq": 0}, b"bytes")
    assert frame.op == "chunk"
    assert dict(frame.fields) == {"op": "chunk", "doc": 4, "seq": 0, "fin": False}
    frame = parse({"k": 3, "op": "chunk", "doc": 4, "seq": 7, "fin": True, "size": _U63})
    assert dict(frame.fields) == {"op": "chunk", "doc": 4, "seq": 7, "fin": True, "size": _U63}


def test_document_page_fields() -> None:
    frame = parse({"k": 3, "op": "page", "doc": 4, "page": 0})
    assert dict(frame.fields) == {"op": "page", "doc": 4, "page": 0}


@pytest.mark.parametrize("op", ["annotate", "stop"])
def test_document_annotate_and_stop_carry_only_the_doc(op: str) -> None:
    # Fields of other operations are not forwarded with these.
    frame = parse({"k": 3, "op": op, "doc": 4, "seq": 1, "page": 2, "fin": True, "size": 9})
    assert dict(frame.fields) == {"op": op, "doc": 4}


def test_document_page_does_not_forward_chunk_fields() -> None:
    frame = parse({"k": 3, "op": "page", "doc": 4, "page": 1, "seq": 1, "fin": True, "size": 9})
    assert dict(frame.fields) == {"op": "page", "doc": 4, "page": 1}


@pytest.mark.parametrize(
    ("header", "code", "key"),
    [
        ({"op": "chunk", "seq": 0}, "missing_field", "doc"),
        ({"op": "stop"}, "missing_field", "doc"),
        ({"op": "chunk", "doc": 1}, "missing_field", "seq"),
        ({"op": "page", "doc": 1}, "missing_field", "page"),
        ({"op": "chunk", "doc": -1, "seq": 0}, "bad_field", "doc"),
        ({"op": "chunk", "doc": _U32 + 1, "seq": 0}, "bad_field", "doc"),
        ({"op": "chunk", "doc": 1, "seq": "0"}, "bad_field", "seq"),
        ({"op": "chunk", "doc": 1, "seq": _U32 + 1}, "bad_field", "seq"),
        ({"op": "chunk", "doc": 1, "seq": 0, "fin": 1}, "bad_field", "fin"),
        ({"op": "chunk", "doc": 1, "seq": 0, "fin": "yes"}, "bad_field", "fin"),
        ({"op": "chunk", "doc": 1, "seq": 0, "size": -1}, "bad_field", "size"),
        ({"op": "chunk", "doc": 1, "seq": 0, "size": _U63 + 1}, "bad_field", "size"),
        ({"op": "chunk", "doc": 1, "seq": 0, "size": 1.0}, "bad_field", "size"),
        ({"op": "page", "doc": 1, "page": True}, "bad_field", "page"),
    ],
)
def test_document_field_errors(header: dict[str, Any], code: str, key: str) -> None:
    error = frame_error({"k": int(Kind.DOCUMENT), **header})
    assert error.code == code
    assert f"'{key}'" in error.reason


@pytest.mark.parametrize("op", [None, "", "share", "open", 3])
def test_document_bad_op(op: object) -> None:
    assert frame_error(kind_header(Kind.DOCUMENT, op=op)).code == "bad_op"


# --- media frames ------------------------------------------------------------------


@pytest.mark.parametrize("media", list(Media))
def test_media_fields(media: Media) -> None:
    frame = parse({"k": 4, "track": _U16, "m": int(media), "seq": _U32, "key": True, "ts": _U63})
    assert frame.op is None
    assert dict(frame.fields) == {
        "track": _U16,
        "m": int(media),
        "seq": _U32,
        "key": True,
        "ts": _U63,
    }


def test_media_key_defaults_to_false_and_ts_is_optional() -> None:
    frame = parse({"k": 4, "track": 0, "m": 1, "seq": 0})
    assert dict(frame.fields) == {"track": 0, "m": 1, "seq": 0, "key": False}


@pytest.mark.parametrize(
    ("changes", "code", "key"),
    [
        ({"track": None}, "missing_field", "track"),
        ({"seq": None}, "missing_field", "seq"),
        ({"m": None}, "bad_field", "m"),
        ({"track": _U16 + 1}, "bad_field", "track"),
        ({"track": -1}, "bad_field", "track"),
        ({"track": "1"}, "bad_field", "track"),
        ({"m": 3}, "bad_field", "m"),
        ({"m": -1}, "bad_field", "m"),
        ({"m": True}, "bad_field", "m"),
        ({"m": "audio"}, "bad_field", "m"),
        ({"seq": -1}, "bad_field", "seq"),
        ({"key": 1}, "bad_field", "key"),
        ({"ts": -1}, "bad_field", "ts"),
        ({"ts": 1.5}, "bad_field", "ts"),
    ],
)
def test_media_field_errors(changes: dict[str, Any], code: str, key: str) -> None:
    error = frame_error(kind_header(Kind.MEDIA, **changes))
    assert error.code == code
    assert f"'{key}'" in error.reason


# --- control frames and parse_control ----------------------------------------------

CONTROL_CASES: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    ({"op": "lobby"}, "lobby", {"on": True}),
    ({"op": "lobby", "on": False}, "lobby", {"on": False}),
    ({"op": "admit", "pid": 3}, "admit", {"pid": 3}),
    ({"op": "deny", "pid": 3}, "deny", {"pid": 3}),
    ({"op": "lock", "on": False}, "lock", {"on": False}),
    ({"op": "eject", "pid": 3}, "eject", {"pid": 3}),
    ({"op": "mute", "pid": 3, "track": 2}, "mute", {"pid": 3, "track": 2, "on": True}),
    (
        {"op": "mute", "pid": 3, "track": 2, "on": False},
        "mute",
        {"pid": 3, "track": 2, "on": False},
    ),
    ({"op": "role", "pid": 3, "role": "presenter"}, "role", {"pid": 3, "role": "presenter"}),
    ({"op": "webinar"}, "webinar", {"on": True}),
    ({"op": "end"}, "end", {}),
    ({"op": "publish", "track": 2, "m": 1}, "publish", {"track": 2, "m": 1, "on": True}),
    (
        {"op": "publish", "track": 2, "m": 2, "on": False},
        "publish",
        {"track": 2, "m": 2, "on": False},
    ),
    ({"op": "subscribe", "pid": 3}, "subscribe", {"pid": 3, "on": True}),
    (
        {"op": "subscribe", "pid": 3, "track": 1, "on": False},
        "subscribe",
        {"pid": 3, "track": 1, "on": False},
    ),
    ({"op": "receive", "m": 1, "on": False}, "receive", {"m": 1, "on": False}),
    ({"op": "keyframe", "pid": 3, "track": 1}, "keyframe", {"pid": 3, "track": 1}),
]


def test_control_cases_cover_every_control_op() -> None:
    assert {op for _, op, _ in CONTROL_CASES} == wire.CONTROL_OPS


@pytest.mark.parametrize(("header", "op", "fields"), CONTROL_CASES, ids=lambda v: str(v))
def test_control_frame_fields(header: dict[str, Any], op: str, fields: dict[str, Any]) -> None:
    frame = parse({"k": int(Kind.CONTROL), **header, **JUNK})
    assert frame.kind is Kind.CONTROL
    assert frame.op == op
    assert dict(frame.fields) == fields
    # parse_control is the same validation, for the host API.
    assert wire.parse_control({**header, **JUNK}) == (op, fields)


@pytest.mark.parametrize("role", ["host", "presenter", "attendee"])
def test_control_role_values(role: str) -> None:
    assert wire.parse_control({"op": "role", "pid": 1, "role": role}) == (
        "role",
        {"pid": 1, "role": role},
    )


@pytest.mark.parametrize(
    ("header", "code", "key"),
    [
        ({"op": "admit"}, "missing_field", "pid"),
        ({"op": "deny"}, "missing_field", "pid"),
        ({"op": "eject"}, "missing_field", "pid"),
        ({"op": "mute", "track": 1}, "missing_field", "pid"),
        ({"op": "mute", "pid": 1}, "missing_field", "track"),
        ({"op": "role", "role": "host"}, "missing_field", "pid"),
        ({"op": "subscribe"}, "missing_field", "pid"),
        ({"op": "keyframe", "track": 1}, "missing_field", "pid"),
        ({"op": "keyframe", "pid": 1}, "missing_field", "track"),
        ({"op": "publish", "m": 0}, "missing_field", "track"),
        ({"op": "publish", "track": 1}, "bad_field", "m"),
        ({"op": "publish", "track": 1, "m": 5}, "bad_field", "m"),
        ({"op": "receive"}, "bad_field", "m"),
        ({"op": "role", "pid": 1}, "bad_field", "role"),
        ({"op": "role", "pid": 1, "role": "owner"}, "bad_field", "role"),
        ({"op": "role", "pid": 1, "role": "HOST"}, "bad_field", "role"),
        ({"op": "role", "pid": 1, "role": 1}, "bad_field", "role"),
        ({"op": "admit", "pid": -1}, "bad_field", "pid"),
        ({"op": "admit", "pid": "3"}, "bad_field", "pid"),
        ({"op": "admit", "pid": _U32 + 1}, "bad_field", "pid"),
        ({"op": "mute", "pid": 1, "track": _U16 + 1}, "bad_field", "track"),
        ({"op": "lock", "on": "yes"}, "bad_field", "on"),
        ({"op": "lobby", "on": 0}, "bad_field", "on"),
    ],
)
def test_control_field_errors(header: dict[str, Any], code: str, key: str) -> None:
    error = frame_error({"k": int(Kind.CONTROL), **header})
    assert error.code == code
    assert f"'{key}'" in error.reason
    with pytest.raises(FrameError) as info:
        wire.parse_control(header)
    assert info.value.code == code


@pytest.mark.parametrize(
    "op", [None, "", "welcome", "sync", "ping", "LOCK", "chunk", 0, ["end"]], ids=repr
)
def test_control_bad_op(op: object) -> None:
    header = {} if op is None else {"op": op}
    assert frame_error({"k": 0, **header}).code == "bad_op"
    with pytest.raises(FrameError) as info:
        wire.parse_control(header)
    assert info.value.code == "bad_op"


def test_a_second_join_is_already_joined() -> None:
    # The join message is read by parse_join; once joined, another one is an error frame.
    data = wire.encode_join("sbi_abc", "Ada")
    with pytest.raises(FrameError) as info:
        wire.parse_client_frame(data)
    assert info.value.code == "already_joined"
    with pytest.raises(FrameError) as info:
        wire.parse_control({"op": "join", "resume": "sbr_x"})
    assert info.value.code == "already_joined"


@pytest.mark.parametrize("op", ["end", "admit", "deny", "eject", "role", "keyframe"])
def test_on_is_neither_read_nor_forwarded_for_ops_without_it(op: str) -> None:
    header = {"op": op, "pid": 1, "track": 1, "role": "host", "on": "not-a-bool"}
    op_read, fields = wire.parse_control(header)
    assert op_read == op
    assert "on" not in fields


@pytest.mark.parametrize("op", ["lobby", "lock", "webinar", "mute", "publish", "subscribe"])
def test_on_is_checked_for_ops_that_switch_something(op: str) -> None:
    header = {"op": op, "pid": 1, "track": 1, "m": 0, "on": "not-a-bool"}
    with pytest.raises(FrameError) as info:
        wire.parse_control(header)
    assert info.value.code == "bad_field"


def test_control_ops_are_the_documented_set() -> None:
    assert (
        frozenset(
            {
                "lobby",
                "admit",
                "deny",
                "lock",
                "eject",
                "mute",
                "role",
                "webinar",
                "end",
                "publish",
                "subscribe",
                "receive",
                "keyframe",
            }
        )
        == wire.CONTROL_OPS
    )


def test_error_reasons_never_echo_client_strings() -> None:
    secret = "very-secret-content-123"
    headers = [
        {"k": 2, "op": secret, "poll": 1},
        {"k": 2, "op": "open", "poll": secret},
        {"k": 3, "op": "chunk", "doc": 1, "seq": secret},
        {"k": 4, "track": 1, "m": secret, "seq": 0},
        {"k": 0, "op": secret},
        {"k": 0, "op": "role", "pid": 1, "role": secret},
        {"k": 0, "op": "lock", "on": secret},
    ]
    for header in headers:
        error = frame_error(header)
        assert secret not in str(error)
        assert secret not in error.reason


# --- encoders and round trips --------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("to", [None, 0, 1, 2**31])
@pytest.mark.parametrize("payload", [b"", b"hello", pack({"k": 0, "to": 5}), bytes(range(256))])
def test_encode_data_parse_client_frame_round_trip(
    kind: Kind, to: int | None, payload: bytes
) -> None:
    data = wire.encode_data(kind, to, payload, **MINIMAL[kind])
    frame = wire.parse_client_frame(data)
    assert frame.kind is kind
    assert frame.to == to
    assert (frame.op, dict(frame.fields)) == PARSED[kind]
    assert data[frame.payload_offset :] == payload


@pytest.mark.parametrize("payload_type", [bytes, bytearray, memoryview])
def test_encode_data_accepts_bytes_like_payloads(payload_type: type) -> None:
    data = wire.encode_data(Kind.CHAT, None, payload_type(b"abc"))
    assert isinstance(data, bytes)
    frame = wire.parse_client_frame(data)
    assert data[frame.payload_offset :] == b"abc"


def test_encode_data_without_to_has_no_to_key() -> None:
    header, _ = wire.split_frame(wire.encode_data(Kind.CHAT, None, b"p"))
    assert header == {"k": int(Kind.CHAT)}


def test_encode_data_puts_the_kind_fields_in_the_header() -> None:
    header, _ = wire.split_frame(
        wire.encode_data(Kind.MEDIA, None, b"p", track=1, m=1, seq=5, key=True)
    )
    assert header == {"k": 4, "track": 1, "m": 1, "seq": 5, "key": True}


@pytest.mark.parametrize("to", [None, 4])
def test_pack_data_header_stamps_sender(to: int | None) -> None:
    header_bytes = wire.pack_data_header(Kind.CHAT, 17, to)
    data = header_bytes + b"payload"
    header, offset = wire.split_frame(data)
    expected: dict[str, object] = {"k": int(Kind.CHAT), "from": 17}
    if to is not None:
        expected["to"] = to
    assert header == expected
    assert offset == len(header_bytes)
    # What the relay forwards is still a valid client-style frame for the reader.
    frame = wire.parse_client_frame(data)
    assert (frame.kind, frame.to) == (Kind.CHAT, to)


@pytest.mark.parametrize("kind", [Kind.POLL, Kind.DOCUMENT, Kind.MEDIA])
@pytest.mark.parametrize("to", [None, 4])
def test_forwarded_header_carries_the_validated_fields(kind: Kind, to: int | None) -> None:
    client = parse(kind_header(kind, **{"from": 99}, to=to))
    forwarded = wire.pack_data_header(kind, 17, client.to, client.fields)
    header, _ = wire.split_frame(forwarded)
    expected: dict[str, Any] = {"k": int(kind), "from": 17, **PARSED[kind][1]}
    if to is not None:
        expected["to"] = to
    assert header == expected
    # The sender is the relay's stamp, never the client's claim.
    assert header["from"] == 17
    # A receiver parsing it reads the same routing fields.
    again = wire.parse_client_frame(forwarded)
    assert (again.op, dict(again.fields), again.to) == (client.op, dict(client.fields), to)


def test_pack_data_header_is_deterministic() -> None:
    # Encode once: the same inputs give the same bytes (no per-call state leaks).
    assert wire.pack_data_header(Kind.CHAT, 1, 2) == wire.pack_data_header(Kind.CHAT, 1, 2)
    assert wire.pack_data_header(Kind.CHAT, 1, None) != wire.pack_data_header(Kind.CHAT, 2, None)
    fields = {"op": "open", "poll": 3}
    assert wire.pack_data_header(Kind.POLL, 1, None, fields) == wire.pack_data_header(
        Kind.POLL, 1, None, dict(fields)
    )


def test_encode_control_is_header_only() -> None:
    data = wire.encode_control("welcome", pid=3, roster=[{"pid": 1}], v=wire.PROTOCOL_VERSION)
    header, offset = wire.split_frame(data)
    assert header == {
        "k": int(Kind.CONTROL),
        "op": "welcome",
        "pid": 3,
        "roster": [{"pid": 1}],
        "v": wire.PROTOCOL_VERSION,
    }
    assert offset == len(data)


def test_encode_control_round_trips_through_parse_client_frame() -> None:
    frame = wire.parse_client_frame(wire.encode_control("mute", pid=2, track=1, on=False))
    assert (frame.kind, frame.op, dict(frame.fields)) == (
        Kind.CONTROL,
        "mute",
        {"pid": 2, "track": 1, "on": False},
    )


# --- join ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "Ada", "é" * MAX_NAME_CHARS, "x" * MAX_NAME_CHARS])
def test_encode_join_parse_join_round_trip(name: str) -> None:
    invitation = "sbi_" + "A" * 43
    request = wire.parse_join(wire.encode_join(invitation, name))
    assert request == JoinRequest(invitation, name)
    assert request.resume is False


def test_join_with_resume_token() -> None:
    token = "sbr_" + "B" * 43
    data = wire.encode_join(token, resume=True)
    header, _ = wire.split_frame(data)
    assert header["resume"] == token
    assert "inv" not in header
    request = wire.parse_join(data)
    assert request == JoinRequest(token, "", resume=True)
    assert request.resume is True
    # A resume keeps the identity it had: a name sent with it is not taken.
    assert wire.parse_join(wire.encode_join(token, "Mallory", resume=True)).name == ""


def test_join_resume_nil_means_an_invitation_join() -> None:
    data = pack({"k": 0, "op": "join", "inv": "sbi_abc", "resume": None, "name": "n"})
    assert wire.parse_join(data) == JoinRequest("sbi_abc", "n")


@pytest.mark.parametrize("resume", ["", 123, b"sbr_x", "x" * 129, ["sbr_x"], True], ids=repr)
def test_join_bad_resume_token(resume: object) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_join(pack({"k": 0, "op": "join", "resume": resume}))
    assert info.value.code == "bad_join"
    assert not isinstance(info.value, FrameError)


def test_a_minted_resume_token_fits_the_join() -> None:
    token, _ = tokens.mint(tokens.TokenKind.RESUME)
    assert token.startswith("sbr_")
    assert wire.parse_join(wire.encode_join(token, resume=True)) == JoinRequest(
        token, "", resume=True
    )


def test_join_longest_resume_token() -> None:
    assert wire.parse_join(wire.encode_join("r" * 128, resume=True)).invitation == "r" * 128


def test_parse_join_name_defaults_to_empty() -> None:
    data = pack({"k": 0, "op": "join", "inv": "sbi_abc"})
    assert wire.parse_join(data) == JoinRequest("sbi_abc", "")


def test_parse_join_ignores_unknown_keys() -> None:
    data = pack({"k": 0, "op": "join", "inv": "sbi_abc", "name": "n", "extra": [1]})
    assert wire.parse_join(data) == JoinRequest("sbi_abc", "n")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        pack([0, "join"]),
        header_of_size(MAX_HEADER_BYTES + 1, k=0, op="join", inv="sbi_abc"),
        pack({"k": 1, "op": "join", "inv": "sbi_abc"}),  # wrong kind
        pack({"op": "join", "inv": "sbi_abc"}),  # no kind
        pack({"k": 0, "op": "hello", "inv": "sbi_abc"}),  # wrong op
        pack({"k": 0, "inv": "sbi_abc"}),  # no op
        pack({"k": 0, "op": "join"}),  # no invitation
        pack({"k": 0, "op": "join", "inv": ""}),  # empty invitation
        pack({"k": 0, "op": "join", "inv": 123}),  # not a string
        pack({"k": 0, "op": "join", "inv": b"sbi_abc"}),  # bytes, not a string
        pack({"k": 0, "op": "join", "inv": "x" * 129}),  # too long
        pack({"k": 0, "op": "join", "inv": "sbi_abc", "name": "x" * (MAX_NAME_CHARS + 1)}),
        pack({"k": 0, "op": "join", "inv": "sbi_abc", "name": 5}),
        pack({"k": 0, "op": "join", "inv": "sbi_abc", "name": None}),
    ],
    ids=[
        "empty",
        "never-used",
        "array",
        "oversized-header",
        "wrong-kind",
        "no-kind",
        "wrong-op",
        "no-op",
        "no-inv",
        "empty-inv",
        "int-inv",
        "bytes-inv",
        "long-inv",
        "long-name",
        "int-name",
        "nil-name",
    ],
)
def test_bad_join_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_join(data)
    assert info.value.code == "bad_join"
    # A bad join ends the connection: it must not be the keep-the-connection FrameError.
    assert not isinstance(info.value, FrameError)


def test_parse_join_accepts_longest_invitation() -> None:
    assert wire.parse_join(wire.encode_join("x" * 128)).invitation == "x" * 128


@pytest.mark.parametrize("k", [False, 0.0], ids=repr)
def test_join_kind_must_be_the_integer_zero(k: object) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_join(pack({"k": k, "op": "join", "inv": "sbi_abc"}))
    assert info.value.code == "bad_join"


# --- property tests ------------------------------------------------------------


def assert_well_formed(frame: ClientFrame, header: dict[str, Any]) -> None:
    """What every successfully parsed frame guarantees, whatever the client sent."""
    kind = frame.kind
    assert frame.kind in set(Kind)
    assert set(frame.fields) <= FIELD_NAMES[kind]
    for key, value in frame.fields.items():
        if key in ("on", "fin", "key"):
            assert type(value) is bool
        elif key in ("op", "role"):
            assert type(value) is str
        else:
            assert type(value) is int
            assert value >= 0
        if key != "on" and key != "fin" and key != "key":
            # Every forwarded value is the client's own, validated, never invented.
            assert header[key] == value
    if kind in (Kind.POLL, Kind.DOCUMENT):
        assert frame.op == header["op"] == frame.fields["op"]
    elif kind is Kind.CONTROL:
        assert frame.op == header["op"]
        assert frame.op in wire.CONTROL_OPS
    else:
        assert frame.op is None
    if "m" in frame.fields:
        assert frame.fields["m"] in {int(m) for m in Media}


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_raise_frame_error(data: bytes) -> None:
    try:
        frame = wire.parse_client_frame(data)
    except FrameError as exc:
        assert exc.code in FRAME_ERROR_CODES
    else:
        assert 0 < frame.payload_offset <= min(len(data), MAX_HEADER_BYTES)
        assert frame.kind in set(Kind)


# A fixed alphabet keeps generation fast (no Unicode database scan) and still
# covers multi-byte UTF-8.
_text = st.text(alphabet="kto fromx\u00e9\u4e2d\U0001f600", max_size=20)

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | _text
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)

_ALL_OPS = sorted(wire.POLL_OPS | wire.DOCUMENT_OPS | wire.CONTROL_OPS | {"join"})
_KEYS = [
    "k",
    "to",
    "op",
    "poll",
    "doc",
    "seq",
    "fin",
    "size",
    "page",
    "track",
    "m",
    "key",
    "ts",
    "pid",
    "on",
    "role",
    "from",
    "x",
]
# Mostly plausible values, so generated headers reach every field check.
_plausible = (
    st.integers(min_value=-2, max_value=6)
    | st.sampled_from([_U16, _U16 + 1, _U32, _U32 + 1, _U63, _U63 + 1])
    | st.sampled_from([*_ALL_OPS, "host", "presenter", "attendee", "owner"])
    | st.booleans()
    | st.none()
    | msgpack_values
)


@given(
    st.dictionaries(st.sampled_from(_KEYS), _plausible, max_size=10),
    st.none() | st.integers(min_value=0, max_value=4),
    st.binary(max_size=64),
)
def test_arbitrary_headers_only_ever_raise_frame_error(
    header: dict[str, Any], kind: int | None, payload: bytes
) -> None:
    if kind is not None:
        header = {**header, "k": kind}
    encoded = pack(header)
    data = encoded + payload
    try:
        frame = wire.parse_client_frame(data)
    except FrameError as exc:
        assert exc.code in FRAME_ERROR_CODES
    else:
        assert frame.payload_offset == len(encoded)
        assert data[frame.payload_offset :] == payload
        assert frame.kind == header["k"]
        assert frame.to == header.get("to")
        assert_well_formed(frame, header)


VALID_HEADERS: list[dict[str, Any]] = [
    *({"k": 0, **header} for header, _, _ in CONTROL_CASES),
    {"k": 1},
    *({"k": 2, "op": op, "poll": 3} for op in sorted(wire.POLL_OPS)),
    *(
        {"k": 3, "op": op, "doc": 1, "seq": 2, "fin": True, "size": 10, "page": 4}
        for op in sorted(wire.DOCUMENT_OPS)
    ),
    *({"k": 4, "track": 1, "m": int(m), "seq": 2, "key": True, "ts": 5} for m in Media),
]


@st.composite
def near_valid_headers(draw: st.DrawFn) -> dict[str, Any]:
    """A valid header of some kind, with a few keys added, changed or removed."""
    header = dict(draw(st.sampled_from(VALID_HEADERS)))
    for key in draw(st.lists(st.sampled_from(_KEYS), max_size=2)):
        header.pop(key, None)
    header.update(draw(st.dictionaries(st.sampled_from(_KEYS), _plausible, max_size=3)))
    return header


def test_valid_headers_are_valid() -> None:
    for header in VALID_HEADERS:
        assert_well_formed(parse(header), header)
    assert {parse(h).kind for h in VALID_HEADERS} == set(Kind)


@given(near_valid_headers(), st.binary(max_size=16))
def test_near_valid_headers_only_ever_raise_frame_error(
    header: dict[str, Any], payload: bytes
) -> None:
    encoded = pack(header)
    try:
        frame = wire.parse_client_frame(encoded + payload)
    except FrameError as exc:
        assert exc.code in FRAME_ERROR_CODES
    else:
        assert frame.payload_offset == len(encoded)
        assert frame.kind == header["k"]
        assert_well_formed(frame, header)


@given(st.dictionaries(st.sampled_from(_KEYS), _plausible, max_size=8))
def test_parse_control_only_ever_raises_frame_error(header: dict[str, Any]) -> None:
    try:
        op, fields = wire.parse_control(header)
    except FrameError as exc:
        assert exc.code in {"bad_op", "missing_field", "bad_field", "already_joined"}
    else:
        assert op in wire.CONTROL_OPS
        assert set(fields) <= FIELD_NAMES[Kind.CONTROL]


@given(
    st.sampled_from(list(Kind)),
    st.none() | st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.binary(max_size=256),
)
def test_round_trip_property(kind: Kind, to: int | None, payload: bytes) -> None:
    data = wire.encode_data(kind, to, payload, **MINIMAL[kind])
    if to is not None and not 0 <= to <= _U32:
        with pytest.raises(FrameError) as info:
            wire.parse_client_frame(data)
        assert info.value.code == "bad_recipient"
        return
    frame = wire.parse_client_frame(data)
    assert (frame.kind, frame.to) == (kind, to)
    assert data[frame.payload_offset :] == payload


@given(st.binary(max_size=512))
def test_arbitrary_bytes_as_join_only_raise_protocol_error(data: bytes) -> None:
    try:
        wire.parse_join(data)
    except ProtocolError as exc:
        assert exc.code == "bad_join"


def test_relay_frames_may_carry_headers_longer_than_a_client_may() -> None:
    # A welcome of a large meeting: its roster alone is several KiB.
    roster = [{"pid": pid, "role": "attendee", "name": f"person {pid}"} for pid in range(600)]
    header = msgpack.packb({"k": 0, "op": "welcome", "roster": roster})
    assert len(header) > 8 * wire.MAX_HEADER_BYTES
    with pytest.raises(FrameError):
        wire.split_frame(header)
    decoded, offset = wire.split_frame(header + b"tail", from_relay=True)
    assert decoded["roster"] == roster
    assert offset == len(header)


def test_a_refused_header_leaves_nothing_behind_for_the_next_frame() -> None:
    # The relay's hub reuses one HeaderReader: whatever a bad frame fed its
    # unpacker must be gone before the next frame, and so must a good frame's payload.
    reader = wire.HeaderReader()
    good = wire.encode_data(Kind.CHAT, None, b"x" * 2000)  # payload past the bytes fed
    for bad in (b"\xc1", b"\x85\xa1k", b"\x92\x01\x02" + b"z" * 50, bytes(2000), b""):
        with pytest.raises(FrameError):
            reader.parse_client_frame(bad)
        frame = reader.parse_client_frame(good)
        assert frame.kind is Kind.CHAT
        assert good[frame.payload_offset :] == b"x" * 2000
        assert reader.split(good) == wire.split_frame(good)


def split_or_code(split: Callable[[bytes], object], data: bytes) -> object:
    """What ``split`` answers for ``data``: the header and offset, or the refusal's code."""
    try:
        return split(data)
    except FrameError as exc:
        return exc.code


@given(st.lists(st.binary(max_size=1500), max_size=20))
def test_a_reused_reader_answers_each_frame_as_a_fresh_decode_would(frames: list[bytes]) -> None:
    reader = wire.HeaderReader()
    for data in frames:
        assert split_or_code(reader.split, data) == split_or_code(wire.split_frame, data)


def test_a_reused_reader_reads_headers_of_every_length_as_a_fresh_decode_would() -> None:
    # The reader feeds a frame's first bytes, then the rest of MAX_HEADER_BYTES
    # only when the header is longer: every header length, on both sides of
    # each boundary, must read as the one-shot decode reads it.
    reader = wire.HeaderReader()
    short = wire.encode_data(Kind.CHAT, None, b"after")
    for pad in range(0, wire.MAX_HEADER_BYTES + 16):
        data = msgpack.packb({"k": int(Kind.CHAT), "pad": "p" * pad}) + b"payload" * 3
        assert split_or_code(reader.split, data) == split_or_code(wire.split_frame, data), pad
        assert reader.split(short) == wire.split_frame(short), pad


# media headers read by layout (wire.media_layout / wire.read_media)


def _media(**fields: Any) -> bytes:
    return msgpack.packb({"k": int(Kind.MEDIA), **fields}) + b"opaque payload"


def _layout_of(message: bytes, sender: int = 7) -> wire.MediaLayout | None:
    frame = wire.parse_client_frame(message)
    return wire.media_layout(message[: frame.payload_offset], frame, sender)


_SEQS = st.one_of(
    st.integers(0, 127), st.integers(128, 255), st.integers(256, 65535), st.integers(65536, _U32)
)


@given(
    track=st.integers(0, 0xFFFF),
    m=st.sampled_from([0, 1, 2]),
    first=_SEQS,
    seq=_SEQS,
    key=st.booleans(),
    sender=st.integers(0, _U32),
    payload=st.binary(max_size=64),
)
def test_a_media_header_read_by_layout_is_what_the_parser_reads(
    track: int, m: int, first: int, seq: int, key: bool, sender: int, payload: bytes
) -> None:
    learned = msgpack.packb({"k": 4, "track": track, "m": m, "seq": first, "key": not key})
    layout = wire.media_layout(learned, wire.parse_client_frame(learned), sender)
    assert layout is not None
    message = msgpack.packb({"k": 4, "track": track, "m": m, "seq": seq, "key": key}) + payload
    for data in (message, memoryview(message), bytearray(message)):
        hit = wire.read_media(layout, data)
        assert hit is not None
        frame, head = hit
        parsed = wire.parse_client_frame(message)
        assert frame == parsed
        assert type(frame) is ClientFrame
        assert head == wire.pack_data_header(Kind.MEDIA, sender, None, parsed.fields)
        assert message[frame.payload_offset :] == payload


@pytest.mark.parametrize(
    "header",
    [
        {"k": 4, "m": 1, "track": 1, "seq": 0, "key": True},  # another key order
        {"k": 4, "track": 1, "m": 1, "seq": 0, "key": True, "ts": 5},  # a timestamp
        {"k": 4, "track": 1, "m": 1, "seq": 0, "key": True, "extra": 1},  # an unknown key
        {"k": 4, "track": 1, "m": 1, "seq": 0},  # no key flag (the parser defaults it)
    ],
)
def test_only_the_sdks_exact_media_header_gets_a_layout(header: dict[str, Any]) -> None:
    assert _layout_of(msgpack.packb(header)) is None


def test_a_header_not_in_msgpacks_shortest_form_gets_no_layout() -> None:
    head = msgpack.packb({"k": 4, "track": 1, "m": 1, "seq": 0, "key": True})
    wide = head.replace(b"\xa3seq\x00", b"\xa3seq\xce\x00\x00\x00\x00")
    assert wire.parse_client_frame(wide).fields["seq"] == 0
    assert _layout_of(wide) is None
    assert _layout_of(head) is not None


def test_frames_of_another_shape_are_left_to_the_parser() -> None:
    layout = _layout_of(_media(track=1, m=1, seq=0, key=True))
    assert layout is not None
    left = [
        _media(track=2, m=1, seq=1, key=False),  # another track
        _media(track=1, m=0, seq=1, key=False),  # another media type
        _media(track=1, m=1, seq=1, key=False, ts=9),  # one more field
        _media(track=1, m=1, seq=1 << 40, key=False),  # seq beyond 32 bits (the parser refuses)
        _media(track=1, m=1, seq=-1, key=False),  # a negative seq (the parser refuses)
        _media(track=1, m=1, seq=1, key=1),  # key not a boolean (the parser refuses)
        _media(track=1, m=1, seq=1, kex=False),  # another key name
        msgpack.packb({"k": 1}) + b"chat",
    ]
    for message in left:
        assert wire.read_media(layout, message) is None, message


def test_a_frame_cut_inside_its_header_is_left_to_the_parser() -> None:
    message = _media(track=1, m=1, seq=70000, key=True)
    layout = _layout_of(message)
    assert layout is not None
    end = wire.parse_client_frame(message).payload_offset
    for cut in range(end):
        assert wire.read_media(layout, message[:cut]) is None
    assert wire.read_media(layout, message[:end]) is not None  # the header, no payload
