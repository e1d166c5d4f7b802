"""Keeps sent messages in memory; for tests that run the sender in their own process."""

from __future__ import annotations

import threading
from email.message import EmailMessage

from alerts.transports.base import Batch, Outcome, Result
from alerts.transports.mime import build_message


class MemoryTransport:
    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches: list[Batch] = []

    @property
    def messages(self) -> list[EmailMessage]:
        """Every message as it would go on the wire (built on demand: MIME building is the slow part)."""
        with self._lock:
            batches = list(self.batches)
        return [build_message(batch, r) for batch in batches for r in batch.recipients]

    def send(self, batch: Batch) -> list[Result]:
        if batch.recipients:
            # Fail at send time, like a real transport, if the batch cannot make a valid message.
            build_message(batch, batch.recipients[0])
        with self._lock:
            self.batches.append(batch)
        return [
            Result(r.delivery_id, Outcome.SENT, provider_message_id=f"memory-{r.delivery_id}") for r in batch.recipients
        ]

    def clear(self) -> None:
        with self._lock:
            self.batches.clear()
