"""Limits on everything a participant controls: frame rates and sizes per kind.

A participant that sends too fast or too big gets an error frame and loses
that frame, nothing else; one that keeps doing it (``abuse_strikes`` refusals
within ``abuse_window`` seconds) is disconnected with close code 4429. Rates
are token buckets per participant and kind, fed from the monotonic clock the
caller passes in, so this module stays free of I/O and time sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Abuse, FrameError

__all__ = ["KindLimit", "Limits", "RateMeter"]


@dataclass(frozen=True, slots=True)
class KindLimit:
    """Frames per second (sustained), burst size, and largest payload for one kind."""

    rate: float
    burst: float
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-participant limits; defaults suit a meeting client, not a load generator."""

    chat: KindLimit = KindLimit(rate=10, burst=20, max_bytes=16 * 1024)
    poll: KindLimit = KindLimit(rate=20, burst=40, max_bytes=64 * 1024)
    document: KindLimit = KindLimit(rate=1000, burst=2000, max_bytes=1 << 20)
    media: KindLimit = KindLimit(rate=400, burst=800, max_bytes=256 * 1024)
    control: KindLimit = KindLimit(rate=20, burst=40, max_bytes=0)
    max_document_bytes: int = 64 << 20
    """Largest document one share may carry (all its chunks)."""
    max_tracks: int = 8
    """Most tracks one participant may publish at once."""
    abuse_strikes: int = 50
    abuse_window: float = 10.0

    def for_kind(self, kind_name: str) -> KindLimit:
        """The limit of a kind by its lower-case name."""
        limit: KindLimit = getattr(self, kind_name)
        return limit


@dataclass(slots=True)
class _Bucket:
    limit: KindLimit
    """The kind's limit, held here so a frame costs one lookup, not two."""
    tokens: float
    at: float


@dataclass(slots=True)
class RateMeter:
    """One participant's buckets and strike count."""

    limits: Limits
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _strikes: list[float] = field(default_factory=list)

    def bucket(self, kind_name: str) -> _Bucket | None:
        """The bucket of ``kind_name``, once a frame of that kind has been admitted.

        A bucket is never replaced: the relay's compiled media lane keeps it and
        spends its tokens by the rule of :meth:`admit`, which it hands every frame
        that rule would refuse.
        """
        return self._buckets.get(kind_name)

    def admit(self, kind_name: str, nbytes: int, now: float) -> None:
        """Let one frame of ``kind_name`` with ``nbytes`` of payload through, or raise why not."""
        bucket = self._buckets.get(kind_name)
        limit = self.limits.for_kind(kind_name) if bucket is None else bucket.limit
        if limit.max_bytes and nbytes > limit.max_bytes:
            self._strike(now)
            raise FrameError(
                f"{kind_name} payloads are limited to {limit.max_bytes} bytes", code="too_large"
            )
        if bucket is None:
            bucket = self._buckets[kind_name] = _Bucket(limit, limit.burst, now)
        else:
            bucket.tokens = min(limit.burst, bucket.tokens + (now - bucket.at) * limit.rate)
            bucket.at = now
        if bucket.tokens < 1.0:
            self._strike(now)
            raise FrameError(
                f"too many {kind_name} frames: at most {limit.rate:g} per second",
                code="rate_limited",
            )
        bucket.tokens -= 1.0

    def _strike(self, now: float) -> None:
        strikes = self._strikes
        horizon = now - self.limits.abuse_window
        while strikes and strikes[0] < horizon:
            strikes.pop(0)
        strikes.append(now)
        if len(strikes) >= self.limits.abuse_strikes:
            raise Abuse("too many refused frames; disconnected")
