"""Privacy is structural: canary content sent through a meeting is found nowhere afterwards.

A real ``switchboard serve`` process logs at DEBUG to a file while participants
send unique canary strings as chat payloads, private messages, display names,
unknown header fields and malformed frames. After the meeting ends and the
process stops, no canary may appear in any file under the data directory, in
the log, or in what the server printed. Error frames sent back must not echo
them either.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import msgpack

from switchboard.client import ApiClient, Chat, ErrorFrame, Participant
from switchboard.core.wire import Kind

from .conftest import ServeProcess, host_add, next_event

PASSWORD = "correct horse battery staple"


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_canaries_appear_nowhere_on_disk_or_in_debug_logs(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    data = tmp_path / "var"
    host_add(data, "p@example.com", PASSWORD)
    sp = serve_factory(data_dir=data, log_level="debug")
    canaries = [f"CANARY-{uuid.uuid4().hex}" for _ in range(6)]
    echoed: list[str] = []

    async with ApiClient(sp.api_url, ca_file=sp.ca_file) as api:
        await api.sign_in("p@example.com", PASSWORD)
        mid = (await api.create_meeting())["meeting_id"]
        a = await Participant.join(
            sp.relay_url,
            (await api.invite(mid, "host"))["token"],
            name=canaries[0][:64],
            ca_file=sp.ca_file,
        )
        b = await Participant.join(
            sp.relay_url, (await api.invite(mid))["token"], ca_file=sp.ca_file
        )
        await a.send_chat(f"public {canaries[1]}")
        assert canaries[1] in (await next_event(b, Chat)).text
        await b.send_chat(f"private {canaries[2]}", to=a.pid)
        assert canaries[2] in (await next_event(a, Chat)).text
        # An unknown header field is dropped, never forwarded or logged.
        await a.send_raw(msgpack.packb({"k": int(Kind.CHAT), "secret": canaries[3]}) + b"x")
        forwarded = await next_event(b, Chat)
        assert forwarded.payload == b"x"
        # Malformed frames carrying content are refused without echoing it.
        for bad in (
            canaries[4].encode(),
            msgpack.packb({"k": 99, "note": canaries[4]}) + canaries[4].encode(),
            msgpack.packb({"k": int(Kind.CHAT), "to": canaries[4]}),
        ):
            await a.send_raw(bad)
            error = await next_event(a, ErrorFrame)
            echoed.append(error.reason + error.code)
        await a.send_raw(f"text frame {canaries[5]}")
        error = await next_event(a, ErrorFrame)
        echoed.append(error.reason + error.code)
        ended = await api.end_meeting(mid)
        assert ended["record"]["usage"]["chat"]["frames"] == 3
        await a.leave()
        await b.leave()
    assert sp.stop() == 0

    for canary in canaries:
        assert not any(canary in text for text in echoed), "an error frame echoed content"
    log = sp.log_file.read_bytes()
    assert b"level=debug" in log, "the server did not log at DEBUG: the test proves nothing"
    files = _files(data)
    assert any(p.name == "switchboard.db" for p in files)
    for canary in canaries:
        needle = canary.encode()
        assert needle not in log, f"canary in the server log: {canary}"
        for path in files:
            assert needle not in path.read_bytes(), f"canary in {path}"
    # The SQLite file holds the meeting, just not its content.
    assert mid.encode() in (data / "switchboard.db").read_bytes()
