"""Host accounts as the privacy promise describes them: the host controls its data.

A host can see and edit its account, change its password (which ends every
other session), see and end its sessions, and delete the account. Deletion
takes effect at once (sign-in refused, sessions ended, API keys and open
invitations revoked, live meetings ended with their records) and is
reversible by an operator (``switchboard host restore``) until the account's
personal data is purged, ``account_retention_days`` later. Records stay for
billing under the now-pseudonymous host id.

Self-service sign-up exists only when ``self_signup`` is on; the address is
verified through the operator's ``verification_hook`` command, which is given
the link to send (no mail server is bundled).

Sign-in attempts are throttled per account and per client address with an
exponential backoff; the answer never tells whether an email exists.
"""

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ..clock import Clock
from ..core import tokens
from ..core.records import EndReason, iso_utc
from ..errors import (
    AuthError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    StoreError,
    TooManyRequests,
)
from ..passwords import MIN_PASSWORD_CHARS, is_email

__all__ = ["SignInThrottle", "add_account_routes"]

log = logging.getLogger("switchboard.accounts")

_VERIFICATION_TTL = 48 * 3600.0


class SignInThrottle:
    """Exponential backoff after failed sign-ins, per account and per client address.

    In memory, per process: enough to make guessing slow; a failed attempt for
    an unknown email counts exactly like one for a known email.
    """

    _MAX_ENTRIES = 100_000
    FREE_FAILURES = 3
    """Failures that cost nothing (typos happen); the backoff starts after them."""

    def __init__(self, *, base: float, maximum: float, clock: Clock) -> None:
        self.base, self.maximum, self.clock = base, maximum, clock
        self._state: dict[str, tuple[int, float, float]] = {}
        """key -> (failures, blocked until, last failure), monotonic times."""

    @staticmethod
    def keys(email: str, address: str) -> tuple[str, ...]:
        """The counters one attempt touches."""
        keys = ("account:" + email.strip().casefold(),)
        return (*keys, "address:" + address) if address else keys

    def check(self, keys: tuple[str, ...]) -> None:
        """Raise :class:`TooManyRequests` while any counter says wait."""
        now = self.clock.mono()
        wait = max((self._state.get(k, (0, 0.0, 0.0))[1] - now for k in keys), default=0.0)
        if wait > 0:
            raise TooManyRequests(
                "too many failed sign-ins; wait before trying again", retry_after=wait
            )

    def failed(self, keys: tuple[str, ...]) -> None:
        """Count a failure: after the free ones, the next attempt waits base, 2 x base, ...

        up to maximum."""
        now = self.clock.mono()
        if len(self._state) > self._MAX_ENTRIES:
            self._state = {k: v for k, v in self._state.items() if v[1] > now}
        for key in keys:
            failures, _, last = self._state.get(key, (0, 0.0, 0.0))
            if now - last > self.maximum:
                failures = 0  # quiet for a whole maximum wait: the count starts over
            failures += 1
            extra = failures - self.FREE_FAILURES + 1  # the attempt after the free ones waits
            delay = min(self.maximum, self.base * 2 ** (extra - 1)) if extra > 0 else 0.0
            self._state[key] = (failures, now + delay, now)

    def succeeded(self, keys: tuple[str, ...]) -> None:
        """A correct password resets the account's counter (not the address's)."""
        for key in keys:
            if key.startswith("account:"):
                self._state.pop(key, None)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountCreate(_Strict):
    """Self-service sign-up (when enabled)."""

    email: str = Field(min_length=3, max_length=254)
    password: str = Field(min_length=MIN_PASSWORD_CHARS, max_length=1024)
    name: str = Field(default="", max_length=100)


class AccountOut(BaseModel):
    """Everything the account holds about its host."""

    host_id: str
    email: str
    name: str
    preferences: dict[str, Any]
    created_at: str


class AccountUpdate(_Strict):
    """Change the account's details; omitted fields stay as they are."""

    name: str | None = Field(default=None, max_length=100)
    email: str | None = Field(default=None, min_length=3, max_length=254)
    preferences: dict[str, bool | int | str] | None = Field(
        default=None,
        max_length=32,
        description="small flags, e.g. {'product_news': false}",
    )


