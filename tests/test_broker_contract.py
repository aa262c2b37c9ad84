"""The Broker contract (switchboard.broker.base.Broker), run against every backend.

Each backend is one param of the ``cluster`` fixture, which makes nodes that
share one bus (for ``local``: a fresh :class:`LocalBus` per test; for a
networked backend: one server with a per-test channel namespace). Only
``local`` exists today.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from switchboard.broker import Broker, open_broker
from switchboard.broker.local import LocalBroker, LocalBus
from switchboard.errors import BrokerError, BrokerFull, ConfigError

SETTLE_TIMEOUT = 2.0
MARKER = b"--settle--"


@dataclass
class Node:
    """A started broker and everything delivered to it."""

    broker: Broker
    cluster: Cluster
    inbox: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def got(self) -> list[tuple[str, bytes]]:
        """What was delivered, without the markers :func:`settle` sends."""
        return [(c, m) for c, m in self.inbox if not m.startswith(MARKER)]

    def messages(self, channel: str) -> list[bytes]:
        return [m for c, m in self.got if c == channel]

    def publish(self, channel: str, message: bytes) -> None:
        """Publish, flagging the span so that a delivery inside publish is caught."""
        self.cluster.publishing = True
        try:
            self.broker.publish(channel, message)
        finally:
            self.cluster.publishing = False


class Cluster:
    """Makes nodes of one backend that see each other; checks and closes them at the end."""

    def __init__(self, make: Callable[[int], Broker]) -> None:
        self._make = make
        self.nodes: list[Node] = []
        self.publishing = False
        self.violations: list[str] = []

    async def node(self, *, max_queue: int = 10_000) -> Node:
        node = Node(self._make(max_queue), self)
        loop = asyncio.get_running_loop()

        def deliver(channel: str, message: bytes) -> None:
            # An exception here would only be logged by the loop: record, check later.
            if self.publishing:
                self.violations.append(f"{channel}: delivered inside publish()")
            if asyncio.get_running_loop() is not loop:
                self.violations.append(f"{channel}: delivered on another event loop")
            node.inbox.append((channel, message))

        await node.broker.start(deliver)
        self.nodes.append(node)
        return node

    async def close(self) -> None:
        for node in self.nodes:
            await node.broker.close()
        assert self.violations == []


def _local(bus: LocalBus) -> Callable[[int], Broker]:
    def make(max_queue: int) -> Broker:
        return LocalBroker(bus=bus, max_queue=max_queue)

    return make


BACKENDS = ["local"]


@pytest.fixture(params=BACKENDS)
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    if request.param == "local":
        c = Cluster(_local(LocalBus()))
    else:  # pragma: no cover - future backends
        raise NotImplementedError(request.param)
    try:
        yield c
    finally:
        await c.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = SETTLE_TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for delivery")
        await asyncio.sleep(0.001)


_markers = itertools.count()


async def settle(publisher: Node, receiver: Node, channel: str) -> None:
    """Publish a marker on ``channel`` and wait for it: everything before it has arrived."""
    marker = MARKER + b"%d" % next(_markers)
    publisher.publish(channel, marker)
    await wait_until(lambda: (channel, marker) in receiver.inbox)


# --- tests ---------------------------------------------------------------------


async def test_node_ids_are_unique(cluster: Cluster) -> None:
    nodes = [await cluster.node() for _ in range(5)]
    assert len({n.broker.node_id for n in nodes}) == 5


async def test_message_reaches_subscribed_other_node_not_the_publisher(cluster: Cluster) -> None:
    a = await cluster.node()
    b = await cluster.node()
    await a.broker.subscribe("m1")
    await b.broker.subscribe("m1")
    a.publish("m1", b"frame-1")
    # Never inside publish: nothing has arrived when publish returns.
    assert b.got == []
    await wait_until(lambda: b.got == [("m1", b"frame-1")])
    await settle(b, a, "m1")  # a's own message would have arrived by now
    assert a.got == []
    assert cluster.violations == []


async def test_every_other_subscriber_gets_one_copy(cluster: Cluster) -> None:
    a = await cluster.node()
    others = [await cluster.node() for _ in range(3)]
    for node in [a, *others]:
        await node.broker.subscribe("m1")
    a.publish("m1", b"x")
    for node in others:
        await wait_until(lambda node=node: node.got != [])
    for node in others:
        await settle(a, node, "m1")
        assert node.got == [("m1", b"x")]


async def test_messages_arrive_in_order_and_unchanged(cluster: Cluster) -> None:
    a = await cluster.node()
    b = await cluster.node()
    await b.broker.subscribe("m1")
    sent = [bytes([i % 256]) * (i % 7) + i.to_bytes(4, "big") for i in range(200)]
    sent.append(b"")
    for message in sent:
        a.publish("m1", message)
    assert b.got == []
    await wait_until(lambda: len(b.got) >= len(sent))
    assert b.messages("m1") == sent


async def test_order_is_kept_across_publish_bursts(cluster: Cluster) -> None:
    a = await cluster.node()
    b = await cluster.node()
    await b.broker.subscribe("m1")
    expected = []
    for burst in range(5):
        for i in range(10):
            message = b"%d-%d" % (burst, i)
            a.publish("m1", message)
            expected.append(message)
        await asyncio.sleep(0)
    await wait_until(lambda: len(b.got) >= len(expected))
    assert b.messages("m1") == expected


async def test_unsubscribed_channel_is_not_delivered(cluster: Cluster) -> None:
    a = await cluster.node()
    b = await cluster.node()
    await b.broker.subscribe("mine")
    a.publish("other", b"not for b")
    await settle(a, b, "mine")
    assert b.got == []


async def test_publish_with_no_subscribers_is_fine(cluster: Cluster) -> None:
    a = await cluster.node()
    await a.broker.subscribe("m1")
    a.publish("m1", b"alone")
    a.publish("nobody", b"alone")
    await asyncio.sleep(0.01)
    assert a.got == []


async def test_unsubscribe_stops_delivery(cluster: Cluster) -> None:
    a = await cluster.node()
    b = await cluster.node()
    await b.broker.subscribe("m1")
    await b.broker.subscribe("m2")
    a.publish("m1", b"before")
    await wait_until(lambda: b.got == [("m1", b"before")])
    await b.broker.unsubscribe("m1")
    a.publish("m1", b"after")
    await settle(a, b, "m2")
    assert b.messages("m1") == [b"before"]
    # Unsubscribing twice, or from a channel never joined, is harmless.
    await b.broker.unsubscribe("m1")
    await b.broker.unsubscribe("never")


async def test_full_queue_raises_broker_full_without_waiting(cluster: Cluster) -> None:
    a = await cluster.node()
    slow = await cluster.node(max_queue=3)
    roomy = await cluster.node()
    await slow.broker.subscribe("m1")
    await roomy.broker.subscribe("m1")
    for i in range(3):
        a.publish("m1", b"%d" % i)
    with pytest.raises(BrokerFull) as info:
        a.publish("m1", b"3")
    assert isinstance(info.value, BrokerError)
    assert info.value.code == "broker_full"
    # The full subscriber keeps what fit; other subscribers are not disturbed.
    await wait_until(lambda: len(slow.got) >= 3 and len(roomy.got) >= 4)
    assert slow.messages("m1") == [b"0", b"1", b"2"]
    assert roomy.messages("m1") == [b"0", b"1", b"2", b"3"]
    # Once drained, the queue has room again.
    a.publish("m1", b"4")
    await wait_until(lambda: b"4" in slow.messages("m1"))
    assert slow.messages("m1") == [b"0", b"1", b"2", b"4"]


async def test_close_stops_delivery(cluster: Cluster) -> None:
    a = await cluster.node()
    b = await cluster.node()
    c = await cluster.node()
    await b.broker.subscribe("m1")
    await c.broker.subscribe("m1")
    a.publish("m1", b"one")
    await wait_until(lambda: len(b.got) == 1 and len(c.got) == 1)
    # Queued but not yet delivered when b closes: must not arrive afterwards.
    a.publish("m1", b"in flight")
    await b.broker.close()
    a.publish("m1", b"after close")
    await settle(a, c, "m1")
    await asyncio.sleep(0.01)
    assert b.messages("m1") == [b"one"]
    assert c.messages("m1") == [b"one", b"in flight", b"after close"]


async def test_close_is_idempotent(cluster: Cluster) -> None:
    a = await cluster.node()
    await a.broker.subscribe("m1")
    await a.broker.close()
    await a.broker.close()


async def test_subscribe_before_start_is_refused() -> None:
    broker = LocalBroker(bus=LocalBus())
    with pytest.raises(BrokerError):
        await broker.subscribe("m1")
    await broker.close()


async def test_buses_are_isolated() -> None:
    first, second = LocalBus(), LocalBus()
    got: list[bytes] = []
    a = LocalBroker(bus=first)
    b = LocalBroker(bus=second)
    await a.start(lambda c, m: None)
    await b.start(lambda c, m: got.append(m))
    await b.subscribe("m1")
    a.publish("m1", b"x")
    await asyncio.sleep(0.01)
    assert got == []
    await a.close()
    await b.close()


def test_open_broker_by_scheme() -> None:
    assert isinstance(open_broker("local:"), LocalBroker)
    with pytest.raises(ConfigError):
        open_broker("kafka://nope")
