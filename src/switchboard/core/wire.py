"""The frame codec: a routing header the relay reads, a payload it never touches.

Every websocket binary message is ``msgpack(header) || payload``: a msgpack map
followed directly by raw payload bytes that run to the end of the message. The
relay decodes only the map (bounded to :data:`MAX_HEADER_BYTES`) and finds the
payload by offset; it never decodes, copies into Python objects, logs or stores
the payload. That keeps the relay blind to content (clients may encrypt it end
to end) and keeps its per-frame work independent of payload size.

The relay *re-encodes* the header it forwards (with the sender stamped by the
relay, never trusted from the client) once per inbound frame; the same bytes go
to every recipient. Unknown header keys from clients are dropped, never echoed.

This module is sans-I/O: bytes in, values out. See ``docs/protocol.md``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgpack

from ..errors import FrameError, ProtocolError

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_NAME_CHARS",
    "PROTOCOL_VERSION",
    "ClientFrame",
    "JoinRequest",
    "Kind",
    "encode_control",
    "encode_data",
    "encode_join",
    "pack_data_header",
    "parse_client_frame",
    "parse_join",
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
    """Join, welcome, roster changes, errors, the end of the meeting."""
    CHAT = 1
    """A chat message: to everyone, or privately to one participant (``to``)."""


_KINDS = frozenset(int(k) for k in Kind)


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """A client data frame as the relay sees it: routing fields and payload span."""

    kind: Kind
    to: int | None
    payload_offset: int


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """The first message of every connection: the invitation, and a display name."""

    invitation: str
    name: str


def split_frame(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], int]:
    """Decode the header map at the start of ``data``; return it and the payload offset.

    Raises :class:`FrameError` when the message does not start with a msgpack map
    that ends within :data:`MAX_HEADER_BYTES`.
    """
    unpacker = msgpack.Unpacker(
        max_buffer_size=MAX_HEADER_BYTES,
        max_str_len=MAX_HEADER_BYTES,
        max_bin_len=MAX_HEADER_BYTES,
        max_array_len=256,
        max_map_len=32,
        max_ext_len=0,
        strict_map_key=True,
        raw=False,
    )
    unpacker.feed(data[:MAX_HEADER_BYTES])
    try:
        header = unpacker.unpack()
    except msgpack.OutOfData:
        raise FrameError(
            f"header is not a complete msgpack map within {MAX_HEADER_BYTES} bytes",
            code="malformed_header",
        ) from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FrameError(
            f"header is not valid msgpack ({type(exc).__name__})", code="malformed_header"
        ) from None
    if not isinstance(header, dict):
        raise FrameError("header must be a msgpack map", code="malformed_header")
    return header, unpacker.tell()


def parse_client_frame(data: bytes | bytearray | memoryview) -> ClientFrame:
    """Read the routing fields of a data frame sent by a participant.

    Only ``k`` (kind) and ``to`` (one recipient) are read; everything else in the
    header is ignored, and the payload is located, not read.
    """
    header, offset = split_frame(data)
    kind = header.get("k")
    if type(kind) is not int or kind not in _KINDS:
        # Name the kind only when it is a number: error frames never echo client strings.
        shown = f" {kind}" if type(kind) is int else ""
        raise FrameError(f"unknown frame kind{shown} (field 'k')", code="unknown_kind")
    to = header.get("to")
    if to is not None and type(to) is not int:
        raise FrameError("'to' must be a participant id (integer)", code="bad_recipient")
    return ClientFrame(Kind(kind), to, offset)


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


def pack_data_header(kind: Kind, sender: int, to: int | None) -> bytes:
    """The header of a frame the relay forwards: kind, sender stamped by the relay, ``to``."""
    header: dict[str, Any] = {"k": int(kind), "from": sender}
    if to is not None:
        header["to"] = to
    return _pack(header)  # type: ignore[no-any-return]


def encode_data(kind: Kind, to: int | None, payload: bytes | bytearray | memoryview) -> bytes:
    """Encode a data frame as a client sends it: header, then the payload as is."""
    header: dict[str, Any] = {"k": int(kind)}
    if to is not None:
        header["to"] = to
    return b"".join((_pack(header), payload))


def encode_join(invitation: str, name: str = "") -> bytes:
    """Encode the join message a client sends first."""
    return _pack({"k": int(Kind.CONTROL), "op": "join", "inv": invitation, "name": name})  # type: ignore[no-any-return]


def encode_control(op: str, **fields: Any) -> bytes:
    """Encode a control frame (header only, no payload)."""
    header: dict[str, Any] = {"k": int(Kind.CONTROL), "op": op}
    header.update(fields)
    return _pack(header)  # type: ignore[no-any-return]
