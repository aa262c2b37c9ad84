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

from .api import ApiClient, ApiError, tls_context
from .participant import (
    Chat,
    Disconnected,
    Ended,
    ErrorFrame,
    Event,
    Joined,
    JoinRefused,
    Left,
    Participant,
)

__all__ = [
    "ApiClient",
    "ApiError",
    "Chat",
    "Disconnected",
    "Ended",
    "ErrorFrame",
    "Event",
    "JoinRefused",
    "Joined",
    "Left",
    "Participant",
    "tls_context",
]
