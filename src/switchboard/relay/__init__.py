"""The data plane: TLS websocket listener, per-connection adapter, and the hub that switches.

:func:`start_relay` binds the wss listener on an existing socket; the
composition root (:mod:`switchboard.node`) decides where and with which TLS
context.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from .connection import WS_PATH, BufferedRelayConnection, RelayConnection
from .hub import Hub, Room

__all__ = ["WS_PATH", "Hub", "RelayConnection", "Room", "start_relay"]


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

    ``transport`` picks who drives TLS: ``aiofastnet`` (a Cython transport
    that calls OpenSSL directly, with fewer copies and calls per record; the
    default, measured cheaper per delivery) or ``asyncio`` (the loop's own SSL
    protocol). Both serve the same :class:`ssl.SSLContext`, so versions,
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

        server: asyncio.Server = await aiofastnet.create_server(
            loop, factory, sock=sock, ssl=context, ssl_handshake_timeout=join_timeout, backlog=1024
        )
        return server
    return await loop.create_server(
        factory, sock=sock, ssl=context, ssl_handshake_timeout=join_timeout, backlog=1024
    )
