"""A few seconds of the load benchmark, so the harness cannot rot (figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import bench


async def test_the_harness_runs_every_relay_and_writes_its_results(tmp_path: Path) -> None:
    rows = await bench.main(
        ["--scenario", "audio", "--scale", "0.005", "--seconds", "1", "--out", str(tmp_path)]
    )
    assert [row["relay"] for row in rows] == list(bench.RELAYS)
    for row in rows:
        assert row["sent"] > 0
        assert row["delivery_ratio"] is not None
        assert row["delivery_ratio"] > 0.99
        assert row["server_cpu_us_per_delivery"] is not None
    (report,) = tmp_path.glob("*.json")
    assert json.loads(report.read_text())["results"] == rows
    (table,) = tmp_path.glob("*.md")
    assert "server_cpu_us_per_delivery" in table.read_text()
