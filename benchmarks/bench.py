"""Load benchmark: the same meetings, the same load, the same TLS, against several relays.

Work in progress (issue 6): this first version runs the ``chat`` and ``audio``
scenarios against switchboard and two peers written the way a Python team
would (``naive``: ``await ws.send()`` per receiver; ``broadcast``:
``websockets.broadcast()``), side by side, and writes JSON and a Markdown table
to ``benchmarks/results/``. Figures per relay: server CPU microseconds per
delivered frame (from the kernel's accounting of the server process),
deliveries per second, delivery ratio, one-way latency percentiles, generator
CPU (so a reader can see the generator was not the bottleneck).

    python -m benchmarks.bench --scenario audio --scale 0.1

``--scale`` shrinks the meeting count for a quick run (the smoke test uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from websockets.asyncio.client import ClientConnection, connect

from switchboard.client import ApiClient, tls_context
from switchboard.core import wire
from switchboard.core.wire import Kind, Media
from switchboard.relay.tls import ensure_local_ca

RESULTS = Path(__file__).parent / "results"
STAMP = struct.Struct("!QII")  # send time (ns), sender, sequence
RELAYS = ("switchboard", "naive", "broadcast")


@dataclass(frozen=True)
class Scenario:
    """One load shape: meetings x participants, each sending ``rate`` frames/s of ``size`` B."""

    name: str
    meetings: int
    participants: int
    rate: float
    size: int
    seconds: float
    media: Media | None = None


SCENARIOS = {
    "chat": Scenario("chat", 1000, 5, 1.0, 200, 10.0),
    "audio": Scenario("audio", 200, 5, 50.0, 160, 10.0, Media.AUDIO),
}


@dataclass
class Result:
    """What one relay did under one scenario."""

    relay: str
    scenario: str
    meetings: int
    participants: int
    sent: int = 0
    delivered: int = 0
    expected: int = 0
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    generator_cpu_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def figures(self) -> dict[str, Any]:
        """The published numbers."""
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None

        return {
            "relay": self.relay,
            "scenario": self.scenario,
            "meetings": self.meetings,
            "participants": self.participants,
            "sent": self.sent,
            "delivered": self.delivered,
            "delivery_ratio": round(self.delivered / self.expected, 5) if self.expected else None,
            "deliveries_per_s": round(self.delivered / self.seconds, 1) if self.seconds else None,
            "server_cpu_us_per_delivery": (
                round(self.server_cpu_s * 1e6 / self.delivered, 2) if self.delivered else None
            ),
            "latency_ms_p50": pct(0.50),
            "latency_ms_p99": pct(0.99),
            "latency_ms_p999": pct(0.999),
            "server_cpu_s": round(self.server_cpu_s, 3),
            "generator_cpu_s": round(self.generator_cpu_s, 3),
        }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Relay:
    """A relay process under test, and how a participant joins a room on it."""

    name: str
    proc: subprocess.Popen[str]
    url: str
    ctx: ssl.SSLContext
    join: Callable[[int, int], Awaitable[ClientConnection]]
    send: Callable[[ClientConnection, bytes, int], Awaitable[None]]
    payload_of: Callable[[bytes], bytes | None]


async def _start_switchboard(workdir: Path, scenario: Scenario) -> Relay:
    data = workdir / "switchboard"
    env = {
        **os.environ,
        "SWITCHBOARD_RATE_CHAT": "1000",
        "SWITCHBOARD_RATE_MEDIA": "1000",
        "SWITCHBOARD_MAX_CONNECTIONS": "100000",
        "SWITCHBOARD_LOG_LEVEL": "warning",
    }
    cli = [sys.executable, "-m", "switchboard.cli"]
    password = secrets.token_urlsafe(16)
    subprocess.run(
        [*cli, "host", "add", "bench@example.com", "--password-stdin", "--data-dir", str(data)],
        input=password,
        text=True,
        check=True,
        capture_output=True,
        env=env,
    )
    relay_port, api_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [
            *cli,
            "serve",
            "--data-dir",
            str(data),
            "--relay-port",
            str(relay_port),
            "--api-port",
            str(api_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    while "trust this CA" not in (line := proc.stdout.readline()):
        if not line:
            raise RuntimeError("switchboard did not start")
    ca = data / "tls" / "ca.pem"
    tokens: dict[int, str] = {}
    async with ApiClient(f"https://localhost:{api_port}", ca_file=ca) as api:
        await api.sign_in("bench@example.com", password)
        for room in range(scenario.meetings):
            mid = (await api.create_meeting())["meeting_id"]
            invitation = await api.invite(mid, "presenter", max_uses=scenario.participants)
            tokens[room] = invitation["token"]
    ctx = tls_context(ca)
    url = f"wss://localhost:{relay_port}/v1/ws"
    media = scenario.media

    async def join(room: int, me: int) -> ClientConnection:
        ws = await connect(url, ssl=ctx, compression=None, max_size=None)
        await ws.send(wire.encode_join(tokens[room], f"p{me}"))
        await ws.recv()
        if media is not None:
            await ws.send(wire.encode_control("publish", track=1, m=int(media)))
        return ws

    async def send(ws: ClientConnection, payload: bytes, seq: int) -> None:
        if media is None:
            await ws.send(wire.encode_data(Kind.CHAT, None, payload))
        else:
            fields = {"track": 1, "m": int(media), "seq": seq, "key": False}
            await ws.send(wire.encode_data(Kind.MEDIA, None, payload, **fields))

    def payload_of(message: bytes) -> bytes | None:
        header, offset = wire.split_frame(message)
        return message[offset:] if header.get("k") != Kind.CONTROL else None

    return Relay("switchboard", proc, url, ctx, join, send, payload_of)


async def _start_peer(name: str, workdir: Path) -> Relay:
    paths = ensure_local_ca(workdir / "tls", "localhost")
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            f"benchmarks.peers.{name}",
            str(port),
            str(paths.cert),
            str(paths.key),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{name} did not start")
    assert paths.ca is not None
    ctx = tls_context(paths.ca)
    url = f"wss://localhost:{port}/"

    async def join(room: int, me: int) -> ClientConnection:
        ws = await connect(url, ssl=ctx, compression=None, max_size=None)
        await ws.send(f"room-{room}")
        return ws

    async def send(ws: ClientConnection, payload: bytes, seq: int) -> None:
        await ws.send(payload)

    return Relay(name, proc, url, ctx, join, send, lambda message: message)


async def run_one(relay_name: str, scenario: Scenario, workdir: Path) -> Result:
    """Drive one relay with one scenario; return its figures."""
    if relay_name == "switchboard":
        relay = await _start_switchboard(workdir, scenario)
    else:
        relay = await _start_peer(relay_name, workdir)
    result = Result(relay_name, scenario.name, scenario.meetings, scenario.participants)
    try:
        sockets = [
            [await relay.join(room, me) for me in range(scenario.participants)]
            for room in range(scenario.meetings)
        ]
        await asyncio.sleep(0.5)  # joins and roster updates settle before measuring
        stop = asyncio.Event()
        latencies = result.latencies_ms
        pad = bytes(max(0, scenario.size - STAMP.size))

        async def receive(ws: ClientConnection) -> None:
            try:
                while True:
                    message = await ws.recv(decode=False)
                    payload = relay.payload_of(message)
                    if payload is None or len(payload) < STAMP.size:
                        continue
                    sent_ns, _, _ = STAMP.unpack_from(payload)
                    result.delivered += 1
                    latencies.append((time.time_ns() - sent_ns) / 1e6)
            except Exception:
                return

        async def sender(ws: ClientConnection, me: int) -> None:
            interval = 1.0 / scenario.rate
            start = time.monotonic() + secrets.randbelow(1000) / 1000 * interval
            seq = 0
            while not stop.is_set():
                delay = start + seq * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await relay.send(ws, STAMP.pack(time.time_ns(), me, seq) + pad, seq)
                result.sent += 1
                seq += 1

        receivers = [asyncio.create_task(receive(ws)) for room in sockets for ws in room]
        server_cpu = _cpu_seconds(relay.proc.pid)
        own_cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        senders = [
            asyncio.create_task(sender(ws, me)) for room in sockets for me, ws in enumerate(room)
        ]
        await asyncio.sleep(scenario.seconds)
        stop.set()
        await asyncio.gather(*senders)
        await asyncio.sleep(0.5)  # the last frames arrive
        result.seconds = time.monotonic() - started
        result.server_cpu_s = _cpu_seconds(relay.proc.pid) - server_cpu
        after = resource.getrusage(resource.RUSAGE_SELF)
        result.generator_cpu_s = (after.ru_utime - own_cpu.ru_utime) + (
            after.ru_stime - own_cpu.ru_stime
        )
        result.expected = result.sent * (scenario.participants - 1)
        for room in sockets:
            for ws in room:
                await ws.close()
        for task in receivers:
            task.cancel()
        await asyncio.gather(*receivers, return_exceptions=True)
    finally:
        relay.proc.terminate()
        relay.proc.wait(timeout=30)
        if relay.proc.stdout:
            relay.proc.stdout.close()
    return result


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    columns = [
        "scenario",
        "relay",
        "server_cpu_us_per_delivery",
        "deliveries_per_s",
        "delivery_ratio",
        "latency_ms_p50",
        "latency_ms_p99",
        "latency_ms_p999",
        "generator_cpu_s",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


async def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the chosen scenarios against the chosen relays; write and return the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--relay", choices=RELAYS, action="append")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the meetings")
    parser.add_argument("--seconds", type=float, help="measuring time per run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    for name in args.scenario or sorted(SCENARIOS):
        base = SCENARIOS[name]
        scenario = Scenario(
            base.name,
            max(1, round(base.meetings * args.scale)),
            base.participants,
            base.rate,
            base.size,
            args.seconds or base.seconds,
            base.media,
        )
        for relay_name in args.relay or RELAYS:
            with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
                result = await run_one(relay_name, scenario, Path(tmp))
            rows.append(result.figures())
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "python": sys.version.split()[0],
        "scale": args.scale,
        "results": rows,
        "scenarios": {n: asdict(SCENARIOS[n]) for n in args.scenario or sorted(SCENARIOS)},
    }
    (args.out / f"{stamp}.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / f"{stamp}.md").write_text(markdown(rows))
    return rows


if __name__ == "__main__":
    uvloop.run(main())
