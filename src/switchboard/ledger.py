"""The one path every call record takes: checkpoint, commit (or spool), recover.

The call record is the one thing switchboard must never lose and never
double. This module is where that promise is kept, whatever the store does:

* **Checkpoints.** A live meeting's running record is stored when it starts
  and every ``checkpoint_interval`` seconds, so a crash loses at most one
  interval (RADIUS-style start/interim/stop accounting).
* **Commit.** The final record is committed durably (signed, chained) before
  the end of a meeting is acknowledged to anyone. If the store cannot be
  written (disk full, locked, down), the record goes to an fsync'd local
  spool instead, which still counts as durable; the spool is replayed when
  the store is back, and the store's once-per-meeting rule makes the replay
  safe to repeat.
* **Recovery.** At start, the checkpoints this node left open (it was killed)
  are closed as ``relay_failure`` records, with the duration of their last
  checkpoint.

Spool files hold a record and nothing else: no content ever reaches them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .core.records import CallRecord
from .errors import StoreError
from .signing import RecordSigner
from .store import Store, StoredRecord

__all__ = ["Ledger", "RecordSpool"]

log = logging.getLogger("switchboard.records")


class RecordSpool:
    """Final records that could not be committed yet: one fsync'd file each."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, record: CallRecord) -> Path:
        """Write ``record`` durably (file and directory fsync'd) before returning."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self.directory / f"{record.meeting_id}.json"
        tmp = final.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(record.to_dict()).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def pending(self) -> list[CallRecord]:
        """Spooled records, oldest first."""
        if not self.directory.is_dir():
            return []
        files = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
        return [CallRecord.from_dict(json.loads(p.read_text())) for p in files]

    def has(self, meeting_id: str) -> bool:
        """Whether a record of this meeting waits in the spool."""
        return (self.directory / f"{meeting_id}.json").exists()

    def get(self, meeting_id: str) -> CallRecord | None:
        """The spooled record of one meeting, if any."""
        try:
            return CallRecord.from_dict(
                json.loads((self.directory / f"{meeting_id}.json").read_text())
            )
        except FileNotFoundError:
            return None

    def remove(self, meeting_id: str) -> None:
        """Forget a record once the store has it."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{meeting_id}.json").unlink()


class Ledger:
    """Checkpoints, commits and recovers the records of one node."""

    def __init__(
        self,
        store: Store,
        *,
        node_id: str,
        signer: RecordSigner | None = None,
        spool: RecordSpool | None = None,
        deliver: bool = False,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.signer = signer
        self.spool = spool
        self.deliver = deliver
        """Queue each committed record for the billing webhook."""

    async def checkpoint(self, record: CallRecord) -> None:
        """Store a live meeting's running record; a failure is logged, never raised."""
        try:
            await self.store.save_checkpoint(record)
        except StoreError as exc:
            log.warning("checkpoint not stored meeting=%s error=%s", record.meeting_id, exc.code)

    async def checkpoints(self, records: Sequence[CallRecord]) -> None:
        """Store several live meetings' running records in one transaction; never raises."""
        try:
            await self.store.save_checkpoints(records)
        except StoreError as exc:
            log.warning("checkpoints not stored meetings=%d error=%s", len(records), exc.code)

    async def commit(self, record: CallRecord, now: float) -> StoredRecord | None:
        """Commit a final record durably; ``None`` if it went to the spool instead."""
        sign = self.signer.sign if self.signer is not None else None
        try:
            return await self.store.finish_meeting(record, sign=sign, deliver=self.deliver, now=now)
        except StoreError as exc:
            if self.spool is None:
                raise
            self.spool.put(record)
            log.error(
                "record spooled, the store failed meeting=%s record=%s error=%s",
                record.meeting_id,
                record.record_id,
                exc.code,
            )
            return None

    async def replay(self, now: float) -> int:
        """Commit spooled records the store did not have; return how many are left."""
        if self.spool is None:
            return 0
        left = 0
        pending = self.spool.pending()
        for index, record in enumerate(pending):
            try:
                await self.store.finish_meeting(
                    record,
                    sign=self.signer.sign if self.signer is not None else None,
                    deliver=self.deliver,
                    now=now,
                )
            except StoreError:
                # The store is still failing: the rest waits for the next round.
                left = len(pending) - index
                break
            self.spool.remove(record.meeting_id)
            log.info("spooled record committed meeting=%s", record.meeting_id)
        return left

    async def recover(self, now: float) -> list[StoredRecord]:
        """Close the meetings this node left open when it died, as ``relay_failure``."""
        recovered = []
        for checkpoint in await self.store.open_checkpoints(self.node_id):
            if self.spool is not None and self.spool.has(checkpoint.meeting_id):
                # Its final record was spooled before the crash: that one wins,
                # never the older checkpoint.
                continue
            stored = await self.commit(checkpoint, now)
            log.warning(
                "meeting closed after a relay failure meeting=%s duration=%.1f",
                checkpoint.meeting_id,
                checkpoint.duration_seconds,
            )
            if stored is not None:
                recovered.append(stored)
        return recovered
