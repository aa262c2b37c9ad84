"""The control and records planes: an HTTPS JSON API for hosts, host apps and billing.

It runs in the same process and event loop as the relay (uvicorn is started by
:mod:`switchboard.node` on the shared TLS context), so ending a meeting here
ends it in the relay directly, and the response is sent only after the call
record is committed.

Authentication is a bearer token: a host *session* (``sbs_...``, from
``POST /v1/sessions``) or an *API key* (``sbk_...``, from ``switchboard apikey
create``). An API key can do exactly what its scopes say (``cdr:read``: read
records) and nothing else; a host session sees only its own meetings and
records.
"""

import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..clock import Clock
from ..config import Settings
from ..core import tokens, wire
from ..core.records import EndReason, iso_utc
from ..core.rules import Role
from ..errors import (
    AuthError,
    Forbidden,
    InvalidRequest,
    MeetingEnded,
    NotFound,
    SessionExpired,
    SwitchboardError,
    TooManyRequests,
)
from ..passwords import Passwords
from ..relay.hub import Hub
from ..store import Invitation, MeetingRow, Store, StoredRecord
from .accounts import SignInThrottle, add_account_routes
from .schemas import (
    CallRecordOut,
    CallRecordPage,
    EndMeetingOut,
    ErrorOut,
    InvitationCreate,
    InvitationCreated,
    InvitationOut,
    MeetingOut,
    ModerationRequest,
    ParticipantOut,
    PublicKeyOut,
    SessionCreate,
    SessionOut,
)

__all__ = ["MAX_BODY_BYTES", "Principal", "Services", "create_app"]

MAX_BODY_BYTES = 64 * 1024
"""Largest request body the API reads."""

SCOPE_CDR_READ = "cdr:read"
SCOPE_MEETINGS_WRITE = "meetings:write"
SCOPES = (SCOPE_CDR_READ, SCOPE_MEETINGS_WRITE)
"""What an API key can be allowed: read call records; manage one host's meetings."""


@dataclass(frozen=True, slots=True)
class Services:
    """What the API needs, built once by the composition root."""

    settings: Settings
    store: Store
    hub: Hub
    passwords: Passwords
    clock: Clock
    join_url: str
    """The wss URL clients present invitations to (``.../v1/ws``)."""
    public_key_pem: str = ""
    """The Ed25519 public key that verifies call records."""
    api_url: str = ""
    """This API's base URL (for links it hands out, e.g. email verification)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and what it may do.

    ``host_id`` is the host whose meetings it may manage: a signed-in host, or an
    API key with ``meetings:write`` issued for that host. ``records_of`` bounds
    which records it may read: a host reads its own; a ``cdr:read`` key issued
    for a host reads that host's; an unbound ``cdr:read`` key (billing) reads
    every host's (``None``).
    """

    host_id: str | None
    scopes: frozenset[str]
    session_digest: bytes | None = None
    records_of: str | None = None
    reads_records: bool = False


