"""Rate and size limits (switchboard.core.limits): token buckets fed by the caller's clock."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchboard.core.codes import CloseCode
from switchboard.core.limits import KindLimit, Limits, RateMeter
from switchboard.errors import Abuse, FrameError, ProtocolError

KINDS = ("chat", "poll", "document", "media", "control")
T = 1_000.0


def meter(**changes: object) -> RateMeter:
    """A meter with a small chat bucket: 2 per second, bursts of 4, payloads up to 100 bytes."""
    base: dict[str, object] = {
        "chat": KindLimit(rate=2, burst=4, max_bytes=100),
        "abuse_strikes": 1000,
    }
    return RateMeter(Limits(**{**base, **changes}))  # type: ignore[arg-type]


def admitted(rm: RateMeter, kind: str, now: float, count: int, nbytes: int = 1) -> int:
    """How many of ``count`` frames sent at ``now`` get through."""
    passed = 0
    for _ in range(count):
        try:
            rm.admit(kind, nbytes, now)
        except FrameError as exc:
            assert exc.code == "rate_limited"
        else:
            passed += 1
    return passed


def refusal(rm: RateMeter, kind: str, nbytes: int, now: float) -> FrameError:
    with pytest.raises(FrameError) as info:
        rm.admit(kind, nbytes, now)
    return info.value


# --- the defaults ------------------------------------------------------------------


def test_default_limits() -> None:
    limits = Limits()
    for kind in KINDS:
        limit = limits.for_kind(kind)
        assert isinstance(limit, KindLimit)
        assert limit.rate > 0
        assert limit.burst >= limit.rate
        assert limit.max_bytes >= 0
    assert limits.for_kind("chat") is limits.chat
    assert limits.for_kind("media") is limits.media
    assert limits.chat.max_bytes == 16 * 1024
    assert limits.media.max_bytes == 256 * 1024
    assert limits.control.max_bytes == 0
    assert limits.max_document_bytes == 64 << 20
    assert limits.max_tracks == 8
    assert (limits.abuse_strikes, limits.abuse_window) == (50, 10.0)


def test_limits_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Limits().max_tracks = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        KindLimit(1, 1, 1).rate = 2  # type: ignore[misc]


# --- buckets -------------------------------------------------------------------------


def test_a_burst_then_refusals() -> None:
    rm = meter()
    assert admitted(rm, "chat", T, 10) == 4
    error = refusal(rm, "chat", 1, T)
    assert error.code == "rate_limited"
    assert "chat" in error.reason


def test_the_bucket_refills_at_the_rate() -> None:
    rm = meter()
    assert admitted(rm, "chat", T, 4) == 4
    # 2 per second: half a second buys one frame, a quarter second none.
    assert admitted(rm, "chat", T + 0.25, 1) == 0
    assert admitted(rm, "chat", T + 0.5, 5) == 1
    assert admitted(rm, "chat", T + 1.5, 5) == 2


def test_the_bucket_never_holds_more_than_the_burst() -> None:
    rm = meter()
    assert admitted(rm, "chat", T, 1) == 1
    # A long silence does not bank more than a burst.
    assert admitted(rm, "chat", T + 3600, 100) == 4


def test_sustained_sending_at_the_rate_is_never_refused() -> None:
    rm = meter()
    for i in range(200):
        rm.admit("chat", 1, T + i * 0.5)


def test_refused_frames_take_no_tokens() -> None:
    rm = meter()
    assert admitted(rm, "chat", T, 4) == 4
    assert admitted(rm, "chat", T + 0.1, 50) == 0
    # Refusals did not dig a hole: the refill after them is whole.
    assert admitted(rm, "chat", T + 0.5, 5) == 1


def test_each_kind_has_its_own_bucket() -> None:
    rm = meter(poll=KindLimit(rate=1, burst=1, max_bytes=10))
    assert admitted(rm, "chat", T, 10) == 4
    assert admitted(rm, "poll", T, 10) == 1
    assert admitted(rm, "media", T, 10) == 10


def test_each_meter_is_one_participant() -> None:
    limits = Limits(chat=KindLimit(rate=1, burst=1, max_bytes=10))
    a, b = RateMeter(limits), RateMeter(limits)
    assert admitted(a, "chat", T, 3) == 1
    assert admitted(b, "chat", T, 3) == 1


def test_fractional_rates() -> None:
    rm = meter(chat=KindLimit(rate=0.5, burst=1, max_bytes=10))
    assert admitted(rm, "chat", T, 2) == 1
    assert admitted(rm, "chat", T + 1.9, 1) == 0
    assert admitted(rm, "chat", T + 2.0, 1) == 1


@given(
    rate=st.floats(min_value=0.5, max_value=50),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=2), min_size=1, max_size=60),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    rm = RateMeter(Limits(chat=KindLimit(rate=rate, burst=burst, max_bytes=0), abuse_strikes=10**9))
    now, passed = T, 0
    for gap in gaps:
        now += gap
        passed += admitted(rm, "chat", now, 3)
    assert passed <= burst + rate * (now - T) + 1e-6


# --- sizes ---------------------------------------------------------------------------


def test_payloads_up_to_max_bytes_pass() -> None:
    rm = meter()
    rm.admit("chat", 100, T)
    rm.admit("chat", 0, T)
    error = refusal(rm, "chat", 101, T)
    assert error.code == "too_large"
    assert "100" in error.reason


def test_a_too_large_frame_takes_no_token() -> None:
    rm = meter()
    for _ in range(10):
        assert refusal(rm, "chat", 101, T).code == "too_large"
    assert admitted(rm, "chat", T, 10) == 4


def test_max_bytes_zero_means_unlimited() -> None:
    rm = RateMeter(Limits())
    assert Limits().control.max_bytes == 0
    rm.admit("control", 0, T)
    rm.admit("control", 10**12, T)
    rm = meter(media=KindLimit(rate=10, burst=10, max_bytes=0))
    rm.admit("media", 1 << 40, T)


def test_control_still_has_a_rate() -> None:
    rm = meter(control=KindLimit(rate=1, burst=2, max_bytes=0))
    assert admitted(rm, "control", T, 5) == 2


# --- abuse ---------------------------------------------------------------------------


def strict(strikes: int = 3, window: float = 10.0) -> RateMeter:
    return RateMeter(
        Limits(
            chat=KindLimit(rate=1, burst=1, max_bytes=10),
            abuse_strikes=strikes,
            abuse_window=window,
        )
    )


def test_abuse_after_abuse_strikes_refusals_in_the_window() -> None:
    rm = strict()
    assert refusal(rm, "chat", 11, T).code == "too_large"
    rm.admit("chat", 1, T)
    assert refusal(rm, "chat", 1, T + 0.5).code == "rate_limited"
    with pytest.raises(Abuse) as info:
        rm.admit("chat", 11, T + 2)
    error = info.value
    assert error.code == "abuse"
    assert error.close_code == CloseCode.ABUSE == 4429
    # Abuse ends the connection: it is a protocol error but not a one-frame error.
    assert isinstance(error, ProtocolError)
    assert not isinstance(error, FrameError)


def test_good_frames_do_not_count_as_strikes() -> None:
    rm = strict(strikes=2)
    for i in range(50):
        rm.admit("chat", 1, T + i)
    assert refusal(rm, "chat", 11, T + 50).code == "too_large"
    with pytest.raises(Abuse):
        rm.admit("chat", 11, T + 50)


def test_strikes_older_than_the_window_expire() -> None:
    rm = strict(strikes=3, window=10.0)
    refusal(rm, "chat", 11, T)
    refusal(rm, "chat", 11, T + 5)
    # At T + 10.5 the first strike is outside the window: two strikes, no abuse.
    refusal(rm, "chat", 11, T + 10.5)
    refusal(rm, "chat", 11, T + 16)
    with pytest.raises(Abuse):
        rm.admit("chat", 11, T + 16.5)


def test_a_strike_exactly_at_the_window_edge_still_counts() -> None:
    rm = strict(strikes=2, window=10.0)
    refusal(rm, "chat", 11, T)
    with pytest.raises(Abuse):
        rm.admit("chat", 11, T + 10.0)


def test_strikes_are_counted_across_kinds() -> None:
    rm = RateMeter(
        Limits(
            chat=KindLimit(rate=1, burst=1, max_bytes=10),
            poll=KindLimit(rate=1, burst=1, max_bytes=10),
            abuse_strikes=2,
        )
    )
    refusal(rm, "chat", 11, T)
    with pytest.raises(Abuse):
        rm.admit("poll", 11, T)
