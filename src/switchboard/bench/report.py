"""Benchmark results as files a reader can keep: JSON with every figure, a Markdown table.

One JSON file per run holds the machine, the versions and every figure, so
runs can be compared later; the Markdown table is what goes into the README.
Ratios between relays are computed here, from figures of the same run only,
because only figures measured side by side on the same machine are comparable.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "markdown", "medians", "ramp_efficiency", "ratios", "write"]

COLUMNS = (
    ("scenario", "scenario"),
    ("relay", "relay"),
    ("server_cpu_us_per_delivery", "CPU µs/delivery"),
    ("deliveries_per_s", "deliveries/s"),
    ("delivery_ratio", "delivered"),
    ("latency_ms_p50", "p50 ms"),
    ("latency_ms_p99", "p99 ms"),
    ("latency_ms_p999", "p99.9 ms"),
    ("server_cpu_pct", "server CPU %"),
    ("server_rss_peak_mib", "peak RSS MiB"),
    ("generator_cpu_pct", "generator CPU %"),
)

_VERSIONS = ("websockets", "uvloop", "msgpack", "picows", "python-socketio", "cryptography")


def _versions() -> dict[str, str]:
    found = {}
    for name in _VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _relay_core() -> str:
    """The core this install's relay runs (``switchboard-pure`` rows always run Python)."""
    from ..relay.connection import COMPILED

    return "compiled" if COMPILED else "python"


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "platform": platform.platform()}


def medians(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, relay): the median of its rounds by CPU per delivery.

    Two runs of the same relay on this machine differ by 5 to 20% in CPU per
    delivery, more than some differences a comparison is after; a run of
    several interleaved rounds (``--repeat``) reports each pair's median round,
    whole (its latency, memory and all), with every round's CPU figure beside
    it (``server_cpu_us_per_delivery_rounds``, in run order) so the spread is
    on record. For an even count the lower of the two middle rounds is taken.
    A pair measured once is returned as it is.
    """
    groups: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row.get("scenario"), row.get("relay")), []).append(row)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(dict(group[0]))
            continue
        costs = [row.get("server_cpu_us_per_delivery") for row in group]
        ranked = sorted(
            group,
            key=lambda row: (
                row.get("server_cpu_us_per_delivery") is None,
                row.get("server_cpu_us_per_delivery") or 0.0,
            ),
        )
        chosen = dict(ranked[(len(ranked) - 1) // 2])
        chosen["rounds"] = len(group)
        chosen["server_cpu_us_per_delivery_rounds"] = costs
        out.append(chosen)
    return out


def ratios(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario: switchboard's CPU per delivery against each peer's (same run).

    ``efficiency`` is the issue's E: ref's CPU per delivery over switchboard's
    (above 1: switchboard does less work per delivery than the featureless
    reference). ``<peer>_x`` is how many times more CPU per delivery the peer
    spent than switchboard.
    """
    by: dict[str, dict[str, float]] = {}
    for row in rows:
        cost = row.get("server_cpu_us_per_delivery")
        if cost:
            by.setdefault(row["scenario"], {})[row["relay"]] = float(cost)
    out = []
    for scenario, costs in by.items():
        ours = costs.get("switchboard")
        if not ours or len(costs) < 2:
            continue  # a ratio needs a peer measured in the same run
        entry: dict[str, Any] = {"scenario": scenario}
        if "ref" in costs:
            entry["efficiency"] = round(costs["ref"] / ours, 3)
        for peer, cost in costs.items():
            if peer not in ("switchboard", "ref"):
                entry[f"{peer}_x"] = round(cost / ours, 2)
        out.append(entry)
    return out


