"""Fold what happened in a meeting into its call-detail record (CDR).

The CDR is the only thing switchboard keeps about a meeting, and what billing is
paid from. It says *that* a meeting took place and how it was used: when,
how long, how many people, which features, how much traffic. It never holds
content, names, emails or addresses; :data:`COLUMNS` is the allow-list of
everything a record may contain, and a test checks stored records against it.

Durations come from the monotonic clock so a wall-clock step cannot change
what a customer is billed; the wall clock only labels start and end.
"""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass, field
from typing import Any

from .wire import Kind, Media

__all__ = [
    "COLUMNS",
    "FEATURES",
    "SCHEMA_VERSION",
    "CallRecord",
    "EndReason",
    "FeatureUsage",
    "UsageMeter",
    "feature_of",
    "iso_utc",
]

SCHEMA_VERSION = 1

FEATURES: tuple[str, ...] = ("chat", "poll", "document", "audio", "video", "screen")
"""Features a record can report: the data kinds, with media split by type."""

_MEDIA_FEATURES = {Media.AUDIO: "audio", Media.VIDEO: "video", Media.SCREEN: "screen"}


def feature_of(kind: Kind, media: int | None = None) -> str:
    """The record feature a frame counts towards."""
    if kind is Kind.MEDIA:
        return _MEDIA_FEATURES[Media(media if media is not None else 0)]
    return kind.name.lower()


class EndReason(enum.StrEnum):
    """Why a meeting ended."""

    HOST_ENDED = "host_ended"
    LAST_LEFT = "last_left"
    RELAY_SHUTDOWN = "relay_shutdown"


def iso_utc(epoch: float) -> str:
    """Render an epoch time as ISO 8601 UTC with millisecond precision."""
    return (
        _dt.datetime.fromtimestamp(epoch, _dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


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
        )

    def csv_row(self) -> dict[str, Any]:
        """One flat row with a fixed column set (:data:`COLUMNS`)."""
        flat = self.to_dict()
        row = {key: flat[key] for key in _BASE_COLUMNS}
        row["features_used"] = " ".join(flat["features_used"])
        for name in FEATURES:
            use = self.features.get(name, FeatureUsage())
            row[f"{name}_frames"] = use.frames
            row[f"{name}_bytes"] = use.bytes
            row[f"{name}_deliveries"] = use.deliveries
            row[f"{name}_dropped"] = use.dropped
        return row


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

COLUMNS: tuple[str, ...] = _BASE_COLUMNS + tuple(
    f"{name}_{counter}"
    for name in FEATURES
    for counter in ("frames", "bytes", "deliveries", "dropped")
)
"""The allow-list: every field a flat record (CSV export, store columns) may have."""


class UsageMeter:
    """Counts a live meeting's usage; :meth:`finish` turns it into a record.

    Pure bookkeeping: the caller passes in clock readings.
    """

    __slots__ = ("_features", "_seats", "_started_mono", "current", "peak")

    def __init__(self, started_mono: float) -> None:
        self._started_mono = started_mono
        self._seats: set[str] = set()
        self._features: dict[str, FeatureUsage] = {}
        self.current = 0
        self.peak = 0

    def joined(self, seat: str) -> None:
        """A participant joined; ``seat`` identifies the redemption, not the person."""
        self._seats.add(seat)
        self.current += 1
        if self.current > self.peak:
            self.peak = self.current

    def left(self) -> None:
        """A participant left."""
        self.current -= 1

    def _use(self, feature: str, now_mono: float) -> FeatureUsage:
        use = self._features.get(feature)
        if use is None:
            use = self._features[feature] = FeatureUsage(first_use=now_mono - self._started_mono)
        return use

    def switched(
        self, feature: str, nbytes: int, deliveries: int, dropped: int, now_mono: float
    ) -> None:
        """One inbound frame of ``feature`` reached ``deliveries`` recipients, ``dropped`` not."""
        use = self._use(feature, now_mono)
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
    ) -> CallRecord:
        """The final record of the meeting."""
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
        )
