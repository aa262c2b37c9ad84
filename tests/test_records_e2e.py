"""Call-detail records billing can trust, end to end: real nodes, real processes, real TLS.

Every record a meeting leaves is checked the way billing would check it: the counters against
what the test itself sent and saw, the hash chain and signatures with nothing but the export and
the public key, exactly-once across crashes (kill -9), shutdowns, store outages (the spool) and
restarts, and the webhook against a real HTTPS receiver on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import ipaddress
import itertools
import json
import re
import signal
import sqlite3
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from switchboard.client import (
    ApiClient,
    ApiError,
    Chat,
    Disconnected,
    DocumentReceived,
    Ended,
    JoinRefused,
    Left,
    MediaFrame,
    Participant,
    Poll,
    tls_context,
)
from switchboard.client.participant import Document
from switchboard.clock import Clock
from switchboard.core import tokens
from switchboard.core.records import (
    COLUMNS,
    FEATURES,
    GENESIS_HASH,
    SCHEMA_VERSION,
    CallRecord,
    EndReason,
    chain_hash,
)
from switchboard.core.rules import Role
from switchboard.core.wire import Media
from switchboard.node import Node
from switchboard.signing import load_public_key, verify_records
from switchboard.store.sqlite import SqliteStore
from switchboard.webhook import verify_signature

from .conftest import (
    TIMEOUT,
    Host,
    ServeProcess,
    add_host,
    host_add,
    make_settings,
    next_event,
    signed_in_host,
    switchboard_cmd,
)

PASSWORD = "correct horse battery staple"
EMAIL = "ops@example.com"

USAGE_KEYS = {"frames", "bytes", "deliveries", "dropped", "first_use", "last_use"}
"""The counters of one feature in a record's ``usage``."""

JSON_KEYS = set(COLUMNS) | {"usage", "features_used", "cursor"}
"""Every top-level key an exported JSON record may have: the allow-list plus structured usage."""


# helpers


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        switchboard_cmd(*args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 6,
        check=False,
    )


