"""Shared fixtures: real nodes on loopback with real TLS, real SQLite files, the real SDK.

Every async test runs on uvloop, like production. ``TIMEOUT`` is the one time
unit tests wait for something that should happen; scale it with
``SWITCHBOARD_TEST_TIMEOUT_FACTOR`` on a slow machine.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from switchboard.client import ApiClient, Participant
from switchboard.config import Settings
from switchboard.node import Node
from switchboard.passwords import Passwords

TIMEOUT = 5.0 * float(os.environ.get("SWITCHBOARD_TEST_TIMEOUT_FACTOR", "1"))


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], Any]]:
    return {"uvloop": uvloop.new_event_loop}


def make_settings(data_dir: Path, **changes: Any) -> Settings:
    """Settings for a throwaway node on free loopback ports."""
    base = Settings(data_dir=data_dir, relay_port=0, api_port=0)
    return base.replace(**changes) if changes else base


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with Node(make_settings(tmp_path / "var")) as n:
        yield n


@dataclass
class Host:
    """A signed-in host and what it needs to invite people."""

    node: Node
    api: ApiClient
    email: str
    password: str
    host_id: str

    async def meeting(self) -> str:
        return str((await self.api.create_meeting())["meeting_id"])

    async def invite(self, meeting_id: str, role: str = "attendee", **kw: Any) -> str:
        return str((await self.api.invite(meeting_id, role, **kw))["token"])

    async def join(self, meeting_id: str, role: str = "attendee", name: str = "") -> Participant:
        token = await self.invite(meeting_id, role)
        return await Participant.join(
            self.node.relay_url, token, name=name, ca_file=self.node.ca_file, timeout=TIMEOUT
        )


_PASSWORDS: Passwords | None = None


async def add_host(node: Node, email: str | None = None) -> tuple[str, str, str]:
    """Create a host account directly in the store; return (email, password, host_id)."""
    global _PASSWORDS
    if _PASSWORDS is None:
        _PASSWORDS = Passwords()
    email = email or f"host-{secrets.token_hex(4)}@example.com"
    password = secrets.token_urlsafe(16)
    account = await node.store.add_host(email, await _PASSWORDS.hash(password), node.clock.wall())
    return email, password, account.host_id


async def signed_in_host(node: Node) -> Host:
    email, password, host_id = await add_host(node)
    api = ApiClient(node.api_url, ca_file=node.ca_file)
    await api.sign_in(email, password)
    return Host(node, api, email, password, host_id)


@pytest.fixture
async def host(node: Node) -> AsyncIterator[Host]:
    h = await signed_in_host(node)
    yield h
    await h.api.close()


# subprocess helpers


@dataclass
class ServeProcess:
    """A ``switchboard serve`` child process and what it printed."""

    proc: subprocess.Popen[str]
    data_dir: Path
    relay_url: str
    api_url: str
    ca_file: Path | None
    log_file: Path

    @property
    def relay_port(self) -> int:
        return int(self.relay_url.rsplit(":", 1)[1].split("/")[0])

    @property
    def api_port(self) -> int:
        return int(self.api_url.rsplit(":", 1)[1])

    def stop(self, sig: int = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=TIMEOUT * 3)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()


def switchboard_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "switchboard.cli", *args]


def start_serve(data_dir: Path, *extra: str, log_level: str = "info") -> ServeProcess:
    """Start ``switchboard serve`` on free ports and wait for its banner."""
    log_file = data_dir.parent / f"{data_dir.name}-serve.log"
    log_fh = log_file.open("a")
    proc = subprocess.Popen(
        switchboard_cmd(
            "serve",
            "--data-dir",
            str(data_dir),
            "--relay-port",
            "0",
            "--api-port",
            "0",
            "--log-level",
            log_level,
            *extra,
        ),
        stdout=subprocess.PIPE,
        stderr=log_fh,
        text=True,
    )
    log_fh.close()
    urls: dict[str, str] = {}
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"serve exited early:\n{log_file.read_text()}")
        if "meetings (wss):" in line:
            urls["relay"] = line.split()[-1]
        elif "API (https):" in line:
            urls["api"] = line.split()[2]
        elif "trust this CA:" in line:
            urls["ca"] = line.split()[-1]
        elif line.startswith("Create the first host"):
            break
    ca = Path(urls["ca"]) if "ca" in urls else None
    return ServeProcess(proc, data_dir, urls["relay"], urls["api"], ca, log_file)


def host_add(data_dir: Path, email: str, password: str) -> None:
    """Create a host account the way an operator does: ``switchboard host add``."""
    done = subprocess.run(
        switchboard_cmd("host", "add", email, "--password-stdin", "--data-dir", str(data_dir)),
        input=password,
        text=True,
        capture_output=True,
        timeout=TIMEOUT * 6,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def factory(*extra: str, data_dir: Path | None = None, log_level: str = "info") -> ServeProcess:
        sp = start_serve(data_dir or tmp_path / "var", *extra, log_level=log_level)
        started.append(sp)
        return sp

    yield factory
    for sp in started:
        if sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait()
        if sp.proc.stdout:
            sp.proc.stdout.close()


async def next_event(p: Participant, cls: type, timeout: float = TIMEOUT) -> Any:
    """The next event of type ``cls``, skipping others."""
    async with asyncio.timeout(timeout):
        while True:
            event = await p.recv()
            if isinstance(event, cls):
                return event
