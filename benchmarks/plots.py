"""Pictures of one benchmark report, for readers who will not read the JSON.

Each plot answers one question, using only figures measured in the same run on
the same machine (the only figures that are comparable):

``cpu_per_delivery.png``
    How much server CPU does each relay spend to deliver one frame, per load
    shape? This is the efficiency claim: switchboard with every feature on
    against the featureless reference (``ref``) and the common ways people
    write a relay. Lower is better.
``latency.png``
    Is that efficiency bought with latency? The latency distribution of each
    relay per scenario, from the median out to the 1-in-10 000 frame, where
    queueing and garbage-collection pauses show (the ramp's panel is its run at
    half capacity). In the slow scenario a dashed line is the same relay
    without slow readers: do slow readers hurt the rest?
``ramp.png``
    How much load can each relay take? p99 latency and delivery as load grows
    step by step, up to the limit (p99 <= 50 ms and 99.9 % delivered); each
    relay's capacity is the last step within it.

    python -m benchmarks.plots                                 # benchmarks/results/latest.json
    python -m benchmarks.plots benchmarks/results/20250101T000000Z.json

Every plot is written twice: ``<stamp>-<name>.png`` (the stamp is the JSON
file's name, so a run's pictures stay next to its figures) and ``<name>.png``,
the latest, which the README links.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import Formatter

__all__ = ["plot"]

RESULTS = Path(__file__).parent / "results"
SCENARIO_ORDER = ("chat", "audio", "video", "webinar", "slow", "idle", "ramp")
RELAY_ORDER = ("ref", "switchboard", "naive", "broadcast", "socketio", "node", "nats")
HIGHLIGHT = "switchboard"
# switchboard stands out; ref (the bar to beat) is a neutral dark grey; the peers are muted.
COLOURS = {
    "ref": "#4d4d4d",
    "switchboard": "#e8590c",
    "naive": "#9ecae1",
    "broadcast": "#4a90c2",
    "socketio": "#a1d99b",
    "node": "#41a25b",
    "nats": "#b4a7d6",
}
SPARE_COLOURS = ("#c9a66b", "#e7a1c7", "#8dd3c7", "#bc80bd", "#fdb462", "#80b1d3", "#d9d9d9")
PERCENTILES = (
    ("latency_ms_p50", "p50", 50.0),
    ("latency_ms_p90", "p90", 90.0),
    ("latency_ms_p99", "p99", 99.0),
    ("latency_ms_p999", "p99.9", 99.9),
    ("latency_ms_p9999", "p99.99", 99.99),
)
P99_LIMIT_MS = 50.0
DELIVERY_LIMIT = 0.999
LOG_SPREAD = 30.0
# which minor ticks of a log axis get a label, by how many decades the axis spans
MINOR_LABELS = ((0.5, range(2, 10)), (1.2, (2, 3, 5)), (2.5, (2, 5)))
DPI = 120


def plot(json_path: Path, out_dir: Path) -> list[Path]:
    """Draw the report at ``json_path`` into ``out_dir``; return the PNG files written.

    A plot with nothing to show (no ramp rows, say) is not written, and an
    older ``<name>.png`` from another run is left as it is.
    """
    json_path, out_dir = Path(json_path), Path(out_dir)
    report = json.loads(json_path.read_text())
    rows = [
        {**r, "relay": str(r["relay"]), "scenario": str(r["scenario"])}
        for r in report.get("results") or []
        if isinstance(r, Mapping) and r.get("relay") is not None and r.get("scenario") is not None
    ]
    stamp = json_path.stem
    if stamp == "latest":  # re-plotting latest.json: name the copies after the run itself
        stamp = str(report.get("when") or "")
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = _colours([r["relay"] for r in rows])
    heading = _heading(report)
    written: list[Path] = []
    drawers: tuple[tuple[str, Callable[..., Figure | None]], ...] = (
        ("cpu_per_delivery", _cpu_per_delivery),
        ("latency", _latency),
        ("ramp", _ramp),
    )
    for name, draw in drawers:
        before = set(plt.get_fignums())
        try:
            figure = draw(rows, colours, heading)
        except Exception:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
            raise
        if figure is None:
            continue
        latest = out_dir / f"{name}.png"
        try:
            figure.savefig(latest, dpi=DPI, bbox_inches="tight", facecolor="white")
        finally:
            plt.close(figure)
        if stamp:
            stamped = out_dir / f"{stamp}-{name}.png"
            shutil.copyfile(latest, stamped)
            written.append(stamped)
        written.append(latest)
    return written


# -- shared ---------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A figure as a finite float, or None when it was not measured."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _positive(value: Any) -> float:
    """A figure for a log axis: NaN (a gap in the line) unless measured and above zero."""
    number = _number(value)
    return number if number is not None and number > 0 else math.nan


def _ordered(names: Sequence[str], order: Sequence[str]) -> list[str]:
    """Distinct ``names``, the known ones in ``order`` first, then the rest by name."""
    distinct = set(names)
    return [n for n in order if n in distinct] + sorted(distinct - set(order))


def _colours(relays: Sequence[str]) -> dict[str, str]:
    """One colour per relay, the same in every plot of the report."""
    colours = {r: COLOURS[r] for r in relays if r in COLOURS}
    spare = [c for c in SPARE_COLOURS if c not in colours.values()]
    for index, relay in enumerate(sorted(set(relays) - set(colours))):
        colours[relay] = spare[index % len(spare)] if spare else "#999999"
    return colours


def _heading(report: Mapping[str, Any]) -> str:
    """The second title line: the machine and the run, so a picture is never read alone."""
    machine = report.get("machine") or {}
    settings = report.get("settings") or {}
    parts = []
    cpus, model = machine.get("cpus"), machine.get("cpu")
    if cpus:
        parts.append(f"{cpus} CPUs")
    if model:
        parts.append(str(model))
    if report.get("python"):
        parts.append(f"Python {report['python']}")
    if settings.get("scale") not in (None, 1, 1.0):
        parts.append(f"scale {settings['scale']}")
    if settings.get("seconds"):
        parts.append(f"{settings['seconds']} s windows")
    if report.get("when"):
        parts.append(f"run {report['when']}")
    return " · ".join(parts) or "unknown machine"


def _title(figure: Figure, title: str, heading: str) -> None:
    figure.suptitle(f"{title}\n{heading}", fontsize=11)


def _scenario_label(scenario: str) -> str:
    return "ramp\n(at ½ capacity)" if scenario == "ramp" else scenario


def _short(value: float) -> str:
    """A figure as few characters: 0.123, 1.23, 12.3, 123, 1234, 12.3k."""
    if value >= 10_000:
        return f"{value / 1000:.1f}k" if value < 100_000 else f"{value / 1000:.0f}k"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _rate(value: float) -> str:
    """A rate for an axis: 500, 2k, 15k, 1.5M."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