def export(data_dir: Path, fmt: str = "jsonl") -> str:
    done = cli("cdr", "export", "--format", fmt, "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    return done.stdout


def export_rows(data_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in export(data_dir).splitlines()]


async def public_key_pem(api_url: str, ca_file: Path | None) -> str:
    """``GET /v1/cdrs/public-key``, without credentials, as billing fetches it."""
    async with httpx.AsyncClient(verify=tls_context(ca_file)) as http:
        response = await http.get(f"{api_url}/v1/cdrs/public-key")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["algorithm"] == "Ed25519"
    return str(body["public_key_pem"])


async def wait_for(
    predicate: Callable[[], Any], timeout: float = TIMEOUT, step: float = 0.02
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; bounded."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(step)


async def closed_with(p: Participant) -> tuple[list[Any], int | None]:
    """Every event ``p`` receives until its connection closes, and the close code."""
    events: list[Any] = []
    with pytest.raises(Disconnected) as closed:
        async with asyncio.timeout(TIMEOUT * 2):
            while True:
                events.append(await p.recv())
    return events, closed.value.code


async def all_records(node: Node) -> list[Any]:
    return list(await node.store.list_records(limit=1000))


def in_order(*values: float) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


# 1. one meeting, every feature, every counter


async def test_a_meeting_using_every_feature_yields_exactly_one_exact_record(host: Host) -> None:
    node = host.node
    mid = await host.meeting()
    h = await host.join(mid, "host", name="H")
    t_h = time.monotonic()
    a = await host.join(mid, "attendee", name="A")
    t_a = time.monotonic()
    b = await host.join(mid, "attendee", name="B")
    t_b = time.monotonic()

    # chat: one from the host, one from an attendee
    await h.send_chat("hello")
    for p in (a, b):
        assert (await next_event(p, Chat)).text == "hello"
    await a.send_chat("hi there")
    for p in (h, b):
        assert (await next_event(p, Chat)).text == "hi there"

    # poll: open, an answer (to the owner only), results, close
    await h.open_poll(1, b"Q?yes/no")
    for p in (a, b):
        assert (await next_event(p, Poll)).op == "open"
    await a.answer_poll(1, b"yes")
    assert (await next_event(h, Poll)).payload == b"yes"
    await h.publish_results(1, b"yes:1")
    for p in (a, b):
        assert (await next_event(p, Poll)).op == "results"
    await h.close_poll(1)
    for p in (a, b):
        assert (await next_event(p, Poll)).op == "close"

    # document: three chunks and a page turn
    doc = bytes(range(256)) * 11 + b"x" * 184  # 3000 bytes
    await h.share_document(7, doc, chunk_bytes=1000)
    for p in (a, b):
        assert (await next_event(p, DocumentReceived)).data == doc
    await h.turn_page(7, 2)
    for p in (a, b):
        assert (await next_event(p, Document)).page == 2

    # audio and video from the host, a screen from an attendee
    await h.publish(1, Media.AUDIO)
    await h.publish(2, Media.VIDEO)
    await b.publish(3, Media.SCREEN)
    for seq in range(2):
        await h.send_media(1, Media.AUDIO, seq, b"a" * 40)
        for p in (a, b):
            assert (await next_event(p, MediaFrame)).media is Media.AUDIO
    await h.send_media(2, Media.VIDEO, 0, b"v" * 300, key=True)
    for p in (a, b):
        assert (await next_event(p, MediaFrame)).media is Media.VIDEO
    await b.send_media(3, Media.SCREEN, 0, b"s" * 500, key=True)
    for p in (h, a):
        assert (await next_event(p, MediaFrame)).media is Media.SCREEN

    # one attendee leaves early, so presence is not just peak x duration
    await a.leave()
    assert (await next_event(h, Left)).pid == a.pid
    t_a_left = time.monotonic()
    await asyncio.sleep(0.3)
    ended = await host.api.end_meeting(mid)
    t_end = time.monotonic()
    for p in (h, b):
        assert (await next_event(p, Ended)).reason == "host_ended"
        await p.leave()

    record = ended["record"]
    assert record["meeting_id"] == mid
    assert record["host_id"] == host.host_id
    assert record["end_reason"] == "host_ended"
    assert record["schema_version"] == SCHEMA_VERSION == 2
    assert record["nodes"] == [node.node_id]
    assert node.node_id
    assert record["signature"]
    assert record["prev_hash"] == GENESIS_HASH
    assert record["cursor"] == 1
    assert record["peak_participants"] == 3
    assert record["distinct_participants"] == 3
    assert record["features_used"] == sorted(FEATURES)
    usage = record["usage"]
    expected = {
        # feature: (frames, payload bytes, deliveries)
        "chat": (2, 5 + 8, 2 + 2),
        "poll": (4, 8 + 3 + 5 + 0, 2 + 1 + 2 + 2),
        "document": (4, 3000, 3 * 2 + 2),
        "audio": (2, 80, 4),
        "video": (1, 300, 2),
        "screen": (1, 500, 2),
    }
    for name, (frames, nbytes, deliveries) in expected.items():
        use = usage[name]
        assert set(use) == USAGE_KEYS, name
        assert (use["frames"], use["bytes"], use["deliveries"], use["dropped"]) == (
            frames,
            nbytes,
            deliveries,
            0,
        ), name
    # first and last use follow the order the features were used in, inside the meeting
    order = [usage[name] for name in ("chat", "poll", "document", "audio", "video", "screen")]
    points = [t for use in order for t in (use["first_use"], use["last_use"])]
    assert in_order(0.0, *points, record["duration_seconds"])
    assert usage["chat"]["first_use"] < usage["screen"]["last_use"]
    # duration and presence match what the clients lived through
    assert record["duration_seconds"] == pytest.approx(t_end - t_h, abs=0.2)
    presence = (t_end - t_h) + (t_a_left - t_a) + (t_end - t_b)
    assert record["participant_seconds"] == pytest.approx(presence, abs=0.25)
    assert record["participant_seconds"] < 3 * record["duration_seconds"]

    # exactly one record, and it is what the end returned
    page = await host.api.cdrs()
    assert page["records"] == [record]

    # the next record chains to it
    mid2 = await host.meeting()
    h2 = await host.join(mid2, "host")
    second = (await host.api.end_meeting(mid2))["record"]
    await h2.leave()
    assert second["prev_hash"] == chain_hash(record)
    assert second["prev_hash"] == chain_hash(page["records"][0])
    assert second["cursor"] == 2
    key = load_public_key((await public_key_pem(node.api_url, node.ca_file)).encode())
    verdict = verify_records([record, second], key)
    assert verdict.ok, verdict
    assert verdict.checked == 2
    assert not verdict.starts_after_genesis


# 2. kill -9, restart, restart again


async def test_kill_9_mid_meeting_leaves_exactly_one_relay_failure_record(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    data = tmp_path / "var"
    config = tmp_path / "switchboard.toml"
    config.write_text("checkpoint_interval = 1\n")
    interval = 1.0
    host_add(data, EMAIL, PASSWORD)
    sp = serve_factory("--config", str(config), data_dir=data)
    async with ApiClient(sp.api_url, ca_file=sp.ca_file) as api:
        await api.sign_in(EMAIL, PASSWORD)
        mid = (await api.create_meeting())["meeting_id"]
        tokens_ = [(await api.invite(mid))["token"] for _ in range(2)]
    before_join = time.monotonic()
    p1 = await Participant.join(sp.relay_url, tokens_[0], ca_file=sp.ca_file, timeout=TIMEOUT)
    started = time.monotonic()
    p2 = await Participant.join(sp.relay_url, tokens_[1], ca_file=sp.ca_file, timeout=TIMEOUT)
    await p1.send_chat("before the crash")
    await next_event(p2, Chat)
    await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - started)))

    sp.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert await asyncio.to_thread(sp.proc.wait, TIMEOUT) == -signal.SIGKILL
    for p in (p1, p2):
        _, code = await closed_with(p)
        assert code != 4503  # no goodbye: the process just died
        await p.leave()
    assert export_rows(data) == []  # nothing final yet: only the open checkpoint

    # Restart: the checkpoint is closed as relay_failure before anything listens.
    sp2 = serve_factory("--config", str(config), data_dir=data)
    rows = export_rows(data)
    assert [(r["meeting_id"], r["end_reason"]) for r in rows] == [(mid, "relay_failure")]
    record = rows[0]
    live_min, live_max = killed - started, killed - before_join
    assert live_min - interval - 0.4 <= record["duration_seconds"] <= live_max + 0.05, (
        record["duration_seconds"],
        live_min,
    )
    assert record["peak_participants"] == 2
    assert record["distinct_participants"] == 2
    assert record["usage"]["chat"]["frames"] == 1
    assert record["nodes"] == [(data / "node-id").read_text().strip()]
    assert record["participant_seconds"] == pytest.approx(2 * record["duration_seconds"], abs=0.3)
    assert record["signature"]
    assert record["prev_hash"] == GENESIS_HASH
    # The meeting is over for the control plane too.
    async with ApiClient(sp2.api_url, ca_file=sp2.ca_file) as api:
        await api.sign_in(EMAIL, PASSWORD)
        assert (await api.meeting(mid))["state"] == "ended"
        with pytest.raises(ApiError) as gone:
            await api.invite(mid)
        assert gone.value.status == 410

    # Kill the restarted node too, and start a third time: nothing is added.
    sp2.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(sp2.proc.wait, TIMEOUT)
    sp3 = serve_factory("--config", str(config), data_dir=data)
    assert export_rows(data) == rows
    assert await asyncio.to_thread(sp3.stop) == 0
    exported = tmp_path / "records.jsonl"
    exported.write_text(export(data))
    assert [json.loads(line) for line in exported.read_text().splitlines()] == rows
    verified = cli("cdr", "verify", str(exported), "--data-dir", str(data))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK 1 records")


