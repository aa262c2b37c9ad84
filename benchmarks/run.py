"""One command for the whole comparison: every scenario against switchboard and its peers.

    python -m benchmarks.run                       # everything (tens of minutes)
    python -m benchmarks.run --scenario audio      # one scenario, every relay
    python -m benchmarks.run --relay ref --relay switchboard --scale 0.2
    python -m benchmarks.run --repeat 3 --relay ref --relay switchboard   # medians of 3

``--repeat N`` runs each scenario N times over, the relays interleaved in each
round (ref, switchboard, ref, switchboard, ...), and reports each pair's median
round with every round's CPU per delivery beside it: a ratio such as E then
rests on neither relay's one lucky or unlucky run.

Each relay runs in its own process pinned to CPU 0, the generator's workers
to the other CPUs, so "server CPU per delivery" is the relay's own cost and the
generator cannot steal from it. Each (scenario, relay) pair gets a fresh relay.
Results go to ``benchmarks/results/``: JSON, a Markdown table, PNG plots.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop

from switchboard.bench import SCENARIOS
from switchboard.bench.report import markdown, medians, write
from switchboard.bench.runner import Target, cpu_plan, run_scenario, start_switchboard

RESULTS = Path(__file__).parent / "results"
RELAYS = (
    "ref",
    "switchboard",
    "switchboard-asyncio",
    "switchboard-pure",
    "naive",
    "broadcast",
    "socketio",
    "node",
    "nats",
)
ORDER = ("chat", "audio", "video", "webinar", "slow", "idle", "ramp")


async def start(relay: str, workdir: Path, cpus: list[int]) -> Target:
    """Start ``relay`` for one scenario."""
    if relay == "switchboard":
        return await start_switchboard(workdir, cpus=cpus)
    variants = {
        # the loop's own TLS transport, same relay otherwise
        "switchboard-asyncio": {"SWITCHBOARD_TLS_TRANSPORT": "asyncio"},
        # the pure-Python core (relay/_purecore.py) instead of the compiled one
        "switchboard-pure": {"SWITCHBOARD_PURE_PYTHON": "1"},
    }
    if relay in variants:
        target = await start_switchboard(workdir, cpus=cpus, env=variants[relay])
        target.name = relay
        return target
    module = importlib.import_module(f"benchmarks.peers.{relay}")
    peer: Target = await module.start(workdir, cpus)
    return peer


async def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the chosen scenarios against the chosen relays; write and return the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--scenario", choices=ORDER, action="append")
    parser.add_argument("--relay", choices=RELAYS, action="append")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each scenario")
    parser.add_argument("--seconds", type=float, help="measured window per run")
    parser.add_argument("--workers", type=int, help="generator processes")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds per scenario; each pair's median is reported"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    server_cpus, generator_cpus, workers = cpu_plan(args.workers)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    reasons: list[str] = []
    for name in args.scenario or ORDER:
        scenario = SCENARIOS[name].scaled(args.scale, args.seconds)
        for round_ in range(1, args.repeat + 1):
            for relay in args.relay or RELAYS:
                if f"{name}/{relay}" in skipped:
                    continue
                with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
                    try:
                        target = await start(relay, Path(tmp), server_cpus)
                    except Exception as exc:  # a peer this machine cannot run
                        print(f"[{name}/{relay}] skipped: {exc}", file=sys.stderr)
                        skipped.append(f"{name}/{relay}")
                        reasons.append(f"{name}/{relay}: {exc}"[:300])
                        continue
                    try:
                        row = await run_scenario(
                            target, scenario, workers=workers, cpus=generator_cpus
                        )
                    finally:
                        await target.stop()
                if args.repeat > 1:
                    row["round"] = round_
                rows.append(row)
    settings = {
        "scale": args.scale,
        "seconds": args.seconds,
        "workers": workers,
        "repeat": args.repeat,
        "server_cpus": server_cpus,
        "generator_cpus": generator_cpus,
        "skipped": reasons,
        "scenarios": {n: SCENARIOS[n].description for n in args.scenario or ORDER},
    }
    json_path, _ = write(args.out, rows, settings)
    if not args.no_plots:
        from benchmarks.plots import plot

        plot(json_path, args.out)
    print(markdown(rows))
    return medians(rows)


if __name__ == "__main__":
    uvloop.run(main())
