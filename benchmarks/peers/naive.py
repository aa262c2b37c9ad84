"""The relay a team writes in an afternoon: websockets, ``await ws.send()`` to each peer in turn.

Protocol (shared by every peer here): the first message is the room name
(text); every binary message after it is forwarded unchanged to the others in
the room. TLS with the certificate and key given on the command line.

    python -m benchmarks.peers.naive PORT CERT KEY
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop
from websockets.asyncio.server import ServerConnection, serve

from benchmarks.peers import PeerTarget, start_python_peer

ROOMS: dict[str, set[ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    room_name = str(await ws.recv())
    room = ROOMS.setdefault(room_name, set())
    room.add(ws)
    try:
        async for message in ws:
            for other in list(room):
                if other is not ws:
                    try:
                        await other.send(message)
                    except Exception:
                        continue
    finally:
        room.discard(ws)


async def main(port: int, cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    async with serve(handler, "127.0.0.1", port, ssl=ctx, compression=None, max_size=None):
        print("ready", flush=True)
        await asyncio.Future()


async def start(workdir: Path, cpus: Sequence[int]) -> PeerTarget:
    """Start this peer for a benchmark run."""
    return await start_python_peer("naive", workdir, cpus)


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
