"""One meeting participant on the wss data plane.

The participant presents its invitation in the first message (never in the
URL), waits for the welcome (or in the lobby until a host admits it), then
sends and receives frames. Events arrive as small dataclasses from
:meth:`Participant.recv`; the roster is kept up to date as they go by.

Payloads are opaque bytes to the relay; a client may encrypt them end to end.
This SDK's conventions: chat is UTF-8 text, documents are sent in chunks and
handed to the receiver whole (:class:`DocumentReceived`).

Late joiners get state from its owner, never from the relay: when the relay
sends a ``sync`` request naming a newcomer, this SDK re-sends to that newcomer
alone the documents it is showing (and the current page) and the polls it has
open (and their published results). It keeps that state in memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..core import wire
from ..core.wire import Kind, Media
from ..logs import frame_blind
from .api import tls_context

__all__ = [
    "DOCUMENT_CHUNK_BYTES",
    "Admitted",
    "Away",
    "Back",
    "Chat",
    "Disconnected",
    "Document",
    "DocumentReceived",
    "Ended",
    "ErrorFrame",
    "Event",
    "JoinRefused",
    "Joined",
    "KeyframeRequested",
    "Left",
    "MediaFrame",
    "Notice",
    "Participant",
    "Poll",
    "SyncRequested",
]

DOCUMENT_CHUNK_BYTES = 64 * 1024
"""Bytes per document chunk the SDK sends."""

_QUEUE_EVENTS = 1024
"""Events read ahead of the application; beyond that the SDK stops reading (backpressure)."""


_LOGGER = frame_blind("switchboard.client.websocket")


@dataclass(frozen=True, slots=True)
class Chat:
    """A chat message from participant ``sender``; ``private`` if sent to us alone.

    ``payload`` is exactly what the sender sent; :attr:`text` reads it as UTF-8
    (the SDK's convention), replacing bytes that are not.
    """

    sender: int
    payload: bytes
    private: bool

    @property
    def text(self) -> str:
        """The payload as text."""
        return self.payload.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Poll:
    """A poll frame: ``op`` is open, answer (we own the poll), results or close."""

    sender: int
    op: str
    poll: int
    payload: bytes
    private: bool


@dataclass(frozen=True, slots=True)
class Document:
    """A document page turn, annotation or stop (chunks arrive as :class:`DocumentReceived`)."""

    sender: int
    op: str
    doc: int
    payload: bytes
    page: int | None
    private: bool


@dataclass(frozen=True, slots=True)
class DocumentReceived:
    """A whole document, reassembled from its chunks."""

    sender: int
    doc: int
    data: bytes
    private: bool


@dataclass(frozen=True, slots=True)
class MediaFrame:
    """One media frame of ``sender``'s ``track``."""

    sender: int
    track: int
    media: Media
    seq: int
    key: bool
    ts: int | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class Joined:
    """Someone joined: ``participant`` is ``{"pid", "role", "name"}`` (and ``tracks``)."""

    participant: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Left:
    """Participant ``pid`` left."""

    pid: int


@dataclass(frozen=True, slots=True)
class Away:
    """Participant ``pid`` lost its connection and may come back (its seat is held)."""

    pid: int


@dataclass(frozen=True, slots=True)
class Back:
    """Participant ``pid`` came back."""

    pid: int


@dataclass(frozen=True, slots=True)
class Admitted:
    """A host admitted us from the lobby; :attr:`Participant.roster` is now filled in."""

    pid: int


@dataclass(frozen=True, slots=True)
class KeyframeRequested:
    """The relay asks us for a keyframe on ``track`` (a receiver dropped frames)."""

    track: int


@dataclass(frozen=True, slots=True)
class SyncRequested:
    """Newcomer ``pid`` needs the state we own (this SDK answers it already)."""

    pid: int


@dataclass(frozen=True, slots=True)
class Notice:
    """Any other control event: lobby, locked, webinar, muted, role, track, waiting, ..."""

    op: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ended:
    """The meeting ended (``reason`` as in the call record)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """The relay refused something we sent; the connection stays open."""

    code: str
    reason: str


Event = (
    Chat
    | Poll
    | Document
    | DocumentReceived
    | MediaFrame
    | Joined
    | Left
    | Away
    | Back
    | Admitted
    | KeyframeRequested
    | SyncRequested
    | Notice
    | Ended
    | ErrorFrame
)


class Disconnected(Exception):
    """The connection is closed; ``code`` is the close code (see ``docs/protocol.md``)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"disconnected ({code}): {reason}")
        self.code, self.reason = code, reason


