"""A tour of the SDK: polls, documents, media, moderation, the lobby, reconnecting.

Run it against a running relay with a host session token (README, step 2):

    .venv/bin/python docs/examples/sdk_tour.py "$TOKEN"           # every section
    .venv/bin/python docs/examples/sdk_tour.py "$TOKEN" polls     # one section

Each section creates its own meeting and ends it. docs/how-to/sdk.md explains them.
"""

import asyncio
import os
import sys
from typing import Any, TypeVar

from switchboard.client import (
    Admitted,
    ApiClient,
    Away,
    Back,
    Disconnected,
    Document,
    DocumentReceived,
    ErrorFrame,
    JoinRefused,
    KeyframeRequested,
    Media,
    MediaFrame,
    Notice,
    Participant,
    Poll,
)

API = os.environ.get("API_URL", "https://localhost:8444")  # what ./scripts/serve prints
CA = os.environ.get("CA_FILE", "var/tls/ca.pem")  # the CA the relay generated

E = TypeVar("E")


async def next_event(p: Participant, kind: type[E]) -> E:
    """The next event of one type, skipping others (such as Joined)."""
    while True:
        event = await p.recv(timeout=5)
        if isinstance(event, kind):
            return event


async def next_notice(p: Participant, op: str) -> dict[str, Any]:
    """The fields of the next control notice ``op`` (track, role, waiting, ...)."""
    while True:
        event = await next_event(p, Notice)
        if event.op == op:
            return event.fields


async def join(api: ApiClient, meeting_id: str, role: str, name: str, **kw: Any) -> Participant:
    """Invite someone with ``role`` and join them."""
    inv = await api.invite(meeting_id, role=role)
    return await Participant.join(inv["join_url"], inv["token"], name=name, ca_file=CA, **kw)


async def polls(api: ApiClient, meeting_id: str) -> None:
    ada = await join(api, meeting_id, "presenter", "Ada")
    grace = await join(api, meeting_id, "attendee", "Grace")

    await ada.open_poll(1, b'{"q": "Lunch at noon?", "options": ["yes", "no"]}')
    poll = await next_event(grace, Poll)
    print(f"Grace sees poll {poll.poll} ({poll.op}): {poll.payload.decode()}")

    await grace.answer_poll(1, b'"yes"')  # goes to the poll's owner only
    answer = await next_event(ada, Poll)
    print(f"Ada gets an {answer.op} from {answer.sender}: {answer.payload.decode()}")

    await ada.publish_results(1, b'{"yes": 1, "no": 0}')
    await ada.close_poll(1)
    print("Grace sees", (await next_event(grace, Poll)).op, (await next_event(grace, Poll)).op)


async def documents(api: ApiClient, meeting_id: str) -> None:
    ada = await join(api, meeting_id, "presenter", "Ada")
    grace = await join(api, meeting_id, "attendee", "Grace")

    pdf = os.urandom(600_000)  # any bytes; the SDK sends them in 64 KiB chunks
    await ada.share_document(1, pdf)
    await ada.turn_page(1, 3)
    got = await next_event(grace, DocumentReceived)
    page = await next_event(grace, Document)
    print(f"Grace has document {got.doc}: {len(got.data)} bytes, intact: {got.data == pdf}")
    print(f"Ada turned to page {page.page}")

    # A late joiner: the relay asks Ada to sync Linus, and Ada's SDK re-sends
    # the document and the page to Linus alone. The relay itself keeps nothing.
    linus = await join(api, meeting_id, "attendee", "Linus")
    got = await next_event(linus, DocumentReceived)
    page = await next_event(linus, Document)
    print(f"Linus gets it too: intact {got.data == pdf}, private {got.private}, page {page.page}")

    await ada.stop_document(1)


