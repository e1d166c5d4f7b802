"""Celery's filesystem broker (the embedded default), made safe against message files it cannot read.

kombu's filesystem transport creates a message file and then writes it. A worker polling at that moment
finds the file empty: kombu's reader had already removed the file, then failed to decode it, and the
decode error stopped the worker. The message was gone and so was the worker.

This transport reads a file where it lies and only takes it (removes it) once it holds a whole message.
A file that is empty or not a message yet is read again after a moment, and left for a later poll if it is
still not whole; one that stays unreadable for ``unreadable_grace_s`` is moved to ``quarantine_folder``
(``alerts status`` counts what is there) instead of being dropped or retried forever. Two consumers
reading the same file: the one whose removal succeeds delivers it, the other skips it.

Used for ``filesystem://`` URLs through Celery's ``broker_transport`` (alerts.tasks.app); kombu itself is
not changed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from queue import Empty
from typing import Any

import structlog
from kombu.transport import filesystem
from kombu.utils.json import loads

log = structlog.get_logger("alerts.broker")

# A writer between creating and writing a file needs far less than this.
REREAD_AFTER_S = 0.05
DEFAULT_GRACE_S = 30.0


class Channel(filesystem.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # File name -> when it was first found unreadable (monotonic seconds).
        self._unreadable_since: dict[str, float] = {}

    @property
    def quarantine_folder(self) -> Path:
        return Path(self.transport_options.get("quarantine_folder", "quarantine"))

    @property
    def unreadable_grace_s(self) -> float:
        return float(self.transport_options.get("unreadable_grace_s", DEFAULT_GRACE_S))

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        """The oldest whole message of ``queue``; unreadable files are skipped (and in time moved aside)."""
        suffix = f"{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != suffix:
                continue
            path = os.path.join(self.data_folder_in, filename)
            message = self._read(path)
            if message is _GONE:
                self._unreadable_since.pop(filename, None)
                continue
            if message is _UNREADABLE:
                self._unreadable(path, filename)
                continue
            if not self._take(path, filename):
                continue  # another consumer took it first
            self._unreadable_since.pop(filename, None)
            return message
        raise Empty()

    def _read(self, path: str) -> Any:
        for attempt in range(2):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return _GONE
            except OSError:
                data = b""
            if data:
                try:
                    return loads(data.decode("utf-8"))
                except ValueError:  # a half-written file, or not a message at all
                    pass
            if attempt == 0:
                time.sleep(REREAD_AFTER_S)
        return _UNREADABLE

    def _take(self, path: str, filename: str) -> bool:
        try:
            if self.store_processed:
                os.replace(path, os.path.join(self.processed_folder, filename))
            else:
                os.remove(path)
        except FileNotFoundError:
            return False
        return True

    def _unreadable(self, path: str, filename: str) -> None:
        first = self._unreadable_since.setdefault(filename, time.monotonic())
        waited = time.monotonic() - first
        if waited < self.unreadable_grace_s:
            return
        self.quarantine_folder.mkdir(parents=True, exist_ok=True)
        try:
            size = os.path.getsize(path)
            shutil.move(path, self.quarantine_folder / filename)
        except FileNotFoundError:
            pass  # taken or removed meanwhile
        else:
            log.warning(
                "broker.message_quarantined",
                file=filename,
                bytes=size,
                unreadable_for_s=round(waited, 1),
                folder=str(self.quarantine_folder),
            )
        self._unreadable_since.pop(filename, None)


class _Marker:
    pass


_GONE = _Marker()
_UNREADABLE = _Marker()


class Transport(filesystem.Transport):
    Channel = Channel
