"""A message broker as the relay: nats-server, clients on its TLS websocket listener.

Teams that already run NATS often skip writing a relay at all: every
participant subscribes to the room's subject and publishes its frames there,
and the broker fans them out (``echo: false`` keeps a sender's own frames from
coming back). It stands for "let a broker written in Go do it": no Python, a
goroutine per connection, and a text protocol around every payload. The
server runs with its defaults apart from the websocket listener (TLS with the
same certificate as every other relay, compression off); the Go runtime sees
the CPUs it is pinned to, so it gets the same one CPU as the others.

:class:`NatsCodec` speaks the NATS client protocol over that websocket,
binary messages both ways.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.peers import PeerTarget, start_process, tls_files
from switchboard.bench.codecs import MAGIC, STAMP, Codec, SendFn
from switchboard.bench.runner import free_port

if TYPE_CHECKING:
    from picows import WSTransport

    from switchboard.bench.worker import Link

CODEC = "benchmarks.peers.nats:NatsCodec"

_CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"echo":false,"protocol":1,"headers":false}'
_unpack_ns = STAMP.unpack_from
_now_ns = time.monotonic_ns

# link.state: where a participant is in the handshake
_WAIT_INFO, _WAIT_PONG, _JOINED = 0, 1, 2


def _subject(meeting: Mapping[str, Any]) -> bytes:
    return f"room.{meeting['room']}".encode()


class NatsCodec(Codec):
    """The NATS client protocol over a websocket: one subject per room.

    Joining: the server's ``INFO`` → ``CONNECT`` + ``SUB room.<room> 1`` +
    ``PING`` in one message → ``PONG`` (the server has processed the
    subscription, so frames published from now on reach this participant).
    Sending: ``PUB room.<room> <size>\\r\\n<payload>\\r\\n``.

    Receiving: the server packs whatever is pending for a connection into one
    websocket message, so a message may hold several ``MSG`` (and a ``PING``),
    and the protocol lets one be split across messages. Every message ends
    with ``\\r\\n``, never a stamp, so the worker hands each to
    :meth:`on_stampless` (``tail`` 0 cannot match: the 12 bytes before the end
    hold the stamp's last 10 bytes and the CRLF), and a small stream parser
    here counts every payload exactly as :class:`~switchboard.bench.worker.Link`
    counts a direct stamp, slow readers' allowance included.
    """

    tail = 0

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__(spec)
        self._rest: dict[int, bytes] = {}  # per link (id): bytes of an incomplete operation

    def hello(self, link: Link, meeting: Mapping[str, Any], index: int, sender: bool) -> None:
        link.state = _WAIT_INFO  # the server speaks first
        self._rest.pop(id(link), None)

    def on_other(self, link: Link, binary: bool, payload: memoryview) -> None:
        self._feed(link, payload.tobytes())

    def on_stampless(self, link: Link, payload: memoryview) -> None:
        data = payload.obj  # the worker's bytes object, whole: no copy
        if not isinstance(data, bytes) or len(data) != len(payload):
            data = payload.tobytes()
        self._feed(link, data)
        if link.throttled:  # a slow reader: the same allowance as Link's fast path
            link.budget -= len(data)
            if link.budget < 0 and not link.paused and link.transport is not None:
                link.paused = True
                link.transport.underlying_transport.pause_reading()

    def _feed(self, link: Link, data: bytes) -> None:
        rest = self._rest.pop(id(link), None)
        if rest:
            data = rest + data
        size = len(data)
        pos = 0
        while pos < size:
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                break
            if data.startswith(b"MSG ", pos):
                # MSG <subject> <sid> [reply-to] <size>
                start = eol + 2
                end = start + int(data[data.rfind(b" ", pos, eol) + 1 : eol])
                if end + 2 > size:
                    break  # the payload continues in the next message
                if end - start >= 12 and data.startswith(MAGIC, end - 12):
                    sent = _unpack_ns(data, end - 12)[1]
                    if sent >= link.worker.window_ns:
                        link.lat.append((_now_ns() - sent) // 1000)
                        link.delivered += 1
                pos = end + 2
            else:
                self._control(link, data[pos:eol])
                pos = eol + 2
        if pos < size:
            self._rest[id(link)] = data[pos:]

    def _control(self, link: Link, line: bytes) -> None:
        if line == b"PING":
            link.send_binary(b"PONG\r\n")
        elif line == b"PONG":
            if link.state == _WAIT_PONG:
                link.state = _JOINED
                link.joined()
        elif line.startswith(b"INFO "):
            if link.state == _WAIT_INFO:
                link.state = _WAIT_PONG
                subject = _subject(link.meeting)
                link.send_binary(b"%s\r\nSUB %s 1\r\nPING\r\n" % (_CONNECT, subject))
        elif line.startswith(b"-ERR"):
            link.failed(line.decode(errors="replace"))
        # +OK (only with verbose) and anything else: nothing to do

    def sender(self, meeting: Mapping[str, Any], index: int, stream: int, kind: str) -> SendFn:
        from picows import WSMsgType

        binary, head = WSMsgType.BINARY, b"PUB " + _subject(meeting) + b" "

        def send(transport: WSTransport, seq: int, key: bool, payload: bytes) -> None:
            transport.send(binary, b"%s%d\r\n%s\r\n" % (head, len(payload), payload))

        return send


def _config(workdir: Path, ws_port: int, cert: Path, key: Path) -> Path:
    conf = workdir / "nats.conf"
    conf.write_text(
        f"""\
# client port: any free one, loopback only (the benchmark uses the websocket listener)
listen: "127.0.0.1:-1"
websocket {{
  host: "127.0.0.1"
  port: {ws_port}
  no_tls: false
  tls {{
    cert_file: "{cert}"
    key_file: "{key}"
  }}
  compression: false
}}
"""
    )
    return conf


async def start(workdir: Path, cpus: Sequence[int]) -> PeerTarget:
    """Start nats-server for a benchmark run."""
    server = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if server is None:
        raise RuntimeError("the NATS peer needs nats-server (on PATH or in /usr/sbin)")
    ca, cert, key = tls_files(workdir)
    port = free_port()
    conf = _config(workdir, port, cert, key)
    process = await start_process([server, "-c", str(conf)], cpus, ready="Server is ready")
    spec = {"url": f"wss://localhost:{port}/", "ca": str(ca)}
    return PeerTarget("nats", CODEC, spec, process)