def ramp_efficiency(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """E at each load both ``ref`` and ``switchboard`` ran in the ramp, lowest load first.

    The ramp's own row is measured at half of each relay's capacity, so two relays'
    rows are at different loads. Its steps are not: both ramps start at the same
    meeting count and grow by the same factor, so up to where they diverge they
    measure the same offered load, and E there compares like with like, from a
    lightly loaded relay (one frame per event-loop turn) to one near its limit
    (many frames per turn, writes coalesced). A load measured twice (a failed
    step's retry) is taken from its first window.
    """
    costs: dict[str, dict[int, Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("scenario") != "ramp" or row.get("relay") not in ("ref", "switchboard"):
            continue
        for step in row.get("steps") or ():
            if step.get("attempt", 1) == 1 and step.get("server_cpu_us_per_delivery"):
                costs.setdefault(row["relay"], {})[int(step["meetings"])] = step
    ref, ours = costs.get("ref", {}), costs.get("switchboard", {})
    out = []
    for meetings in sorted(set(ref) & set(ours)):
        theirs, mine = ref[meetings], ours[meetings]
        seconds = float(mine.get("seconds") or 0.0)
        offered = round(float(mine.get("expected", 0)) / seconds, 1) if seconds else None
        out.append(
            {
                "meetings": meetings,
                "offered_deliveries_per_s": offered,
                "ref_us": theirs["server_cpu_us_per_delivery"],
                "switchboard_us": mine["server_cpu_us_per_delivery"],
                "efficiency": round(
                    float(theirs["server_cpu_us_per_delivery"])
                    / float(mine["server_cpu_us_per_delivery"]),
                    3,
                ),
            }
        )
    return out


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results (and the ratios) as Markdown tables; repeated pairs by their median."""
    rows = medians(rows)
    lines = [
        "| " + " | ".join(label for _, label in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_column(row, k) for k, _ in COLUMNS) + " |" for row in rows]
    extra = [row for row in rows if row.get("scenario") in ("idle", "ramp", "slow")]
    if extra:
        lines += ["", "| scenario | relay | figure |", "|---|---|---|"]
        for row in extra:
            lines.append(f"| {row['scenario']} | {row['relay']} | {_special(row)} |")
    table = ratios(rows)
    if table:
        peers = sorted({k for entry in table for k in entry if k.endswith("_x")})
        head = ["scenario", "E = ref/switchboard", *(f"{p[:-2]} / switchboard" for p in peers)]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for entry in table:
            values = [entry["scenario"], entry.get("efficiency"), *(entry.get(p) for p in peers)]
            lines.append("| " + " | ".join(_cell(v) for v in values) + " |")
    steps = ramp_efficiency(rows)
    if steps:
        lines += [
            "",
            "| ramp load (deliveries/s offered) | ref µs | switchboard µs | E at that load |",
            "|---|---|---|---|",
        ]
        for step in steps:
            values = [
                step["offered_deliveries_per_s"],
                step["ref_us"],
                step["switchboard_us"],
                step["efficiency"],
            ]
            lines.append("| " + " | ".join(_cell(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def _special(row: Mapping[str, Any]) -> str:
    if row["scenario"] == "idle":
        return (
            f"{cell_or(row, 'server_rss_kib_per_connection')} KiB RSS per connection, "
            f"{cell_or(row, 'joins_per_s')} joins/s "
            f"({cell_or(row, 'joined')} joined, {cell_or(row, 'failed')} failed; "
            f"while joining: server CPU {cell_or(row, 'server_cpu_pct_joining')}%, "
            f"generator {cell_or(row, 'generator_cpu_pct_joining')}%)"
        )
    if row["scenario"] == "ramp":
        return (
            f"capacity {cell_or(row, 'capacity_deliveries_per_s')} deliveries/s "
            f"(p99 {cell_or(row, 'capacity_latency_ms_p99')} ms, "
            f"server CPU {cell_or(row, 'capacity_server_cpu_pct')}%); at half: "
            f"p99 {cell_or(row, 'latency_ms_p99')} ms"
        )
    baseline = row.get("baseline") or {}
    p99, base = row.get("latency_ms_p99"), baseline.get("latency_ms_p99")
    change = f"{100 * (p99 / base - 1):+.0f}%" if p99 and base else "-"
    return (
        f"others' p99 {cell_or(row, 'latency_ms_p99')} ms vs {base} ms without slow readers "
        f"({change}); slow readers got {cell_or(row, 'slow_delivery_ratio')} of their frames; "
        f"generator lag at most {cell_or(row, 'generator_lag_max_ms')} ms vs "
        f"{cell_or(baseline, 'generator_lag_max_ms')} ms"
    )


def _column(row: Mapping[str, Any], key: str) -> str:
    rounds = row.get("server_cpu_us_per_delivery_rounds")
    if key != "server_cpu_us_per_delivery" or not rounds:
        return cell_or(row, key)
    known = [cost for cost in rounds if cost is not None]
    spread = f" ({min(known)}-{max(known)})" if known else ""
    return f"{cell_or(row, key)}{spread}"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def cell_or(row: Mapping[str, Any], key: str) -> str:
    """One figure of ``row`` as text, a dash when it was not measured."""
    return _cell(row.get(key))


def write(
    out: Path, rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write ``<stamp>.json`` and ``<stamp>.md`` (and ``latest.*``) under ``out``.

    ``results`` holds one row per (scenario, relay), the median round of a
    repeated pair (:func:`medians`); every round's row is kept under
    ``rounds`` when any pair ran more than once.
    """
    out.mkdir(parents=True, exist_ok=True)
    results = medians(rows)
    stamp = base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while (out / f"{stamp}.json").exists():  # two runs in one second keep both reports
        n += 1
        stamp = f"{base}-{n}"
    report = {
        "when": stamp,
        "machine": _machine(),
        "python": sys.version.split()[0],
        "versions": _versions(),
        "relay_core": _relay_core(),
        "settings": dict(settings),
        "results": results,
        "ratios": ratios(results),
        "ramp_efficiency": ramp_efficiency(results),
    }
    if len(results) < len(rows):
        report["rounds"] = list(rows)
    text = json.dumps(report, indent=2, default=str)
    table = markdown(rows)
    json_path, md_path = out / f"{stamp}.json", out / f"{stamp}.md"
    json_path.write_text(text)
    md_path.write_text(table)
    (out / "latest.json").write_text(text)
    (out / "latest.md").write_text(table)
    return json_path, md_path
