"""The reference relay: the fastest Python websocket stack with no features at all.

picows (websocket framing in Cython) on uvloop, with picows' default transport:
aiofastnet (installed with picows), which drives OpenSSL from Cython. Same TLS
as every relay here: the ``ssl`` module's context, TLS 1.3, the same certificate.
It stands for the floor of what a Python relay can cost per delivery: no
authentication, no tracks, no queues, no limits, nothing but a lookup of the
room and one ``transport.send`` per other member.
switchboard's figures are read against it.

Protocol (shared by every peer here): the first message is the room name
(text); every binary message after it is forwarded unchanged to the others in
the room. TLS with the certificate and key given on the command line.

    python -m benchmarks.peers.ref PORT CERT KEY
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

from benchmarks.peers import PeerTarget, start_python_peer

_BINARY = WSMsgType.BINARY
_TEXT = WSMsgType.TEXT

ROOMS: dict[str, list[WSTransport]] = {}


class Member(WSListener):
    """One participant: the room it named, then every binary frame relayed to the others."""

    __slots__ = ("room", "transport")

    def __init__(self) -> None:
        self.room: list[WSTransport] | None = None
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is _BINARY:
            room = self.room
            if room is not None:
                # valid until this callback returns; send() copies it into each write buffer
                payload = frame.get_payload_as_memoryview()
                for other in room:
                    if other is not transport:
                        other.send(_BINARY, payload)
        elif kind is _TEXT and self.room is None:
            self.room = ROOMS.setdefault(frame.get_payload_as_utf8_text(), [])
            self.room.append(transport)
        # picows answers pings itself; a close ends in on_ws_disconnected

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.room is not None:
            self.room.remove(transport)
            self.room = None


def _listener(request: Any) -> Member:
    return Member()


async def main(port: int, cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = await ws_create_server(
        _listener,
        "127.0.0.1",
        port,
        ssl=ctx,
        max_frame_size=64 << 20,
    )
    async with server:
        print("ready", flush=True)
        await server.serve_forever()


async def start(workdir: Path, cpus: Sequence[int]) -> PeerTarget:
    """Start this peer for a benchmark run."""
    return await start_python_peer("ref", workdir, cpus)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
