"""Storage backends behind one interface, chosen by URL scheme.

``sqlite:///path`` is the embedded default. Callers get a
:class:`~switchboard.store.base.Store` from :func:`open_store` and never import
a backend module themselves.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import (
    ApiKey,
    HostAccount,
    HostSession,
    Invitation,
    MeetingRow,
    Redemption,
    Store,
    StoredRecord,
)

__all__ = [
    "ApiKey",
    "HostAccount",
    "HostSession",
    "Invitation",
    "MeetingRow",
    "Redemption",
    "Store",
    "StoredRecord",
    "open_store",
]


async def open_store(url: str) -> Store:
    """Open the store named by ``url`` (schema created or migrated)."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        store = SqliteStore.from_url(url)
    else:
        raise ConfigError(f"unsupported store URL scheme {scheme!r}")
    await store.open()
    return store
