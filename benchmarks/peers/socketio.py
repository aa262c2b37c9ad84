"""The relay most Python teams reach for first: python-socketio rooms behind uvicorn.

``socketio.AsyncServer`` as an ASGI app served by uvicorn (uvloop, TLS by
uvicorn's own options), written the way its documentation shows: a client
emits ``join`` with a room name and the server enters it into that room, then
every ``m`` event is re-emitted to the room, skipping the sender. Everything
is left at its defaults (handlers run as tasks, Engine.IO pings), so the
figures are what socket.io costs as people use it, including its binary
protocol: each event is two websocket messages, a text header with a
placeholder and the binary attachment.

:class:`SocketIOCodec` is the generator's side: Engine.IO v4 / Socket.IO v5
spoken directly over a websocket (no long-polling first), as the official
clients do with ``transports: ["websocket"]``.

    python -m benchmarks.peers.socketio PORT CERT KEY
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import socketio  # the package: absolute imports, this module is benchmarks.peers.socketio

from benchmarks.peers import PeerTarget, start_process, tls_files
from switchboard.bench.codecs import Codec, SendFn
from switchboard.bench.runner import free_port

if TYPE_CHECKING:
    from picows import WSTransport

    from switchboard.bench.worker import Link

CODEC = "benchmarks.peers.socketio:SocketIOCodec"

# the server


def make_app() -> Any:
    """The socket.io server: join a room, relay ``m`` to the rest of it."""
    sio = socketio.AsyncServer(async_mode="asgi")
    room_of: dict[str, str] = {}

    @sio.on("join")
    async def join(sid: str, room: str) -> None:
        room_of[sid] = room
        await sio.enter_room(sid, room)
        await sio.emit("joined", to=sid)

    @sio.on("m")
    async def relay(sid: str, data: bytes) -> None:
        room = room_of.get(sid)
        if room is not None:
            await sio.emit("m", data, room=room, skip_sid=sid)

    @sio.event
    async def disconnect(sid: str, reason: Any = None) -> None:
        room_of.pop(sid, None)

    return socketio.ASGIApp(sio)


async def main(port: int, cert: str, key: str) -> None:
    import uvicorn

    config = uvicorn.Config(
        make_app(),
        host="127.0.0.1",
        port=port,
        ssl_certfile=cert,
        ssl_keyfile=key,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving
            raise SystemExit("uvicorn stopped before it started")
        await asyncio.sleep(0.02)
    print("ready", flush=True)
    await serving


# the generator's side

_OPEN, _CLOSE, _PING, _MESSAGE = 0x30, 0x31, 0x32, 0x34  # Engine.IO packet types ("0".."4")
_CONNECT, _EVENT, _CONNECT_ERROR = 0x30, 0x32, 0x34  # Socket.IO packet types, after the "4"
_BINARY_HEADER = b'451-["m",{"_placeholder":true,"num":0}]'

# link.state: where a participant is in the handshake
_WAIT_OPEN, _WAIT_CONNECT, _WAIT_JOINED = 0, 1, 2


class SocketIOCodec(Codec):
    """Engine.IO v4 / Socket.IO v5 over a websocket, default namespace.

    Handshake: Engine.IO open ``0{...}`` → ``40`` (connect the namespace) →
    ``40{...}`` → ``42["join", room]`` → ``42["joined"]``. A frame is sent as a
    binary event: the text header ``451-["m",{placeholder}]`` then the payload
    as a binary message. What arrives is the same pair; the binary attachment
    is the raw payload, so its stamp is at the very end and the worker counts
    it; the text headers come here and are ignored. Engine.IO pings (``2``)
    are answered with pongs (``3``).
    """

    tail = 0

    def hello(self, link: Link, meeting: Mapping[str, Any], index: int, sender: bool) -> None:
        link.state = _WAIT_OPEN  # the server speaks first

    def on_other(self, link: Link, binary: bool, payload: memoryview) -> None:
        if binary or not payload:
            return  # a binary attachment without a stamp: nothing to count
        kind = payload[0]
        if kind == _MESSAGE:
            if link.is_joined:
                return  # the header of a relayed binary event; its attachment follows
            self._handshake(link, payload)
        elif kind == _PING:
            link.send_text(b"3")
        elif kind == _OPEN and link.state == _WAIT_OPEN:
            link.state = _WAIT_CONNECT
            link.send_text(b"40")
        elif kind == _CLOSE:
            link.failed("engine.io close")

    def _handshake(self, link: Link, payload: memoryview) -> None:
        if len(payload) < 2:
            return
        kind = payload[1]
        if kind == _CONNECT and link.state == _WAIT_CONNECT:
            link.state = _WAIT_JOINED
            room = json.dumps(["join", str(link.meeting["room"])])
            link.send_text(b"42" + room.encode())
        elif kind == _EVENT and link.state == _WAIT_JOINED:
            event = json.loads(bytes(payload[2:]))
            if event and event[0] == "joined":
                link.joined()
        elif kind == _CONNECT_ERROR:
            link.failed(f"socket.io connect error: {bytes(payload[2:]).decode(errors='replace')}")

    def sender(self, meeting: Mapping[str, Any], index: int, stream: int, kind: str) -> SendFn:
        from picows import WSMsgType

        text, binary, header = WSMsgType.TEXT, WSMsgType.BINARY, _BINARY_HEADER

        def send(transport: WSTransport, seq: int, key: bool, payload: bytes) -> None:
            transport.send(text, header)
            transport.send(binary, payload)

        return send


async def start(workdir: Path, cpus: Sequence[int]) -> PeerTarget:
    """Start this peer for a benchmark run."""
    ca, cert, key = tls_files(workdir)
    port = free_port()
    process = await start_process(
        [sys.executable, "-m", "benchmarks.peers.socketio", str(port), str(cert), str(key)], cpus
    )
    spec = {"url": f"wss://localhost:{port}/socket.io/?EIO=4&transport=websocket", "ca": str(ca)}
    return PeerTarget("socketio", CODEC, spec, process)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
