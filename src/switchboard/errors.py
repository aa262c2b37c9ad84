"""One exception tree for all of switchboard.

Every error a user can see is an *answer*: it carries a stable machine code
(``code``), a human reason, the HTTP status the API returns for it and the
websocket close code the relay uses when the error ends a connection. Adapters
translate foreign exceptions (``sqlite3``, ``OSError``, ``ssl``) into this tree at
their boundary, so nothing above them needs to know which backend failed.

The messages never include payload bytes or secrets: they are safe to log and
to send back to the client that caused them.

::

    SwitchboardError
    ├── ConfigError                  bad settings at start (exit status 2)
    ├── StoreError                   a storage backend failed (HTTP 503)
    │   ├── NotFound                 (HTTP 404)
    │   └── Conflict                 (HTTP 409)
    ├── BrokerError                  a broker backend failed
    │   └── BrokerFull               a subscriber queue is full: drop or disconnect
    ├── AuthError                    who you are is not established (HTTP 401)
    │   └── SessionExpired           idle or absolute session lifetime passed
    ├── Forbidden                    who you are may not do this (HTTP 403)
    ├── TooManyRequests              slow down, with a retry time (HTTP 429)
    ├── InvalidRequest               well-formed but unacceptable values (HTTP 422)
    ├── InvitationError              cannot join with this invitation (close 4401)
    ├── MeetingEnded                 the meeting is over (HTTP 410, close 4410)
    └── ProtocolError                a client broke the wire protocol (close 4400)
        ├── FrameError               one bad frame: answered with an error frame,
        │                            the connection is kept
        └── Abuse                    refused frames again and again (close 4429)
"""

from __future__ import annotations

from .core.codes import CloseCode

__all__ = [
    "Abuse",
    "AuthError",
    "BrokerError",
    "BrokerFull",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "FrameError",
    "InvalidRequest",
    "InvitationError",
    "MeetingEnded",
    "NotFound",
    "ProtocolError",
    "SessionExpired",
    "StoreError",
    "SwitchboardError",
    "TooManyRequests",
]


class SwitchboardError(Exception):
    """Base of every error switchboard raises on purpose."""

    code: str = "error"
    http_status: int = 500
    close_code: int = CloseCode.INTERNAL_ERROR

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code


class ConfigError(SwitchboardError):
    """Settings are invalid; raised before anything listens."""

    code = "config"


class StoreError(SwitchboardError):
    """A storage backend failed for a reason the caller cannot fix."""

    code = "store_unavailable"
    http_status = 503


class NotFound(StoreError):
    """The named thing does not exist, or the caller may not know it does."""

    code = "not_found"
    http_status = 404


class Conflict(StoreError):
    """The thing already exists or is in a state that forbids the change."""

    code = "conflict"
    http_status = 409


class BrokerError(SwitchboardError):
    """A broker backend failed."""

    code = "broker_unavailable"
    http_status = 503


class BrokerFull(BrokerError):
    """A subscriber's queue is full; the publisher must not wait for it."""

    code = "broker_full"


class AuthError(SwitchboardError):
    """Credentials are missing, wrong or unknown."""

    code = "unauthorized"
    http_status = 401


class SessionExpired(AuthError):
    """The session passed its idle timeout or absolute lifetime: sign in again."""

    code = "session_expired"


class Forbidden(SwitchboardError):
    """The caller is known but may not do this."""

    code = "forbidden"
    http_status = 403
    close_code = CloseCode.FORBIDDEN


class InvalidRequest(SwitchboardError):
    """The request is well-formed but a value is out of bounds."""

    code = "invalid_request"
    http_status = 422


class InvitationError(SwitchboardError):
    """The invitation cannot be used: unknown, expired, revoked or used up."""

    code = "invitation_invalid"
    http_status = 403
    close_code = CloseCode.INVITATION_INVALID


class MeetingEnded(SwitchboardError):
    """The meeting is over; nothing more can happen in it."""

    code = "meeting_ended"
    http_status = 410
    close_code = CloseCode.MEETING_ENDED


class ProtocolError(SwitchboardError):
    """The client broke the wire protocol in a way that ends the connection."""

    code = "protocol_error"
    http_status = 400
    close_code = CloseCode.BAD_REQUEST


class FrameError(ProtocolError):
    """One frame is wrong; the sender gets an error frame and stays connected."""

    code = "bad_frame"


class Abuse(ProtocolError):
    """Too many refused frames in a short time: the connection is closed."""

    code = "abuse"
    close_code = CloseCode.ABUSE


class TooManyRequests(SwitchboardError):
    """The caller must wait ``retry_after`` seconds before trying again."""

    code = "too_many_requests"
    http_status = 429

    def __init__(self, reason: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(reason, code=code)
        self.retry_after = retry_after