class _LogLabels(Formatter):
    """Plain numbers on a log axis (0.3, 2, 50, not 3x10^-1); minor ticks only when few decades.

    Minor ticks are labelled 2 ... 9 when the axis spans under half a decade, 2, 3 and 5
    under 1.2 decades, 2 and 5 under 2.5 decades, and not at all beyond that.
    """

    def __init__(self, text: Callable[[float], str] = "{:g}".format, minor: bool = False):
        self.text = text
        self.minor = minor

    def __call__(self, x: float, pos: int | None = None) -> str:
        if x <= 0 or not math.isfinite(x):
            return ""
        if self.minor and self.axis is not None:
            low, high = sorted(self.axis.get_view_interval())
            span = math.log10(high / low) if low > 0 else math.inf
            mantissa = round(x / 10 ** math.floor(math.log10(x)), 6)
            wanted = next((w for limit, w in MINOR_LABELS if span < limit), ())
            if mantissa not in wanted:
                return ""
        return self.text(x)


def _log_axis(axis: Any, text: Callable[[float], str] = "{:g}".format) -> None:
    axis.set_major_formatter(_LogLabels(text))
    axis.set_minor_formatter(_LogLabels(text, minor=True))


def _relay_handles(relays: Sequence[str], colours: Mapping[str, str]) -> list[Line2D]:
    return [
        Line2D(
            [],
            [],
            color=colours[r],
            marker="o",
            linewidth=2.6 if r == HIGHLIGHT else 1.5,
            label=r,
        )
        for r in relays
    ]


# -- CPU per delivery -----------------------------------------------------------------------


