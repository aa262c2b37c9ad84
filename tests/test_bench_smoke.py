"""Seconds of the load benchmark, so the harness and ``switchboard bench`` cannot rot.

Every run here is one audio meeting for one second: enough to see that frames
go through every relay, that the figures a reader needs are there, and that
the files a run promises are written. No figure's size is asserted (speed is
never tested here): a loaded CI machine must not fail these tests.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchmarks import run

from switchboard.node import Node
from switchboard.relay import connection

from .conftest import TIMEOUT, add_host, switchboard_cmd

TINY = ["--scenario", "audio", "--scale", "0.005", "--seconds", "1"]
PNG = b"\x89PNG\r\n\x1a\n"
# Python peers, always installable; socket.io and NATS have a test of their own,
# Node.js (npm install at first start) is left to full runs.
FAST_RELAYS = ("switchboard", "switchboard-pure", "ref", "naive", "broadcast")
BENCH_EXTRA = ("picows", "hdrh", "numpy", "matplotlib")


def the_report(out: Path) -> dict[str, Any]:
    """The run's own JSON report (not ``latest.json``, its copy)."""
    (path,) = (p for p in out.glob("*.json") if p.name != "latest.json")
    report: dict[str, Any] = json.loads(path.read_text())
    assert json.loads((out / "latest.json").read_text()) == report
    return report


def assert_delivered(row: dict[str, Any]) -> None:
    """Frames went through, and the row has the figures a reader compares relays by."""
    assert row["sent"] > 0
    assert row["delivery_ratio"] is not None
    assert row["delivery_ratio"] > 0.99
    assert row["deliveries_per_s"] > 0
    assert row["latency_ms_p50"] is not None
    assert row["latency_ms_p99"] is not None
    assert row["generator_cpu_pct"] is not None


