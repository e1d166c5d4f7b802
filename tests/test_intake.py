"""Accepting events end to end in-process (real database, memory transport): idempotency, no-ops, fan-out."""

from __future__ import annotations

import copy
import json
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import func, select

from alerts.db import transaction
from alerts.models import Delivery, Event, RejectedEvent, Trial
from alerts.pipeline import Rejected, ingest
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import FIXTURES, InlineEnqueue, study
from tests.factories import changed_event, follow, new_trial_event, open_recruitment

PAIR = FIXTURES / "ctgov" / "pairs" / "NCT02552212"


def count(runtime: Runtime, model: Any, *where: Any) -> int:
    with transaction(runtime.engine) as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def recipients(memory: MemoryTransport) -> list[str]:
    return sorted(str(m["To"]) for m in memory.messages)


def test_trial_change_reaches_followers_of_that_trial_only(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    record = study("NCT04015791")  # not yet recruiting
    follow(runtime, "a@example.org", trial="NCT04015791")
    follow(runtime, "b@example.org", trial="NCT04015791")
    follow(runtime, "c@example.org", trial="NCT00124774")
    follow(runtime, "d@example.org", condition="Lumbar Disc Disease")
    outcome = ingest(runtime, changed_event(open_recruitment(record), previous=record), inline, "test")
    assert not isinstance(outcome, Rejected)
    assert (outcome.status, outcome.recipients) == ("fanned_out", 2)
    assert recipients(memory) == ["a@example.org", "b@example.org"]
    assert all("Now recruiting" in m["Subject"] for m in memory.messages), [m["Subject"] for m in memory.messages]


def test_same_event_twice_sends_nothing_twice(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport) -> None:
    record = study("NCT04015791")
    follow(runtime, "a@example.org", trial="NCT04015791")
    event = changed_event(open_recruitment(record), previous=record, event_id="crawler-7")
    first = ingest(runtime, event, inline, "test")
    again = ingest(runtime, copy.deepcopy(event), inline, "test")
    assert not isinstance(first, Rejected) and not isinstance(again, Rejected)
    assert again.status == "duplicate" and again.event_id == first.event_id
    # A producer retry with another id but the same news is deduplicated per subscriber too.
    other_id = ingest(runtime, event | {"event_id": "crawler-8"}, inline, "test")
    assert not isinstance(other_id, Rejected) and other_id.recipients == 0
    assert len(memory.messages) == 1
    assert count(runtime, Delivery) == 1


def test_snapshot_diff_without_previous(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport) -> None:
    record = study("NCT04015791")
    follow(runtime, "a@example.org", trial="NCT04015791")
    baseline = ingest(runtime, changed_event(record, occurred_at="2026-11-01T00:00:00Z"), inline, "test")
    assert not isinstance(baseline, Rejected) and baseline.status == "no_op"
    assert baseline.reason is not None and "baseline" in baseline.reason
    changed = ingest(runtime, changed_event(open_recruitment(record)), inline, "test")
    assert not isinstance(changed, Rejected) and changed.recipients == 1
    # The same version arriving again (no event id, new occurred_at) is not a change.
    again = ingest(runtime, changed_event(open_recruitment(record), occurred_at="2026-11-22T00:00:00Z"), inline, "test")
    assert not isinstance(again, Rejected) and again.status == "no_op"
    # An older version arriving late never overwrites the newer snapshot, nor reports a reversed change.
    late = ingest(runtime, changed_event(record, occurred_at="2026-11-10T00:00:00Z"), inline, "test")
    assert not isinstance(late, Rejected) and late.status == "no_op"
    with transaction(runtime.engine) as session:
        stored = session.get(Trial, "NCT04015791")
        assert stored is not None
        assert stored.record["protocolSection"]["statusModule"]["overallStatus"] == "RECRUITING"
    assert len(memory.messages) == 1


def test_noise_only_change_sends_nothing(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport) -> None:
    old, new = (json.loads(p.read_text()) for p in sorted(PAIR.glob("version-*.json")))
    follow(runtime, "a@example.org", trial="NCT02552212")
    outcome = ingest(runtime, changed_event(new, previous=old), inline, "test")
    assert not isinstance(outcome, Rejected)
    assert outcome.status == "no_op" and "no material change" in (outcome.reason or "")
    bumped = copy.deepcopy(new)
    bumped["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"] = {"date": "2026-11-20", "type": "ACTUAL"}
    outcome = ingest(runtime, changed_event(bumped, previous=old), inline, "test")
    assert not isinstance(outcome, Rejected) and outcome.status == "no_op"
    assert memory.messages == []


def test_new_trial_reaches_each_follower_once(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport) -> None:
    record = study("NCT01367860")  # conditions: Radiculopathy, Herniated Disk
    follow(runtime, "both@example.org", condition="Radiculopathy")
    follow(runtime, "both@example.org", condition="herniated-disk")
    follow(runtime, "one@example.org", condition="HERNIATED DISK")
    follow(runtime, "other@example.org", condition="Asthma")
    follow(runtime, "pending@example.org", condition="Radiculopathy")
    # One event per condition, as a producer might send them.
    for condition in ("Radiculopathy", "Herniated Disk"):
        outcome = ingest(runtime, new_trial_event(record, condition), inline, "test")
        assert not isinstance(outcome, Rejected)
    assert recipients(memory) == ["both@example.org", "one@example.org", "pending@example.org"]
    assert count(runtime, Event) == 2


def test_condition_named_by_the_producer_matches_even_if_not_listed(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    follow(runtime, "a@example.org", condition="Acute-On-Chronic Liver Failure")
    record = study("NCT06352177")
    ingest(runtime, new_trial_event(record, "acute on chronic liver failure"), inline, "test")
    assert recipients(memory) == ["a@example.org"]


def test_pending_and_unsubscribed_get_nothing(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport) -> None:
    from alerts import subscriptions

    with transaction(runtime.engine) as session:
        subscriptions.sign_up(
            session, "pending@example.org", subscriptions.trial_target("NCT04015791"), runtime.signer, runtime.hasher
        )
    gone = follow(runtime, "gone@example.org", trial="NCT04015791")
    with transaction(runtime.engine) as session:
        subscriptions.unsubscribe(session, gone)
    record = study("NCT04015791")
    outcome = ingest(runtime, changed_event(open_recruitment(record), previous=record), inline, "test")
    assert not isinstance(outcome, Rejected) and outcome.recipients == 0
    assert memory.messages == [] and inline.batches == []


def test_invalid_event_is_recorded_and_nothing_applied(runtime: Runtime, inline: InlineEnqueue) -> None:
    bad = changed_event(study("NCT00124774"))
    bad["trial"]["protocolSection"]["identificationModule"]["nctId"] = "NCT-BAD"
    outcome = ingest(runtime, bad, inline, "test")
    assert isinstance(outcome, Rejected)
    assert outcome.errors[0]["field"] == "trial.protocolSection.identificationModule.nctId"
    assert count(runtime, RejectedEvent) == 1
    assert count(runtime, Event) == count(runtime, Trial) == 0


def test_failure_mid_event_leaves_nothing_half_applied(
    runtime: Runtime, inline: InlineEnqueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    follow(runtime, "a@example.org", trial="NCT04015791")
    record = study("NCT04015791")

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("template store unavailable")

    monkeypatch.setattr(runtime.renderer, "render", broken)
    with pytest.raises(RuntimeError):
        ingest(runtime, changed_event(open_recruitment(record), previous=record), inline, "test")
    assert count(runtime, Event) == count(runtime, Trial) == count(runtime, Delivery) == 0
    monkeypatch.undo()
    outcome = ingest(runtime, changed_event(open_recruitment(record), previous=record), inline, "test")
    assert not isinstance(outcome, Rejected) and outcome.recipients == 1


def test_alert_email_shape(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport) -> None:
    record = study("NCT04015791")
    follow(runtime, "reader@example.org", trial="NCT04015791")
    ingest(runtime, changed_event(open_recruitment(record), previous=record), inline, "test")
    (message,) = memory.messages
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in message.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    unsubscribe = str(message["List-Unsubscribe"])
    assert unsubscribe.startswith("<https://alerts.example.org/unsubscribe/") and unsubscribe.endswith(">")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Message-ID"].strip().startswith("<delivery-")
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    url = unsubscribe[1:-1]
    assert url in text and url in html
    assert "/manage/" in text and "not medical advice" in text and "not medical advice" in html
    assert "https://clinicaltrials.gov/study/NCT04015791" in text
    assert 'style="' in html  # CSS inlined
    assert "%%" not in text + html  # every placeholder filled
    # No address or condition in any URL: only opaque tokens.
    for link in [w for w in (text + html).replace('"', " ").split() if w.startswith("http")]:
        assert "reader" not in link and "@" not in link and "lumbar" not in link.lower()


def test_css_is_inlined_once_per_event_not_per_recipient(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    import premailer

    calls = []
    original = premailer.Premailer.transform

    def counting(self: premailer.Premailer, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(premailer.Premailer, "transform", counting)
    for n in range(25):
        follow(runtime, f"p{n}@example.org", condition="Herniated Disc")
    ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "test")
    assert len(memory.messages) == 25
    assert len(calls) == 1


def test_fan_out_streams_in_batches(runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport) -> None:
    from sqlalchemy import insert

    from alerts.models import Subscriber, Subscription

    # 2,345 followers, bulk-loaded (signing through sign_up would only slow the test down).
    rows = [
        {"id": i, "email": f"s{i}@example.org", "email_hash": f"{i:064d}", "manage_token": f"m{i}"}
        for i in range(1, 2346)
    ]
    subs = [
        {
            "subscriber_id": i,
            "kind": "condition",
            "target": "herniated disc",
            "label": "Herniated Disc",
            "status": "active",
            "unsubscribe_token": f"u{i}",
        }
        for i in range(1, 2346)
    ]
    with transaction(runtime.engine) as session:
        session.execute(insert(Subscriber), rows)
        session.execute(insert(Subscription), subs)
    runtime.settings.batch_size = 1000
    outcome = ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "test")
    assert not isinstance(outcome, Rejected) and outcome.recipients == 2345
    assert [upto - after for _, after, upto in inline.batches] == [1000, 1000, 345]
    assert len(memory.batches) == 3 and max(len(b.recipients) for b in memory.batches) == 1000
    assert len({r.email for b in memory.batches for r in b.recipients}) == 2345
    assert count(runtime, Delivery, Delivery.status == "sent") == 2345


@pytest.mark.parametrize("batch_size", [1000, 2])
def test_an_events_batches_cover_exactly_its_deliveries(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport, batch_size: int
) -> None:
    # An audience within one batch is queued from the ids the INSERT reported (no transaction to number
    # them); a larger one is numbered by batch_ranges. Either way every delivery is in exactly one batch.
    for n in range(5):
        follow(runtime, f"p{n}@example.org", condition="Herniated Disc")
    follow(runtime, "other@example.org", condition="Lumbar Disc Disease")
    runtime.settings.batch_size = batch_size
    outcome = ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, "test")
    assert not isinstance(outcome, Rejected) and outcome.recipients >= 5
    with transaction(runtime.engine) as session:
        ids = sorted(session.scalars(select(Delivery.id).where(Delivery.event_id == outcome.event_id)))
    ranges = [(after, upto) for event_id, after, upto in inline.batches if event_id == outcome.event_id]
    covered = sorted(i for i in ids for after, upto in ranges if after < i <= upto)
    assert covered == ids
    assert len(ranges) == (1 if batch_size >= len(ids) else -(-len(ids) // batch_size))
    if batch_size >= len(ids):
        assert ranges == [(ids[0] - 1, ids[-1])]
    assert len(memory.messages) == len(ids)