class _BodyLimit:
    """Refuse request bodies over :data:`MAX_BODY_BYTES` before anything reads them."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and int(value or 0) > MAX_BODY_BYTES:
                await _too_large(send)
                return
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(send)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
    body = b'{"error":"body_too_large","reason":"request bodies are limited to 65536 bytes"}'
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _iso(value: float | None) -> str | None:
    return None if value is None else iso_utc(value)


def _record_out(stored: StoredRecord) -> CallRecordOut:
    # seq 0: spooled, not yet in the store's order (no cursor yet).
    return CallRecordOut(cursor=stored.seq or None, **stored.record.to_dict())


def _invitation_out(inv: Invitation) -> dict[str, Any]:
    return {
        "invitation_id": inv.invitation_id,
        "meeting_id": inv.meeting_id,
        "role": inv.role,
        "created_at": iso_utc(inv.created_at),
        "expires_at": iso_utc(inv.expires_at),
        "max_uses": inv.max_uses,
        "uses": inv.uses,
        "revoked": inv.revoked,
    }


def create_app(services: Services) -> FastAPI:
    """Build the API application around ``services``."""
    settings, store, hub, clock = services.settings, services.store, services.hub, services.clock
    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorOut, "description": "no, unknown or expired credentials"},
        403: {"model": ErrorOut, "description": "the credentials may not do this"},
        404: {"model": ErrorOut, "description": "no such thing (for this caller)"},
        413: {"model": ErrorOut, "description": "request body over 64 KiB"},
        422: {"model": ErrorOut, "description": "a value is invalid; see details"},
    }
    throttle = SignInThrottle(
        base=settings.signin_throttle_base, maximum=settings.signin_throttle_max, clock=clock
    )
    bearer = HTTPBearer(
        auto_error=False,
        description="A host session token (sbs_...) or an API key (sbk_...).",
    )
    app = FastAPI(
        title="switchboard",
        version=__version__,
        summary="Control and records API of a real-time meeting relay.",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(SwitchboardError)
    async def _answer(_: Request, exc: SwitchboardError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return JSONResponse(
            {"error": exc.code, "reason": exc.reason}, status_code=exc.http_status, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse(
            {"error": "invalid_request", "reason": "the request is not valid", "details": details},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": code, "reason": str(exc.detail)},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def principal(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        if credentials is None or not credentials.credentials:
            raise AuthError("send 'Authorization: Bearer <session token or API key>'")
        token = credentials.credentials.strip()
        kind = tokens.kind_of(token)
        now = clock.wall()
        if kind is tokens.TokenKind.SESSION:
            digest = tokens.digest(token)
            session = await store.use_session(
                digest, now, settings.session_idle_timeout, settings.session_max_lifetime
            )
            if session is None:
                raise SessionExpired("the session is unknown or expired; sign in again")
            return Principal(
                session.host_id, frozenset(), digest, records_of=session.host_id, reads_records=True
            )
        if kind is tokens.TokenKind.API_KEY:
            key = await store.use_api_key(tokens.digest(token), now)
            if key is None:
                raise AuthError("unknown or revoked API key")
            return Principal(
                key.host_id if SCOPE_MEETINGS_WRITE in key.scopes else None,
                key.scopes,
                records_of=key.host_id,
                reads_records=SCOPE_CDR_READ in key.scopes,
            )
        raise AuthError("not a switchboard session token or API key")

    async def host(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.host_id is None:
            raise Forbidden("this API key may not manage meetings", code="scope_missing")
        return who

    Host = Annotated[Principal, Depends(host)]

    async def own_meeting(meeting_id: str, who: Host) -> MeetingRow:
        meeting = await store.get_meeting(meeting_id)
        if meeting is None or meeting.host_id != who.host_id:
            raise NotFound("no such meeting")
        return meeting

    OwnMeeting = Annotated[MeetingRow, Depends(own_meeting)]

    def meeting_out(row: MeetingRow) -> MeetingOut:
        room = hub.rooms.get(row.meeting_id)
        return MeetingOut(
            meeting_id=row.meeting_id,
            host_id=row.host_id,
            state=row.state,
            created_at=iso_utc(row.created_at),
            started_at=_iso(row.started_at),
            ended_at=_iso(row.ended_at),
            participants=len(room.conns) if room is not None else 0,
        )

    @app.get("/v1/health", tags=["operations"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers. Needs no credentials."""
        return {"status": "ok"}

    @app.post("/v1/sessions", status_code=201, tags=["hosts"], responses=errors)
    async def sign_in(body: SessionCreate, request: Request) -> SessionOut:
        """Sign in as a host with email and password; returns a session token.

        Failed attempts slow down further ones per account and per client address
        (429 with Retry-After), whether or not the email exists.
        """
        keys = throttle.keys(body.email, request.client.host if request.client else "")
        throttle.check(keys)
        account = await store.host_by_email(body.email)
        ok = await services.passwords.verify(
            account.password_hash if account else None, body.password
        )
        if not ok or account is None or not account.active:
            throttle.failed(keys)
            raise AuthError("wrong email or password", code="invalid_credentials")
        throttle.succeeded(keys)
        if services.passwords.needs_rehash(account.password_hash):
            await store.set_password_hash(
                account.host_id, await services.passwords.hash(body.password)
            )
        token, digest = tokens.mint(tokens.TokenKind.SESSION)
        session = await store.create_session(
            account.host_id, digest, clock.wall(), request.headers.get("user-agent", "")
        )
        times = tokens.SessionTimes(
            session.created_at,
            session.last_used_at,
            settings.session_idle_timeout,
            settings.session_max_lifetime,
        )
        return SessionOut(
            token=token,
            host_id=account.host_id,
            expires_at=iso_utc(times.expires_at()),
            idle_timeout_seconds=settings.session_idle_timeout,
            max_lifetime_seconds=settings.session_max_lifetime,
        )

    @app.delete("/v1/sessions/current", status_code=204, tags=["hosts"], responses=errors)
    async def sign_out(who: Host) -> Response:
        """End the session used for this call."""
        if who.session_digest is not None:
            await store.delete_session(who.session_digest)
        return Response(status_code=204)

    @app.post("/v1/meetings", status_code=201, tags=["meetings"], responses=errors)
    async def create_meeting(who: Host) -> MeetingOut:
        """Create a meeting. It goes live when the first invitee joins."""
        assert who.host_id is not None
        return meeting_out(await store.create_meeting(who.host_id, clock.wall()))

    @app.get("/v1/meetings", tags=["meetings"], responses=errors)
    async def list_meetings(who: Host) -> list[MeetingOut]:
        """The signed-in host's meetings, newest first."""
        assert who.host_id is not None
        return [meeting_out(row) for row in await store.list_meetings(who.host_id)]

    @app.get("/v1/meetings/{meeting_id}", tags=["meetings"], responses=errors)
    async def get_meeting(meeting: OwnMeeting) -> MeetingOut:
        """One of the host's meetings."""
        return meeting_out(meeting)

    @app.post(
        "/v1/meetings/{meeting_id}/invitations",
        status_code=201,
        tags=["meetings"],
        responses={**errors, 410: {"model": ErrorOut}},
    )
    async def invite(
        meeting: OwnMeeting, body: InvitationCreate | None = None
    ) -> InvitationCreated:
        """Issue an invitation (an empty body means an attendee, one use, 24 h).

        Its token is in this response only.
        """
        body = body or InvitationCreate()
        if meeting.state == "ended":
            raise MeetingEnded("the meeting has ended; create a new one")
        ttl = settings.invitation_ttl if body.expires_in is None else body.expires_in
        if body.role is Role.SUPPORT:
            # Support access is granted by the host, for hours, never open-ended.
            if body.expires_in is None:
                ttl = min(ttl, settings.support_max_ttl)
            elif ttl > settings.support_max_ttl:
                raise InvalidRequest(
                    f"support invitations expire within {settings.support_max_ttl:g} seconds"
                )
        if ttl > settings.invitation_max_ttl:
            raise InvalidRequest(f"expires_in may be at most {settings.invitation_max_ttl:g}")
        if body.max_uses > settings.invitation_max_uses:
            raise InvalidRequest(f"max_uses may be at most {settings.invitation_max_uses}")
        now = clock.wall()
        token, digest = tokens.mint(tokens.TokenKind.INVITATION)
        inv = await store.create_invitation(
            meeting.meeting_id,
            body.role,
            digest,
            now=now,
            expires_at=now + ttl,
            max_uses=body.max_uses,
        )
        return InvitationCreated(**_invitation_out(inv), token=token, join_url=services.join_url)

    @app.get("/v1/meetings/{meeting_id}/invitations", tags=["meetings"], responses=errors)
    async def list_invitations(meeting: OwnMeeting) -> list[InvitationOut]:
        """A meeting's invitations (without tokens)."""
        return [
            InvitationOut(**_invitation_out(inv))
            for inv in await store.list_invitations(meeting.meeting_id)
        ]

    @app.delete(
        "/v1/meetings/{meeting_id}/invitations/{invitation_id}",
        status_code=204,
        tags=["meetings"],
        responses=errors,
    )
    async def revoke(meeting: OwnMeeting, invitation_id: str) -> Response:
        """Revoke an invitation: no one can join with it any more."""
        if not await store.revoke_invitation(meeting.meeting_id, invitation_id):
            raise NotFound("no such invitation")
        return Response(status_code=204)

    @app.get("/v1/meetings/{meeting_id}/participants", tags=["meetings"], responses=errors)
    async def participants(meeting: OwnMeeting) -> list[ParticipantOut]:
        """Who is in the live meeting now, and who waits in the lobby."""
        return [ParticipantOut(**p) for p in hub.participants(meeting.meeting_id)]

    @app.post(
        "/v1/meetings/{meeting_id}/moderation",
        tags=["meetings"],
        responses={**errors, 400: {"model": ErrorOut}},
    )
    async def moderate(meeting: OwnMeeting, body: ModerationRequest) -> list[ParticipantOut]:
        """Moderate a live meeting: lobby, admit, deny, lock, eject, mute, role, webinar.

        The same operations as a host's control frames, with the same effects;
        answers with the participants afterwards.
        """
        header = body.model_dump(mode="json", exclude_none=True)
        op, args = wire.parse_control({**header, "op": body.op.value})
        return [ParticipantOut(**p) for p in hub.moderate(meeting.meeting_id, op, args)]

    @app.post("/v1/meetings/{meeting_id}/end", tags=["meetings"], responses=errors)
    async def end(meeting: OwnMeeting) -> EndMeetingOut:
        """End the meeting for everyone. Answers after the call record is committed."""
        stored = await hub.end_meeting(meeting.meeting_id, EndReason.HOST_ENDED)
        spool = hub.ledger.spool
        spooled = spool.get(meeting.meeting_id) if spool is not None else None
        if stored is None and spooled is not None:
            # Ended before, its record still waits in the spool: the same answer again.
            stored = StoredRecord(0, spooled)
        elif stored is None:
            await store.meeting_ended(meeting.meeting_id, clock.wall())
            stored = await store.get_record(meeting.meeting_id)
        row = await store.get_meeting(meeting.meeting_id)
        assert row is not None
        return EndMeetingOut(
            meeting=meeting_out(row), record=_record_out(stored) if stored else None
        )

    @app.get("/v1/cdrs", tags=["records"], responses=errors)
    async def list_cdrs(
        who: Annotated[Principal, Depends(principal)],
        after: Annotated[int, Query(ge=0, description="cursor: records after this one")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        host_id: Annotated[
            str | None, Query(max_length=64, description="only this host's records")
        ] = None,
        since: Annotated[
            datetime | None, Query(description="only records that ended at or after this time")
        ] = None,
        until: Annotated[
            datetime | None, Query(description="only records that ended before this time")
        ] = None,
    ) -> CallRecordPage:
        """Call-detail records in commit order, signed and chained.

        Paging by cursor is stable while records are being added: pass
        ``next_cursor`` as ``after``; no record is skipped or repeated. With an
        API key that has ``cdr:read``: every host's records (or one host's with
        ``host_id``). With a host session: that host's records only.
        """
        if not who.reads_records:
            raise Forbidden(f"this API key lacks the {SCOPE_CDR_READ} scope", code="scope_missing")
        if who.records_of is not None:
            if host_id not in (None, who.records_of):
                raise Forbidden("you may read your own records only", code="not_yours")
            host_id = who.records_of
        rows = await store.list_records(
            after=after,
            limit=limit,
            host_id=host_id,
            since=_epoch(since),
            until=_epoch(until),
        )
        return CallRecordPage(
            records=[_record_out(r) for r in rows], next_cursor=rows[-1].seq if rows else after
        )

    @app.get("/v1/cdrs/public-key", tags=["records"])
    async def public_key() -> PublicKeyOut:
        """The Ed25519 key that verifies every record's signature. Needs no credentials."""
        return PublicKeyOut(public_key_pem=services.public_key_pem)

    add_account_routes(app, services, principal, errors, throttle)
    app.add_middleware(_BodyLimit)
    return app


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
