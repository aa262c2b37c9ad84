"""The in-process broker: nodes of one process share a bus.

It is the default for a single-process relay and the reference the contract
suite holds other brokers to. It behaves like a networked broker where it
matters: a message is delivered later (never inside ``publish``), to other
nodes only, each subscriber has a bounded queue, and a full queue raises
:class:`~switchboard.errors.BrokerFull` instead of growing without limit.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque

from ..errors import BrokerError, BrokerFull
from .base import Deliver

__all__ = ["LocalBroker", "LocalBus"]


class LocalBus:
    """Channels shared by the :class:`LocalBroker` nodes of one process."""

    def __init__(self) -> None:
        self.channels: dict[str, set[LocalBroker]] = {}


_DEFAULT_BUS = LocalBus()


class LocalBroker:
    """A :class:`~switchboard.broker.base.Broker` within one process."""

    def __init__(self, *, bus: LocalBus | None = None, max_queue: int = 10_000) -> None:
        self.node_id = "n_" + secrets.token_hex(6)
        self._bus = _DEFAULT_BUS if bus is None else bus
        self._max_queue = max_queue
        self._queue: deque[tuple[str, bytes]] = deque()
        self._deliver: Deliver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._subscribed: set[str] = set()

    async def start(self, deliver: Deliver) -> None:
        """See :class:`~switchboard.broker.base.Broker`."""
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()

    async def subscribe(self, channel: str) -> None:
        """See :class:`~switchboard.broker.base.Broker`."""
        if self._deliver is None:
            raise BrokerError("broker not started")
        self._bus.channels.setdefault(channel, set()).add(self)
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        """See :class:`~switchboard.broker.base.Broker`."""
        nodes = self._bus.channels.get(channel)
        if nodes is not None:
            nodes.discard(self)
            if not nodes:
                del self._bus.channels[channel]
        self._subscribed.discard(channel)

    def publish(self, channel: str, message: bytes) -> None:
        """See :class:`~switchboard.broker.base.Broker`."""
        full = []
        for node in self._bus.channels.get(channel, ()):
            if node is not self and not node._enqueue(channel, message):
                full.append(node.node_id)
        if full:
            raise BrokerFull(f"subscriber queue full on {len(full)} node(s)")

    def _enqueue(self, channel: str, message: bytes) -> bool:
        if len(self._queue) >= self._max_queue or self._loop is None:
            return False
        self._queue.append((channel, message))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._drain)
        return True

    def _drain(self) -> None:
        self._scheduled = False
        deliver = self._deliver
        queue = self._queue
        while queue and deliver is not None:
            channel, message = queue.popleft()
            if channel in self._subscribed:
                deliver(channel, message)

    async def close(self) -> None:
        """See :class:`~switchboard.broker.base.Broker`."""
        for channel in list(self._subscribed):
            await self.unsubscribe(channel)
        self._deliver = None
        self._queue.clear()
