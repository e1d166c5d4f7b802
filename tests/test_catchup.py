"""Second thoughts: followers of a phrase whose meaning grows get the recent new trials they missed."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from alerts.db import transaction
from alerts.models import ConditionResolution, Delivery, Event, Subscription, utcnow
from alerts.pipeline import ingest
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import follow, new_trial_event


def reached(runtime: Runtime) -> list[tuple[str, int]]:
    with transaction(runtime.engine) as session:
        rows = session.execute(
            select(Event.nct_id, Delivery.subscription_id)
            .join(Event, Event.id == Delivery.event_id)
            .where(Delivery.status == "sent")
            .order_by(Event.nct_id, Delivery.subscription_id)
        )
        return [(nct, int(sid)) for nct, sid in rows]


def test_a_phrase_learned_late_brings_the_trials_announced_before(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    follower = follow(runtime, "lumbar@example.org", condition="Lumbar Disc Disease")
    # Two disc trials worded otherwise: nobody has said yet what "Lumbar Disc Disease" means.
    ingest(runtime, new_trial_event(study("NCT03340545"), "Intervertebral Disc Herniation"), inline, "test")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "test")
    assert reached(runtime) == []
    # NCT04015791 lists "Lumbar Disc Disease", filed under disc displacement and disc degeneration.
    ingest(runtime, new_trial_event(study("NCT04015791"), "Lumbar Disc Disease"), inline, "test")
    assert reached(runtime) == [("NCT00124774", follower), ("NCT03340545", follower), ("NCT04015791", follower)]
    subjects = sorted(str(m["Subject"]) for m in memory.messages)
    assert len(subjects) == 3 and all(s.startswith("New trial for Lumbar Disc Disease: ") for s in subjects)
    with transaction(runtime.engine) as session:
        why = session.scalars(
            select(ConditionResolution.reason).where(ConditionResolution.phrase_key == "lumbar disc disease")
        ).all()
    assert why and "NCT04015791" in why[-1]
    # The same again teaches nothing new: nobody gets anything twice.
    ingest(runtime, new_trial_event(study("NCT04015791"), "Lumbar Disc Disease", event_id="again"), inline, "test")
    assert len(memory.messages) == 3


def test_only_recent_trials_and_only_for_those_who_followed_then(runtime: Runtime, inline: InlineEnqueue) -> None:
    early = follow(runtime, "early@example.org", condition="Lumbar Disc Disease")
    ingest(runtime, new_trial_event(study("NCT03340545"), "Intervertebral Disc Herniation"), inline, "test")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "test")
    late = follow(runtime, "late@example.org", condition="Lumbar Disc Disease")
    with transaction(runtime.engine) as session:  # the first announcement is old news by now
        session.execute(
            update(Event)
            .where(Event.nct_id == "NCT03340545")
            .values(received_at=utcnow() - timedelta(days=runtime.settings.catch_up_days + 1))
        )
        assert session.get(Subscription, late) is not None
    ingest(runtime, new_trial_event(study("NCT04015791"), "Lumbar Disc Disease"), inline, "test")
    assert reached(runtime) == [("NCT00124774", early), ("NCT04015791", early), ("NCT04015791", late)]
