"""The relay's own per-frame cost, without sockets: what a Python change to the hot path buys.

The load benchmark measures whole processes, where the kernel's TCP and
OpenSSL take most of the time and two runs differ by a few percent. To tune
the Python path (websocket parsing, header decoding, routing, fan-out,
coalescing) this drives one real node in-process: real joins through a real
invitation over TLS, then each seated connection's transport is swapped for a
counting sink, and pre-masked client frames are fed straight to
``data_received``, one per event-loop turn. What is timed is the relay's
Python work for one inbound frame and its deliveries, plus one turn of the
loop (where the outbox writes), as in a quiet relay.

    python -m benchmarks.switch_path [--participants 5] [--frames 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from switchboard.client import ApiClient, Participant
from switchboard.config import Settings
from switchboard.core import wire
from switchboard.core.wire import Kind, Media
from switchboard.node import Node
from switchboard.passwords import Passwords


class Sink:
    """Stands in for a TLS transport: counts what would have been written."""

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def masked(message: bytes) -> bytes:
    """``message`` as a client would put it on the wire (masked binary frame)."""
    client = ClientProtocol(parse_uri("ws://localhost/v1/ws"))
    client.state = client.state.__class__.OPEN
    client.send_binary(message)
    return b"".join(client.data_to_send())


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.switch_path")
    parser.add_argument("--participants", type=int, default=5)
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--kind", choices=("audio", "video", "chat"), default="audio")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), relay_port=0, api_port=0, log_level="warning")
        settings = settings.replace(rate_media=1e9, rate_chat=1e9)
        async with Node(settings) as node:
            password = secrets.token_urlsafe(16)
            account = await node.store.add_host(
                "bench@example.com", await Passwords().hash(password), node.clock.wall()
            )
            assert account.host_id
            async with ApiClient(node.api_url, ca_file=node.ca_file) as api:
                await api.sign_in("bench@example.com", password)
                meeting = (await api.create_meeting())["meeting_id"]
                token = (await api.invite(meeting, "presenter", max_uses=args.participants))[
                    "token"
                ]
            people = [
                await Participant.join(node.relay_url, token, name=f"p{i}", ca_file=node.ca_file)
                for i in range(args.participants)
            ]
            if args.kind != "chat":
                media = Media.AUDIO if args.kind == "audio" else Media.VIDEO
                await people[0].publish(1, media)
            await asyncio.sleep(0.3)
            hub = node.hub
            conns = [c for c in hub.connections if c.participant is not None]
            sender = next(c for c in conns if c.participant and c.participant.pid == people[0].pid)
            sinks = []
            for conn in conns:
                sink = Sink()
                sinks.append(sink)
                conn.transport = sink  # type: ignore[assignment]
            size = 160 if args.kind == "audio" else 4096 if args.kind == "video" else 200
            frames = []
            for seq in range(1000):
                if args.kind == "chat":
                    message = wire.encode_data(Kind.CHAT, None, bytes(size))
                else:
                    fields = {"track": 1, "m": int(media), "seq": seq, "key": seq % 60 == 0}
                    message = wire.encode_data(Kind.MEDIA, None, bytes(size), **fields)
                frames.append(masked(message))
            receive = sender.data_received
            turn = asyncio.sleep
            start = time.perf_counter()
            for i in range(args.frames):
                receive(frames[i % 1000])
                await turn(0)  # the end of the loop turn: the outbox writes what it holds
            elapsed = time.perf_counter() - start
            deliveries = sum(s.writes for s in sinks if s is not sinks[conns.index(sender)])
            print(
                f"{args.kind}, {args.participants} participants: "
                f"{elapsed / args.frames * 1e6:.2f} µs per inbound frame, "
                f"{elapsed / max(1, deliveries) * 1e6:.2f} µs per delivery "
                f"({deliveries} deliveries)"
            )
            for conn in conns:
                conn.transport = None
            for person in people:
                await person.drop()


if __name__ == "__main__":
    uvloop.run(main())
