"""A presenter who drops and comes back still serves late joiners (SDK ``reconnect``)."""

from __future__ import annotations

from pathlib import Path

from switchboard.client import Away, Back, DocumentReceived, SyncRequested
from switchboard.node import Node

from .conftest import make_settings, next_event, signed_in_host


async def test_newcomers_that_joined_during_a_reconnect_are_synced_by_the_resumed_owner(
    tmp_path: Path,
) -> None:
    async with Node(make_settings(tmp_path / "var", reconnect_grace=10)) as node:
        h = await signed_in_host(node)
        mid = await h.meeting()
        presenter = await h.join(mid, "presenter", "P")
        watcher = await h.join(mid, "attendee", "W")
        document = bytes(range(256)) * 1000
        await presenter.share_document(3, document)
        assert (await next_event(watcher, DocumentReceived)).data == document

        await presenter.drop()
        assert (await next_event(watcher, Away)).pid == presenter.pid
        late = await h.join(mid, "attendee", "L")  # no one can sync it yet

        back = await presenter.reconnect()
        assert (back.pid, back.role) == (presenter.pid, "presenter")
        assert (await next_event(watcher, Back)).pid == presenter.pid
        assert (await next_event(back, SyncRequested)).pid == late.pid
        received = await next_event(late, DocumentReceived)
        assert (received.data, received.private) == (document, True)
        for p in (back, watcher, late):
            await p.leave()
        await h.api.close()