# 3. SIGTERM with three live meetings


async def test_sigterm_closes_three_live_meetings_with_relay_shutdown_records(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    data = tmp_path / "var"
    host_add(data, EMAIL, PASSWORD)
    sp = serve_factory(data_dir=data)
    people: dict[str, list[Participant]] = {}
    async with ApiClient(sp.api_url, ca_file=sp.ca_file) as api:
        await api.sign_in(EMAIL, PASSWORD)
        for size in (1, 2, 3):
            mid = (await api.create_meeting())["meeting_id"]
            people[mid] = [
                await Participant.join(
                    sp.relay_url,
                    (await api.invite(mid))["token"],
                    ca_file=sp.ca_file,
                    timeout=TIMEOUT,
                )
                for _ in range(size)
            ]
    assert await asyncio.to_thread(sp.stop, signal.SIGTERM) == 0
    for everyone in people.values():
        for p in everyone:
            events, code = await closed_with(p)
            assert code == 4503  # transient: reconnect
            assert [e.reason for e in events if isinstance(e, Ended)] == ["relay_shutdown"]
            await p.leave()
    rows = export_rows(data)
    assert sorted((r["meeting_id"], r["end_reason"]) for r in rows) == sorted(
        (mid, "relay_shutdown") for mid in people
    )
    by_meeting = {r["meeting_id"]: r for r in rows}
    for mid, everyone in people.items():
        assert by_meeting[mid]["peak_participants"] == len(everyone)


# 4. 200 meetings ending while billing pages


async def test_200_meetings_ending_while_billing_pages_gives_no_gap_and_no_duplicate(
    tmp_path: Path,
) -> None:
    count, page_size = 200, 7
    settings = make_settings(tmp_path / "var")
    async with Node(settings) as node:
        _, _, host_id = await add_host(node)
        now = node.clock.wall()
        invitations: list[tuple[str, str]] = []
        for _ in range(count):
            meeting = await node.store.create_meeting(host_id, now)
            token, digest = tokens.mint(tokens.TokenKind.INVITATION)
            await node.store.create_invitation(
                meeting.meeting_id,
                Role.ATTENDEE,
                digest,
                now=now,
                expires_at=now + 3600,
                max_uses=1,
            )
            invitations.append((meeting.meeting_id, token))
        made = await asyncio.to_thread(
            cli, "apikey", "create", "--scope", "cdr:read", "--data-dir", str(settings.data_dir)
        )
        assert made.returncode == 0, made.stderr
        billing_key = made.stdout.strip()

        gate = asyncio.Semaphore(25)

        async def join(token: str) -> Participant:
            async with gate:
                return await Participant.join(
                    node.relay_url, token, ca_file=node.ca_file, timeout=TIMEOUT * 2
                )

        people = await asyncio.gather(*(join(token) for _, token in invitations))
        assert len(node.hub.rooms) == count

        paged: list[dict[str, Any]] = []
        cursors: list[int] = []
        all_left = asyncio.Event()

        async def page_through(billing: ApiClient) -> None:
            cursor = 0
            for _ in range(5000):  # bounded: far more pages than 200 records need
                page = await billing.cdrs(after=cursor, limit=page_size)
                got = page["records"]
                assert len(got) <= page_size
                if got:
                    assert page["next_cursor"] == got[-1]["cursor"]
                    paged.extend(got)
                    cursors.extend(r["cursor"] for r in got)
                else:
                    assert page["next_cursor"] == cursor
                    if len(paged) >= count and all_left.is_set():
                        return
                    await asyncio.sleep(0.005)
                cursor = page["next_cursor"]
            raise AssertionError(f"paging did not finish: {len(paged)} records")

        async def leave(p: Participant) -> None:
            async with gate:
                await p.leave()

        async with ApiClient(node.api_url, ca_file=node.ca_file, token=billing_key) as billing:
            pager = asyncio.create_task(page_through(billing))
            await asyncio.sleep(0.05)  # the pager is already paging when the ends begin
            await asyncio.gather(*(leave(p) for p in people))
            await wait_for(lambda: not node.hub.rooms, timeout=TIMEOUT * 3)
            all_left.set()
            async with asyncio.timeout(TIMEOUT * 3):
                await pager

        stored = await all_records(node)
        assert len(stored) == count
        assert all(a < b for a, b in itertools.pairwise(cursors))
        assert cursors == [s.seq for s in stored]
        assert len({r["record_id"] for r in paged}) == count
        assert {r["meeting_id"] for r in paged} == {mid for mid, _ in invitations}
        assert all(r["end_reason"] == "last_left" for r in paged)
        assert all(r["distinct_participants"] == 1 for r in paged)
        # the pages, joined, are one unbroken chain
        key = load_public_key(node.signer.public_pem().encode())
        verdict = verify_records(paged, key)
        assert verdict.ok, verdict
        assert verdict.checked == count

        exported = tmp_path / "records.jsonl"
        exported.write_text(export(settings.data_dir))
        done = cli("cdr", "verify", str(exported), "--data-dir", str(settings.data_dir))
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith(f"OK {count} records")


# 5. the billing webhook, against a real HTTPS receiver


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_receiver_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A local CA and a certificate for localhost signed by it: (ca, cert, key) PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("webhook test CA"))
        .issuer_name(_name("webhook test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@dataclass
class Delivery:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """What the webhook receiver saw, and how it answers (``fail_next`` 500s, or ``failing``)."""

    port: int = 0
    fail_next: int = 0
    failing: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.status == 200]

    def accepted_ids(self) -> set[str]:
        return {d.headers["idempotency-key"] for d in self.accepted()}


@contextlib.contextmanager
def https_receiver(tls_dir: Path) -> Iterator[tuple[Receiver, Path]]:
    """A billing endpoint on loopback over TLS; yields its state and the CA that signs it."""
    ca, cert, key = make_receiver_tls(tls_dir)
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with state.lock:
                if state.failing:
                    status = 500
                elif state.fail_next > 0:
                    state.fail_next -= 1
                    status = 500
                else:
                    status = 200
                headers = {k.lower(): v for k, v in self.headers.items()}
                state.deliveries.append(Delivery(status, headers, body))
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state, ca
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


SECRET = "s" * 32


async def test_webhook_retries_until_acknowledged_signed_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    with https_receiver(tmp_path / "receiver") as (receiver, ca):
        settings = make_settings(
            tmp_path / "var",
            webhook_url=f"https://localhost:{receiver.port}/hook",
            webhook_secret=SECRET,
            webhook_retry_base=0.05,
            webhook_retry_max=0.2,
            webhook_ca_file=ca,
        )
        receiver.fail_next = 3
        async with Node(settings) as node:
            h = await signed_in_host(node)
            records = []
            for _ in range(2):
                mid = await h.meeting()
                p = await h.join(mid, "host")
                records.append((await h.api.end_meeting(mid))["record"])
                await p.leave()
            ids = {r["record_id"] for r in records}
            await wait_for(lambda: receiver.accepted_ids() == ids, timeout=TIMEOUT * 2)
            failed = [d for d in receiver.deliveries if d.status == 500]
            assert len(failed) == 3
            key = load_public_key(node.signer.public_pem().encode())
            for delivery in receiver.deliveries:
                body = json.loads(delivery.body)
                assert delivery.headers["idempotency-key"] == body["record_id"]
                assert delivery.headers["content-type"] == "application/json"
                assert set(body) <= JSON_KEYS
                header = delivery.headers["switchboard-signature"]
                assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
                assert verify_signature(SECRET, delivery.body, header)
                assert not verify_signature("t" * 32, delivery.body, header)
                assert not verify_signature(SECRET, delivery.body + b" ", header)
                assert verify_records([body], key).ok
            by_id = {
                json.loads(d.body)["record_id"]: json.loads(d.body) for d in receiver.accepted()
            }
            for record in records:
                assert by_id[record["record_id"]] == record  # cursor included

            async def all_delivered() -> bool:
                states = [await node.store.delivery_state(r["record_id"]) for r in records]
                return all(s is not None and s[1] is not None and s[0] >= 1 for s in states)

            await wait_for(all_delivered)

            # Now the receiver is down for good: the next record stays queued.
            receiver.failing = True
            mid = await h.meeting()
            p = await h.join(mid, "host")
            pending = (await h.api.end_meeting(mid))["record"]["record_id"]
            await p.leave()
            await h.api.close()

            async def attempted() -> bool:
                state = await node.store.delivery_state(pending)
                return state is not None and state[0] >= 2

            await wait_for(attempted, timeout=TIMEOUT * 2)
            state = await node.store.delivery_state(pending)
            assert state is not None
            assert state[1] is None  # not delivered
        assert pending not in receiver.accepted_ids()

        # A restart with a receiver that accepts again delivers it: the queue is in the store.
        receiver.failing = False
        async with Node(settings) as node:
            await wait_for(lambda: pending in receiver.accepted_ids(), timeout=TIMEOUT * 2)

            async def delivered() -> bool:  # the store learns it just after the receiver answers
                state = await node.store.delivery_state(pending)
                return state is not None and state[1] is not None

            await wait_for(delivered)
        last = [d for d in receiver.accepted() if d.headers["idempotency-key"] == pending]
        assert verify_signature(SECRET, last[-1].body, last[-1].headers["switchboard-signature"])


# 6. tamper evidence of exports


async def test_cdr_verify_detects_a_changed_byte_a_removed_record_and_uses_the_public_key(
    host: Host, tmp_path: Path
) -> None:
    node = host.node
    data = node.settings.data_dir
    ids = []
    for _ in range(3):
        mid = await host.meeting()
        p = await host.join(mid, "host")
        await asyncio.sleep(0.02)
        ids.append((await host.api.end_meeting(mid))["record"]["record_id"])
        await p.leave()
    text = export(data)
    lines = text.splitlines()
    assert [json.loads(line)["record_id"] for line in lines] == ids

    def file(name: str, *rows: str) -> str:
        path = tmp_path / name
        path.write_text("".join(row + "\n" for row in rows))
        return str(path)

    good = file("good.jsonl", *lines)
    # one changed digit of one value
    match = re.search(r'"duration_seconds": ([0-9.]+)', lines[1])
    assert match is not None
    digits = match.group(1)
    changed = lines[1].replace(
        match.group(0), f'"duration_seconds": {digits[:-1]}{(int(digits[-1]) + 1) % 10}'
    )
    tampered = file("tampered.jsonl", lines[0], changed, lines[2])
    assert Path(tampered).read_text() != text
    assert len(Path(tampered).read_text()) == len(text)  # one byte differs, nothing else
    gap = file("gap.jsonl", lines[0], lines[2])  # a middle record removed
    twice = file("twice.jsonl", lines[0], lines[1], lines[1], lines[2])  # one repeated
    headless = file("headless.jsonl", lines[1], lines[2])  # the first one removed
    # billing has no data dir: the public key from the API is enough
    pem = tmp_path / "public.pem"
    pem.write_text(await public_key_pem(node.api_url, node.ca_file))
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    here = ("--data-dir", str(data))
    billing = ("--data-dir", str(tmp_path / "billing"))
    runs = await asyncio.gather(
        *(
            asyncio.to_thread(cli, "cdr", "verify", *args)
            for args in (
                (good, *here),
                (tampered, *here),
                (gap, *here),
                (twice, *here),
                (headless, *here),
                (good, "--public-key", str(pem), *billing),
                (tampered, "--public-key", str(pem), *billing),
                (good, "--public-key", str(other), *billing),
                (good, *billing),
            )
        )
    )
    results = [(done.returncode, done.stdout, done.stderr) for done in runs]
    ok, bad_byte, bad_gap, bad_twice, no_head, ok_pem, bad_pem, wrong_key, no_key = results

    assert ok[0] == 0, ok
    assert ok[1].startswith("OK 3 records")
    assert bad_byte[0] == 1
    assert f"BAD record {ids[1]} (record 2 of the file)" in bad_byte[1]
    assert "signature" in bad_byte[1]
    # the record after the gap no longer links
    assert bad_gap[0] == 1
    assert f"BAD record {ids[2]} (record 2 of the file)" in bad_gap[1]
    assert "prev_hash" in bad_gap[1]
    # the copy does not link to the record before it
    assert bad_twice[0] == 1
    assert f"BAD record {ids[1]} (record 3 of the file)" in bad_twice[1]
    # without its first record the file no longer starts the chain, and says so
    assert no_head[0] == 0
    assert "continues records before this file" in no_head[1]
    assert ok_pem[0] == 0, ok_pem
    assert ok_pem[1].startswith("OK 3 records")
    assert bad_pem[0] == 1
    assert f"BAD record {ids[1]}" in bad_pem[1]
    # another key does not vouch for these records
    assert wrong_key[0] == 1
    assert f"BAD record {ids[0]} (record 1 of the file)" in wrong_key[1]
    # without a key there is nothing to verify against
    assert no_key[0] == 2
    assert "--public-key" in no_key[2]


async def test_cdr_verify_is_not_fooled_by_relabelling_a_signed_record_as_schema_1(
    host: Host, tmp_path: Path
) -> None:
    data = host.node.settings.data_dir
    ids = []
    for _ in range(2):
        mid = await host.meeting()
        p = await host.join(mid, "host")
        ids.append((await host.api.end_meeting(mid))["record"]["record_id"])
        await p.leave()
    rows = [json.loads(line) for line in export(data).splitlines()]
    assert rows[0]["signature"]
    # the first record billed ten times as long, and claimed to predate signing
    rows[0]["duration_seconds"] = rows[0]["duration_seconds"] * 10 + 3600
    rows[0]["schema_version"] = 1
    forged = tmp_path / "forged.jsonl"
    forged.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = cli("cdr", "verify", str(forged), "--data-dir", str(data))
    assert done.returncode == 1, done.stdout
    assert ids[0] in done.stdout


# 7. a wall-clock step during a meeting


async def test_a_wall_clock_step_moves_the_labels_not_the_billed_duration(tmp_path: Path) -> None:
    clock = Clock()
    async with Node(make_settings(tmp_path / "var"), clock=clock) as node:
        assert node.clock is clock
        h = await signed_in_host(node)
        mid = await h.meeting()
        wall_before = time.time()
        p = await h.join(mid, "host")
        joined = time.monotonic()
        q = await h.join(mid, "attendee")
        await h.api.close()  # its session would look idle for an hour after the step
        node.clock.offset += 3600
        await asyncio.sleep(0.5)
        await q.send_chat("after the step")
        await next_event(p, Chat)
        await p.end()
        assert (await next_event(p, Ended)).reason == "host_ended"
        ended = time.monotonic()
        for x in (p, q):
            await x.leave()
        stored = await node.store.get_record(mid)
    assert stored is not None
    record = stored.record.to_dict()
    real = ended - joined
    assert record["duration_seconds"] == pytest.approx(real, abs=0.2)
    started_at = stored.record.started_at
    ended_at = stored.record.ended_at
    assert started_at == pytest.approx(wall_before, abs=1.0)
    assert ended_at - started_at == pytest.approx(record["duration_seconds"] + 3600, abs=0.2)
    assert record["participant_seconds"] < 2 * real + 0.2
    assert record["usage"]["chat"]["last_use"] <= record["duration_seconds"]


# 8. the store refuses writes: the end is still acknowledged, the record spooled and replayed


@contextlib.asynccontextmanager
async def locked_database(path: Path) -> AsyncIterator[None]:
    """Hold the database's write lock from another connection (as another process could)."""
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=TIMEOUT)
    try:
        await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            await asyncio.to_thread(locker.execute, "ROLLBACK")
    finally:
        locker.close()


