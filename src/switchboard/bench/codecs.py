"""How a generated participant speaks to a relay: switchboard's protocol, or a peer's.

The load generator is protocol-neutral: it schedules frames, stamps each with
its send time and measures what arrives. A :class:`Codec` is the only part that
knows a relay's protocol: how to join, how to wrap a payload, and how to answer
anything that is not a delivered frame (welcomes, pings). Peers in
``benchmarks/peers/`` bring their own codecs, so every relay is driven by a
client that speaks its protocol natively.

Every payload ends with a 12-byte stamp, :data:`MAGIC` and the sender's
``CLOCK_MONOTONIC`` nanoseconds. Receivers look only at the end of a binary
message (``tail`` bytes before the end for protocols that add a trailer), so
finding the stamp costs the same for every relay and never parses a header.
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgpack

from ..core import wire
from ..core.wire import Kind, Media
from ..errors import FrameError

if TYPE_CHECKING:
    from picows import WSTransport

    from .worker import Link

__all__ = ["MAGIC", "STAMP", "Codec", "RoomCodec", "SendFn", "SwitchboardCodec", "load_codec"]

MAGIC = b"\xf5SB1"
"""Marks a generated payload's stamp."""

STAMP = struct.Struct("!4sq")
"""The stamp at the end of every generated payload: magic, send time (monotonic ns)."""

SendFn = Callable[["WSTransport", int, bool, bytes], None]
"""Send one frame: ``(transport, sequence, keyframe, payload)``."""


class Codec(abc.ABC):
    """One relay protocol, as its clients speak it. Subclasses override what differs.

    ``spec`` is what the target told the generator (URLs, CA file, anything the
    protocol needs); a meeting is a mapping the target produced when it
    provisioned the meeting (a room name, invitation tokens, ...).
    """

    tail = 0
    """Bytes after the stamp in a delivered binary message (a protocol trailer)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    def url(self, meeting: Mapping[str, Any], index: int) -> str:
        """Where participant ``index`` of ``meeting`` connects."""
        return str(self.spec["url"])

    def hello(self, link: Link, meeting: Mapping[str, Any], index: int, sender: bool) -> None:
        """The connection is open: join. Call ``link.joined()`` once the relay accepted."""
        link.joined()

    def on_other(self, link: Link, binary: bool, payload: memoryview) -> None:
        """A message that carries no stamp (welcome, roster, ping, ...); ignored by default."""
        return None

    def on_stampless(self, link: Link, payload: memoryview) -> None:
        """A binary message whose end is not a stamp: by default, the same as :meth:`on_other`."""
        self.on_other(link, True, payload)

    @abc.abstractmethod
    def sender(self, meeting: Mapping[str, Any], index: int, stream: int, kind: str) -> SendFn:
        """How participant ``index`` sends frames of its stream number ``stream``."""


class RoomCodec(Codec):
    """The peers' minimal protocol: a text message naming the room, then raw binary frames."""

    def hello(self, link: Link, meeting: Mapping[str, Any], index: int, sender: bool) -> None:
        link.send_text(str(meeting["room"]).encode())
        link.joined()

    def sender(self, meeting: Mapping[str, Any], index: int, stream: int, kind: str) -> SendFn:
        from picows import WSMsgType

        binary = WSMsgType.BINARY

        def send(transport: WSTransport, seq: int, key: bool, payload: bytes) -> None:
            transport.send(binary, payload)

        return send


_MEDIA = {"audio": Media.AUDIO, "video": Media.VIDEO}


class SwitchboardCodec(Codec):
    """switchboard's protocol: join with an invitation, publish tracks, msgpack headers.

    A meeting is ``{"tokens": {"sender": token, "receiver": token}}``; senders
    publish one track per stream before they are counted as joined.
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self._streams: list[str] = list(spec.get("streams", ()))

    def hello(self, link: Link, meeting: Mapping[str, Any], index: int, sender: bool) -> None:
        token = meeting["tokens"]["sender" if sender else "receiver"]
        link.send_binary(wire.encode_join(token, f"bench-{index}"))
        link.state = 1 if sender else 2  # 1: wait for the welcome, then publish

    def on_other(self, link: Link, binary: bool, payload: memoryview) -> None:
        if link.is_joined or not binary:
            return
        try:
            header, _ = wire.split_frame(payload, from_relay=True)
        except FrameError as exc:
            link.failed(f"unreadable frame from the relay: {exc.reason}")
            return
        op = header.get("op")
        if op == "welcome":
            if link.state == 1:
                for track, kind in enumerate(self._streams, start=1):
                    if kind in _MEDIA:
                        link.send_binary(
                            wire.encode_control("publish", track=track, m=int(_MEDIA[kind]))
                        )
            link.joined()
        elif op == "error":
            link.failed(f"{header.get('code')}: {header.get('reason')}")

    def on_stampless(self, link: Link, payload: memoryview) -> None:
        if not link.is_joined:
            self.on_other(link, True, payload)

    def sender(self, meeting: Mapping[str, Any], index: int, stream: int, kind: str) -> SendFn:
        from picows import WSMsgType

        binary = WSMsgType.BINARY
        if kind == "chat":
            head = wire.encode_data(Kind.CHAT, None, b"")

            def send_chat(transport: WSTransport, seq: int, key: bool, payload: bytes) -> None:
                transport.send(binary, head + payload)

            return send_chat
        track, media, pack = stream + 1, int(_MEDIA[kind]), msgpack.Packer().pack
        k = int(Kind.MEDIA)

        def send_media(transport: WSTransport, seq: int, key: bool, payload: bytes) -> None:
            header = pack({"k": k, "track": track, "m": media, "seq": seq, "key": key})
            transport.send(binary, header + payload)

        return send_media


def load_codec(path: str, spec: Mapping[str, Any]) -> Codec:
    """The codec named ``module:Class`` (peers live outside the package)."""
    import importlib

    module, _, name = path.partition(":")
    codec = getattr(importlib.import_module(module), name)(spec)
    if not isinstance(codec, Codec):
        raise TypeError(f"{path} is not a Codec")
    return codec
