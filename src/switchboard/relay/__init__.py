"""The data plane: TLS websocket listener, per-connection adapter, and the hub that switches.

:func:`start_relay` binds the wss listener on an existing socket; the
composition root (:mod:`switchboard.node`) decides where and with which TLS
context.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from .connection import WS_PATH, BufferedRelayConnection, RelayConnection
from .hub import Hub, Room
from .tls import set_read_ahead

__all__ = ["WS_PATH", "Hub", "RelayConnection", "Room", "start_relay"]

log = logging.getLogger(__name__)

_SOCKET_BIO = "_aiofastnet_force_socket_bio"
"""Set on the context, aiofastnet's OpenSSL reads and writes the socket itself.

Without it each connection gets two memory BIOs of 256 KiB, and an idle
connection keeps at least a page of each resident: measured 32-34 KiB per idle
connection against 19 KiB with the socket BIO (5,000 participants, the ``idle``
benchmark), and 238 against 169 MiB peak in ``chat``. The price is a ``read``
per wake that finds the socket empty, and without read-ahead
(:func:`~switchboard.relay.tls.set_read_ahead`, set by :func:`start_relay`)
another per record, for its 5-byte header. aiofastnet reads the flag
with ``getattr(context, name, False)``: should a release drop it, connections go
back to memory BIOs, which behave the same and cost more memory, and
``tests/test_relay_transport.py`` fails on the memory.
"""


async def start_relay(
    hub: Hub,
    context: ssl.SSLContext,
    sock: socket.socket,
    *,
    max_size: int,
    join_timeout: float,
    write_limit: int,
    send_buffer: int = 0,
    bulk_limit: int = 128 << 20,
    transport: str = "aiofastnet",
) -> asyncio.Server:
    """Serve meeting clients on ``sock`` over TLS; every connection goes to ``hub``.

    With aiofastnet, ``context`` is changed for the relay (socket BIO,
    read-ahead), so it must be the relay's own (``ServerTLS.relay_context``).

    ``transport`` picks who drives TLS: ``aiofastnet`` (a Cython transport
    that calls OpenSSL directly, with fewer copies and calls per record, and
    OpenSSL on the socket itself and reading ahead, see :data:`_SOCKET_BIO`; the
    default, measured cheaper per delivery and per idle connection) or ``asyncio`` (the loop's own
    SSL protocol). Both serve a context made like the API's, so versions,
    ciphers and certificate reloads are the same.
    """
    loop = asyncio.get_running_loop()

    kind = BufferedRelayConnection if transport == "aiofastnet" else RelayConnection

    def factory() -> RelayConnection:
        return kind(
            hub,
            max_size=max_size,
            join_timeout=join_timeout,
            write_limit=write_limit,
            send_buffer=send_buffer,
            bulk_limit=bulk_limit,
        )

    if transport == "aiofastnet":
        import aiofastnet

        setattr(context, _SOCKET_BIO, True)
        # One read per record instead of header and body; the connection reads
        # on after a read it cut short (``_read_cut_short``), aiofastnet after
        # the handshake. A setting of the whole context: hence the relay's own.
        if not set_read_ahead(context):
            log.warning("tls read-ahead unavailable: two reads per TLS record")

        server: asyncio.Server = await aiofastnet.create_server(
            loop, factory, sock=sock, ssl=context, ssl_handshake_timeout=join_timeout, backlog=1024
        )
        return server
    return await loop.create_server(
        factory, sock=sock, ssl=context, ssl_handshake_timeout=join_timeout, backlog=1024
    )