async def short_busy_timeout(node: Node, ms: int = 100) -> None:
    """The store waits 10 s for a lock by default; the test makes it give up sooner."""
    store = node.store
    assert isinstance(store, SqliteStore)
    await store._run(store._db.execute, f"PRAGMA busy_timeout = {ms}")


CANARY = "CANARY-7f3a-content"


async def test_a_locked_store_spools_the_record_and_the_checkpoint_loop_replays_it_once(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "var", checkpoint_interval=0.2)
    async with Node(settings) as node:
        h = await signed_in_host(node)
        mid = await h.meeting()
        p = await h.join(mid, "host", name=f"Zelda {CANARY}")
        q = await h.join(mid, "attendee", name=f"Link {CANARY}")
        await p.send_chat(CANARY)
        await next_event(q, Chat)
        await short_busy_timeout(node)
        spool = settings.data_dir / "spool"

        async with locked_database(settings.data_dir / "switchboard.db"):
            stored = await node.hub.end_meeting(mid, EndReason.HOST_ENDED)
            assert stored is not None
            assert stored.seq == 0  # acknowledged without a place in the store's order
            for x in (p, q):  # participants are told only after the record is durable
                assert (await next_event(x, Ended)).reason == "host_ended"
            files = list(spool.glob("*.json"))
            assert [f.name for f in files] == [f"{mid}.json"]
            assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
            raw = files[0].read_bytes()
            spooled = json.loads(raw)
            assert set(spooled) <= JSON_KEYS
            assert spooled["record_id"] == stored.record.record_id
            assert spooled["end_reason"] == "host_ended"
            for secret in (CANARY, "Zelda", "Link", h.email):
                assert secret.encode() not in raw
            assert await node.store.get_record(mid) is None
            await asyncio.sleep(0.5)  # the checkpoint loop tries, and fails, meanwhile
            assert list(spool.glob("*.json")) == files

        # The lock is gone: the checkpoint loop replays the spool.
        await wait_for(lambda: not list(spool.glob("*.json")), timeout=TIMEOUT)
        records = await all_records(node)
        assert [(r.record.meeting_id, r.record.record_id) for r in records] == [
            (mid, stored.record.record_id)
        ]
        final = records[0].record
        assert final.signature
        assert final.prev_hash == GENESIS_HASH
        assert final.end_reason == "host_ended"
        assert final.peak_participants == 2
        assert final.features["chat"].frames == 1
        assert (await node.store.get_meeting(mid)).state == "ended"  # type: ignore[union-attr]

        # Replaying the same record again changes nothing.
        node.ledger.spool.put(CallRecord.from_dict(spooled))  # type: ignore[union-attr]
        assert await node.ledger.replay(node.clock.wall()) == 0
        assert not list(spool.glob("*.json"))
        again = await all_records(node)
        assert [(r.seq, r.record) for r in again] == [(records[0].seq, final)]
        for x in (p, q):
            await x.leave()
        await h.api.close()


