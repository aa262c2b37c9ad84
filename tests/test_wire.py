"""The frame codec (switchboard.core.wire): bytes in, values out, no sockets."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchboard.core import wire
from switchboard.core.wire import (
    MAX_HEADER_BYTES,
    MAX_NAME_CHARS,
    ClientFrame,
    JoinRequest,
    Kind,
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


# --- parse_client_frame --------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_parse_client_frame_every_kind(kind: Kind) -> None:
    frame = wire.parse_client_frame(pack({"k": int(kind)}) + b"x")
    assert frame == ClientFrame(kind, None, len(pack({"k": int(kind)})))
    assert type(frame.kind) is Kind


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


@pytest.mark.parametrize("to", ["2", 2.0, True, [2], {"pid": 2}, b"\x02"], ids=repr)
def test_bad_recipient(to: object) -> None:
    with pytest.raises(FrameError) as info:
        wire.parse_client_frame(pack({"k": int(Kind.CHAT), "to": to}))
    assert info.value.code == "bad_recipient"


def test_to_nil_means_everyone() -> None:
    frame = wire.parse_client_frame(pack({"k": int(Kind.CHAT), "to": None}))
    assert frame.to is None


def test_unknown_header_keys_are_ignored() -> None:
    header = pack({"k": int(Kind.CHAT), "to": 3, "from": 999, "x-extra": [1, 2], "z": {"a": 1}})
    frame = wire.parse_client_frame(header + b"body")
    assert frame == ClientFrame(Kind.CHAT, 3, len(header))


# --- encoders and round trips --------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("to", [None, 0, 1, 2**31])
@pytest.mark.parametrize("payload", [b"", b"hello", pack({"k": 0, "to": 5}), bytes(range(256))])
def test_encode_data_parse_client_frame_round_trip(
    kind: Kind, to: int | None, payload: bytes
) -> None:
    data = wire.encode_data(kind, to, payload)
    frame = wire.parse_client_frame(data)
    assert frame.kind is kind
    assert frame.to == to
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


def test_pack_data_header_is_deterministic() -> None:
    # Encode once: the same inputs give the same bytes (no per-call state leaks).
    assert wire.pack_data_header(Kind.CHAT, 1, 2) == wire.pack_data_header(Kind.CHAT, 1, 2)
    assert wire.pack_data_header(Kind.CHAT, 1, None) != wire.pack_data_header(Kind.CHAT, 2, None)


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


@pytest.mark.parametrize("name", ["", "Ada", "é" * MAX_NAME_CHARS, "x" * MAX_NAME_CHARS])
def test_encode_join_parse_join_round_trip(name: str) -> None:
    invitation = "sbi_" + "A" * 43
    assert wire.parse_join(wire.encode_join(invitation, name)) == JoinRequest(invitation, name)


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


# --- property tests ------------------------------------------------------------


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_raise_frame_error(data: bytes) -> None:
    try:
        frame = wire.parse_client_frame(data)
    except FrameError as exc:
        assert exc.code in {"malformed_header", "unknown_kind", "bad_recipient"}
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


@given(
    st.dictionaries(st.sampled_from(["k", "to", "op", "from", "x"]), msgpack_values, max_size=5),
    st.binary(max_size=64),
)
def test_arbitrary_headers_only_ever_raise_frame_error(header: dict, payload: bytes) -> None:
    encoded = pack(header)
    data = encoded + payload
    try:
        frame = wire.parse_client_frame(data)
    except FrameError as exc:
        assert exc.code in {"malformed_header", "unknown_kind", "bad_recipient"}
    else:
        assert frame.payload_offset == len(encoded)
        assert data[frame.payload_offset :] == payload
        assert frame.kind == header["k"]
        assert frame.to == header.get("to")


@given(
    st.sampled_from(list(Kind)),
    st.none() | st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.binary(max_size=256),
)
def test_round_trip_property(kind: Kind, to: int | None, payload: bytes) -> None:
    data = wire.encode_data(kind, to, payload)
    frame = wire.parse_client_frame(data)
    assert (frame.kind, frame.to) == (kind, to)
    assert data[frame.payload_offset :] == payload


@given(st.binary(max_size=512))
def test_arbitrary_bytes_as_join_only_raise_protocol_error(data: bytes) -> None:
    try:
        wire.parse_join(data)
    except ProtocolError as exc:
        assert exc.code == "bad_join"


@pytest.mark.parametrize("k", [False, 0.0], ids=repr)
def test_join_kind_must_be_the_integer_zero(k: object) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.parse_join(pack({"k": k, "op": "join", "inv": "sbi_abc"}))
    assert info.value.code == "bad_join"
