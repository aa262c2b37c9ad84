"""The frame codec: a routing header the relay reads, a payload it never touches.

Every websocket binary message is ``msgpack(header) || payload``: a msgpack map
followed directly by raw payload bytes that run to the end of the message. The
relay decodes only the map (bounded to :data:`MAX_HEADER_BYTES`) and finds the
payload by offset; it never decodes, copies into Python objects, logs or stores
the payload. That keeps the relay blind to content (clients may encrypt it end
to end) and keeps its per-frame work independent of payload size.

The relay *re-encodes* the header it forwards (with the sender stamped by the
relay, never trusted from the client) once per inbound frame; the same bytes go
to every recipient. Of a client's header only the validated fields of the
frame's kind are forwarded; unknown keys are dropped, never echoed.

This module is sans-I/O: bytes in, values out. See ``docs/protocol.md``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import msgpack

from ..errors import FrameError, ProtocolError

__all__ = [
    "CONTROL_OPS",
    "DOCUMENT_OPS",
    "MAX_HEADER_BYTES",
    "MAX_NAME_CHARS",
    "POLL_OPS",
    "PROTOCOL_VERSION",
    "ClientFrame",
    "HeaderReader",
    "JoinRequest",
    "Kind",
    "Media",
    "MediaLayout",
    "encode_control",
    "encode_data",
    "encode_join",
    "media_layout",
    "pack_data_header",
    "parse_client_frame",
    "parse_control",
    "parse_join",
    "read_media",
    "split_frame",
]

PROTOCOL_VERSION = 1
"""Sent in the welcome; bumped on any incompatible wire change."""

MAX_HEADER_BYTES = 1024
"""A header must be complete within this many bytes of the message start."""

MAX_NAME_CHARS = 64
"""Longest display name a participant may give in its join message."""

_MAX_INVITATION_CHARS = 128


class Kind(enum.IntEnum):
    """What a frame carries; the ``k`` field of every header."""

    CONTROL = 0
    """Join, welcome, roster changes, moderation, keyframe and sync requests, errors."""
    CHAT = 1
    """A chat message: to everyone, or privately to one participant (``to``)."""
    POLL = 2
    """A poll: opened, answered (to its owner only), results published, closed."""
    DOCUMENT = 3
    """A shared document: chunks, page turns, annotations; from a presenter."""
    MEDIA = 4
    """One audio, video or screen frame of a published track."""


class Media(enum.IntEnum):
    """The ``m`` field of media frames and tracks: what a track carries."""

    AUDIO = 0
    VIDEO = 1
    SCREEN = 2


_KINDS = frozenset(int(k) for k in Kind)
_KIND_BY_NUMBER: tuple[Kind, ...] = tuple(sorted(Kind))
_MEDIA = frozenset(int(m) for m in Media)

POLL_OPS = frozenset({"open", "answer", "results", "close"})
"""Poll operations (``op`` of a poll frame)."""

DOCUMENT_OPS = frozenset({"chunk", "page", "annotate", "stop"})
"""Document operations (``op`` of a document frame)."""

CONTROL_OPS = frozenset(
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
"""Control operations a joined participant may send (see :mod:`.rules` for who may)."""

_U16 = (1 << 16) - 1
_U32 = (1 << 32) - 1
_U63 = (1 << 63) - 1
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_ROLES = frozenset({"host", "presenter", "attendee", "support"})


class ClientFrame(NamedTuple):
    """A client frame as the relay sees it: routing fields and where the payload starts.

    ``fields`` holds the validated kind-specific header fields: for data kinds
    exactly what the relay forwards (poll id, document id and chunk number,
    media track, sequence, keyframe flag, timestamp); for control frames the
    operation's parameters. A named tuple, not a dataclass: one is made per
    inbound frame, and a tuple is the cheapest immutable record to make.
    """

    kind: Kind
    to: int | None
    payload_offset: int
    op: str | None = None
    fields: Mapping[str, Any] = _EMPTY


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """The first message of every connection: an invitation (or a resume token), and a name."""

    invitation: str
    name: str
    resume: bool = False


def split_frame(
    data: bytes | bytearray | memoryview, *, from_relay: bool = False
) -> tuple[dict[str, Any], int]:
    """Decode the header map at the start of ``data``; return it and the payload offset.

    Raises :class:`FrameError` when the message does not start with a msgpack map
    that ends within :data:`MAX_HEADER_BYTES`. ``from_relay`` is for clients
    reading what the relay sends: a welcome or roster of a large meeting is
    longer than any client header may be, so the map may fill the message
    (with bounds that still fit a meeting of tens of thousands).
    """
    if not from_relay:
        return HeaderReader().split(data)
    limit = len(data)
    unpacker = msgpack.Unpacker(
        max_buffer_size=max(limit, 1),
        max_str_len=limit,
        max_bin_len=limit,
        max_array_len=1 << 16,
        max_map_len=64,
        max_ext_len=0,
        strict_map_key=True,
        raw=False,
    )
    unpacker.feed(data)
    try:
        header = unpacker.unpack()
    except msgpack.OutOfData:
        raise FrameError(
            f"header is not a complete msgpack map within {limit} bytes",
            code="malformed_header",
        ) from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FrameError(
            f"header is not valid msgpack ({type(exc).__name__})", code="malformed_header"
        ) from None
    if not isinstance(header, dict):
        raise FrameError("header must be a msgpack map", code="malformed_header")
    return header, unpacker.tell()


_FIRST_FEED = 64
"""Bytes of a frame a :class:`HeaderReader` feeds first: a media header takes about 35."""


def _client_header_unpacker() -> msgpack.Unpacker:
    return msgpack.Unpacker(
        max_buffer_size=MAX_HEADER_BYTES,
        max_str_len=MAX_HEADER_BYTES,
        max_bin_len=MAX_HEADER_BYTES,
        max_array_len=256,
        max_map_len=32,
        max_ext_len=0,
        strict_map_key=True,
        raw=False,
    )


class HeaderReader:
    """Reads clients' frame headers with one unpacker, reused from frame to frame.

    Making an unpacker (nine bounds) costs more than decoding a five-field
    header, so the relay's hub keeps one of these. Each call feeds at most
    :data:`MAX_HEADER_BYTES` and leaves the unpacker empty again (the payload
    bytes fed with the header are read off and dropped); an unpacker that
    failed is replaced, so nothing of a bad frame reaches the next. Not for two
    threads at once: one per event loop.
    """

    __slots__ = ("_unpacker",)

    def __init__(self) -> None:
        self._unpacker = _client_header_unpacker()

    def split(self, data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], int]:
        """:func:`split_frame` for a client's frame."""
        unpacker = self._unpacker
        base = unpacker.tell()
        # Most headers fit in the first _FIRST_FEED bytes: feeding only those
        # keeps the payload out of the unpacker (no copy in, no read-off copy
        # out). A longer header is fed the rest of MAX_HEADER_BYTES, and the
        # unpacker goes on with the same header (msgpack's streaming contract).
        fed = len(data) if len(data) <= _FIRST_FEED else _FIRST_FEED
        unpacker.feed(data[:fed])
        try:
            try:
                header = unpacker.unpack()
            except msgpack.OutOfData:
                if fed == len(data) or fed == MAX_HEADER_BYTES:
                    raise
                more = data[fed:MAX_HEADER_BYTES]
                fed += len(more)
                unpacker.feed(more)
                header = unpacker.unpack()
        except msgpack.OutOfData:
            self._unpacker = _client_header_unpacker()
            raise FrameError(
                f"header is not a complete msgpack map within {MAX_HEADER_BYTES} bytes",
                code="malformed_header",
            ) from None
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            self._unpacker = _client_header_unpacker()
            raise FrameError(
                f"header is not valid msgpack ({type(exc).__name__})", code="malformed_header"
            ) from None
        offset: int = unpacker.tell() - base
        rest = fed - offset
        if rest:
            unpacker.read_bytes(rest)
        if not isinstance(header, dict):
            raise FrameError("header must be a msgpack map", code="malformed_header")
        return header, offset

    def parse_client_frame(self, data: bytes | bytearray | memoryview) -> ClientFrame:
        """:func:`parse_client_frame` on this reader's unpacker."""
        return _client_frame(*self.split(data))


