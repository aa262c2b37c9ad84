"""Fold what happened in a meeting into its call-detail record (CDR).

The CDR is the only thing switchboard keeps about a meeting, and what billing is
paid from. It says *that* a meeting took place and how it was used: when,
how long, how many people, which features, how much traffic. It never holds
content, names, emails or addresses; :data:`COLUMNS` is the allow-list of
everything a record may contain, and a test checks stored records against it.

Durations come from the monotonic clock so a wall-clock step cannot change
what a customer is billed; the wall clock only labels start and end.

Records are tamper-evident: each final record carries ``prev_hash`` (the hash
of the record committed before it) and ``signature`` (Ed25519 over its
:func:`canonical` bytes, ``prev_hash`` included), so billing can prove that no
record was altered, removed or inserted. :func:`canonical` and
:func:`chain_hash` work on the exported JSON form, so a verifier needs nothing
but the export and the public key.
"""

from __future__ import annotations

import datetime as _dt
import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .wire import Kind, Media

__all__ = [
    "COLUMNS",
    "FEATURES",
    "GENESIS_HASH",
    "SCHEMA_VERSION",
    "CallRecord",
    "EndReason",
    "FeatureUsage",
    "UsageMeter",
    "canonical",
    "chain_hash",
    "feature_of",
    "iso_utc",
]

SCHEMA_VERSION = 2
"""Version 2 added nodes, participant_seconds, prev_hash, signature and two end reasons."""

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record of a store."""

FEATURES: tuple[str, ...] = ("chat", "poll", "document", "audio", "video", "screen")
"""Features a record can report: the data kinds, with media split by type."""

_MEDIA_FEATURES: dict[int, str] = {
    Media.AUDIO: "audio",
    Media.VIDEO: "video",
    Media.SCREEN: "screen",
}


def feature_of(kind: Kind, media: int | None = None) -> str:
    """The record feature a frame counts towards."""
    if kind is Kind.MEDIA:
        return _MEDIA_FEATURES[media if media is not None else Media.AUDIO]  # int finds IntEnum
    return kind.name.lower()


class EndReason(enum.StrEnum):
    """Why a meeting ended."""

    HOST_ENDED = "host_ended"
    LAST_LEFT = "last_left"
    IDLE_TIMEOUT = "idle_timeout"
    RELAY_SHUTDOWN = "relay_shutdown"
    RELAY_FAILURE = "relay_failure"
    """The relay died mid-meeting; the record is its last checkpoint, closed at restart."""


def iso_utc(epoch: float) -> str:
    """Render an epoch time as ISO 8601 UTC, rounded to the nearest millisecond.

    Stores filter times at the same millisecond resolution, so a label always
    selects the record it came from.
    """
    seconds, millis = divmod(round(epoch * 1000), 1000)
    moment = _dt.datetime.fromtimestamp(seconds, _dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


@dataclass(slots=True)
class FeatureUsage:
    """Traffic of one feature: frames in, bytes in, deliveries out, deliveries dropped.

    ``dropped`` counts frames not delivered to a congested receiver (the media
    drop policy). ``first_use`` and ``last_use`` are seconds since the meeting
    started (monotonic).
    """

    frames: int = 0
    bytes: int = 0
    deliveries: int = 0
    first_use: float = 0.0
    last_use: float = 0.0
    dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "deliveries": self.deliveries,
            "dropped": self.dropped,
            "first_use": round(self.first_use, 3),
            "last_use": round(self.last_use, 3),
        }


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One finished meeting, as billing sees it."""

    record_id: str
    meeting_id: str
    host_id: str
    started_at: float
    ended_at: float
    duration_seconds: float
    peak_participants: int
    distinct_participants: int
    end_reason: str
    features: dict[str, FeatureUsage] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    nodes: tuple[str, ...] = ()
    participant_seconds: float = 0.0
    prev_hash: str = ""
    signature: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values; the shape billing reads."""
        return {
            "record_id": self.record_id,
            "meeting_id": self.meeting_id,
            "host_id": self.host_id,
            "started_at": iso_utc(self.started_at),
            "ended_at": iso_utc(self.ended_at),
            "duration_seconds": round(self.duration_seconds, 3),
            "peak_participants": self.peak_participants,
            "distinct_participants": self.distinct_participants,
            "features_used": sorted(self.features),
            "usage": {name: use.to_dict() for name, use in sorted(self.features.items())},
            "end_reason": self.end_reason,
            "schema_version": self.schema_version,
            "nodes": list(self.nodes),
            "participant_seconds": round(self.participant_seconds, 3),
            "prev_hash": self.prev_hash,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallRecord:
        """Inverse of :meth:`to_dict` (used by stores and exports)."""
        return cls(
            record_id=data["record_id"],
            meeting_id=data["meeting_id"],
            host_id=data["host_id"],
            started_at=_parse_iso(data["started_at"]),
            ended_at=_parse_iso(data["ended_at"]),
            duration_seconds=float(data["duration_seconds"]),
            peak_participants=int(data["peak_participants"]),
            distinct_participants=int(data["distinct_participants"]),
            end_reason=data["end_reason"],
            features={name: FeatureUsage(**use) for name, use in data.get("usage", {}).items()},
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
            nodes=tuple(data.get("nodes", ())),
            participant_seconds=float(data.get("participant_seconds", 0.0)),
            prev_hash=str(data.get("prev_hash", "")),
            signature=str(data.get("signature", "")),
        )

    def csv_row(self) -> dict[str, Any]:
        """One flat row with a fixed column set (:data:`COLUMNS`)."""
        flat = self.to_dict()
        row = {key: flat[key] for key in _BASE_COLUMNS + _V2_COLUMNS}
        row["features_used"] = " ".join(flat["features_used"])
        row["nodes"] = " ".join(flat["nodes"])
        for name in FEATURES:
            use = self.features.get(name, FeatureUsage())
            row[f"{name}_frames"] = use.frames
            row[f"{name}_bytes"] = use.bytes
            row[f"{name}_deliveries"] = use.deliveries
            row[f"{name}_dropped"] = use.dropped
        return {key: row[key] for key in COLUMNS}


def _parse_iso(value: str | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


_BASE_COLUMNS = (
    "record_id",
    "meeting_id",
    "host_id",
    "started_at",
    "ended_at",
    "duration_seconds",
    "peak_participants",
    "distinct_participants",
    "features_used",
    "end_reason",
    "schema_version",
)

_V2_COLUMNS = ("nodes", "participant_seconds", "prev_hash", "signature")
"""Added by schema 2, after the feature columns so positional CSV readers keep working."""

COLUMNS: tuple[str, ...] = (
    _BASE_COLUMNS
    + tuple(
        f"{name}_{counter}"
        for name in FEATURES
        for counter in ("frames", "bytes", "deliveries", "dropped")
    )
    + _V2_COLUMNS
)
"""The allow-list: every field a flat record (CSV export, store columns) may have."""


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's signature covers: its exported JSON form, minus the
    signature and the store cursor, with sorted keys and no spaces."""
    body = {k: v for k, v in record.items() if k not in ("signature", "cursor")}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def chain_hash(record: dict[str, Any]) -> str:
    """The hash the next record names as its ``prev_hash``: canonical bytes and signature."""
    digest = hashlib.sha256(canonical(record))
    digest.update(str(record.get("signature", "")).encode())
    return digest.hexdigest()