class JoinRefused(Disconnected):
    """The relay refused the join; ``error`` is its error code (e.g. ``invitation_expired``)."""

    def __init__(self, code: int | None, reason: str, error: str) -> None:
        super().__init__(code, reason)
        self.error = error


@dataclass(slots=True)
class _SharedDocument:
    data: bytes
    page: int | None = None


@dataclass(slots=True)
class _OpenPoll:
    question: bytes
    results: bytes | None = None


@dataclass(slots=True)
class _Owned:
    """What this participant shows others, kept to answer sync requests."""

    documents: dict[int, _SharedDocument] = field(default_factory=dict)
    polls: dict[int, _OpenPoll] = field(default_factory=dict)


class Participant:
    """A participant of a meeting. Create with :meth:`join`."""

    def __init__(
        self,
        ws: ClientConnection,
        first: dict[str, Any],
        *,
        auto_sync: bool,
        owned: _Owned | None = None,
        reconnect_with: dict[str, Any] | None = None,
    ) -> None:
        self._ws = ws
        self._reconnect_with = reconnect_with or {}
        self.pid: int = first["pid"]
        self.meeting_id: str = first["meeting"]
        self.role: str = first.get("role", "")
        self.roster: dict[int, dict[str, Any]] = {}
        self.resume_token: str | None = None
        self.waiting = first.get("op") == "lobby_wait"
        self.auto_sync = auto_sync
        self._owned = owned if owned is not None else _Owned()
        self._chunks: dict[tuple[int, int, bool], list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._events: asyncio.Queue[Event | Disconnected] = asyncio.Queue(_QUEUE_EVENTS)
        self._closed: Disconnected | None = None
        if not self.waiting:
            self._welcomed(first)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def _welcomed(self, welcome: dict[str, Any]) -> None:
        self.waiting = False
        self.pid = welcome["pid"]
        self.role = welcome["role"]
        self.roster = {p["pid"]: p for p in welcome["roster"]}
        self.resume_token = welcome.get("resume")
        self.welcome = welcome

    @classmethod
    async def join(
        cls,
        url: str,
        invitation: str,
        *,
        name: str = "",
        ca_file: Path | str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        max_size: int = 16 << 20,
        wait_in_lobby: bool = True,
        resume: bool = False,
        auto_sync: bool = True,
        _owned: _Owned | None = None,
    ) -> Participant:
        """Connect to ``url`` (``wss://.../v1/ws``), present ``invitation``, await the welcome.

        If the meeting's lobby is on, wait there until a host admits us
        (``wait_in_lobby``), or return at once with :attr:`waiting` set and get
        an :class:`Admitted` event later. ``resume=True`` presents a resume
        token (:attr:`resume_token` of an earlier connection) instead.
        ``timeout`` bounds the connection and the welcome, not the lobby wait.
        """
        ssl_context = ssl_context or tls_context(ca_file)
        ws = await connect(
            url,
            ssl=ssl_context,
            compression=None,
            max_size=max_size,
            open_timeout=timeout,
            logger=_LOGGER,
        )
        try:
            await ws.send(wire.encode_join(invitation, name, resume=resume))
            async with asyncio.timeout(timeout):
                header = await cls._read_header(ws)
            if header.get("op") == "lobby_wait" and wait_in_lobby:
                header = await cls._read_header(ws)
        except ConnectionClosed as exc:
            raise Disconnected(exc.rcvd.code if exc.rcvd else None, "closed during join") from None
        except BaseException:
            await ws.close()
            raise
        if header.get("op") in ("welcome", "lobby_wait"):
            again = {
                "url": url,
                "ssl_context": ssl_context,
                "timeout": timeout,
                "max_size": max_size,
                "auto_sync": auto_sync,
            }
            return cls(ws, header, auto_sync=auto_sync, owned=_owned, reconnect_with=again)
        error = str(header.get("code", "join_refused"))
        reason = str(header.get("reason", ""))
        try:
            async with asyncio.timeout(timeout):
                await ws.wait_closed()
        finally:
            await ws.close()
        raise JoinRefused(ws.close_code, reason, error)

    @staticmethod
    async def _read_header(ws: ClientConnection) -> dict[str, Any]:
        header, _ = wire.split_frame(await ws.recv(decode=False), from_relay=True)
        return header

    async def __aenter__(self) -> Participant:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.leave()

    @property
    def close_code(self) -> int | None:
        """The close code, once closed."""
        return self._ws.close_code

    # sending: data

    async def send(
        self, kind: Kind, payload: bytes, *, to: int | None = None, **fields: Any
    ) -> None:
        """Send one frame of ``kind`` with header ``fields`` and an opaque ``payload``."""
        await self._ws.send(wire.encode_data(kind, to, payload, **fields))

    async def send_raw(self, message: bytes | str) -> None:
        """Send a message exactly as given (for testing the relay's error handling)."""
        await self._ws.send(message)

    async def send_chat(self, text: str, *, to: int | None = None) -> None:
        """Send a chat message to everyone, or privately to participant ``to``."""
        await self.send(Kind.CHAT, text.encode(), to=to)

    async def open_poll(self, poll: int, question: bytes) -> None:
        """Open poll ``poll`` (question and options are ``question``, opaque to the relay)."""
        self._owned.polls[poll] = _OpenPoll(question)
        await self.send(Kind.POLL, question, op="open", poll=poll)

    async def answer_poll(self, poll: int, answer: bytes) -> None:
        """Answer a poll; the relay routes the answer to the poll's owner only."""
        await self.send(Kind.POLL, answer, op="answer", poll=poll)

    async def publish_results(self, poll: int, results: bytes) -> None:
        """Publish the results of our poll to everyone."""
        owned = self._owned.polls.get(poll)
        if owned is not None:
            owned.results = results
        await self.send(Kind.POLL, results, op="results", poll=poll)

    async def close_poll(self, poll: int) -> None:
        """Close our poll."""
        self._owned.polls.pop(poll, None)
        await self.send(Kind.POLL, b"", op="close", poll=poll)

    async def share_document(
        self,
        doc: int,
        data: bytes,
        *,
        to: int | None = None,
        chunk_bytes: int = DOCUMENT_CHUNK_BYTES,
    ) -> None:
        """Share a document in chunks (to everyone, or to ``to`` alone)."""
        if to is None:
            self._owned.documents[doc] = _SharedDocument(data)
        view = memoryview(data)
        count = max(1, -(-len(data) // chunk_bytes))
        for seq in range(count):
            chunk = view[seq * chunk_bytes : (seq + 1) * chunk_bytes]
            await self.send(
                Kind.DOCUMENT,
                bytes(chunk),
                to=to,
                op="chunk",
                doc=doc,
                seq=seq,
                fin=seq == count - 1,
                size=len(data),
            )

    async def turn_page(self, doc: int, page: int, *, to: int | None = None) -> None:
        """Show page ``page`` of a document we share."""
        shared = self._owned.documents.get(doc)
        if shared is not None and to is None:
            shared.page = page
        await self.send(Kind.DOCUMENT, b"", to=to, op="page", doc=doc, page=page)

    async def annotate(self, doc: int, annotation: bytes) -> None:
        """Send an annotation of a document we share."""
        await self.send(Kind.DOCUMENT, annotation, op="annotate", doc=doc)

    async def stop_document(self, doc: int) -> None:
        """Stop sharing a document."""
        self._owned.documents.pop(doc, None)
        await self.send(Kind.DOCUMENT, b"", op="stop", doc=doc)

    async def publish(self, track: int, media: Media, *, on: bool = True) -> None:
        """Announce (or withdraw) a media track we send."""
        await self.control("publish", track=track, m=int(media), on=on)

    async def send_media(
        self,
        track: int,
        media: Media,
        seq: int,
        payload: bytes,
        *,
        key: bool = False,
        ts: int | None = None,
    ) -> None:
        """Send one media frame of a published track."""
        fields: dict[str, Any] = {"track": track, "m": int(media), "seq": seq, "key": key}
        if ts is not None:
            fields["ts"] = ts
        await self.send(Kind.MEDIA, payload, **fields)

    # sending: control

    async def control(self, op: str, **fields: Any) -> None:
        """Send a control request (see ``docs/protocol.md`` for the operations)."""
        await self._ws.send(wire.encode_control(op, **fields))

    async def subscribe(self, pid: int, track: int | None = None, *, on: bool = True) -> None:
        """Receive (or stop receiving) ``pid``'s track, or all its tracks."""
        fields: dict[str, Any] = {"pid": pid, "on": on}
        if track is not None:
            fields["track"] = track
        await self.control("subscribe", **fields)

    async def receive(self, media: Media, *, on: bool) -> None:
        """Receive (or stop receiving) every track of one media type, e.g. no video."""
        await self.control("receive", m=int(media), on=on)

    async def request_keyframe(self, pid: int, track: int) -> None:
        """Ask ``pid`` for a keyframe on ``track`` (throttled by the relay)."""
        await self.control("keyframe", pid=pid, track=track)

    async def set_lobby(self, on: bool) -> None:
        """Host: joiners wait in the lobby until admitted (``on``), or come straight in."""
        await self.control("lobby", on=on)

    async def admit(self, pid: int) -> None:
        """Host: let ``pid`` in from the lobby."""
        await self.control("admit", pid=pid)

    async def deny(self, pid: int) -> None:
        """Host: turn ``pid`` away from the lobby."""
        await self.control("deny", pid=pid)

    async def lock(self, on: bool = True) -> None:
        """Host: no new joins (hosts excepted) while locked."""
        await self.control("lock", on=on)

    async def eject(self, pid: int) -> None:
        """Host: disconnect ``pid`` and revoke its invitation."""
        await self.control("eject", pid=pid)

    async def mute(self, pid: int, track: int, *, on: bool = True) -> None:
        """Host: the relay drops ``pid``'s ``track`` (or switches it again)."""
        await self.control("mute", pid=pid, track=track, on=on)

    async def set_role(self, pid: int, role: str) -> None:
        """Host: make ``pid`` a presenter (or attendee, or host)."""
        await self.control("role", pid=pid, role=role)

    async def webinar(self, on: bool = True) -> None:
        """Host: attendees may not publish audio, video or screen while on (chat and polls stay)."""
        await self.control("webinar", on=on)

    async def end(self) -> None:
        """Host: end the meeting for everyone."""
        await self.control("end")

    # receiving

    async def _read(self) -> None:
        """Read every message as it arrives: answer sync requests at once, queue events.

        Reading in the background means a presenter answers a newcomer's sync
        request even while its application is busy; the bounded queue means a
        stalled application makes the SDK stop reading, which the relay sees as
        a slow receiver, instead of growing memory.
        """
        try:
            while True:
                data = await self._ws.recv(decode=False)
                event = self._event(data)
                if event is not None:
                    await self._events.put(event)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            closed = Disconnected(
                rcvd.code if rcvd else None, rcvd.reason if rcvd else "connection lost"
            )
            await self._events.put(closed)

    async def recv(self, timeout: float | None = None) -> Event:
        """The next event. Raise :class:`Disconnected` when the connection is closed."""
        if self._closed is not None:
            raise self._closed
        async with asyncio.timeout(timeout):
            event = await self._events.get()
        if isinstance(event, Disconnected):
            self._closed = event
            raise event
        return event

    def _event(self, data: bytes) -> Event | None:
        header, offset = wire.split_frame(data, from_relay=True)
        kind = header.get("k")
        if kind == Kind.CONTROL:
            return self._control_event(header)
        sender = header.get("from", 0)
        private = "to" in header
        payload = bytes(data[offset:])
        if kind == Kind.CHAT:
            return Chat(sender, payload, private)
        if kind == Kind.MEDIA:
            return MediaFrame(
                sender,
                header["track"],
                Media(header["m"]),
                header["seq"],
                header.get("key", False),
                header.get("ts"),
                payload,
            )
        if kind == Kind.POLL:
            return Poll(sender, header["op"], header["poll"], payload, private)
        if kind == Kind.DOCUMENT:
            return self._document_event(header, sender, payload, private)
        return None  # a kind this SDK version does not know: skip it

    def _document_event(
        self, header: dict[str, Any], sender: int, payload: bytes, private: bool
    ) -> Event | None:
        doc, op = header["doc"], header["op"]
        if op != "chunk":
            return Document(sender, op, doc, payload, header.get("page"), private)
        key = (sender, doc, private)
        if header["seq"] == 0:
            self._chunks[key] = []
        parts = self._chunks.setdefault(key, [])
        parts.append(payload)
        if not header.get("fin"):
            return None
        del self._chunks[key]
        data = b"".join(parts)
        size = header.get("size")
        if size is not None and size != len(data):
            return None  # incomplete (a chunk was refused): the sender must share again
        return DocumentReceived(sender, doc, data, private)

    def _control_event(self, header: dict[str, Any]) -> Event | None:
        op = header.get("op")
        fields = {k: v for k, v in header.items() if k not in ("k", "op")}
        if op == "joined":
            participant = header["p"]
            self.roster[participant["pid"]] = participant
            return Joined(participant)
        if op == "left":
            self.roster.pop(header["pid"], None)
            return Left(header["pid"])
        if op == "away":
            self.roster.get(header["pid"], {})["away"] = True
            return Away(header["pid"])
        if op == "back":
            self.roster.get(header["pid"], {}).pop("away", None)
            return Back(header["pid"])
        if op == "welcome":
            self._welcomed(header)
            return Admitted(self.pid)
        if op == "ended":
            return Ended(header.get("reason", ""))
        if op == "error":
            return ErrorFrame(header.get("code", ""), header.get("reason", ""))
        if op == "keyframe":
            return KeyframeRequested(header["track"])
        if op == "sync":
            if self.auto_sync:
                self._spawn(self._answer_sync(header["pid"]))
            return SyncRequested(header["pid"])
        if op == "role" and header.get("pid") == self.pid:
            self.role = header["role"]
        if op in ("role", "track") and header.get("pid") in self.roster:
            entry = self.roster[header["pid"]]
            if op == "role":
                entry["role"] = header["role"]
            else:
                tracks = {t: m for t, m in entry.get("tracks", [])}
                if header.get("on", True):
                    tracks[header["track"]] = header["m"]
                else:
                    tracks.pop(header["track"], None)
                entry["tracks"] = [[t, m] for t, m in sorted(tracks.items())]
        return Notice(str(op), fields)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_sync(self, newcomer: int) -> None:
        """Send a newcomer, and only it, the state we own."""
        with contextlib.suppress(ConnectionClosed):
            for doc, shared in list(self._owned.documents.items()):
                await self.share_document(doc, shared.data, to=newcomer)
                if shared.page is not None:
                    await self.turn_page(doc, shared.page, to=newcomer)
            for poll, state in list(self._owned.polls.items()):
                await self.send(Kind.POLL, state.question, to=newcomer, op="open", poll=poll)
                if state.results is not None:
                    await self.send(Kind.POLL, state.results, to=newcomer, op="results", poll=poll)

    async def synced(self) -> None:
        """Wait until every sync answer this participant started has been sent."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def reconnect(self) -> Participant:
        """Take this participant's seat back on a new connection (within the grace period).

        Uses :attr:`resume_token`; keeps pid and role, and the documents and
        polls this participant owns, so it can still answer sync requests. The
        old connection is dropped if it is not already. Returns the resumed
        participant; use it from now on.
        """
        if self.resume_token is None:
            raise Disconnected(None, "no resume token: this participant was never admitted")
        if self._ws.state.name != "CLOSED":
            await self.drop()
        for task in list(self._tasks):
            task.cancel()
        return await Participant.join(
            resume=True, invitation=self.resume_token, _owned=self._owned, **self._reconnect_with
        )

    async def leave(self) -> None:
        """Leave the meeting (close the connection)."""
        for task in list(self._tasks):
            task.cancel()
        await self._ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def drop(self) -> None:
        """Lose the connection without saying goodbye (to test or use reconnects)."""
        transport = self._ws.transport
        transport.abort()
        with contextlib.suppress(Exception):
            await self._ws.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