async def test_a_spooled_record_is_committed_at_the_next_start_not_closed_as_a_failure(
    tmp_path: Path,
) -> None:
    # The node stops (or dies) before the store is back: the spool outlives the process, and
    # the next start commits the real end before it closes what the node left open.
    settings = make_settings(tmp_path / "var", checkpoint_interval=30.0)
    async with Node(settings) as node:
        h = await signed_in_host(node)
        mid = await h.meeting()
        p = await h.join(mid, "host")
        q = await h.join(mid, "attendee")
        await wait_for(lambda: node.store.open_checkpoints(node.node_id))
        await short_busy_timeout(node)
        async with locked_database(settings.data_dir / "switchboard.db"):
            stored = await node.hub.end_meeting(mid, EndReason.HOST_ENDED)
            assert stored is not None
            assert stored.seq == 0
            for x in (p, q):
                assert (await next_event(x, Ended)).reason == "host_ended"
                await x.leave()
            await h.api.close()
        # the open checkpoint is still there: the store never saw the end
        assert [c.meeting_id for c in await node.store.open_checkpoints(node.node_id)] == [mid]
    assert [f.name for f in (settings.data_dir / "spool").glob("*.json")] == [f"{mid}.json"]

    async with Node(settings) as node:
        records = await all_records(node)
        assert [(r.record.record_id, r.record.end_reason) for r in records] == [
            (stored.record.record_id, "host_ended")
        ]
        assert records[0].record.peak_participants == 2
        assert not list((settings.data_dir / "spool").glob("*.json"))
        assert await node.store.open_checkpoints(node.node_id) == []
    async with Node(settings) as node:
        assert len(await all_records(node)) == 1


