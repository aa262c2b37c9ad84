"""``switchboard demo``: one whole meeting, end to end, on a throwaway relay.

It shows (and checks) the product's promise in a few seconds: a relay on free
ports with a fresh local CA in a temporary directory, a host, a meeting, three
invitations, three participants exchanging chat over wss, the host ending the
meeting, and the call record billing would read. It exits 0 only if every
message reached exactly the participants it was meant for.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
from pathlib import Path

from .client import ApiClient, Chat, Participant
from .config import Settings
from .node import Node

__all__ = ["run_demo"]


async def _expect_chat(p: Participant, sender: int, text: str) -> None:
    while True:
        event = await p.recv(timeout=10)
        if isinstance(event, Chat):
            if event.sender != sender or event.text != text:
                raise AssertionError(f"participant {p.pid} got an unexpected message")
            return


async def run_demo(base: Settings) -> int:
    """Run the demo; return the process exit status."""
    with tempfile.TemporaryDirectory(prefix="switchboard-demo-") as tmp:
        settings = base.replace(data_dir=Path(tmp), relay_port=0, api_port=0)
        async with Node(settings) as node:
            print(f"relay:  {node.relay_url}\napi:    {node.api_url}\nCA:     {node.ca_file}")
            email, password = "demo-host@example.com", secrets.token_urlsafe(16)
            await node.store.add_host(email, await _hash(password), node.clock.wall())
            async with ApiClient(node.api_url, ca_file=node.ca_file) as host:
                await host.sign_in(email, password)
                meeting = await host.create_meeting()
                mid = meeting["meeting_id"]
                print(f"meeting {mid} created by the host")
                invitations = [
                    await host.invite(mid, role) for role in ("host", "presenter", "attendee")
                ]
                people = []
                for name, inv in zip(("Ada", "Grace", "Linus"), invitations, strict=True):
                    p = await Participant.join(
                        inv["join_url"], inv["token"], name=name, ca_file=node.ca_file
                    )
                    people.append(p)
                    print(f"{name} joined as {p.role} (participant {p.pid})")
                await asyncio.sleep(0.05)
                for p in people:
                    text = f"hello from participant {p.pid}"
                    await p.send_chat(text)
                    others = [q for q in people if q is not p]
                    await asyncio.gather(*(_expect_chat(q, p.pid, text) for q in others))
                    print(f"participant {p.pid}'s chat reached the {len(others)} others")
                ended = await host.end_meeting(mid)
                for p in people:
                    await p.leave()
            record = ended["record"]
            print("call-detail record:")
            print(json.dumps(record, indent=2))
            if record is None or record["distinct_participants"] != 3:
                print("demo failed: the record does not show three participants")
                return 1
    return 0


async def _hash(password: str) -> str:
    from .passwords import Passwords

    return await Passwords().hash(password)
