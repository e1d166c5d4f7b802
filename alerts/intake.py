"""Accepting an event: deduplicate, diff, store the trial version, learn, create deliveries — one transaction.

Everything here happens in the caller's transaction, so an event is either fully applied (event row,
snapshot, vocabulary counts, deliveries, renderings) or not at all. Sending is queued by the caller after
the commit. An audience larger than ``first_chunk`` subscribers is the exception: the first chunk's rows
are created here and the event is left ``fanning_out`` for ``alerts.fanout`` to create the rest chunk
by chunk, so that sending starts early.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from alerts import contents, ctgov, emails, vocabulary
from alerts.conditions import condition_keys
from alerts.digests import held
from alerts.events import NEW_TRIAL_FOR_CONDITION, TRIAL_CHANGED, TrialEvent
from alerts.matching import MatchPlan, TrialFacts, create_deliveries_chunk, create_held_items
from alerts.models import Event, EventStatus, SubscriptionKind, Trial, utcnow
from alerts.rendering import Content, Renderer


@dataclass(frozen=True)
class Accepted:
    event_id: int
    status: str  # fanned_out | no_op | duplicate
    recipients: int
    reason: str | None = None
    # Seconds spent per stage (match = reading and deciding, rows = the INSERT ... SELECT, render).
    timings: dict[str, float] = field(default_factory=dict)
    # Renders one more variant of the email, for the later chunks of a fan-out (alerts.fanout).
    render: Callable[[str | None], Content] | None = field(default=None, repr=False, compare=False)
    # Items held for digest subscribers instead of emails (alerts.digests).
    held: int = 0


def _is_newest(snapshot: Trial | None, event: TrialEvent) -> bool:
    return snapshot is None or snapshot.version_at <= event.occurred_at


def _store_version(session: Session, snapshot: Trial | None, event: TrialEvent) -> None:
    """Remember the newest version seen; an event older than the stored one never overwrites it."""
    record = dict(event.trial)
    if snapshot is None:
        session.add(
            Trial(
                nct_id=event.nct_id,
                title=ctgov.title(record),
                record=record,
                fingerprint=ctgov.fingerprint(record),
                version_at=event.occurred_at,
            )
        )
    elif snapshot.version_at <= event.occurred_at:
        snapshot.record = record
        snapshot.title = ctgov.title(record)
        snapshot.fingerprint = ctgov.fingerprint(record)
        snapshot.version_at = event.occurred_at


def _changed(event: TrialEvent, snapshot: Trial | None) -> tuple[Mapping[str, Any] | None, str | None]:
    """The version to diff against, or why there is nothing to compare."""
    if event.previous is not None:
        return event.previous, None
    if snapshot is None:
        return None, f"first version of {event.nct_id} seen; stored as the baseline for later changes"
    if snapshot.version_at > event.occurred_at:
        return None, "older than the version already stored; nothing newer to report"
    return snapshot.record, None


def accept(
    session: Session, event: TrialEvent, renderer: Renderer, site: Mapping[str, Any], first_chunk: int = 2000
) -> Accepted:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    existing = session.scalar(select(Event).where(Event.idempotency_key == event.idempotency_key))
    if existing is not None:
        return Accepted(existing.id, "duplicate", 0, "already received")

    snapshot = session.get(Trial, event.nct_id, with_for_update=True)
    row = Event(
        idempotency_key=event.idempotency_key,
        type=event.type,
        nct_id=event.nct_id,
        condition=event.condition,
        occurred_at=event.occurred_at,
        status=EventStatus.NO_OP,
        changes=[],
        recipients=0,
    )
    learned = vocabulary.extract(event.trial)
    if _is_newest(snapshot, event):
        # What NLM's indexing of this version teaches about condition phrases; subscriptions waiting on a
        # phrase it explains follow their concept before matching below.
        vocabulary.learn(session, event.nct_id, learned)
    template: str
    context: Callable[[], dict[str, Any]]  # built only when someone is listening
    broader: list[str] = []
    facts: TrialFacts | None = None
    old: Mapping[str, Any] | None = None
    changes: list[ctgov.Change] = []
    if event.type == TRIAL_CHANGED:
        old, reason = _changed(event, snapshot)
        changes = ctgov.diff(old, event.trial) if old is not None else []
        if old is not None and not changes:
            reason = "no material change (only noise such as derivedSection order or update dates)"
        row.changes = emails.changes_as_dicts(changes)
        kind, targets = SubscriptionKind.TRIAL, [event.nct_id]
        dedupe = f"changed:{event.nct_id}:{ctgov.fingerprint(old) if old else ''}:{ctgov.fingerprint(event.trial)}"
        template, context = emails.TRIAL_CHANGED, lambda: emails.trial_changed(event.trial, changes)
    else:
        assert event.type == NEW_TRIAL_FOR_CONDITION and event.condition is not None
        reason = None
        kind = SubscriptionKind.CONDITION
        # Plain keys match subscriptions to unknown phrases; mesh: targets match concept subscriptions.
        targets = condition_keys([event.condition, *ctgov.conditions(event.trial)]) + learned.targets
        broader = learned.broader_targets
        facts = TrialFacts.of(event.trial)
        # Keyed on the trial alone: one event per condition still reaches each subscriber once.
        dedupe = f"new:{event.nct_id}"
        condition = event.condition
        template, context = emails.NEW_TRIAL, lambda: emails.new_trial(event.trial, condition, learned)

    _store_version(session, snapshot, event)
    session.add(row)
    session.flush()
    render: Callable[[str | None], Content] | None = None
    held_count = 0
    if reason is None:
        rows_started = time.perf_counter()
        plan = MatchPlan(kind, tuple(targets), tuple(broader), facts, dedupe)
        row.match = plan.as_json()
        chunk = create_deliveries_chunk(session, row.id, plan, 0, first_chunk)
        row.recipients = chunk.created
        # Digest subscribers: the same match becomes held items, with the entry rendered once for all.
        held_count = create_held_items(session, row.id, plan)
        if chunk.complete:
            row.status = EventStatus.FANNED_OUT
        else:
            row.status, row.fanout_cursor, row.fanout_at = EventStatus.FANNING_OUT, chunk.last_subscriber_id, utcnow()
        timings["rows_s"] = time.perf_counter() - rows_started
        if held_count:
            render_started = time.perf_counter()
            held.prepare(session, renderer, site, row.id, dedupe, event.trial, old, changes)
            timings["held_render_s"] = time.perf_counter() - render_started
        if row.recipients:
            shared = {**site, **context()}

            def render(variant: str | None) -> Content:
                extra = emails.followed(variant, event.condition or variant) if variant is not None else {}
                return renderer.render(template, shared | extra)

            # Rendered (and CSS-inlined) once per variant (followed label) for all its recipients;
            # skipped when nobody is listening.
            render_started = time.perf_counter()
            contents.render_variants(session, row, render)
            timings["render_s"] = time.perf_counter() - render_started
    else:
        row.reason = reason
    timings["match_s"] = time.perf_counter() - started - sum(timings.values())
    return Accepted(row.id, row.status, row.recipients, row.reason, timings, render, held_count)
