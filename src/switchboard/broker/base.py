"""The broker interface: one copy of each message per subscribed node.

A relay node that has participants of a meeting subscribes to that meeting's
channel; whatever another node publishes there is delivered to it once, and
the node fans it out to its own participants. A publisher never waits for a
subscriber: :meth:`Broker.publish` is synchronous and raises
:class:`~switchboard.errors.BrokerFull` when a subscriber's queue is full, so the
caller applies its drop policy. Messages are opaque bytes (already-encoded
frames), never content the broker could read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Broker", "Deliver"]

Deliver = Callable[[str, bytes], None]
"""Called on the subscriber's event loop with (channel, message)."""


class Broker(Protocol):
    """Cross-node fan-out. Messages a node publishes are not delivered back to it."""

    node_id: str

    async def start(self, deliver: Deliver) -> None:
        """Begin delivering messages for subscribed channels to ``deliver``."""

    async def subscribe(self, channel: str) -> None:
        """Receive messages published to ``channel`` by other nodes."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""

    def publish(self, channel: str, message: bytes) -> None:
        """Queue ``message`` for every other node subscribed to ``channel``; never blocks."""

    async def close(self) -> None:
        """Stop delivering and release resources."""
