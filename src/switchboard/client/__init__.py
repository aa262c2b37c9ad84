"""The async client SDK: sign in, create meetings, invite, join, talk, leave.

Two halves, matching the relay's two planes:

* :class:`ApiClient` speaks the HTTPS API (hosts with a session token, billing
  and host apps with an API key).
* :class:`Participant` is one meeting participant on the wss data plane.

Both verify the server's certificate; point ``ca_file`` at the relay's
``tls/ca.pem`` when it uses its generated local CA. Tests, the demo and the
benchmarks use this SDK, so it is the reference client of ``docs/protocol.md``.
"""

from __future__ import annotations

from ..core.wire import Media
from .api import ApiClient, ApiError, tls_context
from .participant import (
    DOCUMENT_CHUNK_BYTES,
    Admitted,
    Away,
    Back,
    Chat,
    Disconnected,
    Document,
    DocumentReceived,
    Ended,
    ErrorFrame,
    Event,
    Joined,
    JoinRefused,
    KeyframeRequested,
    Left,
    MediaFrame,
    Notice,
    Participant,
    Poll,
    SyncRequested,
)

__all__ = [
    "DOCUMENT_CHUNK_BYTES",
    "Admitted",
    "ApiClient",
    "ApiError",
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
    "Media",
    "MediaFrame",
    "Notice",
    "Participant",
    "Poll",
    "SyncRequested",
    "tls_context",
]
