"""TLS on every listener: nothing plaintext, nothing old, certificates generated and reloaded."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import socket
import ssl
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from switchboard.client import ApiClient, Chat, Participant, tls_context
from switchboard.node import Node
from switchboard.relay.tls import read_ahead, set_read_ahead

from .conftest import TIMEOUT, ServeProcess, host_add, make_settings, next_event

PASSWORD = "correct horse battery staple"


def _ports(node: Node) -> list[int]:
    return [node.relay_port, node.api_port]


def _plaintext_answer(port: int, request: bytes) -> bytes:
    """Send a plaintext request; return whatever comes back before the server hangs up."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


async def test_plaintext_http_and_websocket_are_refused(node: Node) -> None:
    requests = [
        b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /v1/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ]
    for port in _ports(node):
        for request in requests:
            answer = await asyncio.to_thread(_plaintext_answer, port, request)
            assert b"HTTP/1.1" not in answer  # never an HTTP answer in the clear
            assert b"101" not in answer


def _handshake(port: int, ctx: ssl.SSLContext) -> tuple[str | None, str | None]:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        cipher = tls.cipher()
        return tls.version(), cipher[0] if cipher else None


def _legacy_client(version: ssl.TLSVersion, ca: Path) -> ssl.SSLContext:
    """A client that offers exactly ``version`` (old versions on purpose)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


async def test_modern_clients_get_tls13(node: Node) -> None:
    assert node.ca_file is not None
    for port in _ports(node):
        version, _ = await asyncio.to_thread(_handshake, port, tls_context(node.ca_file))
        assert version == "TLSv1.3"


async def test_tls12_works_with_an_intermediate_cipher_only(node: Node) -> None:
    assert node.ca_file is not None
    ctx = _legacy_client(ssl.TLSVersion.TLSv1_2, node.ca_file)
    for port in _ports(node):
        version, cipher = await asyncio.to_thread(_handshake, port, ctx)
        assert version == "TLSv1.2"
        assert cipher is not None
        assert cipher.startswith("ECDHE-")  # forward secret
        assert "GCM" in cipher or "CHACHA20" in cipher  # AEAD
    weak = _legacy_client(ssl.TLSVersion.TLSv1_2, node.ca_file)
    weak.set_ciphers("ECDHE-ECDSA-AES128-SHA:AES128-SHA:@SECLEVEL=0")  # CBC, not intermediate
    for port in _ports(node):
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(_handshake, port, weak)


async def test_only_the_relay_context_reads_ahead(node: Node) -> None:
    # The relay's transport reads on after the handshake and after a cut-short
    # read, so OpenSSL may read ahead there; asyncio's SSL (the API) stalled with it.
    assert node.tls is not None
    assert read_ahead(node.tls.relay_context)
    assert not read_ahead(node.tls.context)
    assert node.tls.context.options == node.tls.relay_context.options
    assert node.tls.context.minimum_version == node.tls.relay_context.minimum_version
    fresh = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert not read_ahead(fresh)
    assert set_read_ahead(fresh)
    assert read_ahead(fresh)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_tls11_and_older_are_refused(node: Node, version: ssl.TLSVersion) -> None:
    assert node.ca_file is not None
    ctx = _legacy_client(version, node.ca_file)
    for port in _ports(node):
        with pytest.raises(ssl.SSLError) as refused:
            await asyncio.to_thread(_handshake, port, ctx)
        # The client did offer the old version (it did not fail locally with
        # NO_PROTOCOLS_AVAILABLE); the server refused it with an alert or a hang-up.
        assert refused.value.reason in (
            "TLSV1_ALERT_PROTOCOL_VERSION",
            "UNEXPECTED_EOF_WHILE_READING",
        ), refused.value


async def test_generated_ca_is_private_and_reused_across_restarts(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "var")
    async with Node(settings) as first:
        assert first.ca_file is not None
        ca_pem = first.ca_file.read_bytes()
        leaf_pem = (settings.tls_dir / "server.pem").read_bytes()
        await first.store.add_host("perm@example.com", "x", 0.0)  # the WAL exists while open
        wal_mode = stat.S_IMODE((settings.data_dir / "switchboard.db-wal").stat().st_mode)
        assert wal_mode == 0o600
    for key in ("tls/ca-key.pem", "tls/server-key.pem", "switchboard.db"):
        mode = stat.S_IMODE((settings.data_dir / key).stat().st_mode)
        assert mode == 0o600, f"{key} is readable by others: {oct(mode)}"
    for folder in (settings.data_dir, settings.tls_dir):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    async with Node(settings) as second:
        assert second.ca_file is not None
        assert second.ca_file.read_bytes() == ca_pem
        assert (settings.tls_dir / "server.pem").read_bytes() == leaf_pem
    # A new public host name gets a new server certificate from the same CA.
    async with Node(settings.replace(public_host="relay.example.test")) as third:
        assert third.ca_file is not None
        assert third.ca_file.read_bytes() == ca_pem
        leaf = x509.load_pem_x509_certificate((settings.tls_dir / "server.pem").read_bytes())
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "relay.example.test" in san.get_values_for_type(x509.DNSName)


def _make_cert(directory: Path, serial: int) -> tuple[Path, Path, Path]:
    """A CA and a localhost certificate with a known serial number."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {serial}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(serial + 1000)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def _served_serial(port: int) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_sighup_reloads_the_certificate_without_dropping_connections(
    tmp_path: Path, serve_factory: Callable[..., ServeProcess]
) -> None:
    """A real ``switchboard serve`` process with configured certificate files."""
    ca1, cert, key = _make_cert(tmp_path / "one", serial=111)
    ca2, cert2, key2 = _make_cert(tmp_path / "two", serial=222)
    config = tmp_path / "switchboard.toml"
    config.write_text(f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    data_dir = tmp_path / "var"
    host_add(data_dir, "sighup@example.com", PASSWORD)
    sp = serve_factory("--config", str(config), data_dir=data_dir)
    assert sp.ca_file is None  # configured certificates: nothing generated
    assert not (data_dir / "tls").exists()
    assert await asyncio.to_thread(_served_serial, sp.relay_port) == 111

    # Two participants join over the first certificate.
    async with ApiClient(sp.api_url, ca_file=ca1) as api:
        await api.sign_in("sighup@example.com", PASSWORD)
        mid = (await api.create_meeting())["meeting_id"]
        invitations = [(await api.invite(mid))["token"] for _ in range(4)]
    a = await Participant.join(sp.relay_url, invitations[0], ca_file=ca1)
    b = await Participant.join(sp.relay_url, invitations[1], ca_file=ca1)

    # Swap the files and reload.
    cert1_pem = cert.read_bytes()
    cert.write_bytes(cert2.read_bytes())
    key.write_bytes(key2.read_bytes())
    sp.proc.send_signal(signal.SIGHUP)
    async with asyncio.timeout(TIMEOUT):
        while await asyncio.to_thread(_served_serial, sp.relay_port) != 222:
            await asyncio.sleep(0.05)
    assert await asyncio.to_thread(_served_serial, sp.api_port) == 222

    # Old connections are untouched and keep switching; new ones use the new chain.
    await a.send_chat("after reload")
    assert (await next_event(b, Chat)).text == "after reload"
    c = await Participant.join(sp.relay_url, invitations[2], ca_file=ca2)
    await c.send_chat("new cert")
    assert (await next_event(a, Chat)).text == "new cert"

    # A broken pair (certificate one, key two) is refused; the relay keeps serving pair two.
    cert.write_bytes(cert1_pem)
    sp.proc.send_signal(signal.SIGHUP)
    async with asyncio.timeout(TIMEOUT):
        while b"tls reload failed" not in sp.log_file.read_bytes():
            await asyncio.sleep(0.05)
    assert await asyncio.to_thread(_served_serial, sp.relay_port) == 222
    d = await Participant.join(sp.relay_url, invitations[3], ca_file=ca2)
    for p in (a, b, c, d):
        await p.leave()
    assert await asyncio.to_thread(sp.stop) == 0
