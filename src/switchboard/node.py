"""The composition root of one switchboard process: everything wired, nothing global.

A :class:`Node` takes validated :class:`~switchboard.config.Settings` and builds
the rest from them: TLS material (generated on first start if none is
configured), the store chosen by URL scheme, the hub, the wss listener and the
HTTPS API, all on one event loop. The CLI (``switchboard serve``), the demo
and the tests all run a node the same way, so what the tests exercise is what
operators run.

Stopping is orderly: stop accepting, end every live meeting with
``relay_shutdown`` (records committed), close connections, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import uvicorn

from .api import Services, create_app
from .client.api import tls_context as client_tls_context
from .clock import Clock
from .config import Settings
from .errors import ConfigError
from .ledger import Ledger, RecordSpool
from .passwords import Passwords
from .relay import WS_PATH, Hub, start_relay
from .relay.connection import COMPILED
from .relay.hub import DropPolicy
from .relay.tls import CertPaths, ServerTLS, ensure_local_ca
from .signing import RecordSigner
from .store import Store, open_store
from .webhook import WebhookSender

__all__ = ["Node", "hold_data_dir"]

log = logging.getLogger("switchboard")

_DRAIN_SECONDS = 5.0
_UNVERIFIED_SECONDS = 48 * 3600.0
"""Sign-ups not verified within this time are forgotten (their link expired too)."""


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the node owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def hold_data_dir(data_dir: Path) -> int:
    """Take the data directory for this process: one server per data directory.

    The lock is an ``flock`` on ``<data_dir>/serve.lock``; the kernel drops it
    when the process ends, however it ends. ``switchboard restore`` checks it.
    """
    fd = os.open(data_dir / "serve.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"another switchboard serve is using {data_dir}") from None
    return fd


def _node_id(path: Path) -> str:
    """This node's stable name: made once, kept in the data directory."""
    if path.exists():
        return path.read_text().strip()
    node_id = "n_" + secrets.token_hex(6)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(node_id + "\n")
    return node_id


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