async def test_ending_through_the_api_while_the_store_is_locked_answers_with_a_spooled_record(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "var", checkpoint_interval=0.2)
    async with Node(settings) as node:
        h = await signed_in_host(node)
        try:
            mid = await h.meeting()
            p = await h.join(mid, "host")
            try:
                await short_busy_timeout(node)
                async with locked_database(settings.data_dir / "switchboard.db"):
                    ended = await h.api.end_meeting(mid)
                    assert ended["record"]["cursor"] is None
                    assert ended["record"]["meeting_id"] == mid
                    assert (await next_event(p, Ended)).reason == "host_ended"
                spool = settings.data_dir / "spool"
                await wait_for(lambda: not list(spool.glob("*.json")))
                assert len(await all_records(node)) == 1
            finally:
                await p.leave()
        finally:
            await h.api.close()


async def test_ending_again_answers_with_the_spooled_record_until_it_is_replayed(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "var", checkpoint_interval=30.0)
    async with Node(settings) as node:
        h = await signed_in_host(node)
        try:
            mid = await h.meeting()
            p = await h.join(mid, "host")
            await short_busy_timeout(node)
            async with locked_database(settings.data_dir / "switchboard.db"):
                stored = await node.hub.end_meeting(mid, EndReason.HOST_ENDED)
                assert stored is not None
                assert stored.seq == 0
            await p.leave()
            # The store is back, the replay has not run yet: the same record, no cursor.
            again = (await h.api.end_meeting(mid))["record"]
            assert again["cursor"] is None
            assert again["record_id"] == stored.record.record_id
            assert again["end_reason"] == "host_ended"
            assert await all_records(node) == []
            assert await node.ledger.replay(node.clock.wall()) == 0
            final = (await h.api.end_meeting(mid))["record"]
            assert final["cursor"] == 1
            assert final["record_id"] == stored.record.record_id
            assert final["signature"]
            assert len(await all_records(node)) == 1
        finally:
            await h.api.close()


