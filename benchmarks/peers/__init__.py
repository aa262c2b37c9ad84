"""Peer relays, each a short honest program, started the same way and driven by the same generator.

Every peer module here has a ``start(workdir, cpus)`` coroutine that starts its
server (TLS with a certificate from the same local CA code switchboard uses)
and returns a :class:`~switchboard.bench.runner.Target` naming the codec its
clients speak. Python peers share one protocol (:class:`RoomCodec`): the first
message names the room, every binary message after it goes to the others in
the room. Peers that speak their own protocol (socket.io, NATS) bring a codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from switchboard.bench.runner import Target, free_port
from switchboard.relay.tls import ensure_local_ca

__all__ = ["PeerTarget", "start_process", "tls_files"]


class PeerTarget(Target):
    """A peer relay process this run started."""

    def __init__(
        self,
        name: str,
        codec: str,
        spec: dict[str, Any],
        process: subprocess.Popen[str],
    ) -> None:
        super().__init__(spec, process.pid)
        self.name = name
        self.codec = codec
        self.process = process

    async def stop(self) -> None:
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()


def tls_files(workdir: Path) -> tuple[Path, Path, Path]:
    """CA, certificate and key for ``localhost``: the same generator switchboard uses."""
    paths = ensure_local_ca(workdir / "tls", "localhost")
    assert paths.ca is not None
    return paths.ca, paths.cert, paths.key


async def start_process(
    command: Sequence[str], cpus: Sequence[int], ready: str = "ready", cwd: Path | None = None
) -> subprocess.Popen[str]:
    """Start a peer pinned to ``cpus``; wait until it prints a line containing ``ready``."""

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=pin,
        cwd=cwd,
    )
    assert process.stdout is not None
    seen = []
    while ready not in (line := await asyncio.to_thread(process.stdout.readline)):
        if not line:
            raise RuntimeError(f"{command[0]} did not start: {''.join(seen)[-2000:]}")
        seen.append(line)
    # Keep reading its log, so a chatty peer never blocks on a full pipe.
    threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
    return process


def _drain(stream: IO[str]) -> None:
    with contextlib.suppress(ValueError, OSError):
        for _ in stream:
            pass


async def start_python_peer(module: str, workdir: Path, cpus: Sequence[int]) -> PeerTarget:
    """Start ``benchmarks.peers.<module>`` (PORT CERT KEY) speaking the room protocol."""
    ca, cert, key = tls_files(workdir)
    port = free_port()
    process = await start_process(
        [sys.executable, "-m", f"benchmarks.peers.{module}", str(port), str(cert), str(key)], cpus
    )
    spec = {"url": f"wss://localhost:{port}/", "ca": str(ca)}
    return PeerTarget(module, "switchboard.bench.codecs:RoomCodec", spec, process)
