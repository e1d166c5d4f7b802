"""Email transports: interchangeable senders behind one interface (see base.Transport)."""

from __future__ import annotations

from alerts.config import Settings
from alerts.transports.base import MAX_BATCH, Batch, Outcome, Recipient, Result, Transport

__all__ = ["MAX_BATCH", "Batch", "Outcome", "Recipient", "Result", "Transport", "build_transport"]

_memory_singleton: Transport | None = None


def build_transport(settings: Settings) -> Transport:
    global _memory_singleton
    if settings.email_backend == "file":
        from alerts.transports.file import FileTransport

        return FileTransport(settings.outbox_dir)
    if settings.email_backend == "memory":
        from alerts.transports.memory import MemoryTransport

        # One per process so a test can read what the in-process sender sent.
        if _memory_singleton is None:
            _memory_singleton = MemoryTransport()
        return _memory_singleton
    raise NotImplementedError(f"email backend {settings.email_backend!r} is not available yet")
