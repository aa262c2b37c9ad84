"""How a benchmark run with repeated rounds is reduced to one figure per relay.

The rows are written by hand, shaped like ``run_scenario``'s; nothing here runs
a benchmark. What must hold: each (scenario, relay) is reported by its median
round, whole; every round's CPU figure stays on record; the ratios are taken
between medians; a run of single rounds comes out unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from switchboard.bench.report import markdown, medians, ramp_efficiency, ratios, write


def row(
    relay: str, cost: float | None, p99: float, round_: int, scenario: str = "chat"
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "relay": relay,
        "server_cpu_us_per_delivery": cost,
        "latency_ms_p99": p99,
        "round": round_,
    }


def three_rounds() -> list[dict[str, Any]]:
    """ref and switchboard interleaved over three rounds, as ``--repeat 3`` runs them."""
    return [
        row("ref", 13.0, 1.1, 1),
        row("switchboard", 18.0, 1.8, 1),
        row("ref", 15.5, 1.5, 2),
        row("switchboard", 15.0, 1.2, 2),
        row("ref", 12.0, 0.9, 3),
        row("switchboard", 16.0, 1.4, 3),
    ]


def test_each_pair_is_reported_by_its_median_round_whole() -> None:
    ref, ours = medians(three_rounds())
    assert ref["relay"] == "ref"
    assert (ref["server_cpu_us_per_delivery"], ref["latency_ms_p99"], ref["round"]) == (
        13.0,
        1.1,
        1,
    )
    assert (ours["server_cpu_us_per_delivery"], ours["latency_ms_p99"], ours["round"]) == (
        16.0,
        1.4,
        3,
    )
    assert ref["rounds"] == ours["rounds"] == 3
    assert ref["server_cpu_us_per_delivery_rounds"] == [13.0, 15.5, 12.0]  # run order
    assert ours["server_cpu_us_per_delivery_rounds"] == [18.0, 15.0, 16.0]


def test_the_ratios_are_taken_between_medians() -> None:
    (entry,) = ratios(medians(three_rounds()))
    assert entry["efficiency"] == round(13.0 / 16.0, 3)


def test_an_even_count_takes_the_lower_middle_and_a_missing_figure_ranks_last() -> None:
    (two,) = medians([row("ref", 14.0, 1.0, 1), row("ref", 12.0, 2.0, 2)])
    assert two["server_cpu_us_per_delivery"] == 12.0
    (gap,) = medians([row("ref", None, 1.0, 1), row("ref", 14.0, 2.0, 2), row("ref", 11.0, 3.0, 3)])
    assert gap["server_cpu_us_per_delivery"] == 14.0
    assert gap["server_cpu_us_per_delivery_rounds"] == [None, 14.0, 11.0]


def test_single_rounds_come_out_unchanged() -> None:
    once = [row("ref", 13.0, 1.1, 1), row("switchboard", 16.0, 1.4, 1, scenario="audio")]
    assert medians(once) == once
    assert "rounds" not in medians(once)[0]


def test_the_table_shows_the_median_and_the_spread_of_the_rounds() -> None:
    text = markdown(three_rounds())
    assert "| chat | ref | 13.0 (12.0-15.5) |" in text
    assert "| chat | switchboard | 16.0 (15.0-18.0) |" in text
    assert text.count("| chat | switchboard |") == 1
    assert f"| chat | {round(13.0 / 16.0, 3)} |" in text


def test_the_report_keeps_every_round_beside_the_medians(tmp_path: Path) -> None:
    path, _ = write(tmp_path, three_rounds(), {"repeat": 3})
    report = json.loads(path.read_text())
    assert [r["server_cpu_us_per_delivery"] for r in report["results"]] == [13.0, 16.0]
    assert report["rounds"] == three_rounds()
    assert report["ratios"] == [{"scenario": "chat", "efficiency": round(13.0 / 16.0, 3)}]
    single, _ = write(tmp_path / "once", [row("ref", 13.0, 1.1, 1)], {})
    assert "rounds" not in json.loads(single.read_text())


def ramp_row(relay: str, steps: list[tuple[int, int, float]]) -> dict[str, Any]:
    """A ramp row whose steps are (meetings, attempt, CPU µs per delivery), 1,000 offered each."""
    return {
        "scenario": "ramp",
        "relay": relay,
        "server_cpu_us_per_delivery": 9.0,  # the half-capacity window: not what is compared
        "steps": [
            {
                "meetings": m,
                "attempt": a,
                "seconds": 10.0,
                "expected": m * 1000 * 10,
                "server_cpu_us_per_delivery": c,
            }
            for m, a, c in steps
        ],
    }


def test_ramp_efficiency_compares_the_relays_at_the_same_load_first_windows_only(
    tmp_path: Path,
) -> None:
    rows = [
        ramp_row("ref", [(20, 1, 11.0), (28, 1, 10.0), (39, 1, 9.0), (39, 2, 3.0), (55, 1, 8.0)]),
        ramp_row("switchboard", [(20, 1, 13.75), (28, 1, 10.0), (39, 1, 7.5)]),
        ramp_row("naive", [(20, 1, 30.0)]),
    ]

    steps = ramp_efficiency(rows)

    # 55 meetings: only the reference got there; 39: the reference's retry is not used.
    assert [(s["meetings"], s["offered_deliveries_per_s"], s["efficiency"]) for s in steps] == [
        (20, 20000.0, 0.8),
        (28, 28000.0, 1.0),
        (39, 39000.0, 1.2),
    ]
    table = markdown(rows)
    assert "| 20000.0 | 11.0 | 13.75 | 0.8 |" in table
    json_path, _ = write(tmp_path, rows, {})
    assert json.loads(json_path.read_text())["ramp_efficiency"] == steps


def test_no_ramp_no_ramp_table() -> None:
    assert ramp_efficiency(three_rounds()) == []
    assert "ramp load" not in markdown(three_rounds())


def test_the_slow_line_sets_the_generator_lag_beside_each_p99() -> None:
    slow = {
        **row("switchboard", 15.0, 18.0, 1, scenario="slow"),
        "slow_delivery_ratio": 0.1,
        "generator_lag_max_ms": 8.5,
        "baseline": {"latency_ms_p99": 12.0, "generator_lag_max_ms": 40.25},
    }
    text = markdown([slow])
    assert (
        "| slow | switchboard | others' p99 18.0 ms vs 12.0 ms without slow readers (+50%); "
        "slow readers got 0.1 of their frames; generator lag at most 8.5 ms vs 40.25 ms |"
    ) in text
