"""Writes one ``.eml`` file per recipient into the outbox directory (the embedded default)."""

from __future__ import annotations

import os
import tempfile
from email.policy import SMTP
from pathlib import Path

from alerts.transports.base import Batch, Outcome, Result
from alerts.transports.mime import build_message


class FileTransport:
    name = "file"

    def __init__(self, outbox_dir: Path) -> None:
        self.outbox_dir = outbox_dir

    def send(self, batch: Batch) -> list[Result]:
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for recipient in batch.recipients:
            data = build_message(batch, recipient).as_bytes(policy=SMTP)
            # Named by delivery id and written atomically: a re-sent batch replaces, never duplicates.
            target = self.outbox_dir / f"delivery-{recipient.delivery_id:09d}.eml"
            fd, tmp = tempfile.mkstemp(dir=self.outbox_dir, suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
            results.append(Result(recipient.delivery_id, Outcome.SENT, provider_message_id=target.name))
        return results