# Field readers. Error messages name the field, never the value a client sent.


def _uint(header: Mapping[str, Any], key: str, limit: int, *, required: bool) -> int | None:
    value = header.get(key)
    if value is None:
        if required:
            raise FrameError(f"'{key}' is required", code="missing_field")
        return None
    if type(value) is not int or not 0 <= value <= limit:
        raise FrameError(f"'{key}' must be an integer from 0 to {limit}", code="bad_field")
    return value


def _flag(header: Mapping[str, Any], key: str, default: bool) -> bool:
    value = header.get(key, default)
    if type(value) is not bool:
        raise FrameError(f"'{key}' must be true or false", code="bad_field")
    return value


def _media_type(header: Mapping[str, Any]) -> int:
    m = header.get("m")
    if type(m) is not int or m not in _MEDIA:
        raise FrameError("'m' must be 0 (audio), 1 (video) or 2 (screen)", code="bad_field")
    return m


def _op(header: Mapping[str, Any], allowed: frozenset[str], kind: str) -> str:
    op = header.get("op")
    if type(op) is not str or op not in allowed:
        raise FrameError(
            f"{kind} frames need 'op', one of: {', '.join(sorted(allowed))}", code="bad_op"
        )
    return op


def _poll(header: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    op = _op(header, POLL_OPS, "poll")
    return op, {"op": op, "poll": _uint(header, "poll", _U32, required=True)}


def _document(header: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    op = _op(header, DOCUMENT_OPS, "document")
    fields: dict[str, Any] = {"op": op, "doc": _uint(header, "doc", _U32, required=True)}
    if op == "chunk":
        fields["seq"] = _uint(header, "seq", _U32, required=True)
        fields["fin"] = _flag(header, "fin", False)
        size = _uint(header, "size", _U63, required=False)
        if size is not None:
            fields["size"] = size
    elif op == "page":
        fields["page"] = _uint(header, "page", _U32, required=True)
    return op, fields


def _media(header: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    track, m, seq, key = header.get("track"), header.get("m"), header.get("seq"), header.get("key")
    if (  # the common case, every field present and in range, checked at once
        type(track) is int
        and 0 <= track <= _U16
        and type(m) is int
        and m in _MEDIA
        and type(seq) is int
        and 0 <= seq <= _U32
        and type(key) is bool
        and "ts" not in header
    ):
        return None, {"track": track, "m": m, "seq": seq, "key": key}
    fields: dict[str, Any] = {
        "track": _uint(header, "track", _U16, required=True),
        "m": _media_type(header),
        "seq": _uint(header, "seq", _U32, required=True),
        "key": _flag(header, "key", False),
    }
    ts = _uint(header, "ts", _U63, required=False)
    if ts is not None:
        fields["ts"] = ts
    return None, fields


_NEEDS_PID = frozenset({"admit", "deny", "eject", "mute", "role", "subscribe", "keyframe"})
_NEEDS_TRACK = frozenset({"mute", "publish", "keyframe"})
_HAS_ON = frozenset({"lobby", "lock", "webinar", "mute", "publish", "subscribe", "receive"})


def parse_control(header: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Validate a control request given as a header map: its ``op`` and parameters.

    The relay uses it for control frames; the HTTPS API for the same operations
    sent by a host app, so both paths accept exactly the same requests.
    """
    op, fields = _control(header)
    assert op is not None
    return op, fields


def _control(header: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    if header.get("op") == "join":
        raise FrameError("already joined", code="already_joined")
    op = _op(header, CONTROL_OPS, "control")
    fields: dict[str, Any] = {}
    pid = _uint(header, "pid", _U32, required=op in _NEEDS_PID)
    if pid is not None:
        fields["pid"] = pid
    track = _uint(header, "track", _U16, required=op in _NEEDS_TRACK)
    if track is not None:
        fields["track"] = track
    if op in _HAS_ON:
        fields["on"] = _flag(header, "on", True)
    if op in ("publish", "receive"):
        fields["m"] = _media_type(header)
    if op == "role":
        role = header.get("role")
        if type(role) is not str or role not in _ROLES:
            raise FrameError(
                "'role' must be host, presenter, attendee or support", code="bad_field"
            )
        fields["role"] = role
    return op, fields


_PARSERS: dict[Kind, Callable[[Mapping[str, Any]], tuple[str | None, dict[str, Any]]]] = {
    Kind.POLL: _poll,
    Kind.DOCUMENT: _document,
    Kind.MEDIA: _media,
    Kind.CONTROL: _control,
}


def parse_client_frame(data: bytes | bytearray | memoryview) -> ClientFrame:
    """Read the routing fields of a frame sent by a joined participant.

    Only the fields of the frame's kind are read and checked; anything else in
    the header is ignored (never forwarded), and the payload is located, not read.
    """
    return _client_frame(*split_frame(data))


def _client_frame(header: Mapping[str, Any], offset: int) -> ClientFrame:
    kind = header.get("k")
    if type(kind) is not int or kind not in _KINDS:
        # Name the kind only when it is a number: error frames never echo client strings.
        shown = f" {kind}" if type(kind) is int else ""
        raise FrameError(f"unknown frame kind{shown} (field 'k')", code="unknown_kind")
    to = header.get("to")
    if to is not None and (type(to) is not int or not 0 <= to <= _U32):
        raise FrameError("'to' must be a participant id (integer)", code="bad_recipient")
    k = _KIND_BY_NUMBER[kind]
    parser = _PARSERS.get(k)
    if parser is None:
        return ClientFrame(k, to, offset)
    op, fields = parser(header)
    return ClientFrame(k, to, offset, op, fields)


def parse_join(data: bytes | bytearray | memoryview) -> JoinRequest:
    """Read the join message; any defect here ends the connection (close 4400)."""
    try:
        header, _ = split_frame(data)
    except FrameError as exc:
        raise ProtocolError(f"join message: {exc.reason}", code="bad_join") from None
    kind = header.get("k")
    if type(kind) is not int or kind != Kind.CONTROL or header.get("op") != "join":
        raise ProtocolError(
            "the first message must be a join: {k: 0, op: 'join', inv: <invitation>}",
            code="bad_join",
        )
    resume = header.get("resume")
    if resume is not None:
        if not isinstance(resume, str) or not 0 < len(resume) <= _MAX_INVITATION_CHARS:
            raise ProtocolError("join message: 'resume' must be the resume token", code="bad_join")
        return JoinRequest(resume, "", resume=True)
    invitation = header.get("inv")
    if not isinstance(invitation, str) or not 0 < len(invitation) <= _MAX_INVITATION_CHARS:
        raise ProtocolError("join message: 'inv' must be the invitation string", code="bad_join")
    name = header.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise ProtocolError(
            f"join message: 'name' must be a string of at most {MAX_NAME_CHARS} characters",
            code="bad_join",
        )
    return JoinRequest(invitation, name)


_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def pack_data_header(
    kind: Kind, sender: int, to: int | None, fields: Mapping[str, Any] = _EMPTY
) -> bytes:
    """The header of a frame the relay forwards.

    Kind, the sender stamped by the relay, the validated kind fields, and ``to``
    when the frame is addressed to one participant.
    """
    header: dict[str, Any] = {"k": int(kind), "from": sender}
    if fields:
        header.update(fields)
    if to is not None:
        header["to"] = to
    return _pack(header)  # type: ignore[no-any-return]


# Media headers by layout. One sender's media headers on one track differ from
# frame to frame only in 'seq' and 'key'. Once such a header has been parsed the
# normal way and found to be exactly the msgpack encoding of the SDK's five
# fields, the sender's next headers on that track are read at those byte
# offsets and the forwarded header is spliced, without an unpacker or a packer.

_KEY_FALSE = _pack("key") + _pack(False)
_KEY_TRUE = _pack("key") + _pack(True)
_KEY = _pack("key")
_SEQ16 = struct.Struct("!H").unpack_from
_SEQ32 = struct.Struct("!I").unpack_from
_new_frame = tuple.__new__
"""Makes a :class:`ClientFrame` without the named tuple's Python-level ``__new__``."""


@dataclass(frozen=True, slots=True)
class MediaLayout:
    """What one sender's media headers on one track share (see :func:`media_layout`)."""

    prefix: bytes
    """The client's header up to the value of 'seq': ``{k: 4, track: T, m: M, seq:``."""
    out_prefix: bytes
    """The forwarded header up to the value of 'seq': ``{k: 4, from: P, track: T, m: M, seq:``."""
    track: int
    m: int


def media_layout(header: bytes, frame: ClientFrame, sender: int) -> MediaLayout | None:
    """The layout of ``header``, a media header just parsed into ``frame`` for participant
    ``sender``, if it is the SDK's: exactly the msgpack encoding of ``k, track, m, seq, key``
    in that order and nothing else. ``None`` otherwise (such a sender's frames are all parsed).

    Because the bytes must be the encoding of what the parser read, :func:`read_media`
    accepts no header that the parser would read differently.
    """
    fields = frame.fields
    if frame.kind is not Kind.MEDIA or frame.to is not None or len(fields) != 4:
        return None
    track, m, seq, key = fields["track"], fields["m"], fields["seq"], fields["key"]
    parts = (b"\x85", _pack("k"), _pack(int(Kind.MEDIA)), _pack("track"), _pack(track))
    prefix = b"".join((*parts, _pack("m"), _pack(m), _pack("seq")))
    if header != prefix + _pack(seq) + (_KEY_TRUE if key else _KEY_FALSE):
        return None
    out = pack_data_header(Kind.MEDIA, sender, None, fields)
    return MediaLayout(prefix, out[: len(out) - len(_pack(seq)) - len(_KEY_TRUE)], track, m)


def read_media(
    layout: MediaLayout, data: bytes | bytearray | memoryview
) -> tuple[ClientFrame, bytes] | None:
    """The frame ``data`` holds if its header has ``layout``, and the header to forward for
    it; ``None`` if not (the caller parses it the normal way).

    'seq' is read in any msgpack unsigned form up to 32 bits, 'key' as a boolean, as the
    parser reads them; the forwarded header holds 'seq' in its shortest form, as
    :func:`pack_data_header` writes it.
    """
    prefix = layout.prefix
    at = len(prefix)
    if data[:at] != prefix:
        return None
    try:
        first = data[at]
        if first < 0x80:
            seq = first
            at += 1
        elif first == 0xCD:
            seq = _SEQ16(data, at + 1)[0]
            at += 3
        elif first == 0xCE:
            seq = _SEQ32(data, at + 1)[0]
            at += 5
        elif first == 0xCC:
            seq = data[at + 1]
            at += 2
        else:
            return None
        flag = data[at + 4]
    except (IndexError, struct.error):  # the frame ends inside the header
        return None
    if flag == 0xC2:
        key, tail = False, _KEY_FALSE
    elif flag == 0xC3:
        key, tail = True, _KEY_TRUE
    else:
        return None
    if data[at : at + 4] != _KEY:
        return None
    fields = {"track": layout.track, "m": layout.m, "seq": seq, "key": key}
    frame: ClientFrame = _new_frame(ClientFrame, (Kind.MEDIA, None, at + 5, None, fields))
    return frame, b"".join((layout.out_prefix, _pack(seq), tail))


def encode_data(
    kind: Kind, to: int | None, payload: bytes | bytearray | memoryview, **fields: Any
) -> bytes:
    """Encode a frame as a client sends it: header (kind, kind fields, ``to``), then payload."""
    header: dict[str, Any] = {"k": int(kind)}
    header.update(fields)
    if to is not None:
        header["to"] = to
    return b"".join((_pack(header), payload))


def encode_join(invitation: str, name: str = "", *, resume: bool = False) -> bytes:
    """Encode the join message a client sends first (``resume=True``: a resume token)."""
    key = "resume" if resume else "inv"
    header = {"k": int(Kind.CONTROL), "op": "join", key: invitation, "name": name}
    return _pack(header)  # type: ignore[no-any-return]


def encode_control(op: str, **fields: Any) -> bytes:
    """Encode a control frame (header only, no payload)."""
    header: dict[str, Any] = {"k": int(Kind.CONTROL), "op": op}
    header.update(fields)
    return _pack(header)  # type: ignore[no-any-return]
