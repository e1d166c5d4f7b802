"""The embedded filesystem broker with a real worker: an empty message file neither stops the worker nor
loses the message; one that stays unreadable is moved aside and ``alerts status`` says so."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from sqlalchemy import func, select

from alerts.db import transaction
from alerts.models import RejectedEvent
from alerts.runtime import Runtime
from alerts.status import collect
from alerts.tasks.app import create_app
from tests.conftest import _truncate, make_settings
from tests.support.worker import celery_worker, wait_for


def _rejected(runtime: Runtime) -> int:
    with transaction(runtime.engine) as session:
        return int(session.scalar(select(func.count()).select_from(RejectedEvent)) or 0)


def _message_name(queue: str) -> str:
    # kombu's own naming: <monotonic ms>_<uuid>.<queue>.msg, read oldest first.
    return f"{int(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"


def test_empty_message_files_neither_stop_the_worker_nor_lose_the_message(sqlite_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        sqlite_url,
        tmp_path,
        broker_url="filesystem://",
        broker_dir=tmp_path / "broker",
        broker_unreadable_grace_s=3.0,
    )
    runtime = Runtime(settings)
    _truncate(runtime.engine)
    producer = create_app(settings)
    messages = settings.broker_dir / "messages"

    # A whole message as kombu writes it, made in a scratch broker folder so no worker sees it yet.
    scratch = make_settings(sqlite_url, tmp_path, broker_url="filesystem://", broker_dir=tmp_path / "scratch")
    create_app(scratch).send_task("alerts.events.trial_changed", args=[{"type": "trial.changed", "n": 1}])
    [staged] = (scratch.broker_dir / "messages").glob("*.events.msg")

    with celery_worker(settings, tmp_path / "worker.log", concurrency=1) as worker:
        # Created but not written yet (kombu opens the file, then writes), and one that never will be.
        being_written = messages / _message_name("events")
        being_written.touch()
        never_written = messages / _message_name("events")
        never_written.touch()
        time.sleep(1.5)  # the worker polls (once a second) and finds both empty
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        being_written.write_bytes(staged.read_bytes())
        wait_for(lambda: _rejected(runtime) == 1, timeout_s=30)  # the late-written message was not lost

        # The worker keeps consuming, and the file that stayed empty is moved aside after the grace time.
        producer.send_task("alerts.events.trial_changed", args=[{"type": "trial.changed", "n": 2}])
        wait_for(lambda: _rejected(runtime) == 2, timeout_s=30)
        quarantined = settings.broker_dir / "quarantine" / never_written.name
        wait_for(quarantined.exists, timeout_s=30)
        assert worker.poll() is None
    assert not never_written.exists()
    assert "broker.message_quarantined" in (tmp_path / "worker.log").read_text()

    status = collect(runtime.engine, producer, settings=settings)
    assert status.quarantine is not None and status.quarantine.files == 1
    assert any("unreadable broker message file" in p for p in status.problems)
    runtime.engine.dispose()
