"""Message-IDs are unique across installations and database rebuilds, and stable for one delivery."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import update

from alerts.db import transaction
from alerts.installation import installation_id
from alerts.models import Delivery, DeliveryStatus
from alerts.pipeline import deliver, ingest
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, _truncate, make_settings, study
from tests.factories import follow, new_trial_event


def _ids(memory: MemoryTransport) -> list[str]:
    return [r.message_id for b in memory.batches for r in b.recipients]


def test_installation_id_is_generated_once_and_shared_by_every_process(runtime: Runtime, tmp_path: Path) -> None:
    first = installation_id(runtime.engine)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert installation_id(runtime.engine) == first
    # Another process of the same installation (its own engine) reads the same id.
    other = Runtime(make_settings(runtime.settings.database_url, tmp_path))
    assert other.links.installation == first
    other.engine.dispose()


def test_message_id_differs_after_a_rebuild_and_stays_for_a_resend(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport, tmp_path: Path
) -> None:
    follow(runtime, "a@example.org", condition="Herniated Disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "t")
    [sent] = _ids(memory)
    assert sent == f"<delivery-1.{installation_id(runtime.engine)}@alerts.example.org>"

    # The same delivery sent again (an ambiguous retry) keeps its Message-ID, so mail systems can dedupe.
    with transaction(runtime.engine) as session:
        session.execute(update(Delivery).values(status=DeliveryStatus.QUEUED.value))
    deliver(runtime, *inline.batches[0])
    assert _ids(memory) == [sent, sent]

    # The database is rebuilt: delivery ids start at 1 again, the Message-ID does not repeat.
    _truncate(runtime.engine)
    rebuilt = Runtime(make_settings(runtime.settings.database_url, tmp_path))
    rebuilt.transport = MemoryTransport()
    follow(rebuilt, "a@example.org", condition="Herniated Disc")
    ingest(rebuilt, new_trial_event(study("NCT00124774"), "Herniated Disc"), InlineEnqueue(rebuilt), "t")
    [again] = _ids(rebuilt.transport)
    assert again.startswith("<delivery-1.") and again != sent
    rebuilt.engine.dispose()
