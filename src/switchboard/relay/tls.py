"""TLS for every listener: server contexts, a generated local CA, reload on SIGHUP.

There is no plaintext listener anywhere in switchboard. When no certificate is
configured, the first start creates a private CA and a server certificate
signed by it under ``<data_dir>/tls`` (keys readable by the owner only) and
reuses them on later starts; clients trust ``ca.pem``. A production deployment
points ``tls_cert``/``tls_key`` at real files instead.

Each listener (wss and https) has its own :class:`ssl.SSLContext`, made by the
same code with the same policy, because the relay sets context-wide OpenSSL
options the API's TLS must not get (see :func:`set_read_ahead`). Reloading
loads the new chain into both: handshakes after the reload use the new
certificate, and established connections are not touched.

Protocol policy follows Mozilla's "intermediate" profile: TLS 1.2 minimum,
TLS 1.3 preferred, forward-secret AEAD ciphers only, no compression, no
renegotiation.
"""

from __future__ import annotations

import _ssl
import ctypes
import datetime as dt
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError

__all__ = [
    "MOZILLA_INTERMEDIATE_CIPHERS",
    "CertPaths",
    "ServerTLS",
    "ensure_local_ca",
    "read_ahead",
    "set_read_ahead",
]

MOZILLA_INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
"""TLS 1.2 cipher suites of Mozilla's intermediate profile (TLS 1.3 suites are all fine)."""

_CA_DAYS = 3650
_LEAF_DAYS = 397  # the most a browser accepts for a server certificate
_RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where the server's chain and key are, and the CA clients should trust (if ours)."""

    cert: Path
    key: Path
    ca: Path | None


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _names(public_host: str) -> list[x509.GeneralName]:
    hosts = {public_host, "localhost", socket.gethostname()}
    names: list[x509.GeneralName] = []
    for host in sorted(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    for ip in ("127.0.0.1", "::1"):
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    return names


def ensure_local_ca(tls_dir: Path, public_host: str) -> CertPaths:
    """Create (or reuse) a local CA and a server certificate for ``public_host``.

    The CA is made once. The server certificate is made again when it is
    missing, near expiry, or does not name ``public_host``.
    """
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert_path, ca_key_path = tls_dir / "ca.pem", tls_dir / "ca-key.pem"
    cert_path, key_path = tls_dir / "server.pem", tls_dir / "server-key.pem"
    now = dt.datetime.now(dt.UTC)

    if ca_cert_path.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{ca_key_path} is not an EC private key")
        ca_key = loaded
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "switchboard local CA"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"switchboard CA {socket.gethostname()}"),
            ]
        )
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(
            ca_key_path,
            ca_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        cert_path.unlink(missing_ok=True)

    if _leaf_is_current(cert_path, key_path, public_host, now):
        return CertPaths(cert_path, key_path, ca_cert_path)

    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, public_host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(public_host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + ca_cert.public_bytes(serialization.Encoding.PEM)
    )
    return CertPaths(cert_path, key_path, ca_cert_path)


def _leaf_is_current(cert_path: Path, key_path: Path, host: str, now: dt.datetime) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    if leaf.not_valid_after_utc - _RENEW_BEFORE < now:
        return False
    try:
        wanted: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        wanted = x509.DNSName(host)
    return wanted in san


_SSL_CTRL_GET_READ_AHEAD = 40
_SSL_CTRL_SET_READ_AHEAD = 41  # SSL_CTX_set_read_ahead is a macro over SSL_CTX_ctrl


def set_read_ahead(context: ssl.SSLContext) -> bool:
    """Let OpenSSL read ahead on connections made from ``context``; True if it now does.

    With the relay's socket BIO (``relay/__init__.py``), OpenSSL reads the
    socket itself, and by default it reads a record's 5-byte header and then
    its body: two ``read`` calls per record. Read-ahead makes it one read of
    whatever the socket holds. The catch is that OpenSSL may then hold
    records no readiness event will announce, so the transport must read again
    after the handshake (aiofastnet does) and after a read it cut short (the
    relay's connection does, see ``ConnectionCore.buffer_updated``). asyncio's
    own SSL does neither, which is why the API gets a context without it.
    """
    _ctrl(context, _SSL_CTRL_SET_READ_AHEAD, 1)
    return read_ahead(context)


def read_ahead(context: ssl.SSLContext) -> bool:
    """Whether OpenSSL reads ahead on connections made from ``context``."""
    return _ctrl(context, _SSL_CTRL_GET_READ_AHEAD, 0) == 1


def _ctrl(context: ssl.SSLContext, op: int, arg: int) -> int | None:
    """``SSL_CTX_ctrl`` on the context's ``SSL_CTX``; None if that cannot be done safely.

    The standard library has no read-ahead setter. The pointer is read from
    CPython's object layout (``PySSLContext`` starts with ``PyObject_HEAD``, then
    ``SSL_CTX *ctx``), as aiofastnet reads it, and checked first: OpenSSL's
    options for it must equal ``context.options``.
    """
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        ctrl = lib.SSL_CTX_ctrl
        get_options = lib.SSL_CTX_get_options
    except (AttributeError, OSError):  # _ssl built in, or OpenSSL without the symbols
        return None
    ctrl.restype = ctypes.c_long
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    get_options.argtypes = [ctypes.c_void_p]
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or get_options(pointer) != context.options:
        return None
    return int(ctrl(pointer, op, arg, None))


def _server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MOZILLA_INTERMEDIATE_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_SINGLE_ECDH_USE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class ServerTLS:
    """The server-side TLS contexts of a process (API and relay), and how to reload them."""

    def __init__(self, paths: CertPaths) -> None:
        self.paths = paths
        self.context = _server_context()
        """The HTTPS API's context (the event loop's SSL)."""
        self.relay_context = _server_context()
        """The relay's: the same policy and certificate, plus what ``start_relay`` sets."""
        self.reload()

    def reload(self) -> None:
        """Load the chain and key from disk again (SIGHUP). Raise ConfigError if broken.

        The pair is first loaded into a scratch context: a certificate that does
        not match its key (say, a half-finished renewal) is refused there, and
        the live context keeps serving the previous pair.
        """
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.paths.cert, self.paths.key)
            for context in (self.context, self.relay_context):
                context.load_cert_chain(self.paths.cert, self.paths.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load TLS certificate {self.paths.cert} / key {self.paths.key}: {exc}"
            ) from None