class PasswordChange(_Strict):
    """Change the password; every other session of the account ends."""

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=MIN_PASSWORD_CHARS, max_length=1024)


class AccountDelete(_Strict):
    """Delete the account (confirm with the password)."""

    password: str = Field(min_length=1, max_length=1024)


class SessionInfo(BaseModel):
    """One active session, without its token."""

    session_id: str
    created_at: str
    last_used_at: str
    client: str
    current: bool


class Verification(_Strict):
    """The token from a verification link."""

    token: str = Field(min_length=10, max_length=128)


def _valid_email(email: str) -> str:
    if not is_email(email.strip()):
        raise InvalidRequest("not an email address")
    return email.strip()


def add_account_routes(
    app: FastAPI,
    services: Any,
    principal: Callable[..., Awaitable[Any]],
    errors: dict[int | str, dict[str, Any]],
    throttle: SignInThrottle,
) -> None:
    """Add the account and session routes to ``app``."""
    settings, store, hub, clock = services.settings, services.store, services.hub, services.clock
    passwords = services.passwords

    async def session_host(who: Annotated[Any, Depends(principal)]) -> Any:
        if who.session_digest is None:
            raise Forbidden("only a signed-in host manages its account", code="session_required")
        return who

    Me = Annotated[Any, Depends(session_host)]

    async def account_out(host_id: str) -> AccountOut:
        host = await store.get_host(host_id)
        if host is None:
            raise AuthError("the account is gone")
        return AccountOut(
            host_id=host.host_id,
            email=host.email,
            name=host.name,
            preferences=host.preferences,
            created_at=iso_utc(host.created_at),
        )

    @app.post("/v1/accounts", status_code=202, tags=["account"], responses=errors)
    async def sign_up(body: AccountCreate) -> dict[str, str]:
        """Create a host account yourself (only when the operator enabled it).

        The answer is the same whether or not the email already has an account;
        the verification link goes to the address through the operator's hook.
        """
        if not settings.self_signup:
            raise Forbidden("sign-up is by the operator here", code="signup_disabled")
        email = _valid_email(body.email)
        password_hash = await passwords.hash(body.password)
        try:
            host = await store.add_host(
                email, password_hash, clock.wall(), name=body.name, verified=False
            )
        except Conflict:
            # Same answer as a new address: sign-up does not reveal accounts, and
            # takes nothing over. A sign-up never verified is forgotten after 48 h,
            # so a stranger using someone's address cannot block its owner for long.
            return {"status": "verification_sent"}
        token, digest = tokens.mint(tokens.TokenKind.VERIFICATION)
        await store.create_verification(host.host_id, digest, clock.wall() + _VERIFICATION_TTL)
        link = f"{services.api_url}/v1/accounts/verify?token={token}"
        if not await _run_hook(
            settings.verification_hook, {"email": email, "link": link, "token": token}
        ):
            raise StoreError(
                "the verification mail could not be sent; try again later",
                code="verification_unavailable",
            )
        return {"status": "verification_sent"}

    @app.get("/v1/accounts/verify", tags=["account"], responses=errors)
    async def verify_link(
        token: Annotated[str, Query(min_length=10, max_length=128)],
    ) -> dict[str, bool]:
        """The verification link a new host follows."""
        return await verify(Verification(token=token))

    @app.post("/v1/accounts/verify", tags=["account"], responses=errors)
    async def verify(body: Verification) -> dict[str, bool]:
        """Verify a self-registered account's email; then the host can sign in."""
        if await store.verify_email(tokens.digest(body.token), clock.wall()) is None:
            raise InvalidRequest("the verification link is unknown, used or expired")
        return {"verified": True}

    @app.get("/v1/account", tags=["account"], responses=errors)
    async def get_account(who: Me) -> AccountOut:
        """Your account, as switchboard stores it."""
        return await account_out(who.host_id)

    @app.patch("/v1/account", tags=["account"], responses={**errors, 409: errors[404]})
    async def edit_account(who: Me, body: AccountUpdate) -> AccountOut:
        """Change your name, email or preferences.

        A taken email answers 409; such refusals are throttled like failed
        sign-ins, so the endpoint cannot be used to list who has an account.
        """
        keys = (f"host:{who.host_id}",)
        throttle.check(keys)
        try:
            await store.update_host(
                who.host_id,
                name=body.name,
                email=_valid_email(body.email) if body.email is not None else None,
                preferences=dict(body.preferences) if body.preferences is not None else None,
            )
        except Conflict:
            throttle.failed(keys)
            raise
        return await account_out(who.host_id)

    @app.post("/v1/account/password", status_code=204, tags=["account"], responses=errors)
    async def change_password(who: Me, body: PasswordChange) -> Response:
        """Change your password; every other session ends, this one stays."""
        host = await store.get_host(who.host_id)
        keys = (f"host:{who.host_id}",)
        throttle.check(keys)
        if host is None or not await passwords.verify(host.password_hash, body.current_password):
            throttle.failed(keys)
            raise AuthError("the current password is wrong", code="invalid_credentials")
        await store.set_password_hash(who.host_id, await passwords.hash(body.new_password))
        await store.end_sessions(who.host_id, keep=who.session_digest)
        return Response(status_code=204)

    @app.delete("/v1/account", status_code=202, tags=["account"], responses=errors)
    async def delete_account(who: Me, body: AccountDelete) -> dict[str, str]:
        """Delete your account. It stops at once; its personal data is purged later.

        Live meetings you host end now, with their records. Until the purge an
        operator can restore the account (``switchboard host restore``).
        """
        host = await store.get_host(who.host_id)
        keys = (f"host:{who.host_id}",)
        throttle.check(keys)
        if host is None or not await passwords.verify(host.password_hash, body.password):
            throttle.failed(keys)
            raise AuthError("the password is wrong", code="invalid_credentials")
        now = clock.wall()
        await store.deactivate_host(who.host_id, now)
        await hub.end_meetings_of(who.host_id, EndReason.HOST_ENDED)
        purge_at = now + settings.account_retention_days * 86400
        log.info("account deleted host=%s", who.host_id)
        return {"status": "deleted", "purge_after": iso_utc(purge_at)}

    @app.get("/v1/sessions", tags=["account"], responses=errors)
    async def list_sessions(who: Me) -> list[SessionInfo]:
        """Your active sessions (never their tokens)."""
        now = clock.wall()
        return [
            SessionInfo(
                session_id=s.session_id,
                created_at=iso_utc(s.created_at),
                last_used_at=iso_utc(s.last_used_at),
                client=s.client,
                current=digest == who.session_digest,
            )
            for s, digest in await store.list_sessions(who.host_id)
            if tokens.SessionTimes(
                s.created_at,
                s.last_used_at,
                settings.session_idle_timeout,
                settings.session_max_lifetime,
            ).valid_at(now)
        ]

    @app.delete("/v1/sessions", status_code=204, tags=["account"], responses=errors)
    async def sign_out_everywhere(who: Me) -> Response:
        """End every session of your account, this one included."""
        await store.end_sessions(who.host_id)
        return Response(status_code=204)

    @app.delete("/v1/sessions/{session_id}", status_code=204, tags=["account"], responses=errors)
    async def end_session(who: Me, session_id: str) -> Response:
        """End one of your sessions."""
        if not await store.end_sessions(who.host_id, session_id=session_id):
            raise NotFound("no such session of yours")
        return Response(status_code=204)


async def _run_hook(command: str, message: dict[str, str]) -> bool:
    """Give the operator's mail hook its message on stdin (no shell, bounded time).

    The hook gets a minimal environment: nothing of the server's secrets.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    try:
        proc = await asyncio.create_subprocess_exec(
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
    except OSError as exc:
        log.error("verification hook cannot start error=%s", type(exc).__name__)
        return False
    try:
        async with asyncio.timeout(30):
            await proc.communicate(json.dumps(message).encode())
    except TimeoutError:
        proc.kill()
        await proc.wait()
    if proc.returncode != 0:
        log.error("verification hook failed status=%s", proc.returncode)
        return False
    return True
