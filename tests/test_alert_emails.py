"""Emails that explain themselves: "You follow: ..." per recipient, changes as before → after."""

from __future__ import annotations

import copy
import html
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from alerts import contents, ctgov, emails
from alerts.db import transaction
from alerts.models import Delivery, Event, EventContent
from alerts.pipeline import Rejected, deliver, ingest
from alerts.runtime import Runtime
from alerts.transports.memory import MemoryTransport
from tests.conftest import InlineEnqueue, study
from tests.factories import changed_event, follow, new_trial_event, open_recruitment


def text_of(message: EmailMessage) -> str:
    return message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def html_of(message: EmailMessage) -> str:
    return message.get_body(("html",)).get_content()  # type: ignore[union-attr]


def by_recipient(memory: MemoryTransport) -> dict[str, EmailMessage]:
    return {str(m["To"]): m for m in memory.messages}


@pytest.fixture
def premailer_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import premailer

    calls: list[int] = []
    original = premailer.Premailer.transform

    def counting(self: premailer.Premailer, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(premailer.Premailer, "transform", counting)
    return calls


def test_each_recipient_reads_what_they_follow(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport, premailer_calls: list[int]
) -> None:
    # NCT01367860 lists "Radiculopathy" and "Herniated Disk"; NLM filed it under Radiculopathy and
    # Intervertebral Disc Displacement.
    for nct_id in ("NCT01339377", "NCT00124774"):
        ingest(runtime, changed_event(study(nct_id)), inline, "test")
    for n in range(3):
        follow(runtime, f"disc{n}@example.org", condition="Disk, Herniated")
    follow(runtime, "herniated@example.org", condition="Herniated Disc")
    follow(runtime, "radiculopathy@example.org", condition="radiculopathy")
    # Two matching subscriptions: the oldest owns the delivery, and names the reason.
    follow(runtime, "both@example.org", condition="Radiculopathy")
    follow(runtime, "both@example.org", condition="Herniated Disc")
    premailer_calls.clear()
    outcome = ingest(runtime, new_trial_event(study("NCT01367860"), "Radiculopathy"), inline, "test")
    assert not isinstance(outcome, Rejected) and outcome.recipients == 6

    messages = by_recipient(memory)
    expected = {
        "disc0@example.org": "Disk, Herniated",
        "herniated@example.org": "Herniated Disc",
        "radiculopathy@example.org": "radiculopathy",
        "both@example.org": "Radiculopathy",
    }
    for address, label in expected.items():
        message = messages[address]
        assert f"You follow: {label}\n" in text_of(message)
        assert f"You follow: <strong>{label}</strong>" in html_of(message)
        assert f"you follow {label} on" in text_of(message)
    # The subject names the event's condition when it is the one followed, else the subscriber's words.
    assert str(messages["disc1@example.org"]["Subject"]).startswith("New trial for Disk, Herniated: ")
    assert str(messages["radiculopathy@example.org"]["Subject"]).startswith("New trial for Radiculopathy: ")
    # Why a differently worded trial arrived: what NLM filed it under.
    assert "Topics:      Intervertebral Disc Displacement, Radiculopathy" in text_of(messages["disc0@example.org"])

    # One shared rendering (and one premailer run) per followed label, one transport batch per label.
    assert len(premailer_calls) == 4
    assert sorted(len(b.recipients) for b in memory.batches) == [1, 1, 1, 3]
    with transaction(runtime.engine) as session:
        variants = contents.variant_counts(session, outcome.event_id)
        assert variants[0] == ("Disk, Herniated", 3) and len(variants) == 4
        stored = session.scalar(select(func.count()).select_from(EventContent))
        assert stored == 4 + 1  # and the "near you" fragments of readers without a place (alerts.contents)
        row = session.get(Event, outcome.event_id)
        assert row is not None and row.content is not None
        # Event.content stays the single rendering readers of one rendering see: the most common one.
        assert "You follow: Disk, Herniated" in row.content["text"]
        assert contents.content_for(session, outcome.event_id, None) is not None
        assert contents.content_for(session, outcome.event_id, "nobody follows this") is None


def test_labels_are_escaped_in_html_and_plain_in_text(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    label = 'Crohn\'s & "Colitis" <UC>'
    follow(runtime, "a@example.org", condition=label)
    ingest(runtime, new_trial_event(study("NCT00124774"), "Crohn's & Colitis UC"), inline, "test")
    (message,) = memory.messages
    assert f"You follow: {label}\n" in text_of(message)
    assert f"You follow: <strong>{html.escape(label, quote=False)}</strong>" in html_of(message).replace("&#39;", "'")
    assert "<UC>" not in html_of(message)
    assert "%%" not in text_of(message) + html_of(message)


def test_a_variant_without_its_rendering_is_not_sent(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    follow(runtime, "a@example.org", condition="Herniated Disc")
    follow(runtime, "b@example.org", condition="herniated  disc")  # another label: another rendering
    queued: list[tuple[int, int, int]] = []

    class Later(InlineEnqueue):
        def send_batch(self, event_id: int, after_id: int, upto_id: int) -> None:
            queued.append((event_id, after_id, upto_id))

    outcome = ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), Later(runtime), "test")
    assert not isinstance(outcome, Rejected) and outcome.recipients == 2
    with transaction(runtime.engine) as session:
        session.execute(delete(EventContent).where(EventContent.variant == "herniated disc"))
    with pytest.raises(RuntimeError, match="no rendered content for 1 variant"):
        deliver(runtime, *queued[0])
    assert memory.messages == []  # checked before anything is handed to the transport
    with transaction(runtime.engine) as session:
        assert set(session.scalars(select(Delivery.status))) == {"sending"}  # maintenance re-queues them


def changed_record() -> tuple[dict[str, Any], dict[str, Any]]:
    old = study("NCT04015791")
    new = copy.deepcopy(open_recruitment(old))
    section = new["protocolSection"]
    criteria = section["eligibilityModule"]["eligibilityCriteria"]
    section["eligibilityModule"]["eligibilityCriteria"] = criteria.replace("between 18 and 70", "between 21 and 70")
    section["eligibilityModule"]["minimumAge"] = "21 Years"
    section["contactsLocationsModule"]["locations"].append(
        {"facility": "Hôpital Lariboisière", "city": "Paris", "country": "France", "status": "RECRUITING"}
    )
    return old, new


def test_trial_changed_email_lists_changes_before_and_after_most_important_first(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport
) -> None:
    old, new = changed_record()
    follow(runtime, "a@example.org", trial="NCT04015791")
    ingest(runtime, changed_event(new, previous=old), inline, "test")
    (message,) = memory.messages
    text = text_of(message)
    lines = [line.rstrip() for line in text.splitlines()]
    start = lines.index("The record of this study has changed. Here is what changed, most important first.")
    changes = [line for line in lines[start + 1 :] if line.startswith(("* ", "    ")) and line.strip()]
    assert changes[:10] == [
        "* Status: Not yet recruiting → Recruiting",
        "    You may be able to join this study now.",
        "* New study site",
        "    Hôpital Lariboisière, Paris, France (Recruiting)",
        "    This is a new place where people may be able to join.",
        "* Age limits: 18 years to 70 years → 21 years to 70 years",
        "    Check again if you can take part.",
        "* Who can join",
        "    Removed: “Skeletally mature male or female (non-pregnant) between 18 and 70 years of age”",
        "    Added: “Skeletally mature male or female (non-pregnant) between 21 and 70 years of age”",
    ]
    body = html_of(message)
    assert '<span class="before"' in body and "→" in body
    assert "Before:" not in text  # every value here is short or says what it is


def test_long_values_get_before_and_now_lines() -> None:
    change = ctgov.Change("status", "Recruitment status", "Recruiting", "Withdrawn (reason: " + "x" * 80 + ")", 100, "")
    shown = emails.present_change(change)
    assert not shown["inline"]
    assert [(line["prefix"], line["kind"]) for line in shown["lines"]] == [("Before:", "before"), ("Now:", "after")]
    removed = emails.present_change(ctgov.Change("site_removed", "Study site removed", "A site", None, 60, ""))
    assert removed["lines"] == [{"prefix": "", "text": "A site", "kind": "plain"}]


@pytest.mark.parametrize(
    ("status", "line"),
    [
        ("COMPLETED", "This study has already finished. It cannot be joined."),
        ("WITHDRAWN", "This study was withdrawn before anyone took part. It cannot be joined."),
        ("RECRUITING", None),
    ],
)
def test_a_new_trial_nobody_can_join_says_so_and_skips_recruiting_only_followers(
    runtime: Runtime, inline: InlineEnqueue, memory: MemoryTransport, status: str, line: str | None
) -> None:
    from alerts import subscriptions

    record = study("NCT00124774")
    record["protocolSection"]["statusModule"]["overallStatus"] = status
    follow(runtime, "anyone@example.org", condition="Herniated Disc")
    picky = follow(runtime, "open-only@example.org", condition="Herniated Disc")
    with transaction(runtime.engine) as session:
        subscriptions.set_filters(session, picky, subscriptions.ConditionFilters(recruiting_only=True))
    ingest(runtime, new_trial_event(record, "Herniated Disc"), inline, "test")
    received = by_recipient(memory)
    assert ("open-only@example.org" in received) is (line is None)
    text, page = text_of(received["anyone@example.org"]), html_of(received["anyone@example.org"])
    if line is None:
        assert "cannot be joined" not in text and "cannot be joined" not in page
    else:
        assert line in text and html.escape(line) in page
        # Right under the first sentence, before the study's details.
        assert text.index(line) < text.index("Status:")