async def test_a_meeting_whose_end_was_spooled_cannot_be_joined_again(tmp_path: Path) -> None:
    # A long checkpoint interval: the spooled record waits for its replay a while.
    settings = make_settings(tmp_path / "var", checkpoint_interval=30.0)
    async with Node(settings) as node:
        h = await signed_in_host(node)
        try:
            mid = await h.meeting()
            later = await h.invite(mid)
            p = await h.join(mid, "host")
            await short_busy_timeout(node)
            async with locked_database(settings.data_dir / "switchboard.db"):
                stored = await node.hub.end_meeting(mid, EndReason.HOST_ENDED)
                assert stored is not None
                assert stored.seq == 0
            await p.leave()
            # The end was acknowledged: the meeting is over, whatever the store caught up on.
            with pytest.raises(JoinRefused):
                q = await Participant.join(
                    node.relay_url, later, ca_file=node.ca_file, timeout=TIMEOUT
                )
                await q.leave()
        finally:
            await node.ledger.replay(node.clock.wall())
            await h.api.close()
        records = await all_records(node)
        assert [r.record.record_id for r in records] == [stored.record.record_id]


# 9. idle timeout


async def test_a_silent_meeting_ends_with_idle_timeout_and_a_busy_one_stays(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "var", meeting_idle_timeout=0.5, checkpoint_interval=0.1)
    async with Node(settings) as node:
        h = await signed_in_host(node)
        silent_mid, busy_mid = await h.meeting(), await h.meeting()
        silent = await h.join(silent_mid, "attendee")
        busy = await h.join(busy_mid, "host")
        joined = time.monotonic()
        for _ in range(16):  # 1.6 s of chat, one frame every 0.1 s
            await busy.send_chat("still here")
            await asyncio.sleep(0.1)
        events, code = await closed_with(silent)
        assert [e.reason for e in events if isinstance(e, Ended)] == ["idle_timeout"]
        assert code == 4410
        stored = await node.store.get_record(silent_mid)
        assert stored is not None
        assert stored.record.end_reason == "idle_timeout"
        assert 0.5 <= stored.record.duration_seconds <= 0.5 + 0.1 + 0.6
        assert stored.record.duration_seconds < time.monotonic() - joined
        assert busy_mid in node.hub.rooms
        ended = await h.api.end_meeting(busy_mid)
        assert ended["record"]["end_reason"] == "host_ended"
        assert ended["record"]["usage"]["chat"]["frames"] == 16
        await busy.leave()
        await silent.leave()
        await h.api.close()