async def media(api: ApiClient, meeting_id: str) -> None:
    ada = await join(api, meeting_id, "presenter", "Ada")
    grace = await join(api, meeting_id, "attendee", "Grace")

    await ada.publish(1, Media.AUDIO)  # announce tracks before sending on them
    await ada.publish(2, Media.VIDEO)
    await next_notice(grace, "track")
    await next_notice(grace, "track")
    print("Ada's tracks in Grace's roster:", grace.roster[ada.pid]["tracks"])

    await ada.send_media(2, Media.VIDEO, 0, b"<encoded keyframe>", key=True, ts=0)
    frame = await next_event(grace, MediaFrame)
    print(f"Grace gets {frame.media.name} track {frame.track} seq {frame.seq} key {frame.key}")

    await grace.request_keyframe(ada.pid, 2)  # e.g. after a decoding error
    asked = await next_event(ada, KeyframeRequested)
    print(f"Ada is asked for a keyframe on track {asked.track}")

    await grace.receive(Media.VIDEO, on=False)  # no video for Grace, audio still
    await asyncio.sleep(0.1)  # control requests have no acknowledgement
    await ada.send_media(2, Media.VIDEO, 1, b"<encoded delta>")
    await ada.send_media(1, Media.AUDIO, 0, b"<encoded audio>")
    frame = await next_event(grace, MediaFrame)
    print(f"With video off, Grace gets {frame.media.name} seq {frame.seq}")


async def moderation(api: ApiClient, meeting_id: str) -> None:
    host = await join(api, meeting_id, "host", "Ada")
    grace = await join(api, meeting_id, "attendee", "Grace")

    await host.webinar(True)  # attendees may no longer publish media
    await next_notice(grace, "webinar")
    await grace.publish(1, Media.VIDEO)
    print("Grace publishing in a webinar:", (await next_event(grace, ErrorFrame)).code)
    await host.webinar(False)

    await host.lock()  # no new joins, except hosts
    try:
        await join(api, meeting_id, "attendee", "Linus")
    except JoinRefused as refused:
        print(f"Linus is refused: {refused.error}, close {refused.code}")
    await host.lock(False)

    await host.set_role(grace.pid, "presenter")
    await next_notice(grace, "role")
    print("Grace's role is now", grace.role)

    await host.eject(grace.pid)  # disconnect her and revoke her invitation
    print("Grace is told:", (await next_event(grace, ErrorFrame)).code)
    try:
        await grace.recv(timeout=5)
    except Disconnected as closed:
        print("and closed with", closed.code)


async def lobby(api: ApiClient, meeting_id: str) -> None:
    host = await join(api, meeting_id, "host", "Ada")
    await api.moderate(meeting_id, "lobby", on=True)  # the same as host.set_lobby(True)

    grace = await join(api, meeting_id, "attendee", "Grace", wait_in_lobby=False)
    print("Grace is waiting:", grace.waiting)
    print("Ada is told:", await next_notice(host, "waiting"))
    print("API:", [(p["name"], p["lobby"]) for p in await api.participants(meeting_id)])

    await api.moderate(meeting_id, "admit", pid=grace.pid)  # or host.admit(grace.pid)
    await next_event(grace, Admitted)
    print("Grace is in; she sees", sorted(grace.roster))


async def reconnect(api: ApiClient, meeting_id: str) -> None:
    inv = await api.invite(meeting_id, role="host")
    ada = await Participant.join(inv["join_url"], inv["token"], name="Ada", ca_file=CA)
    grace = await join(api, meeting_id, "attendee", "Grace")

    token = ada.resume_token  # from the welcome; valid while Ada's seat is held
    assert token is not None
    await ada.drop()  # the network fails: no close frame
    print("Grace sees", await next_event(grace, Away))

    ada = await Participant.join(inv["join_url"], token, resume=True, ca_file=CA)
    print("Grace sees", await next_event(grace, Back))
    print(f"Ada is back as {ada.pid}, still {ada.role}; new token: {ada.resume_token != token}")


SECTIONS = {f.__name__: f for f in (polls, documents, media, moderation, lobby, reconnect)}


async def main(token: str, names: list[str]) -> None:
    async with ApiClient(API, ca_file=CA, token=token) as api:
        for name in names or list(SECTIONS):
            print(f"--- {name}")
            meeting_id = (await api.create_meeting())["meeting_id"]
            await SECTIONS[name](api, meeting_id)
            await api.end_meeting(meeting_id)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
