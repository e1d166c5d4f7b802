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
    # A batch must finish well within its claim lease, or maintenance would re-queue rows still being sent.
    budget_s = settings.send_lease_s / 2
    if settings.email_backend == "sendgrid":
        from alerts.transports.sendgrid import SendGridTransport

        assert settings.sendgrid_api_key  # checked when settings load
        return SendGridTransport(
            settings.sendgrid_api_key, settings.sendgrid_host, settings.sendgrid_timeout_s, budget_s=budget_s
        )
    if settings.email_backend == "smtp":
        from alerts.transports.smtp import SMTPTransport

        return SMTPTransport(
            settings.smtp_host,
            settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
            timeout_s=settings.smtp_timeout_s,
            local_hostname=settings.from_email.rpartition("@")[2] or None,
            budget_s=budget_s,
        )
    raise NotImplementedError(f"email backend {settings.email_backend!r} is not available yet")
