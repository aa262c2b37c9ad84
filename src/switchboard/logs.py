"""Structured logs that can be kept: events and codes, never content, addresses as configured.

One event per line, as ``key=value`` text or as JSON objects (``log_format``).
Nothing switchboard logs contains frame content: the relay logs meeting ids,
participant numbers, roles, close and error codes. The only personal data a
log line can hold is a client address, in the API's access log; how much of it
is kept is ``client_ip_logging``:

* ``full``: as is;
* ``truncated`` (default): IPv4 to its /24, IPv6 to its /48 (``203.0.113.0``),
  enough to see abuse patterns, not to identify a household;
* ``none``: replaced by ``-``.

Query strings are cut from logged paths, so no token in a link reaches a log.

Logs go to standard error; keeping and rotating them is the service manager's
job (journald, logrotate). See ``docs/topics/privacy.md`` for retention.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
import time
from typing import Any

__all__ = [
    "ClientAddressFilter",
    "JsonFormatter",
    "KeyValueFormatter",
    "frame_blind",
    "mask_address",
    "setup",
]


class _FrameBlindLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that reports DEBUG (and INFO) as disabled, whatever the configuration."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


def frame_blind(name: str) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """The logger to give the websockets library (server and client side alike).

    websockets prints frame contents at DEBUG; this logger can never enable
    DEBUG, so no configuration can make frame content reach a log.
    """
    return _FrameBlindLogger(logging.getLogger(name), {})


def mask_address(address: str, policy: str) -> str:
    """An address as ``policy`` allows it to be logged."""
    if policy == "full":
        return address
    if policy == "none":
        return "-"
    # uvicorn writes "host:port", IPv6 hosts without brackets: the port is after the last colon.
    host, sep, port = address.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        try:
            ip, sep, port = ipaddress.ip_address(address.strip("[]")), "", ""
        except ValueError:
            return "-"
    prefix = 24 if ip.version == 4 else 48
    network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    masked = str(network.network_address)
    return f"{masked}{sep}{port}" if sep else masked


class ClientAddressFilter(logging.Filter):
    """Rewrites the client address of uvicorn access log records per the policy."""

    def __init__(self, policy: str) -> None:
        super().__init__()
        self.policy = policy

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and isinstance(args[0], str):
            rest = list(args[1:])
            if len(rest) >= 2 and isinstance(rest[1], str):
                # The path without its query: a verification link's token stays out of logs.
                rest[1] = rest[1].split("?", 1)[0]
            record.args = (mask_address(args[0], self.policy), *rest)
        return True


def _utc(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."``: greppable, one event per line."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"ts={_utc(record)} level={record.levelname.lower()} logger={record.name} "
            f"msg={json.dumps(record.getMessage())}"
        )
        if record.exc_info:
            line += f" exc={json.dumps(self.formatException(record.exc_info))}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event)


def setup(level: str, *, fmt: str = "text", client_ip: str = "truncated") -> None:
    """Configure the root logger once, at the edge (the CLI)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access = logging.getLogger("uvicorn.access")
    access.filters[:] = [ClientAddressFilter(client_ip)]
    # Client libraries used by the demo log every request at INFO; keep them quiet.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, root.level))
