"""Password hashing with Argon2id, off the event loop and under a concurrency cap.

Argon2id is deliberately slow and memory-hard, which is exactly what must not
run on the relay's event loop: one hash would stall every meeting for tens of
milliseconds. Hashes run in worker threads, at most ``concurrency`` at once, so
a burst of sign-ins queues up instead of taking every core from switching.
"""

from __future__ import annotations

import asyncio
import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["MIN_PASSWORD_CHARS", "Passwords", "is_email"]

MIN_PASSWORD_CHARS = 12
"""Shortest password a host may set."""

_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s.][^@\s]{0,188}\.[^@\s]{1,63}")


def is_email(value: str) -> bool:
    """A plausible address: one @, a dotted domain, no spaces or control characters
    (a line break in an address could inject mail headers in a hook)."""
    return _EMAIL.fullmatch(value) is not None and value.isprintable()


class Passwords:
    """Hash and verify host passwords (Argon2id, RFC 9106 low-memory profile)."""

    def __init__(self, *, concurrency: int = 2) -> None:
        # time_cost=3, memory_cost=64 MiB, parallelism=4: argon2-cffi's defaults,
        # above OWASP's minimum for Argon2id.
        self._hasher = PasswordHasher()
        self._slots = asyncio.Semaphore(concurrency)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        """Hash a new password."""
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Check a password. With ``None`` (unknown account) spend the same time, then fail."""
        if password_hash is None:
            if self._dummy is None:
                self._dummy = await self.hash("switchboard-timing-equaliser")
            password_hash = self._dummy
            known = False
        else:
            known = True
        async with self._slots:
            try:
                await asyncio.to_thread(self._hasher.verify, password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False
        return known

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether a stored hash uses weaker parameters than the current ones."""
        return self._hasher.check_needs_rehash(password_hash)