# 10. the column allow-list of exports


IPV4 = re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")


async def test_exports_hold_allow_listed_columns_only_never_names_emails_addresses_or_content(
    host: Host,
) -> None:
    node = host.node
    mid = await host.meeting()
    p = await host.join(mid, "host", name=f"Zelda {CANARY}")
    q = await host.join(mid, "presenter", name=f"Link {CANARY}")
    await p.send_chat(f"chat {CANARY}")
    await next_event(q, Chat)
    await q.open_poll(9, f"poll {CANARY}".encode())
    await next_event(p, Poll)
    await q.share_document(3, f"document {CANARY}".encode())
    await next_event(p, DocumentReceived)
    await q.publish(1, Media.VIDEO)
    await q.send_media(1, Media.VIDEO, 0, f"media {CANARY}".encode(), key=True)
    await next_event(p, MediaFrame)
    await host.api.end_meeting(mid)
    for x in (p, q):
        await x.leave()
    mid2 = await host.meeting()
    r = await host.join(mid2, "attendee", name="Alone")
    await r.leave()  # last_left
    await wait_for(lambda: node.store.get_record(mid2))

    forbidden = [CANARY, "Zelda", "Link", "Alone", host.email, host.email.split("@")[0]]
    forbidden += [node.settings.public_host, "example.com"]

    jsonl = export(node.settings.data_dir)
    rows = [json.loads(line) for line in jsonl.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert set(row) <= JSON_KEYS, set(row) - JSON_KEYS
        assert set(row["usage"]) <= set(FEATURES)
        for use in row["usage"].values():
            assert set(use) == USAGE_KEYS
    assert set(rows[0]["usage"]) == {"chat", "poll", "document", "video"}

    table = export(node.settings.data_dir, "csv")
    reader = csv.DictReader(io.StringIO(table))
    assert reader.fieldnames is not None
    assert set(reader.fieldnames) == {"cursor", *COLUMNS}
    assert len(list(reader)) == 2

    for text in (jsonl, table):
        for word in forbidden:
            assert word not in text, word
        assert not IPV4.findall(text)
        assert "::1" not in text
