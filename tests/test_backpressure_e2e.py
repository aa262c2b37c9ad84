"""A receiver that stops reading cannot hurt anyone else (docs/topics/backpressure.md).

One presenter sends 30 fps video (4 KB, a keyframe every second) and 50 fps
audio; two attendees read normally; one attendee stops reading (a tiny
socket receive buffer and a websocket client that stops pulling). Over real
TLS on loopback:

* the readers get every frame, in order;
* the stalled one has video dropped first (its buffer stays bounded), and the
  presenter is asked for keyframes, throttled;
* chat (reliable) is never dropped: when the stalled receiver's buffer passes
  the hard cap it is disconnected with 4508, and the meeting goes on;
* the record counts the drops.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.protocol import State
from websockets.uri import parse_uri

from switchboard.client import KeyframeRequested, MediaFrame, Participant, tls_context
from switchboard.core.codes import CloseCode
from switchboard.core.wire import Media, encode_join
from switchboard.node import Node

from .conftest import TIMEOUT, make_settings, signed_in_host

VIDEO_BYTES = 16384
AUDIO_BYTES = 160


class StalledClient:
    """A participant that joins, then never reads again: a blocking socket in a thread.

    Its receive buffer is tiny, so the relay's kernel send buffer fills within
    a few hundred kilobytes and the backlog builds up where the relay sees it.
    """

    def __init__(self, node: Node, token: str) -> None:
        self.node, self.token = node, token
        self.release = threading.Event()
        self.sock: ssl.SSLSocket | None = None

    def _run(self, joined: threading.Event) -> None:
        proto = ClientProtocol(parse_uri(self.node.relay_url))
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(TIMEOUT)
        raw.connect(("127.0.0.1", self.node.relay_port))
        ctx = tls_context(self.node.ca_file)
        with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
            proto.send_request(proto.connect())
            for data in proto.data_to_send():
                sock.sendall(data)
            while proto.state is State.CONNECTING:
                proto.receive_data(sock.recv(4096))
            proto.send_binary(encode_join(self.token, "stalled"))
            for data in proto.data_to_send():
                sock.sendall(data)
            welcomed = any(isinstance(e, Frame) for e in proto.events_received())
            while not welcomed:
                proto.receive_data(sock.recv(4096))
                welcomed = any(isinstance(e, Frame) for e in proto.events_received())
            joined.set()
            self.release.wait(TIMEOUT * 6)  # stalled: never reads again

    async def start(self) -> None:
        joined = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(joined,), daemon=True)
        self.thread.start()
        assert await asyncio.to_thread(joined.wait, TIMEOUT)

    async def stop(self) -> None:
        self.release.set()
        await asyncio.to_thread(self.thread.join, TIMEOUT)


async def _drain(p: Participant, into: list[Any], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            into.append(await p.recv(timeout=0.2))
        except TimeoutError:
            continue


async def test_a_stalled_receiver_loses_video_first_and_is_cut_off_on_reliable_frames(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path / "var",
        drop_video_bytes=64 * 1024,
        drop_screen_bytes=128 * 1024,
        drop_audio_bytes=256 * 1024,
        write_buffer_limit=1024 * 1024,
        max_chat_bytes=16 * 1024,
        rate_chat=1000,
    )
    async with Node(settings) as node:
        h = await signed_in_host(node)
        mid = await h.meeting()
        presenter = await h.join(mid, "presenter", "P")
        readers = [await h.join(mid, "attendee", f"R{i}") for i in range(2)]
        stalled = StalledClient(node, await h.invite(mid))
        await stalled.start()
        stalled_conn = next(
            c
            for c in node.hub.rooms[mid].conns.values()
            if c.participant is not None and c.participant.name == "stalled"
        )
        await presenter.publish(1, Media.VIDEO)
        await presenter.publish(2, Media.AUDIO)

        got: list[list[Any]] = [[], []]
        stop = asyncio.Event()
        drains = [asyncio.create_task(_drain(r, got[i], stop)) for i, r in enumerate(readers)]
        presenter_events: list[Any] = []
        presenter_drain = asyncio.create_task(_drain(presenter, presenter_events, stop))

        # Three seconds of 30 fps video and 50 fps audio.
        peak_buffer = 0
        sent_video = sent_audio = 0
        for tick in range(150):
            if tick % 5 in (0, 2, 4):  # ~30 of every 50 ticks
                await presenter.send_media(
                    1, Media.VIDEO, sent_video, bytes(VIDEO_BYTES), key=sent_video % 30 == 0
                )
                sent_video += 1
            await presenter.send_media(2, Media.AUDIO, sent_audio, bytes(AUDIO_BYTES))
            sent_audio += 1
            peak_buffer = max(peak_buffer, stalled_conn.buffered())
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)

        # Readers got everything, in order.
        for events in got:
            media = [e for e in events if isinstance(e, MediaFrame)]
            video = [e.seq for e in media if e.media is Media.VIDEO]
            audio = [e.seq for e in media if e.media is Media.AUDIO]
            assert video == list(range(sent_video))
            assert audio == list(range(sent_audio))
        # The stalled one's buffer stayed near the video threshold (audio kept
        # flowing into it, below the audio threshold), far below the hard cap.
        assert peak_buffer < settings.drop_audio_bytes + 64 * 1024
        # The presenter was asked for keyframes, throttled to one per 500 ms per track.
        asks = [e for e in presenter_events if isinstance(e, KeyframeRequested)]
        assert asks
        assert {a.track for a in asks} == {1}
        assert len(asks) <= 3 / 0.5 + 1

        # Reliable frames are never dropped: chat piles up until the hard cap cuts it off.
        for _ in range(200):
            await presenter.send_chat("x" * 8000)
            if stalled_conn.transport is None or not stalled_conn.is_open:
                break
            await asyncio.sleep(0.002)
        async with asyncio.timeout(TIMEOUT):
            while stalled_conn.transport is not None:
                await asyncio.sleep(0.05)
        assert stalled_conn.proto.close_sent is not None
        assert stalled_conn.proto.close_sent.code == CloseCode.TOO_SLOW

        # The others are undisturbed and still switching.
        await presenter.send_media(2, Media.AUDIO, sent_audio, bytes(AUDIO_BYTES))
        await asyncio.sleep(0.3)
        for events in got:
            assert [e.seq for e in events if isinstance(e, MediaFrame)][-1] == sent_audio
        stop.set()
        await asyncio.gather(*drains, presenter_drain)
        ended = await h.api.end_meeting(mid)
        usage = ended["record"]["usage"]
        assert usage["video"]["dropped"] > 0
        assert usage["video"]["deliveries"] >= 2 * sent_video
        assert usage["chat"]["dropped"] == 0
        for p in (presenter, *readers):
            await p.leave()
        await stalled.stop()
        await h.api.close()