def _cpu_per_delivery(
    rows: Sequence[Mapping[str, Any]], colours: Mapping[str, str], heading: str
) -> Figure | None:
    """Grouped bars: scenario on x, one bar per relay, server CPU µs per delivered frame."""
    rows = [r for r in rows if r.get("scenario") != "idle"]
    measured = [r for r in rows if _positive(r.get("server_cpu_us_per_delivery")) > 0]
    if not measured:
        return None
    scenarios = _ordered([str(r["scenario"]) for r in measured], SCENARIO_ORDER)
    relays = _ordered([str(r["relay"]) for r in rows], RELAY_ORDER)
    cost: dict[tuple[str, str], float] = {}
    ran: set[tuple[str, str]] = set()
    for row in rows:
        key = (str(row.get("scenario")), str(row.get("relay")))
        ran.add(key)
        value = _positive(row.get("server_cpu_us_per_delivery"))
        if value > 0:
            cost[key] = value
    values = list(cost.values())
    log = max(values) / min(values) > LOG_SPREAD
    # each scenario's bars side by side: only the relays that ran it, so no holes
    slots = {s: [r for r in relays if (s, r) in ran] for s in scenarios}
    widest = max(len(v) for v in slots.values())
    vertical = widest > 3
    width = 0.84 / widest
    bars = sum(len(v) for v in slots.values())
    figure, axes = plt.subplots(
        figsize=(min(16.0, max(7.0, 2.0 + 0.42 * bars + 0.3 * len(scenarios))), 5.2),
        layout="constrained",
    )
    if log:
        bottom, top = min(values) / 1.6, max(values) * (4.0 if vertical else 2.0)
    else:
        bottom, top = 0.0, max(values) * (1.22 if vertical else 1.12)
    for position, scenario in enumerate(scenarios):
        for index, relay in enumerate(slots[scenario]):
            x = position + (index - (len(slots[scenario]) - 1) / 2) * width
            height = cost.get((scenario, relay))
            highlight = relay == HIGHLIGHT
            if height is not None:
                axes.bar(
                    x,
                    height,
                    width=width * 0.92,
                    color=colours[relay],
                    edgecolor="black" if highlight else "none",
                    linewidth=1.0,
                    zorder=3,
                )
            axes.annotate(
                _short(height) if height is not None else "n/a",  # n/a: ran, not measured
                (x, height if height is not None else bottom),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                rotation=90 if vertical else 0,
                fontsize=7.5,
                fontweight="bold" if highlight else "normal",
                color="#222222" if height is not None else "#888888",
                zorder=4,
            )
    axes.set_xticks(np.arange(len(scenarios)), [_scenario_label(s) for s in scenarios])
    axes.set_xlim(-0.5, len(scenarios) - 0.5)
    axes.set_ylabel("server CPU µs per delivered frame (lower is better)")
    if log:
        axes.set_yscale("log")
        _log_axis(axes.yaxis)
    axes.set_ylim(bottom, top)
    axes.grid(axis="y", which="major", color="#dddddd", zorder=0)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    handles = [
        Patch(
            facecolor=colours[r],
            edgecolor="black" if r == HIGHLIGHT else "none",
            label=r,
        )
        for r in relays
    ]
    legend = axes.legend(
        handles=handles,
        title="relay",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        fontsize=9,
    )
    _bold_highlight(legend.get_texts())
    _title(figure, "Server CPU per delivered frame, by scenario (lower is better)", heading)
    return figure


def _bold_highlight(texts: Sequence[Any]) -> None:
    for text in texts:
        if text.get_text() == HIGHLIGHT:
            text.set_fontweight("bold")


# -- latency --------------------------------------------------------------------------------


def _nines(percentile: float) -> float:
    """Where a percentile sits on a "nines" axis: p90 at 1, p99 at 2, p99.9 at 3."""
    return -math.log10(1 - percentile / 100)


def _percentiles(window: Mapping[str, Any]) -> list[float]:
    return [_positive(window.get(key)) for key, _, _ in PERCENTILES]


