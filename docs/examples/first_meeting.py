"""Invite two people, let them chat, end the meeting, print its record.

Run it with the session token and meeting id from the README walkthrough:

    .venv/bin/python docs/examples/first_meeting.py "$TOKEN" "$MEETING"
"""

import asyncio
import json
import os
import sys
from typing import TypeVar

from switchboard.client import ApiClient, Chat, Ended, Participant

API = os.environ.get("API_URL", "https://localhost:8444")  # what ./scripts/serve prints
CA = os.environ.get("CA_FILE", "var/tls/ca.pem")  # the CA the relay generated

E = TypeVar("E")


async def next_event(p: Participant, kind: type[E]) -> E:
    while True:  # skip other events, such as Joined when someone arrives
        event = await p.recv(timeout=5)
        if isinstance(event, kind):
            return event


async def main(token: str, meeting_id: str) -> None:
    async with ApiClient(API, ca_file=CA, token=token) as host:
        # One invitation per person. Its token is shown in this response only.
        for_ada = await host.invite(meeting_id, role="host")
        for_grace = await host.invite(meeting_id, role="attendee")

        # The invitation goes in the first message, never in the URL.
        ada = await Participant.join(for_ada["join_url"], for_ada["token"], name="Ada", ca_file=CA)
        grace = await Participant.join(
            for_grace["join_url"], for_grace["token"], name="Grace", ca_file=CA
        )
        print(f"Ada is participant {ada.pid}, Grace is participant {grace.pid}")

        await ada.send_chat("Hello, everyone!")  # no recipient: everyone else
        chat = await next_event(grace, Chat)
        print(f"Grace got {chat.text!r} from participant {chat.sender}")

        await grace.send_chat("Hi Ada, just you.", to=ada.pid)  # one recipient
        chat = await next_event(ada, Chat)
        print(f"Ada got {chat.text!r} from participant {chat.sender} (private: {chat.private})")

        # Ending answers once the call record is on disk; then everyone is told.
        ended = await host.end_meeting(meeting_id)
        for p in (ada, grace):
            event = await next_event(p, Ended)
            print(f"participant {p.pid} saw the meeting end: {event.reason}")
            await p.leave()
        print(json.dumps(ended["record"], indent=2))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
