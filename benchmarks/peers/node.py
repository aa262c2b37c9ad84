"""Node.js with the ``ws`` package: the relay a JavaScript team would write instead.

``node/relay.js`` is an ``https`` server with a ``ws`` WebSocketServer on it
(compression off), speaking the peers' room protocol: the first message names
the room, every binary message after it is sent to the others with
``client.send(data, {binary: true})``. It stands for the other common answer
to "a websocket relay": one V8 event loop, a C++ TLS stack and a JavaScript
websocket library, with no Python in the path.

Needs ``node`` and ``npm`` on ``PATH``; ``ws`` is installed from the committed
``package-lock.json`` into ``node/node_modules`` on first use.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from benchmarks.peers import PeerTarget, start_process, tls_files
from switchboard.bench.runner import free_port

HERE = Path(__file__).parent / "node"


async def _install(npm: str) -> None:
    """Install ``ws`` (exactly the locked version when there is a lock file)."""
    command = [npm, "ci" if (HERE / "package-lock.json").exists() else "install"]
    done = await asyncio.to_thread(
        subprocess.run,
        [*command, "--no-audit", "--no-fund"],
        cwd=HERE,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {(done.stderr or done.stdout)[-500:]}")


async def start(workdir: Path, cpus: Sequence[int]) -> PeerTarget:
    """Start this peer for a benchmark run."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise RuntimeError("the Node.js peer needs node and npm on PATH")
    if not (HERE / "node_modules" / "ws").is_dir():
        await _install(npm)
    ca, cert, key = tls_files(workdir)
    port = free_port()
    process = await start_process(
        [node, str(HERE / "relay.js"), str(port), str(cert), str(key)], cpus, cwd=HERE
    )
    spec = {"url": f"wss://localhost:{port}/", "ca": str(ca)}
    return PeerTarget("node", "switchboard.bench.codecs:RoomCodec", spec, process)