def _latency(
    rows: Sequence[Mapping[str, Any]], colours: Mapping[str, str], heading: str
) -> Figure | None:
    """One panel per scenario: latency at p50 ... p99.99 on a nines axis, a line per relay."""
    rows = [
        r for r in rows if r.get("scenario") != "idle" and not all(map(math.isnan, _percentiles(r)))
    ]
    if not rows:
        return None
    scenarios = _ordered([str(r["scenario"]) for r in rows], SCENARIO_ORDER)
    relays = _ordered([str(r["relay"]) for r in rows], RELAY_ORDER)
    columns = min(3, len(scenarios))
    lines = math.ceil(len(scenarios) / columns)
    figure, grid = plt.subplots(
        lines,
        columns,
        figsize=(0.6 + 4.1 * columns, 0.9 + 3.3 * lines),
        layout="constrained",
        squeeze=False,
    )
    x = [_nines(p) for _, _, p in PERCENTILES]
    dashed = False
    for axes, scenario in zip(grid.flat, scenarios, strict=False):
        baselines = False
        for row in (r for r in rows if r["scenario"] == scenario):
            relay = str(row["relay"])
            style = {
                "color": colours[relay],
                "linewidth": 2.4 if relay == HIGHLIGHT else 1.4,
                "zorder": 3 if relay == HIGHLIGHT else 2,
            }
            axes.plot(x, _percentiles(row), marker="o", markersize=4, **style)
            baseline = row.get("baseline")
            if isinstance(baseline, Mapping) and not all(map(math.isnan, _percentiles(baseline))):
                axes.plot(x, _percentiles(baseline), linestyle="--", alpha=0.8, **style)
                baselines = dashed = True
        axes.set_yscale("log")
        _log_axis(axes.yaxis)
        axes.set_xticks(x, [label for _, label, _ in PERCENTILES], fontsize=8)
        axes.set_xlim(x[0] - 0.25, x[-1] + 0.25)
        title = _scenario_label(scenario).replace("\n", " ")
        if baselines:
            title += "\n(dashed: same relay, no slow readers)"
        axes.set_title(title, fontsize=10)
        axes.grid(which="major", color="#dddddd")
        axes.grid(which="minor", axis="y", color="#f0f0f0")
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
    for axes in grid[:, 0]:
        axes.set_ylabel("one-way latency, ms (log)")
    handles: list[Any] = _relay_handles(relays, colours)
    if dashed:
        handles.append(Line2D([], [], color="#777777", linestyle="--", label="no slow readers"))
    spare = list(grid.flat[len(scenarios) :])
    for axes in spare:
        axes.set_axis_off()
    if spare:  # the legend in the first empty panel, else beside the panels
        legend = spare[0].legend(handles=handles, title="relay", loc="center", frameon=False)
    else:
        legend = figure.legend(
            handles=handles, title="relay", loc="outside right center", frameon=False
        )
    _bold_highlight(legend.get_texts())
    _title(figure, "Latency distribution per scenario (lower is better)", heading)
    return figure


# -- ramp -----------------------------------------------------------------------------------


def _percent(ratio: Any) -> float:
    number = _number(ratio)
    return math.nan if number is None else 100 * number


def _step_rates(
    row: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]
) -> tuple[str, list[float]]:
    """Each step's load: offered (the row's offer scaled by the step's meetings) or delivered."""
    offered, meetings = _number(row.get("offered_deliveries_per_s")), _number(row.get("meetings"))
    if offered and meetings and all(_number(s.get("meetings")) for s in steps):
        return "offered", [offered * float(s["meetings"]) / meetings for s in steps]
    return "delivered", [_positive(s.get("deliveries_per_s")) for s in steps]