def bench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``switchboard bench`` as an operator runs it."""
    return subprocess.run(
        switchboard_cmd("bench", *args),
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 12,
        check=False,
        cwd=cwd,
    )


# benchmarks/run.py: the side-by-side comparison


async def test_the_comparison_measures_every_relay_and_writes_json_markdown_and_plots(
    tmp_path: Path,
) -> None:
    relays = [arg for relay in FAST_RELAYS for arg in ("--relay", relay)]
    rows = await run.main([*TINY, *relays, "--out", str(tmp_path)])

    assert [row["relay"] for row in rows] == list(FAST_RELAYS)
    for row in rows:
        assert row["scenario"] == "audio"
        assert_delivered(row)
        assert row["server_cpu_us_per_delivery"] is not None
        assert row["server_cpu_pct"] is not None
        assert row["server_rss_peak_mib"] is not None
        # What limited the join rate: both sides' CPU while joining is reported.
        # (the server's is read from /proc in 10 ms ticks: a tiny join phase can show 0)
        assert 0 < row["generator_cpu_pct_joining"] < 400
        assert 0 <= row["server_cpu_pct_joining"] < 400
    report = the_report(tmp_path)
    assert report["results"] == rows
    assert report["relay_core"] == ("compiled" if connection.COMPILED else "python")
    assert report["settings"]["skipped"] == []
    assert report["settings"]["scenarios"] == {"audio": run.SCENARIOS["audio"].description}
    (table,) = (p for p in tmp_path.glob("*.md") if p.name != "latest.md")
    text = table.read_text()
    assert "| scenario | relay | CPU µs/delivery |" in text
    for relay in FAST_RELAYS:
        assert f"| audio | {relay} |" in text
    assert "E = ref/switchboard" in text
    for name in ("cpu_per_delivery", "latency"):
        assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG)
        (stamped,) = tmp_path.glob(f"*-{name}.png")
        assert stamped.read_bytes().startswith(PNG)


async def test_repeated_rounds_interleave_the_relays_and_report_each_pairs_median(
    tmp_path: Path,
) -> None:
    relays = ["--relay", "ref", "--relay", "switchboard"]
    rows = await run.main([*TINY, *relays, "--repeat", "2", "--no-plots", "--out", str(tmp_path)])

    report = the_report(tmp_path)
    assert [(r["relay"], r["round"]) for r in report["rounds"]] == [
        ("ref", 1),
        ("switchboard", 1),
        ("ref", 2),
        ("switchboard", 2),
    ]
    assert report["results"] == rows
    assert report["settings"]["repeat"] == 2
    for row in rows:
        assert_delivered(row)
        assert row["rounds"] == 2
        costs = [
            r["server_cpu_us_per_delivery"] for r in report["rounds"] if r["relay"] == row["relay"]
        ]
        assert row["server_cpu_us_per_delivery_rounds"] == costs
        assert row["server_cpu_us_per_delivery"] == min(costs)
    assert [entry["scenario"] for entry in report["ratios"]] == ["audio"]


async def test_slow_readers_read_a_fraction_while_everyone_else_gets_everything(
    tmp_path: Path,
) -> None:
    slow = ["--scenario", "slow", "--scale", "0.1", "--seconds", "2", "--relay", "switchboard"]
    (row,) = await run.main([*slow, "--no-plots", "--out", str(tmp_path)])

    assert_delivered(row)
    assert row["baseline"]["delivery_ratio"] > 0.99
    # Baseline, slow, slow, baseline: each kind pools two windows, neither comes first only.
    assert [w["slow"] for w in row["windows"]] == [False, True, True, False]
    assert all(w["latency_ms_p99"] > 0 for w in row["windows"])
    # Each window also says how far behind the generator's own loop fell, and how busy it was.
    assert all(w["generator_lag_max_ms"] >= 0 for w in row["windows"])
    assert all(0 < w["generator_cpu_pct"] <= 400 for w in row["windows"])
    slow_windows = row["windows"][1:3]
    assert row["generator_lag_max_ms"] == max(w["generator_lag_max_ms"] for w in slow_windows)
    assert row["baseline"]["seconds"] == row["seconds"] == 4
    # In the baseline windows the slow readers read at full rate.
    assert row["baseline"]["slow_delivery_ratio"] > 0.99
    # Each slow reader is refilled every 100 ms on a tick of its own (worker.py); one that
    # was never refilled would read nothing, one never paused would read everything.
    assert 0.01 < row["slow_delivery_ratio"] < 0.5


async def test_the_socketio_and_nats_peers_run_or_are_recorded_as_skipped(tmp_path: Path) -> None:
    has_nats = bool(shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin"))
    rows = await run.main(
        [*TINY, "--relay", "socketio", "--relay", "nats", "--no-plots", "--out", str(tmp_path)]
    )

    assert [row["relay"] for row in rows] == (["socketio", "nats"] if has_nats else ["socketio"])
    for row in rows:
        assert_delivered(row)
        assert row["server_cpu_us_per_delivery"] is not None
    skipped = the_report(tmp_path)["settings"]["skipped"]
    if has_nats:
        assert skipped == []
    else:
        (reason,) = skipped
        assert reason.startswith("audio/nats: ")
        assert "nats-server" in reason
    assert not list(tmp_path.glob("*.png"))


# switchboard bench: the command operators run


def test_switchboard_bench_runs_its_own_relay_and_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = bench(*TINY, "--out", str(out), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    # The table on standard output, the same one as the Markdown file; progress on stderr.
    assert "| audio | switchboard |" in done.stdout
    assert done.stdout == (out / "latest.md").read_text()
    assert "[audio/switchboard] provisioning 1 meetings" in done.stderr
    assert str(out) in done.stderr
    report = the_report(out)
    (row,) = report["results"]
    assert (row["scenario"], row["relay"]) == ("audio", "switchboard")
    assert_delivered(row)
    assert row["server_cpu_us_per_delivery"] is not None
    assert report["settings"]["failed_scenarios"] == []
    # The relay it started lived in a temporary directory, not in the working directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


async def test_switchboard_bench_drives_a_deployment_with_a_meetings_write_key(
    node: Node, tmp_path: Path
) -> None:
    email, _, host_id = await add_host(node)
    made = await asyncio.to_thread(
        subprocess.run,
        switchboard_cmd(
            "apikey", "create", "--scope", "meetings:write", "--host", email, "--data-dir",
            str(node.settings.data_dir),
        ),
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 6,
        check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert node.ca_file is not None
    out = tmp_path / "results"

    done = await asyncio.to_thread(
        bench,
        *TINY,
        "--out", str(out),
        "--target", node.relay_url,
        "--api", node.api_url,
        "--api-key", key,
        "--ca", str(node.ca_file),
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    (row,) = the_report(out)["results"]
    assert_delivered(row)
    # Someone else's server: its CPU and memory are not ours to read.
    for figure in ("server_cpu_us_per_delivery", "server_cpu_pct", "server_rss_peak_mib"):
        assert row[figure] is None
    assert "| audio | switchboard | - | " in done.stdout
    # The meeting it made (for the key's host) was ended, so its record is final.
    records = await node.store.list_records(after=0, limit=10)
    assert [stored.record.host_id for stored in records] == [host_id]
    # The key is a secret: never printed, never written to the results.
    for text in (done.stdout, done.stderr, *(p.read_text() for p in out.iterdir())):
        assert key not in text


async def test_switchboard_bench_checks_the_key_once_before_any_scenario(
    node: Node, tmp_path: Path
) -> None:
    assert node.ca_file is not None
    out = tmp_path / "results"
    done = await asyncio.to_thread(
        bench,
        *TINY,
        "--scenario", "chat",
        "--out", str(out),
        "--target", node.relay_url,
        "--api", node.api_url,
        "--api-key", "sbk_not_a_real_key",
        "--ca", str(node.ca_file),
    )  # fmt: skip
    assert done.returncode == 1
    assert "the API refused the key (401" in done.stderr
    assert "meetings:write" in done.stderr
    assert "sbk_not_a_real_key" not in done.stderr + done.stdout
    # Refused up front: no scenario ran, no meeting was made, no report written.
    assert "bench audio failed" not in done.stderr
    assert not node.hub.rooms
    assert not out.exists() or not list(out.glob("*.json"))


KEY = ["--api-key", "sbk_not_a_real_key"]
WSS, WS = "wss://localhost:8443/v1/ws", "ws://localhost:8443/v1/ws"
HTTPS, HTTP = "https://localhost:8444", "http://localhost:8444"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--target", WS, "--api", HTTPS, *KEY], "must be the relay's wss:// URL"),
        (["--target", WSS, *KEY], "--target needs --api https://"),
        (["--target", WSS, "--api", HTTP, *KEY], "--api must be the API's https:// URL"),
        (["--target", WSS, "--api", HTTPS], "--api-key KEY (scope meetings:write)"),
        (["--api", HTTPS, *KEY], "only go with --target"),
        (["--scale", "0"], "--scale must be positive"),
        (["--scenario", "lunch"], "invalid choice"),
    ],
    ids=["ws-target", "no-api", "http-api", "no-key", "api-without-target", "zero-scale", "lunch"],
)
def test_switchboard_bench_refuses_bad_usage_before_it_starts(
    tmp_path: Path, args: list[str], says: str
) -> None:
    out = tmp_path / "results"
    done = bench(*args, "--out", str(out))

    assert done.returncode == 2
    assert says in done.stderr
    assert done.stdout == ""
    assert "sbk_not_a_real_key" not in done.stderr
    assert not out.exists()


_WITHOUT_PICOWS = """
import sys
sys.modules["picows"] = None  # as if the bench extra were not installed
from switchboard.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_switchboard_bench_without_the_bench_extra_says_how_to_install_it(
    tmp_path: Path,
) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PICOWS, "bench", *TINY, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 6,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "switchboard bench needs the bench extra: pip install 'switchboard[bench]'"
    )
    assert done.stdout == ""
    assert not out.exists()


def test_the_command_and_the_server_load_nothing_of_the_bench_extra() -> None:
    check = (
        "import sys, switchboard.cli, switchboard.node\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[1:])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check, *BENCH_EXTRA],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 6,
        check=True,
    )
    assert done.stdout.strip() == ""
