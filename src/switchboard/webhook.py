"""Push each final call record to billing: signed HTTPS POSTs, retried until acknowledged.

Delivery is at least once, tracked in the store (``webhook_deliveries``), so it
survives restarts: a record is queued in the same transaction that commits it,
and stays queued until the receiver answers 2xx. Failures are retried with
exponential backoff (``webhook_retry_base`` doubling up to
``webhook_retry_max``, with jitter). A receiver must therefore be idempotent:
the ``Idempotency-Key`` header carries the record id.

Each request is signed so the receiver can trust it came from this relay::

    Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

The receiver recomputes the HMAC over the timestamp and the raw body with the
shared secret, compares in constant time, and rejects old timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import ssl
import time

import httpx

from .clock import Clock
from .store import Store, StoredRecord

__all__ = ["WebhookSender", "signature_header", "verify_signature"]

log = logging.getLogger("switchboard.webhook")

SIGNATURE_HEADER = "Switchboard-Signature"


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str, body: bytes, header: str, *, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """Check a signature header as a receiver would (for receivers written in Python)."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = signature_header(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class WebhookSender:
    """Delivers queued records to one billing endpoint."""

    def __init__(
        self,
        store: Store,
        *,
        url: str,
        secret: str,
        clock: Clock,
        context: ssl.SSLContext,
        retry_base: float = 1.0,
        retry_max: float = 300.0,
        poll_interval: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.url = url
        self.secret = secret
        self.clock = clock
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.poll_interval = poll_interval
        self._http = httpx.AsyncClient(verify=context, timeout=timeout)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start delivering in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def notify(self) -> None:
        """A record was queued: look now rather than at the next poll."""
        self._wake.set()

    async def close(self) -> None:
        """Stop delivering; what is not delivered stays queued in the store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.deliver_due()
            except Exception:
                log.exception("webhook delivery round failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            self._wake.clear()

    async def deliver_due(self) -> int:
        """Try every delivery that is due once; return how many succeeded."""
        delivered = 0
        for stored, attempts in await self.store.due_deliveries(self.clock.wall()):
            if await self._deliver(stored, attempts):
                delivered += 1
        return delivered

    async def _deliver(self, stored: StoredRecord, attempts: int) -> bool:
        body = json.dumps({"cursor": stored.seq, **stored.record.to_dict()}).encode()
        timestamp = int(self.clock.wall())
        headers = {
            "content-type": "application/json",
            "idempotency-key": stored.record.record_id,
            SIGNATURE_HEADER: signature_header(self.secret, body, timestamp),
        }
        try:
            response = await self._http.post(self.url, content=body, headers=headers)
            ok, status = 200 <= response.status_code < 300, str(response.status_code)
        except httpx.HTTPError as exc:
            ok, status = False, type(exc).__name__
        now = self.clock.wall()
        delay = min(self.retry_max, self.retry_base * 2**attempts) * (0.5 + random.random() / 2)
        await self.store.delivery_done(
            stored.record.record_id, ok=ok, status=status, now=now, retry_at=now + delay
        )
        if not ok:
            log.warning(
                "webhook delivery failed record=%s attempt=%d status=%s",
                stored.record.record_id,
                attempts + 1,
                status,
            )
        return ok
