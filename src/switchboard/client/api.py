"""HTTPS API client for hosts, host apps and billing systems."""

from __future__ import annotations

import ssl
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = ["ApiClient", "ApiError", "tls_context"]


def tls_context(ca_file: Path | str | None = None) -> ssl.SSLContext:
    """A verifying client context trusting ``ca_file`` (or the system store); TLS 1.2+."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class ApiError(Exception):
    """The API answered with an error: ``status`` (HTTP), ``code`` and ``reason``."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"{status} {code}: {reason}")
        self.status, self.code, self.reason = status, code, reason


class ApiClient:
    """One caller of the HTTPS API. ``token`` is a session token or an API key."""

    def __init__(
        self,
        api_url: str,
        *,
        ca_file: Path | str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.token = token
        self._http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"),
            verify=ssl_context or tls_context(ca_file),
            timeout=timeout,
        )

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        response = await self._http.request(method, path, headers=headers, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
                code, reason = body.get("error", "error"), body.get("reason", "")
            except ValueError:
                code, reason = "error", response.text[:200]
            raise ApiError(response.status_code, code, reason)
        if response.status_code == 204:
            return None
        return response.json()

    # hosts

    async def sign_in(self, email: str, password: str) -> dict[str, Any]:
        """Sign in as a host; later calls use the new session."""
        session: dict[str, Any] = await self._call(
            "POST", "/v1/sessions", json={"email": email, "password": password}
        )
        self.token = session["token"]
        return session

    async def sign_out(self) -> None:
        """End this session."""
        await self._call("DELETE", "/v1/sessions/current")
        self.token = None

    async def create_meeting(self) -> dict[str, Any]:
        """Create a meeting."""
        result: dict[str, Any] = await self._call("POST", "/v1/meetings")
        return result

    async def meetings(self) -> list[dict[str, Any]]:
        """This host's meetings, newest first."""
        result: list[dict[str, Any]] = await self._call("GET", "/v1/meetings")
        return result

    async def meeting(self, meeting_id: str) -> dict[str, Any]:
        """One meeting."""
        result: dict[str, Any] = await self._call("GET", f"/v1/meetings/{meeting_id}")
        return result

    async def invite(
        self,
        meeting_id: str,
        role: str = "attendee",
        *,
        expires_in: float | None = None,
        max_uses: int = 1,
    ) -> dict[str, Any]:
        """Issue an invitation; the result holds ``token`` and ``join_url``."""
        body: dict[str, Any] = {"role": role, "max_uses": max_uses}
        if expires_in is not None:
            body["expires_in"] = expires_in
        result: dict[str, Any] = await self._call(
            "POST", f"/v1/meetings/{meeting_id}/invitations", json=body
        )
        return result

    async def invitations(self, meeting_id: str) -> list[dict[str, Any]]:
        """A meeting's invitations (without tokens)."""
        result: list[dict[str, Any]] = await self._call(
            "GET", f"/v1/meetings/{meeting_id}/invitations"
        )
        return result

    async def revoke(self, meeting_id: str, invitation_id: str) -> None:
        """Revoke an invitation."""
        await self._call("DELETE", f"/v1/meetings/{meeting_id}/invitations/{invitation_id}")

    async def participants(self, meeting_id: str) -> list[dict[str, Any]]:
        """Who is in a live meeting now (and who waits in its lobby)."""
        result: list[dict[str, Any]] = await self._call(
            "GET", f"/v1/meetings/{meeting_id}/participants"
        )
        return result

    async def moderate(self, meeting_id: str, op: str, **fields: Any) -> list[dict[str, Any]]:
        """Moderate a live meeting (lobby, admit, deny, lock, eject, mute, role, webinar)."""
        result: list[dict[str, Any]] = await self._call(
            "POST", f"/v1/meetings/{meeting_id}/moderation", json={"op": op, **fields}
        )
        return result

    async def end_meeting(self, meeting_id: str) -> dict[str, Any]:
        """End a meeting for everyone; returns the meeting and its committed record."""
        result: dict[str, Any] = await self._call("POST", f"/v1/meetings/{meeting_id}/end")
        return result

    # records

    async def cdrs(
        self,
        *,
        after: int = 0,
        limit: int = 100,
        host_id: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> dict[str, Any]:
        """One page of call records: ``{"records": [...], "next_cursor": n}``.

        ``since``/``until`` are ISO 8601 times bounding ``ended_at``.
        """
        params: dict[str, Any] = {"after": after, "limit": limit}
        for key, value in (("host_id", host_id), ("since", since), ("until", until)):
            if value is not None:
                params[key] = value
        result: dict[str, Any] = await self._call("GET", "/v1/cdrs", params=params)
        return result

    async def public_key(self) -> str:
        """The PEM public key that verifies call records."""
        result: dict[str, Any] = await self._call("GET", "/v1/cdrs/public-key")
        return str(result["public_key_pem"])

    # the host's own account

    async def sign_up(self, email: str, password: str, name: str = "") -> None:
        """Create a host account yourself (where the operator allows it)."""
        await self._call(
            "POST", "/v1/accounts", json={"email": email, "password": password, "name": name}
        )

    async def verify_email(self, token: str) -> None:
        """Confirm a self-registered account with the token from its verification link."""
        await self._call("POST", "/v1/accounts/verify", json={"token": token})

    async def account(self) -> dict[str, Any]:
        """Your account: email, name, preferences."""
        result: dict[str, Any] = await self._call("GET", "/v1/account")
        return result

    async def update_account(
        self,
        *,
        name: str | None = None,
        email: str | None = None,
        preferences: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Change your name, email or preferences."""
        body = {
            k: v
            for k, v in (("name", name), ("email", email), ("preferences", preferences))
            if v is not None
        }
        result: dict[str, Any] = await self._call("PATCH", "/v1/account", json=body)
        return result

    async def change_password(self, current: str, new: str) -> None:
        """Change your password; your other sessions end."""
        await self._call(
            "POST",
            "/v1/account/password",
            json={"current_password": current, "new_password": new},
        )

    async def sessions(self) -> list[dict[str, Any]]:
        """Your active sessions (never their tokens)."""
        result: list[dict[str, Any]] = await self._call("GET", "/v1/sessions")
        return result

    async def end_session(self, session_id: str) -> None:
        """End one of your sessions."""
        await self._call("DELETE", f"/v1/sessions/{session_id}")

    async def sign_out_everywhere(self) -> None:
        """End every session of your account, this one included."""
        await self._call("DELETE", "/v1/sessions")
        self.token = None

    async def delete_account(self, password: str) -> dict[str, Any]:
        """Delete your account (an operator can restore it until it is purged)."""
        result: dict[str, Any] = await self._call(
            "DELETE", "/v1/account", json={"password": password}
        )
        self.token = None
        return result
