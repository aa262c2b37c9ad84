"""The relay's sockets, under each TLS transport it offers: what the kernel and TLS layer do.

These guard regressions that no protocol test would notice: a frame held back
by Nagle's algorithm, a handshake whose request is never read, coalesced
frames arriving out of order.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from switchboard.bench.runner import ServerStats
from switchboard.client import DocumentReceived, MediaFrame, Participant, tls_context
from switchboard.core.wire import Kind, Media
from switchboard.node import Node

from .conftest import TIMEOUT, Host, ServeProcess, make_settings, next_event, signed_in_host

TRANSPORTS = ("aiofastnet", "asyncio")


async def presenters(node: Node, n: int) -> tuple[Host, list[Participant]]:
    """A signed-in host and ``n`` presenters seated in one new meeting of ``node``."""
    host = await signed_in_host(node)
    meeting = await host.meeting()
    token = await host.invite(meeting, "presenter", max_uses=n)
    people = [
        await Participant.join(node.relay_url, token, ca_file=node.ca_file, timeout=TIMEOUT)
        for _ in range(n)
    ]
    return host, people


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_accepted_socket_sends_without_nagle_delay(
    tmp_path: Path, transport: str
) -> None:
    async with Node(make_settings(tmp_path / "var", tls_transport=transport)) as node:
        host, (a, b) = await presenters(node, 2)
        seated = [c for c in node.hub.connections if c.participant is not None]
        assert len(seated) == 2
        for conn in seated:
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        await a.leave()
        await b.leave()
        await host.api.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hundreds_of_fresh_connections_all_get_their_handshake_answered(
    tmp_path: Path, transport: str
) -> None:
    async with Node(make_settings(tmp_path / "var", tls_transport=transport)) as node:
        ctx = tls_context(node.ca_file)
        failed = []
        for attempt in range(600):
            try:
                async with connect(node.relay_url, ssl=ctx, open_timeout=5, close_timeout=1):
                    pass
            except Exception as exc:
                failed.append((attempt, repr(exc)))
        assert failed == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_frames_coalesced_into_one_write_arrive_whole_and_in_order(
    tmp_path: Path, transport: str
) -> None:
    async with Node(make_settings(tmp_path / "var", tls_transport=transport)) as node:
        host, people = await presenters(node, 3)
        sender, other, reader = people
        await sender.publish(1, Media.AUDIO)
        await other.publish(1, Media.AUDIO)
        await asyncio.sleep(0.2)
        # Two senders' frames, interleaved: many reach the reader in one turn.
        for seq in range(200):
            await sender.send_media(1, Media.AUDIO, seq, seq.to_bytes(4, "big") * 40)
            await other.send_media(1, Media.AUDIO, seq, seq.to_bytes(4, "big") * 40)
        got: dict[int, list[int]] = {sender.pid: [], other.pid: []}
        async with asyncio.timeout(TIMEOUT):
            while min(len(v) for v in got.values()) < 200:
                event = await reader.recv()
                if not isinstance(event, MediaFrame):
                    continue
                assert event.payload == event.payload[:4] * 40
                assert event.seq == int.from_bytes(event.payload[:4], "big")
                got[event.sender].append(event.seq)
        assert got == {sender.pid: list(range(200)), other.pid: list(range(200))}
        for person in people:
            await person.leave()
        await host.api.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_burst_longer_than_one_read_arrives_whole_with_nothing_after_it(
    tmp_path: Path, transport: str
) -> None:
    # aiofastnet reads at most one 256 KiB buffer per connection per turn. What
    # is left for the next turn can sit inside OpenSSL (a record cut by the
    # buffer's end; more with read-ahead) where no socket readiness announces
    # it, so the connection must read on by itself (`_read_cut_short`). Each
    # burst ends at a different offset past the first buffer, and the sender
    # says nothing after it: a stranded tail would never arrive.
    async with Node(make_settings(tmp_path / "var", tls_transport=transport)) as node:
        host, (sender, reader) = await presenters(node, 2)
        for doc, tail in enumerate((1, 7, 1000, 5000, 9000, 16000, 17000, 40000)):
            data = bytes([doc]) * (256 * 1024 + tail)
            await sender.send(
                Kind.DOCUMENT, data, op="chunk", doc=doc, seq=0, fin=True, size=len(data)
            )
            event = await next_event(reader, DocumentReceived)
            assert (event.doc, event.data) == (doc, data)
        await sender.leave()
        await reader.leave()
        await host.api.close()


async def test_a_participant_joins_a_meeting_whose_roster_outgrows_a_client_header(
    tmp_path: Path,
) -> None:
    async with Node(make_settings(tmp_path / "var")) as node:
        host = await signed_in_host(node)
        meeting = await host.meeting()
        token = await host.invite(meeting, "attendee", max_uses=60)
        people = [
            await Participant.join(
                node.relay_url,
                token,
                name=f"attendee number {i}",
                ca_file=node.ca_file,
                timeout=TIMEOUT,
            )
            for i in range(60)
        ]
        last = people[-1]
        assert set(last.roster) == {p.pid for p in people}
        assert last.roster[people[0].pid]["name"] == "attendee number 0"
        for person in people:
            await person.leave()
        await host.api.close()


async def test_an_idle_connection_holds_no_tls_buffers_in_the_relay(
    serve_factory: Callable[..., ServeProcess],
) -> None:
    # aiofastnet's memory BIOs keep at least a page of each of two 256 KiB
    # buffers resident per connection: 42-43 KiB per idle websocket here. With
    # OpenSSL on the socket (relay._SOCKET_BIO) it measured 18.1.
    served = serve_factory()
    stats = ServerStats(served.proc.pid)  # the benchmark's own reading of /proc
    ctx = tls_context(served.ca_file)
    held = []
    try:
        for _ in range(100):  # warm-up: first-use caches and arenas
            held.append(await connect(served.relay_url, ssl=ctx, open_timeout=TIMEOUT))
        before = stats.memory_kib("RssAnon")  # the heap and the interpreter's arenas
        assert before is not None
        for _ in range(400):
            held.append(await connect(served.relay_url, ssl=ctx, open_timeout=TIMEOUT))
        await asyncio.sleep(0.2)
        after = stats.memory_kib("RssAnon")
        assert after is not None
        per_connection = (after - before) / 400
        assert per_connection < 22, f"{per_connection:.1f} KiB per idle connection"
    finally:
        for ws in held:
            await ws.close()