class UsageMeter:
    """Counts a live meeting's usage; :meth:`finish` turns it into a record.

    Pure bookkeeping: the caller passes in monotonic clock readings.
    Participant-seconds integrate the number of participants present over time.
    """

    __slots__ = (
        "_changed",
        "_features",
        "_ps",
        "_seats",
        "_started_mono",
        "current",
        "peak",
    )

    def __init__(self, started_mono: float) -> None:
        self._started_mono = started_mono
        self._seats: set[str] = set()
        self._features: dict[str, FeatureUsage] = {}
        self._ps = 0.0
        self._changed = started_mono
        self.current = 0
        self.peak = 0

    def _integrate(self, now_mono: float | None) -> None:
        if now_mono is not None and now_mono > self._changed:
            self._ps += self.current * (now_mono - self._changed)
            self._changed = now_mono

    def participant_seconds(self, now_mono: float) -> float:
        """Seconds of presence summed over participants, up to ``now_mono``."""
        return self._ps + self.current * max(0.0, now_mono - self._changed)

    def joined(self, seat: str, now_mono: float | None = None) -> None:
        """A participant joined; ``seat`` identifies the redemption, not the person."""
        self._integrate(now_mono)
        self._seats.add(seat)
        self.current += 1
        if self.current > self.peak:
            self.peak = self.current

    def left(self, now_mono: float | None = None) -> None:
        """A participant left."""
        self._integrate(now_mono)
        self.current -= 1

    @property
    def started_mono(self) -> float:
        """The monotonic reading the meeting started at (``last_use`` counts from it)."""
        return self._started_mono

    def usage(self, feature: str, now_mono: float) -> FeatureUsage:
        """The live counters of ``feature``, made at its first use (``now_mono``).

        The same object for the rest of the meeting: the relay's compiled media
        lane keeps it and counts into it directly (``relay/_core.pyx``).
        """
        use = self._features.get(feature)
        if use is None:
            use = self._features[feature] = FeatureUsage(first_use=now_mono - self._started_mono)
        return use

    def switched(
        self, feature: str, nbytes: int, deliveries: int, dropped: int, now_mono: float
    ) -> None:
        """One inbound frame of ``feature`` reached ``deliveries`` recipients, ``dropped`` not."""
        use = self._features.get(feature) or self.usage(feature, now_mono)
        use.frames += 1
        use.bytes += nbytes
        use.deliveries += deliveries
        use.dropped += dropped
        use.last_use = now_mono - self._started_mono

    def finish(
        self,
        *,
        record_id: str,
        meeting_id: str,
        host_id: str,
        started_at: float,
        ended_at: float,
        ended_mono: float,
        end_reason: EndReason,
        nodes: tuple[str, ...] = (),
    ) -> CallRecord:
        """The record of the meeting as of ``ended_mono`` (final, or a checkpoint)."""
        return CallRecord(
            record_id=record_id,
            meeting_id=meeting_id,
            host_id=host_id,
            started_at=started_at,
            ended_at=ended_at,
            duration_seconds=max(0.0, ended_mono - self._started_mono),
            peak_participants=self.peak,
            distinct_participants=len(self._seats),
            end_reason=end_reason.value,
            features={
                name: FeatureUsage(
                    use.frames,
                    use.bytes,
                    use.deliveries,
                    use.first_use,
                    use.last_use,
                    use.dropped,
                )
                for name, use in self._features.items()
            },
            nodes=nodes,
            participant_seconds=self.participant_seconds(ended_mono),
        )