class Node:
    """One running switchboard: relay and API over TLS, sharing a store and a loop."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or Clock()
        self.tls: ServerTLS | None = None
        self._store: Store | None = None
        self._hub: Hub | None = None
        self._relay: asyncio.Server | None = None
        self._api: _EmbeddedUvicorn | None = None
        self._api_task: asyncio.Task[None] | None = None
        self.relay_port = 0
        self.api_port = 0
        self.node_id = ""
        self._webhook: WebhookSender | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None

    @property
    def store(self) -> Store:
        """The store (after :meth:`start`)."""
        assert self._store is not None, "node not started"
        return self._store

    @property
    def hub(self) -> Hub:
        """The hub (after :meth:`start`)."""
        assert self._hub is not None, "node not started"
        return self._hub

    @property
    def relay_url(self) -> str:
        """Where meeting clients connect."""
        return f"wss://{self.settings.public_host}:{self.relay_port}{WS_PATH}"

    @property
    def api_url(self) -> str:
        """Base URL of the HTTPS API."""
        return f"https://{self.settings.public_host}:{self.api_port}"

    @property
    def ca_file(self) -> Path | None:
        """The CA certificate clients must trust, when the node generated its own."""
        return self.tls.paths.ca if self.tls is not None else None

    def _tls_paths(self) -> CertPaths:
        s = self.settings
        if s.tls_cert is not None and s.tls_key is not None:
            return CertPaths(s.tls_cert, s.tls_key, None)
        return ensure_local_ca(s.tls_dir, s.public_host)

    async def start(self) -> None:
        """Bring everything up; raise :class:`ConfigError` if something cannot start."""
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = hold_data_dir(s.data_dir)
        self.tls = ServerTLS(await asyncio.to_thread(self._tls_paths))
        relay_sock = _bind(s.bind, s.relay_port)
        try:
            api_sock = _bind(s.bind, s.api_port)
        except ConfigError:
            relay_sock.close()
            raise
        self.relay_port = relay_sock.getsockname()[1]
        self.api_port = api_sock.getsockname()[1]

        self._store = await open_store(s.effective_database_url)
        self.node_id = s.node_id or await asyncio.to_thread(_node_id, s.data_dir / "node-id")
        self.signer = await asyncio.to_thread(
            RecordSigner.load_or_create, s.data_dir / "cdr-signing-key.pem"
        )
        self.ledger = Ledger(
            self._store,
            node_id=self.node_id,
            signer=self.signer,
            spool=RecordSpool(s.data_dir / "spool"),
            deliver=bool(s.webhook_url),
        )
        # Records first: what a previous run left behind is settled before anyone joins.
        await self.ledger.replay(self.clock.wall())
        await self.ledger.recover(self.clock.wall())
        if s.webhook_url:
            self._webhook = WebhookSender(
                self._store,
                url=s.webhook_url,
                secret=s.webhook_secret,
                clock=self.clock,
                context=client_tls_context(s.webhook_ca_file),
                retry_base=s.webhook_retry_base,
                retry_max=s.webhook_retry_max,
            )
            self._webhook.start()
        self._hub = Hub(
            self._store,
            clock=self.clock,
            max_participants=s.max_participants,
            max_connections=s.max_connections,
            ping_interval=s.ping_interval,
            reconnect_grace=s.reconnect_grace,
            limits=s.limits(),
            drop=DropPolicy(s.drop_video_bytes, s.drop_screen_bytes, s.drop_audio_bytes),
            ledger=self.ledger,
            checkpoint_interval=s.checkpoint_interval,
            idle_timeout=s.meeting_idle_timeout,
            on_commit=self._webhook.notify if self._webhook is not None else None,
        )
        self._hub.start()
        self._purge_task = asyncio.get_running_loop().create_task(self._purge_daily())
        self._relay = await start_relay(
            self._hub,
            self.tls.relay_context,
            relay_sock,
            max_size=s.max_frame_bytes,
            join_timeout=s.join_timeout,
            write_limit=s.write_buffer_limit,
            send_buffer=s.socket_send_buffer,
            bulk_limit=s.max_document_bytes + s.write_buffer_limit,
            transport=s.tls_transport,
        )
        passwords = Passwords(concurrency=s.password_hash_concurrency)
        # Unknown emails are checked against a dummy hash; make it now, so the
        # first sign-in with an unknown email takes no longer than with a known one.
        await passwords.verify(None, "")
        services = Services(
            settings=s,
            store=self._store,
            hub=self._hub,
            passwords=passwords,
            clock=self.clock,
            join_url=self.relay_url,
            public_key_pem=self.signer.public_pem(),
            api_url=self.api_url,
        )
        tls_context = self.tls.context
        config = uvicorn.Config(
            create_app(services),
            log_config=None,
            lifespan="off",
            ssl_context_factory=lambda _config, _default: tls_context,
            server_header=False,
            proxy_headers=False,
            timeout_keep_alive=30,
            limit_concurrency=2000,
            h11_max_incomplete_event_size=16 * 1024,
        )
        self._api = _EmbeddedUvicorn(config)
        self._api_task = asyncio.get_running_loop().create_task(self._api.serve([api_sock]))
        while not self._api.started:
            if self._api_task.done():
                self._api_task.result()
                raise ConfigError("the API server stopped during start")
            await asyncio.sleep(0.01)
        log.info(
            "relay listening url=%s core=%s", self.relay_url, "compiled" if COMPILED else "python"
        )
        log.info("api listening url=%s", self.api_url)

    async def _purge_daily(self) -> None:
        """Erase personal data of accounts deleted more than the retention period ago."""
        while True:
            now = self.clock.wall()
            try:
                purged = await self.store.purge_hosts(
                    now - self.settings.account_retention_days * 86400, now
                )
                if purged:
                    log.info("purged deleted accounts count=%d", purged)
                await self.store.delete_expired(
                    now,
                    idle_timeout=self.settings.session_idle_timeout,
                    max_lifetime=self.settings.session_max_lifetime,
                    unverified_before=now - _UNVERIFIED_SECONDS,
                )
            except Exception:
                log.exception("account purge failed")
            await asyncio.sleep(86400)

    def reload_tls(self) -> None:
        """Load the certificate and key again (SIGHUP); open connections are not touched."""
        if self.tls is None:
            return
        try:
            self.tls.reload()
        except ConfigError as exc:
            log.error("tls reload failed, keeping the previous certificate: %s", exc.reason)
        else:
            log.info("tls certificate reloaded cert=%s", self.tls.paths.cert)

    async def stop(self) -> None:
        """Stop accepting, end live meetings with their records, close everything."""
        if self._purge_task is not None:
            self._purge_task.cancel()
        if self._relay is not None:
            self._relay.close()
        if self._hub is not None:
            await self._hub.shutdown()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DRAIN_SECONDS):
                    await self._hub.drained()
            for conn in list(self._hub.connections):
                conn.close(1001, "relay stopped")
                if conn.transport is not None:
                    conn.transport.abort()
        if self._webhook is not None:
            with contextlib.suppress(Exception):
                await self._webhook.deliver_due()  # the shutdown records, if the receiver is up
            await self._webhook.close()
            self._webhook = None
        if self._api is not None and self._api_task is not None:
            self._api.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._api_task
        if self._store is not None:
            await self._store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the data directory
            self._lock_fd = None
        self._relay = self._api = self._api_task = None

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
