"""One meeting participant on the wss data plane.

The participant presents its invitation in the first message (never in the
URL), waits for the welcome, then sends and receives frames. Events arrive as
small dataclasses from :meth:`Participant.recv`; the roster is kept up to date
as ``joined``/``left`` events go by.

Chat payloads are UTF-8 text in this SDK. The relay neither knows nor cares:
payloads are opaque bytes to it, and a client may encrypt them end to end.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..core import wire
from ..core.wire import Kind
from .api import tls_context

__all__ = [
    "Chat",
    "Disconnected",
    "Ended",
    "ErrorFrame",
    "Event",
    "JoinRefused",
    "Joined",
    "Left",
    "Participant",
]


class _NoDebugLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets logs frame contents at DEBUG; this logger never enables DEBUG."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


_LOGGER = _NoDebugLogger(logging.getLogger("switchboard.client.websocket"), {})


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
class Joined:
    """Someone joined: ``participant`` is ``{"pid", "role", "name"}``."""

    participant: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Left:
    """Participant ``pid`` left."""

    pid: int


@dataclass(frozen=True, slots=True)
class Ended:
    """The meeting ended (``reason`` as in the call record)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """The relay refused something we sent; the connection stays open."""

    code: str
    reason: str


Event = Chat | Joined | Left | Ended | ErrorFrame


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


class Participant:
    """A joined participant. Create with :meth:`join`."""

    def __init__(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        self._ws = ws
        self.pid: int = welcome["pid"]
        self.role: str = welcome["role"]
        self.meeting_id: str = welcome["meeting"]
        self.roster: dict[int, dict[str, Any]] = {p["pid"]: p for p in welcome["roster"]}

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
    ) -> Participant:
        """Connect to ``url`` (``wss://.../v1/ws``), present ``invitation``, await the welcome."""
        ws = await connect(
            url,
            ssl=ssl_context or tls_context(ca_file),
            compression=None,
            max_size=max_size,
            open_timeout=timeout,
            logger=_LOGGER,
        )
        try:
            await ws.send(wire.encode_join(invitation, name))
            async with asyncio.timeout(timeout):
                data = await ws.recv(decode=False)
            header, _ = wire.split_frame(data)
        except ConnectionClosed as exc:
            raise Disconnected(exc.rcvd.code if exc.rcvd else None, "closed during join") from None
        except BaseException:
            await ws.close()
            raise
        if header.get("op") == "welcome":
            return cls(ws, header)
        error = str(header.get("code", "join_refused"))
        reason = str(header.get("reason", ""))
        try:
            async with asyncio.timeout(timeout):
                await ws.wait_closed()
        finally:
            await ws.close()
        raise JoinRefused(ws.close_code, reason, error)

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

    async def send(self, kind: Kind, payload: bytes, *, to: int | None = None) -> None:
        """Send one frame of ``kind`` with an opaque ``payload``, to everyone or to ``to``."""
        await self._ws.send(wire.encode_data(kind, to, payload))

    async def send_chat(self, text: str, *, to: int | None = None) -> None:
        """Send a chat message to everyone, or privately to participant ``to``."""
        await self.send(Kind.CHAT, text.encode(), to=to)

    async def send_raw(self, message: bytes | str) -> None:
        """Send a message exactly as given (for testing the relay's error handling)."""
        await self._ws.send(message)

    async def recv(self, timeout: float | None = None) -> Event:
        """The next event. Raise :class:`Disconnected` when the connection is closed."""
        while True:
            try:
                async with asyncio.timeout(timeout):
                    data = await self._ws.recv(decode=False)
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                raise Disconnected(
                    rcvd.code if rcvd else None, rcvd.reason if rcvd else "connection lost"
                ) from None
            event = self._event(data)
            if event is not None:
                return event

    def _event(self, data: bytes) -> Event | None:
        header, offset = wire.split_frame(data)
        kind = header.get("k")
        if kind == Kind.CHAT:
            return Chat(header["from"], bytes(data[offset:]), "to" in header)
        if kind != Kind.CONTROL:
            return None  # a kind this SDK version does not know: skip it
        op = header.get("op")
        if op == "joined":
            participant = header["p"]
            self.roster[participant["pid"]] = participant
            return Joined(participant)
        if op == "left":
            self.roster.pop(header["pid"], None)
            return Left(header["pid"])
        if op == "ended":
            return Ended(header.get("reason", ""))
        if op == "error":
            return ErrorFrame(header.get("code", ""), header.get("reason", ""))
        return None

    async def leave(self) -> None:
        """Leave the meeting (close the connection)."""
        await self._ws.close()
