"""The benchmark plots draw any report, gaps included, without a warning.

The report is written by hand, shaped like ``switchboard.bench.report.write``'s:
figures the run could not measure are null, a slow row carries its baseline
window, a ramp row its steps, an idle row has no latency at all. Nothing here
runs a benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from benchmarks.plots import plot

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = ("cpu_per_delivery", "latency", "ramp")


def window(cost: float | None, p50: float | None, **extra: Any) -> dict[str, Any]:
    """One measured window's figures, the latency tail growing from ``p50``."""
    tail = {"p50": 1, "p90": 2, "p99": 4, "p999": 8, "p9999": 12, "max": 20}
    figures: dict[str, Any] = {
        "server_cpu_us_per_delivery": cost,
        "deliveries_per_s": 1000.0,
        "delivery_ratio": 1.0,
        "server_cpu_pct": 40.0,
        "server_rss_peak_mib": 60.0,
        "generator_cpu_pct": 20.0,
        **{f"latency_ms_{k}": None if p50 is None else p50 * m for k, m in tail.items()},
    }
    figures.update(extra)
    return figures


def ramp_step(meetings: int, rate: float, p99: float | None, ratio: float) -> dict[str, Any]:
    passed = ratio >= 0.999 and p99 is not None and p99 <= 50
    return {
        **window(20.0, 1.0, deliveries_per_s=rate, delivery_ratio=ratio, latency_ms_p99=p99),
        "meetings": meetings,
        "passed": passed,
    }


def rows(with_ramp: bool = True) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        {"relay": "switchboard", "scenario": "audio", **window(12.5, 0.4)},
        {"relay": "naive", "scenario": "audio", **window(None, 0.9)},  # CPU not measured
        {"relay": "switchboard", "scenario": "video", **window(30.0, 1.5, latency_ms_p9999=None)},
        {"relay": "some-new-peer", "scenario": "video", **window(95.0, None)},  # no latency
        {
            "relay": "switchboard",
            "scenario": "slow",
            **window(40.0, 2.0, slow_delivery_ratio=0.4),
            "baseline": window(35.0, 1.0),
        },
        {
            "relay": "switchboard",
            "scenario": "idle",
            "joins_per_s": 900.0,
            "server_rss_kib_per_connection": 30.5,
            "server_rss_peak_mib": 80.0,
            "server_cpu_us_per_delivery": None,
        },
    ]
    if with_ramp:
        steps = [
            ramp_step(20, 20_000.0, 5.0, 1.0),
            ramp_step(26, 26_000.0, 11.0, 1.0),
            ramp_step(34, 30_500.0, 180.0, 0.93),
        ]
        found.append(
            {
                "relay": "switchboard",
                "scenario": "ramp",
                **window(18.0, 0.8),
                "steps": steps,
                "capacity_deliveries_per_s": 26_000.0,
                "capacity_meetings": 26,
                "half_capacity": {**window(18.0, 0.8), "meetings": 13},
            }
        )
    return found


def report(path: Path, results: list[dict[str, Any]]) -> Path:
    path.write_text(
        json.dumps(
            {
                "when": "20250101T000000Z",
                "machine": {"cpus": 2, "cpu": "Test CPU @ 3.0GHz", "platform": "Linux"},
                "python": "3.11.0",
                "versions": {},
                "settings": {"scale": 0.1, "seconds": 3},
                "results": results,
                "ratios": [],
            }
        )
    )
    return path


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data.startswith(PNG), path
    assert len(data) > 10_000, (path, len(data))


def test_plots_every_figure(tmp_path: Path) -> None:
    source = report(tmp_path / "20250101T000000Z.json", rows())
    out = tmp_path / "out"
    written = plot(source, out)
    for name in NAMES:
        assert_png(out / f"{name}.png")
        assert_png(out / f"20250101T000000Z-{name}.png")
    assert set(written) == {out / f"{n}.png" for n in NAMES} | {
        out / f"20250101T000000Z-{n}.png" for n in NAMES
    }


def test_no_ramp_rows_no_ramp_plot(tmp_path: Path) -> None:
    source = report(tmp_path / "run.json", rows(with_ramp=False))
    written = plot(source, tmp_path)
    assert_png(tmp_path / "cpu_per_delivery.png")
    assert_png(tmp_path / "latency.png")
    assert not (tmp_path / "ramp.png").exists()
    assert not (tmp_path / "run-ramp.png").exists()
    assert all("ramp" not in p.name for p in written)


def test_latest_json_keeps_the_run_stamp(tmp_path: Path) -> None:
    source = report(tmp_path / "latest.json", rows())
    plot(source, tmp_path)
    assert_png(tmp_path / "20250101T000000Z-latency.png")
    assert not list(tmp_path.glob("latest-*.png"))


def test_two_reports_written_in_the_same_second_keep_both(tmp_path: Path) -> None:
    from switchboard.bench.report import write

    rows = [{"scenario": "audio", "relay": "switchboard", "server_cpu_us_per_delivery": 5.0}]
    first, _ = write(tmp_path, rows, {})
    second, _ = write(tmp_path, rows, {})
    assert first != second
    assert first.exists()
    assert second.exists()
