"""Writes one ``.eml`` file per recipient into the outbox directory (the embedded default)."""

from __future__ import annotations

import os
import re
import tempfile
from email.policy import SMTP
from pathlib import Path

from alerts.transports.base import Batch, Outcome, Result
from alerts.transports.mime import build_message

_SAFE = re.compile(r"[^A-Za-z0-9@._-]")


class FileTransport:
    name = "file"

    def __init__(self, outbox_dir: Path) -> None:
        self.outbox_dir = outbox_dir

    def send(self, batch: Batch) -> list[Result]:
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for recipient in batch.recipients:
            data = build_message(batch, recipient).as_bytes(policy=SMTP)
            # Named by Message-ID (stable per delivery) and written atomically: a re-sent batch replaces
            # its files, never duplicates them.
            target = self.outbox_dir / f"{_SAFE.sub('_', recipient.message_id.strip('<>'))}.eml"
            fd, tmp = tempfile.mkstemp(dir=self.outbox_dir, suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
            results.append(Result(recipient.delivery_id, Outcome.SENT, provider_message_id=target.name))
        return results
