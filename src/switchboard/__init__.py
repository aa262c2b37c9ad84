"""switchboard: a real-time meeting switching relay.

Hosts create meetings and invite participants; participants connect over
secure websockets and every frame they send is switched to the participants it
is meant for, without the relay reading or keeping it. What remains of a
meeting is a call-detail record for billing.

The public entry points are the CLI (``switchboard``), the async client SDK
(:mod:`switchboard.client`) and :class:`switchboard.node.Node` for embedding.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
