"""Stored renderings (alerts.contents): read once per process and kept, bounded, only what was found."""

from __future__ import annotations

from sqlalchemy import event, select

from alerts import contents
from alerts.db import transaction
from alerts.models import Delivery, EventContent
from alerts.pipeline import ingest
from alerts.rendering import Content
from alerts.runtime import Runtime
from tests.conftest import InlineEnqueue, study
from tests.factories import follow, new_trial_event


def test_a_second_batch_of_an_event_reads_no_rendering_again(runtime: Runtime, inline: InlineEnqueue) -> None:
    follow(runtime, "pat@example.org", condition="Herniated Disc")
    outcome = ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, source="test")
    known = contents.Renderings()
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    with transaction(runtime.engine) as session:
        variants = list(session.scalars(select(Delivery.variant).distinct()))
        event.listen(runtime.engine, "before_cursor_execute", count)
        try:
            first = contents.prepare(session, outcome.event_id, variants, known)
            read_first = len(statements)
            second = contents.prepare(session, outcome.event_id, variants, known)
        finally:
            event.remove(runtime.engine, "before_cursor_execute", count)
    assert read_first >= 1 and len(statements) == read_first, "the second batch asked the database nothing"
    assert first == second and first


def test_only_renderings_found_are_kept_and_the_oldest_go_first(runtime: Runtime, inline: InlineEnqueue) -> None:
    follow(runtime, "pat@example.org", condition="Herniated Disc")
    outcome = ingest(runtime, new_trial_event(study("NCT00124774"), "Herniated Disc"), inline, source="test")
    known = contents.Renderings(limit=2)
    with transaction(runtime.engine) as session:
        assert contents.contents_for(session, outcome.event_id, ["later"], known) == {}
        session.add(EventContent(event_id=outcome.event_id, variant="later", subject="s", text="t", html="h"))
        session.flush()
        assert contents.contents_for(session, outcome.event_id, ["later"], known) == {
            "later": Content(subject="s", text="t", html="h")
        }
    known.keep(outcome.event_id, {"a": Content("1", "1", "1"), "b": Content("2", "2", "2")})
    assert known.get(outcome.event_id, "later") is None and known.get(outcome.event_id, "b") is not None


def test_fragments_stored_before_a_new_slot_unpack_with_it_empty() -> None:
    # Stored by a release with two slots (near_changes, near_site): the contact line was inside near_site.
    older = Content(
        subject="", text=contents.FRAGMENT_JOIN.join(["c", "s"]), html=contents.FRAGMENT_JOIN.join(["C", "S"])
    )
    values = contents.unpack(older)
    assert (values["near_site_text"], values["near_site_html"]) == ("s", "S")
    assert (values["near_contact_text"], values["near_contact_html"]) == ("", "")
    assert contents.unpack(contents.pack({"near_site": ("s", "S")}))["near_contact_text"] == ""
