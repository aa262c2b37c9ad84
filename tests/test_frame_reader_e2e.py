"""The relay's own websocket frame reader, driven byte by byte over real TLS.

After the upgrade the relay reads frames itself and hands websockets' parser
only whole frames that are not plain binary messages (see
``ConnectionCore._read_frames``, compiled or pure Python). These tests speak raw RFC 6455 over a TLS
socket, so they control exactly where the stream is cut and what each frame
looks like, which no websocket client library lets a test do: a message cut
at every byte, many frames in one write, pings between and inside messages,
and frames the relay must refuse with their close code, while a participant
on a real SDK client checks that the meeting goes on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from switchboard.client import Chat, Participant, tls_context
from switchboard.core import wire
from switchboard.core.codes import CloseCode
from switchboard.core.wire import Kind
from switchboard.node import Node

from .conftest import TIMEOUT, make_settings, next_event, signed_in_host

TRANSPORTS = ("aiofastnet", "asyncio")

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    key: bytes | None = None,
) -> bytes:
    """One client frame as it goes on the wire (masked unless told otherwise; by ``key``
    if given, else a random one)."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return head + payload
    mask = key if key is not None else os.urandom(4)
    # XOR as one big integer: byte by byte, frames of 64 KiB and more in hundreds of property
    # examples took tests/test_core.py past its 120 s timeout on a slow hour.
    repeated = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return head + mask + body


def chat(text: bytes) -> bytes:
    """A chat message to everyone, framed."""
    return frame(BINARY, wire.encode_data(Kind.CHAT, None, text))


class RawClient:
    """A websocket client that is nothing but a TLS socket and RFC 6455 by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, node: Node) -> RawClient:
        url = urlsplit(node.relay_url)
        ctx: ssl.SSLContext = tls_context(node.ca_file)
        reader, writer = await asyncio.open_connection(url.hostname, url.port, ssl=ctx)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send(self, data: bytes, *, pieces: int = 1) -> None:
        """Write ``data`` in ``pieces`` writes, each its own TLS record and (paused) read."""
        size = -(-len(data) // pieces)
        for at in range(0, len(data), size):
            self.writer.write(data[at : at + size])
            await self.writer.drain()
            if pieces > 1:
                await asyncio.sleep(0.002)

    async def recv(self) -> tuple[int, bytes]:
        """The next frame from the relay (unmasked): opcode and payload."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT)
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), TIMEOUT)

    async def recv_until(self, opcode: int) -> bytes:
        """The payload of the next frame with ``opcode``, skipping others."""
        while True:
            op, payload = await self.recv()
            if op == opcode:
                return payload

    async def join(self, token: str, *, pieces: int = 1) -> None:
        await self.send(frame(BINARY, wire.encode_join(token, "raw")), pieces=pieces)
        while True:
            op, payload = await self.recv()
            header = wire.split_frame(payload, from_relay=True)[0] if op == BINARY else {}
            if header.get("op") == "welcome":
                return

    async def close_code(self) -> int:
        """The code of the relay's close frame (what it answers a refused frame with)."""
        payload = await self.recv_until(CLOSE)
        return int(struct.unpack("!H", payload[:2])[0])

    def abort(self) -> None:
        self.writer.transport.abort()


@dataclass
class RawMeeting:
    """A running node, an invitation for raw clients, and an SDK participant listening."""

    node: Node
    token: str
    listener: Participant
    raws: list[RawClient] = field(default_factory=list)

    async def raw(self, *, pieces: int = 1) -> RawClient:
        """A raw client, joined (its join message written in ``pieces``)."""
        raw = await RawClient.connect(self.node)
        self.raws.append(raw)
        await raw.join(self.token, pieces=pieces)
        return raw


@contextlib.asynccontextmanager
async def raw_meeting(tmp_path: Path, **settings: Any) -> AsyncIterator[RawMeeting]:
    async with Node(make_settings(tmp_path / "var", **settings)) as node:
        host = await signed_in_host(node)
        token = await host.invite(await host.meeting(), "presenter", max_uses=10)
        listener = await Participant.join(
            node.relay_url, token, ca_file=node.ca_file, timeout=TIMEOUT
        )
        meeting = RawMeeting(node, token, listener)
        try:
            yield meeting
        finally:
            for raw in meeting.raws:
                raw.abort()
            await listener.leave()
            await host.api.close()