def _ramp(
    rows: Sequence[Mapping[str, Any]], colours: Mapping[str, str], heading: str
) -> Figure | None:
    """p99 and delivery per ramp step against the load offered; the capacity marked.

    x is the load offered at each step (it only grows, so a step over the limit
    sits just right of the capacity even when it delivered far less), or the
    load delivered when the row does not say what was offered.
    """
    ramps = [
        r
        for r in rows
        if r.get("scenario") == "ramp" and any(isinstance(s, Mapping) for s in r.get("steps") or [])
    ]
    if not ramps:
        return None
    relays = _ordered([str(r["relay"]) for r in ramps], RELAY_ORDER)
    figure, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(9.5, 7.0),
        sharex=True,
        height_ratios=(3, 1.4),
        layout="constrained",
    )
    rates: list[float] = []
    ratios: list[float] = []
    handles: list[Any] = []
    kinds: set[str] = set()
    for relay in relays:
        for row in (r for r in ramps if r["relay"] == relay):
            steps = [s for s in row["steps"] if isinstance(s, Mapping)]
            # Bisection steps come after the failed one: plot by load, not by order.
            steps.sort(key=lambda s: float(s.get("meetings") or 0))
            kind, x = _step_rates(row, steps)
            kinds.add(kind)
            p99 = [_positive(s.get("latency_ms_p99")) for s in steps]
            ratio = [_percent(s.get("delivery_ratio")) for s in steps]
            failed = [not s.get("passed") for s in steps]
            rates += [v for v in x if not math.isnan(v)]
            ratios += [v for v in ratio if not math.isnan(v)]
            colour = colours[relay]
            width = 2.4 if relay == HIGHLIGHT else 1.5
            zorder = 4 if relay == HIGHLIGHT else 3
            for axes, y in ((top, p99), (bottom, ratio)):
                axes.plot(x, y, color=colour, linewidth=width, zorder=zorder)
                ok = [(a, b) for a, b, f in zip(x, y, failed, strict=True) if not f]
                bad = [(a, b) for a, b, f in zip(x, y, failed, strict=True) if f]
                if ok:
                    axes.scatter(*zip(*ok, strict=True), color=colour, s=22, zorder=zorder)
                if bad:
                    axes.scatter(
                        *zip(*bad, strict=True),
                        color=colour,
                        marker="X",
                        s=90,
                        edgecolors="black",
                        linewidths=0.6,
                        zorder=zorder + 1,
                    )
            unmeasured = [a for a, b, f in zip(x, p99, failed, strict=True) if f and math.isnan(b)]
            if unmeasured:  # over the limit with no latency at all: nothing arrived
                top.scatter(
                    unmeasured,
                    [1.0] * len(unmeasured),
                    transform=top.get_xaxis_transform(),
                    color=colour,
                    marker="X",
                    s=90,
                    edgecolors="black",
                    linewidths=0.6,
                    clip_on=False,
                    zorder=zorder + 1,
                )
            capacity = _number(row.get("capacity_deliveries_per_s"))
            best = [(a, b) for a, b, s in zip(x, p99, steps, strict=True) if s.get("passed")]
            if capacity and best and not math.isnan(best[-1][0]):
                for axes in (top, bottom):
                    axes.axvline(best[-1][0], color=colour, linestyle=":", linewidth=1.4, zorder=2)
                top.scatter(
                    *best[-1],
                    marker="*",
                    s=260,
                    color=colour,
                    edgecolors="black",
                    linewidths=0.7,
                    zorder=zorder + 2,
                )
            if capacity:
                label = f"{relay}: {_short(capacity)} frames/s"
            elif capacity == 0:
                label = f"{relay}: none (first step over)"
            else:
                label = relay
            handles.append(Line2D([], [], color=colour, marker="o", linewidth=width, label=label))
    limits = f"limits: p99 ≤ {P99_LIMIT_MS:g} ms, ≥ {100 * DELIVERY_LIMIT:g} % delivered"
    top.axhline(P99_LIMIT_MS, color="#333333", linestyle="--", linewidth=1.2, zorder=1)
    bottom.axhline(100 * DELIVERY_LIMIT, color="#333333", linestyle="--", linewidth=1.2)
    top.set_yscale("log")
    _log_axis(top.yaxis)
    top.set_ylabel("p99 one-way latency, ms (log)")
    lowest = min(ratios, default=100.0)
    highest = max(ratios, default=100.0)
    bottom.set_ylim(min(99.5, lowest - 0.1 * (100 - lowest) - 0.05), max(100.15, highest + 0.15))
    bottom.set_ylabel("delivered, %")
    if rates and max(rates) / min(rates) > 8:
        bottom.set_xscale("log")
        _log_axis(bottom.xaxis, _rate)
    else:
        bottom.xaxis.set_major_formatter(lambda value, _: _rate(value))
    what = next(iter(kinds)) if len(kinds) == 1 else "offered (or delivered)"
    bottom.set_xlabel(f"frames/s {what} at each step (more meetings each step)")
    for axes in (top, bottom):
        axes.grid(which="major", color="#dddddd")
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
    legend = figure.legend(
        handles=handles,
        title="relay: capacity",
        loc="outside right center",
        fontsize=9,
        frameon=False,
    )
    for text in legend.get_texts():
        if text.get_text().split(":")[0] == HIGHLIGHT:
            text.set_fontweight("bold")
    marks = [
        Line2D([], [], color="#333333", linestyle="--", label=limits),
        Line2D(
            [],
            [],
            color="#555555",
            marker="X",
            markersize=9,
            linestyle="none",
            label="step over a limit",
        ),
        Line2D(
            [], [], color="#555555", marker="*", markersize=12, linestyle="none", label="capacity"
        ),
    ]
    figure.legend(handles=marks, loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    _title(
        figure,
        "Ramp: p99 latency and delivery as load grows; capacity is the last step within limits",
        heading,
    )
    return figure


def main(argv: list[str] | None = None) -> list[Path]:
    """Re-plot a report: ``python -m benchmarks.plots [JSON] [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("json", type=Path, nargs="?", default=RESULTS / "latest.json")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: next to JSON)")
    args = parser.parse_args(argv)
    written = plot(args.json, args.out or args.json.parent)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
