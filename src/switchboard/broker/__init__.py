"""Cross-process fan-out behind one interface, chosen by URL scheme.

``local:`` (the default) keeps everything in this process. A single-node relay
switches every frame locally and needs no broker traffic at all; the broker
carries traffic between nodes once a meeting spans several (scale-out).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Broker, Deliver

__all__ = ["Broker", "Deliver", "open_broker"]


def open_broker(url: str) -> Broker:
    """Create the broker named by ``url`` (not yet started)."""
    scheme = url.split(":", 1)[0]
    if scheme == "local":
        from .local import LocalBroker

        return LocalBroker()
    raise ConfigError(f"unsupported broker URL scheme {scheme!r}")