async def chats(p: Participant, n: int) -> list[bytes]:
    return [(await next_event(p, Chat)).payload for _ in range(n)]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_messages_cut_at_every_byte_arrive_whole(tmp_path: Path, transport: str) -> None:
    async with raw_meeting(tmp_path, tls_transport=transport, max_chat_bytes=100_000) as m:
        raw = await m.raw(pieces=40)  # the join message itself in pieces
        # 7-bit, 16-bit and 64-bit lengths; the small one one byte per read.
        texts = [secrets.token_bytes(n) for n in (60, 300, 70_000)]
        await raw.send(chat(texts[0]), pieces=len(chat(texts[0])))
        await raw.send(chat(texts[1]), pieces=97)
        await raw.send(chat(texts[2]), pieces=13)
        assert await chats(m.listener, 3) == texts


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_many_frames_in_one_write_are_all_switched_in_order(
    tmp_path: Path, transport: str
) -> None:
    async with raw_meeting(tmp_path, tls_transport=transport, rate_chat=1000.0) as m:
        raw = await m.raw()
        texts = [f"message {i} {secrets.token_hex(4)}".encode() for i in range(60)]
        stream = b"".join(chat(t) for t in texts)
        # One write; then the same again cut at odd places, so a frame's end and
        # the next one's start share a read.
        await raw.send(stream[: len(stream) // 2])
        await raw.send(stream[len(stream) // 2 :])
        assert await chats(m.listener, 60) == texts
        await raw.send(stream, pieces=7)
        assert await chats(m.listener, 60) == texts


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_pings_between_and_inside_messages_are_answered(
    tmp_path: Path, transport: str
) -> None:
    async with raw_meeting(tmp_path, tls_transport=transport, rate_chat=1000.0) as m:
        raw = await m.raw()
        a, b = b"before the ping", b"after the ping"
        await raw.send(chat(a) + frame(PING, b"first") + chat(b))
        assert await raw.recv_until(PONG) == b"first"
        assert await chats(m.listener, 2) == [a, b]
        # A fragmented message with a ping between its fragments (RFC 6455 5.4),
        # the whole of it cut into one-byte reads.
        message = wire.encode_data(Kind.CHAT, None, b"in three fragments")
        fragmented = (
            frame(BINARY, message[:5], fin=False)
            + frame(CONT, message[5:12], fin=False)
            + frame(PING, b"second")
            + frame(CONT, message[12:])
        )
        await raw.send(fragmented, pieces=len(fragmented))
        assert await raw.recv_until(PONG) == b"second"
        assert await chats(m.listener, 1) == [b"in three fragments"]
        # And plain messages still take the short way afterwards.
        await raw.send(chat(b"and on"))
        assert await chats(m.listener, 1) == [b"and on"]


REFUSED = {
    "unmasked": (frame(BINARY, b"\x81\xa1k\x01", masked=False), CloseCode.PROTOCOL_ERROR),
    "reserved bit": (frame(BINARY, b"\x81\xa1k\x01", rsv=0x40), CloseCode.PROTOCOL_ERROR),
    "continuation first": (frame(CONT, b"\x81\xa1k\x01"), CloseCode.PROTOCOL_ERROR),
    "new message inside a fragmented one": (
        frame(BINARY, b"\x81", fin=False) + frame(BINARY, b"\x81\xa1k\x01"),
        CloseCode.PROTOCOL_ERROR,
    ),
    # Only the header: the relay refuses it before any of the 2 MiB comes.
    "over max size": (
        struct.pack("!BBQ", 0x82, 0x80 | 127, 2 << 20) + os.urandom(4),
        CloseCode.MESSAGE_TOO_BIG,
    ),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_a_frame_the_protocol_forbids_closes_only_its_connection(
    tmp_path: Path, transport: str, case: str
) -> None:
    data, code = REFUSED[case]
    async with raw_meeting(tmp_path, tls_transport=transport) as m:
        offender, fine = await m.raw(), await m.raw()
        # A good message first, in the same write as the bad frame: it is switched.
        await offender.send(chat(b"last good words") + data)
        assert await offender.close_code() == code
        assert await chats(m.listener, 1) == [b"last good words"]
        # The meeting goes on for everyone else.
        await fine.send(chat(b"still here"))
        assert await chats(m.listener, 1) == [b"still here"]


async def test_keepalive_pings_only_connections_that_have_been_quiet(tmp_path: Path) -> None:
    async with raw_meeting(tmp_path, ping_interval=0.3, rate_chat=1000.0) as m:
        talker, quiet = await m.raw(), await m.raw()
        pings = {"talker": 0, "quiet": 0}

        async def answer(name: str, raw: RawClient) -> None:
            while True:
                op, payload = await raw.recv()
                if op == PING:
                    pings[name] += 1
                    await raw.send(frame(PONG, payload))

        readers = [
            asyncio.create_task(answer("talker", talker)),
            asyncio.create_task(answer("quiet", quiet)),
        ]
        for _ in range(16):  # five ping intervals; the talker is heard every third of one
            await talker.send(chat(b"tick"))
            await asyncio.sleep(0.1)
        for task in readers:
            task.cancel()
        assert pings["talker"] == 0
        assert pings["quiet"] >= 3
        # The quiet one answered its pings, so it is still seated.
        await quiet.send(chat(b"still here"))
        payloads = await chats(m.listener, 17)
        assert payloads[-1] == b"still here"
