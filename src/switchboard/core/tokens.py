"""Bearer secrets: minted random, shown once, stored only as digests.

Invitations, host sessions and API keys are all 256-bit random tokens with a
short prefix saying what they are (so a leaked string is recognisable in a
secret scanner and the API can tell a session from an API key without a
lookup). The server keeps SHA-256 digests only: a copy of the database lets no
one join a meeting or act as a host. A fast hash is right here, unlike for
passwords, because the input has 256 bits of entropy.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass

__all__ = [
    "TOKEN_BYTES",
    "SessionTimes",
    "TokenKind",
    "digest",
    "kind_of",
    "mint",
]

TOKEN_BYTES = 32
"""Random bytes per token: 256 bits."""


class TokenKind(enum.StrEnum):
    """The prefix of each kind of token."""

    INVITATION = "sbi_"
    SESSION = "sbs_"
    API_KEY = "sbk_"
    RESUME = "sbr_"
    VERIFICATION = "sbv_"


def mint(kind: TokenKind) -> tuple[str, bytes]:
    """Return a new token and the digest to store for it."""
    token = kind.value + secrets.token_urlsafe(TOKEN_BYTES)
    return token, digest(token)


def digest(token: str) -> bytes:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def kind_of(token: str) -> TokenKind | None:
    """Which kind of token this string claims to be, from its prefix."""
    for kind in TokenKind:
        if token.startswith(kind.value):
            return kind
    return None


@dataclass(frozen=True, slots=True)
class SessionTimes:
    """The two clocks of a host session: idle timeout and absolute lifetime.

    Times are wall-clock epoch seconds because sessions outlive processes.
    """

    created_at: float
    last_used_at: float
    idle_timeout: float
    max_lifetime: float

    def expires_at(self) -> float:
        """When the session ends if it is not used again."""
        return min(self.last_used_at + self.idle_timeout, self.created_at + self.max_lifetime)

    def valid_at(self, now: float) -> bool:
        """Whether the session may be used at ``now``."""
        return now < self.expires_at()
