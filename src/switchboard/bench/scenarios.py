"""The load shapes ``switchboard bench`` drives, one table operators can read and compare.

A scenario says how many meetings of how many participants, who sends what at
which rate, and how long to measure. Keeping the shapes as data (rather than
code paths) means every relay in a side-by-side run gets exactly the same
offered load, and ``--scale`` shrinks any of them the same way for a quick run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["SCENARIOS", "Scenario", "Stream"]


@dataclass(frozen=True, slots=True)
class Stream:
    """What one sending participant sends: ``rate`` frames/s of ``size`` bytes.

    ``kind`` is ``chat``, ``audio`` or ``video``; a video stream marks a
    keyframe every ``key_every`` seconds (the first frame is always one).
    """

    kind: str
    rate: float
    size: int
    key_every: float = 0.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """One load shape.

    ``senders`` participants of each meeting send ``streams`` (``None``: all of
    them); the rest only receive. ``slow`` is the fraction of receivers that
    read at ``slow_factor`` of the rate they are sent. ``mode`` is ``load``
    (measure a steady window), ``idle`` (connect, join and hold: memory per
    connection, joins per second) or ``ramp`` (add meetings step by step until
    delivery or latency fails: the capacity).
    """

    name: str
    meetings: int
    participants: int
    streams: tuple[Stream, ...]
    seconds: float = 10.0
    senders: int | None = None
    slow: float = 0.0
    slow_factor: float = 0.1
    mode: str = "load"
    description: str = ""

    def scaled(self, scale: float, seconds: float | None = None) -> Scenario:
        """The same shape with ``scale`` times the meetings (the attendees, for one-meeting
        shapes such as the webinar)."""
        meetings, participants = self.meetings, self.participants
        if meetings == 1:
            participants = max(2, round(participants * scale))
        else:
            meetings = max(1, round(meetings * scale))
        return dataclasses.replace(
            self,
            meetings=meetings,
            participants=participants,
            seconds=seconds if seconds is not None else self.seconds,
        )

    @property
    def receivers_per_frame(self) -> int:
        """How many participants each sent frame is meant for."""
        return self.participants - 1

    @property
    def offered_deliveries_per_s(self) -> float:
        """Deliveries per second the relay must make if it delivers everything."""
        senders = self.participants if self.senders is None else self.senders
        rate = sum(s.rate for s in self.streams)
        return self.meetings * senders * rate * self.receivers_per_frame


_CHAT = Stream("chat", 1.0, 200)
_AUDIO = Stream("audio", 50.0, 160)
_VIDEO = Stream("video", 30.0, 4096, key_every=2.0)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("chat", 1000, 5, (_CHAT,), description="1,000 meetings x 5, 1 msg/s, 200 B"),
        Scenario("audio", 200, 5, (_AUDIO,), description="200 meetings x 5, 50 frames/s, 160 B"),
        Scenario(
            "video", 100, 5, (_VIDEO,), description="100 meetings x 5, 30 frames/s, 4 KB, key 2 s"
        ),
        Scenario(
            "webinar",
            1,
            501,
            (_VIDEO, _AUDIO),
            senders=1,
            description="1 presenter (30 fps 4 KB video + 50 fps audio), 500 attendees",
        ),
        Scenario(
            "slow",
            100,
            5,
            (_VIDEO,),
            slow=0.1,
            description="video, with 10% of receivers reading at a tenth of the rate",
        ),
        Scenario(
            "idle",
            250,
            20,
            (),
            seconds=5.0,
            mode="idle",
            description="5,000 idle participants: memory per connection, joins per second",
        ),
        Scenario(
            "ramp",
            20,
            5,
            (_AUDIO,),
            seconds=5.0,
            mode="ramp",
            description="audio meetings added until delivery < 99.9% or p99 > 50 ms",
        ),
    )
}
"""The standard scenarios (issue 6); ``ramp`` starts at ``meetings`` and grows."""
