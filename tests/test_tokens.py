"""Bearer tokens (core/tokens.py): minting, digests, kinds and session expiry."""

from __future__ import annotations

import base64
import hashlib

import pytest

from switchboard.core import tokens
from switchboard.core.tokens import SessionTimes, TokenKind


def urlsafe_decode(text: str) -> bytes:
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), (
        text
    )
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize("kind", list(TokenKind))
def test_mint_has_prefix_and_at_least_256_bits(kind: TokenKind) -> None:
    token, _ = tokens.mint(kind)
    assert token.startswith(kind.value)
    raw = urlsafe_decode(token.removeprefix(kind.value))
    assert len(raw) >= 32
    assert tokens.TOKEN_BYTES >= 32


@pytest.mark.parametrize("kind", list(TokenKind))
def test_mint_digest_is_sha256_of_the_whole_token(kind: TokenKind) -> None:
    token, digest = tokens.mint(kind)
    assert digest == tokens.digest(token)
    assert digest == hashlib.sha256(token.encode()).digest()
    assert len(digest) == 32
    # The stored form reveals nothing of the token.
    assert token.encode() not in digest


def test_tokens_and_digests_differ_per_token() -> None:
    minted = [tokens.mint(kind) for kind in TokenKind for _ in range(200)]
    assert len({token for token, _ in minted}) == len(minted)
    assert len({digest for _, digest in minted}) == len(minted)
    # The random parts differ, not only the prefixes.
    assert len({token[4:] for token, _ in minted}) == len(minted)


def test_digest_is_deterministic_and_sensitive() -> None:
    token, digest = tokens.mint(TokenKind.SESSION)
    assert tokens.digest(token) == digest
    assert tokens.digest(token + "x") != digest
    assert tokens.digest(token[:-1]) != digest
    assert tokens.digest(token.upper()) != digest


def test_digest_of_odd_strings_does_not_raise() -> None:
    # Attacker-supplied tokens may hold anything, even lone surrogates.
    for text in ("", "sbi_", "\udc80", "é" * 100):
        assert len(tokens.digest(text)) == 32


def test_prefixes_are_distinct_and_none_is_a_prefix_of_another() -> None:
    values = [k.value for k in TokenKind]
    assert len(set(values)) == len(values)
    for a in values:
        for b in values:
            if a != b:
                assert not b.startswith(a)


@pytest.mark.parametrize("kind", list(TokenKind))
def test_kind_of_minted_tokens(kind: TokenKind) -> None:
    token, _ = tokens.mint(kind)
    assert tokens.kind_of(token) is kind


@pytest.mark.parametrize(
    "text", ["", "sb", "sbx_abc", "SBI_abc", "abc", " sbi_abc", "sbi", "bearer sbs_x"]
)
def test_kind_of_unknown(text: str) -> None:
    assert tokens.kind_of(text) is None


def test_kind_of_by_prefix_only() -> None:
    assert tokens.kind_of("sbi_") is TokenKind.INVITATION
    assert tokens.kind_of("sbs_anything") is TokenKind.SESSION
    assert tokens.kind_of("sbk_anything") is TokenKind.API_KEY
    assert tokens.kind_of("sbr_anything") is TokenKind.RESUME


# --- session times -------------------------------------------------------------


def test_idle_timeout_expires_first_when_unused() -> None:
    times = SessionTimes(
        created_at=1000.0, last_used_at=1100.0, idle_timeout=30.0, max_lifetime=10_000.0
    )
    assert times.expires_at() == 1130.0
    assert times.valid_at(1100.0)
    assert times.valid_at(1129.999)
    assert not times.valid_at(1130.0)
    assert not times.valid_at(1131.0)


def test_absolute_lifetime_expires_however_busy() -> None:
    times = SessionTimes(
        created_at=1000.0, last_used_at=1990.0, idle_timeout=30.0, max_lifetime=1000.0
    )
    assert times.expires_at() == 2000.0
    assert times.valid_at(1999.0)
    assert not times.valid_at(2000.0)
    # Still within the idle window, but past the absolute lifetime.
    assert times.last_used_at + times.idle_timeout > 2005.0
    assert not times.valid_at(2005.0)


def test_using_a_session_moves_only_the_idle_clock() -> None:
    first = SessionTimes(1000.0, 1000.0, 60.0, 300.0)
    assert first.expires_at() == 1060.0
    later = SessionTimes(first.created_at, 1050.0, first.idle_timeout, first.max_lifetime)
    assert later.expires_at() == 1110.0
    assert later.valid_at(1100.0)
    assert not first.valid_at(1100.0)
    last = SessionTimes(first.created_at, 1290.0, first.idle_timeout, first.max_lifetime)
    assert last.expires_at() == 1300.0


def test_session_times_are_frozen() -> None:
    times = SessionTimes(0.0, 0.0, 1.0, 2.0)
    with pytest.raises(AttributeError):
        times.last_used_at = 5.0  # type: ignore[misc]
