"""Websocket close codes: ONE table, read by the relay, the SDK and the docs.

Ranges follow a rule a client can act on without knowing every code:

* ``1000-1015``: RFC 6455 codes, used with their standard meaning.
* ``4000-4499``: *terminal*. The client must not reconnect with the same
  credentials; something has to change first (a new invitation, a fixed client).
* ``4500-4999``: *transient*. The client may reconnect (with backoff) and
  present its invitation again.
"""

from __future__ import annotations

import enum

__all__ = ["CloseCode", "is_transient"]


class CloseCode(enum.IntEnum):
    """Why the relay closed a websocket; the value is sent in the close frame."""

    NORMAL = 1000
    """The client left, or the relay finished an orderly close."""
    GOING_AWAY = 1001
    """The peer is going away (browser tab closed)."""
    PROTOCOL_ERROR = 1002
    """Websocket framing was broken."""
    UNSUPPORTED_DATA = 1003
    """Reserved by RFC 6455; switchboard answers text frames with an error frame instead."""
    POLICY_VIOLATION = 1008
    """Generic policy violation."""
    MESSAGE_TOO_BIG = 1009
    """A message exceeded the relay's maximum frame size."""
    INTERNAL_ERROR = 1011
    """The relay hit a bug; the meeting may continue for others."""

    BAD_REQUEST = 4400
    """The join message was malformed."""
    INVITATION_INVALID = 4401
    """The invitation is unknown, expired, revoked or used up."""
    FORBIDDEN = 4403
    """The meeting does not accept this participant: full, locked, denied or ejected."""
    JOIN_TIMEOUT = 4408
    """No join message arrived within the join timeout."""
    REPLACED = 4409
    """The participant resumed on another connection; this one is obsolete."""
    MEETING_ENDED = 4410
    """The meeting is over."""
    ABUSE = 4429
    """The client kept sending frames over its rate or size limits."""

    RELAY_SHUTDOWN = 4503
    """The relay is shutting down; reconnect (possibly to another node)."""
    PING_TIMEOUT = 4504
    """The client answered no keepalive ping for two intervals; reconnect."""
    TOO_SLOW = 4508
    """The client did not read fast enough and its buffer overflowed; reconnect."""


_ABNORMAL_CLOSURE = 1006
"""Never sent in a close frame: what a client sees when the connection just dropped."""


def is_transient(code: int) -> bool:
    """Tell a client whether it may reconnect after a close with ``code``."""
    return 4500 <= code <= 4999 or code in (
        CloseCode.GOING_AWAY,
        _ABNORMAL_CLOSURE,
        CloseCode.INTERNAL_ERROR,
    )
