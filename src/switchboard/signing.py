"""Tamper evidence for call records: an Ed25519 key per deployment, signatures, a hash chain.

Billing is paid from call records, so billing must be able to prove none was
altered, dropped or slipped in. Every final record is signed with the relay's
Ed25519 key over its canonical bytes (:func:`switchboard.core.records.canonical`),
which include ``prev_hash``, the hash of the record committed before it. An
exported file is then checked with nothing but the public key
(``GET /v1/cdrs/public-key``) and :func:`verify_records` (``switchboard cdr
verify FILE``): a changed byte breaks that record's signature, a removed or
inserted record breaks the chain.

The private key lives in ``<data_dir>/cdr-signing-key.pem``, owner-only; it is
made on first start. Keep it with your backups: records signed by a lost key
still verify against its public key, but new ones cannot continue the chain
under the old key.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .core.records import GENESIS_HASH, canonical, chain_hash
from .errors import ConfigError

__all__ = ["RecordSigner", "Verdict", "load_public_key", "verify_records"]


class RecordSigner:
    """Signs records with this deployment's Ed25519 key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path) -> RecordSigner:
        """Load the key at ``path``, or make one there (mode 0600) on first start."""
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), None)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{path} is not a usable private key: {exc}") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"{path} is not an Ed25519 private key")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return cls(key)

    def sign(self, data: bytes) -> str:
        """A base64 Ed25519 signature of ``data``."""
        return base64.b64encode(self._key.sign(data)).decode()

    def public_pem(self) -> str:
        """The public key, PEM (SubjectPublicKeyInfo), for verifiers."""
        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Read a public key as served by ``GET /v1/cdrs/public-key``."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of checking records: how many were good, and the first bad one."""

    checked: int
    bad_index: int | None = None
    bad_record_id: str | None = None
    reason: str = ""
    starts_after_genesis: bool = False
    """The first record continues a chain from records not in the input (an --after export)."""
    unsigned: int = 0
    """Leading records of schema 1 (written before records were signed), not checked."""

    @property
    def ok(self) -> bool:
        """Every record's signature and link holds."""
        return self.bad_index is None


def verify_records(records: Iterable[dict[str, Any]], public_key: Ed25519PublicKey) -> Verdict:
    """Check signatures and the hash chain of records in commit order."""
    previous: dict[str, Any] | None = None
    starts_after_genesis = False
    unsigned = 0
    index = -1
    for index, record in enumerate(records):
        record_id = str(record.get("record_id", ""))
        legacy = not record.get("signature") and not record.get("prev_hash")
        if previous is None and legacy and int(record.get("schema_version", 2)) < 2:
            unsigned += 1  # from before an upgrade to signed records: nothing to check
            continue
        try:
            signature = base64.b64decode(str(record.get("signature", "")), validate=True)
            public_key.verify(signature, canonical(record))
        except (InvalidSignature, ValueError):
            return Verdict(index, index, record_id, "signature does not match the record")
        prev_hash = record.get("prev_hash")
        if previous is None:
            starts_after_genesis = prev_hash != GENESIS_HASH
        elif prev_hash != chain_hash(previous):
            return Verdict(index, index, record_id, "prev_hash does not match the record before it")
        previous = record
    return Verdict(
        index + 1 - unsigned, starts_after_genesis=starts_after_genesis, unsigned=unsigned
    )
