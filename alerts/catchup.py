"""Second thoughts: the new trials a follower missed because nobody yet knew what their phrase means.

A phrase's meaning grows as records teach it (``alerts.vocabulary``): "Lumbar Disc Disease" follows only
its words until a record ties it to disc displacement and disc degeneration. New trials filed under those
concepts that were announced *before* that moment reached nobody who follows the phrase. When a phrase
gains concepts, its followers get those trials after all, with the same email they would have had then:

* only ``trial.new_for_condition`` events received in the last ``days`` days (a new trial, not history),
  that reached their followers in full (``fanned_out``);
* only subscriptions confirmed before the event was received (they would have had it then; someone who
  signs up later starts from the trials announced after them, as everyone does);
* with the subscription's filters as the event's facts were then, and the event's dedupe key, so nobody
  gets a trial twice, whatever event or catch-up brought it first.

Set-based like the first delivery: one ``INSERT ... SELECT`` per earlier event concerned, rendered once
per followed label, sent by the caller after commit. A meaning that shrinks recalls nothing (an email
sent is sent); the phrase simply stops matching those concepts from the next event on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alerts import contents
from alerts.events import NEW_TRIAL_FOR_CONDITION
from alerts.matching import MatchPlan, create_deliveries
from alerts.models import Delivery, Event, EventStatus, Subscription, SubscriptionKind, SubscriptionStatus, utcnow
from alerts.rendering import Content
from alerts.vocabulary import CONCEPT_PREFIX

# Renders an earlier event's email for one followed label (built by the caller, who has the renderer).
RenderFor = Callable[[Event], Callable[[str | None], Content]]


@dataclass(frozen=True)
class CaughtUp:
    event_id: int
    after_id: int  # the new deliveries are the event's rows after this id
    deliveries: int


def catch_up(
    session: Session, gained: Mapping[str, frozenset[str]], render_for: RenderFor, days: int
) -> list[CaughtUp]:
    """Deliveries of earlier new-trial events to followers of phrases that gained concepts (module doc).

    ``gained``: phrase key -> concepts its meaning just gained. Returns what was created, per event, for
    the caller to queue after commit.
    """
    gained = {key: concepts for key, concepts in gained.items() if concepts}
    if not gained or days <= 0:
        return []
    # Only phrases someone follows (most phrases a record teaches have no follower): one grouped read of
    # the subscriptions' match index.
    followed = set(
        session.scalars(
            select(Subscription.target)
            .where(
                Subscription.kind == SubscriptionKind.CONDITION.value,
                Subscription.target.in_(sorted(gained)),
                Subscription.status == SubscriptionStatus.ACTIVE.value,
            )
            .group_by(Subscription.target)
        )
    )
    gained = {key: concepts for key, concepts in gained.items() if key in followed}
    if not gained:
        return []
    wanted = {CONCEPT_PREFIX + c for concepts in gained.values() for c in concepts}
    recent = session.execute(
        select(Event.id, Event.match, Event.received_at)
        .where(
            Event.type == NEW_TRIAL_FOR_CONDITION,
            Event.status == EventStatus.FANNED_OUT.value,
            Event.received_at >= utcnow() - timedelta(days=days),
            Event.match.is_not(None),
        )
        .order_by(Event.id)
    ).all()
    done: list[CaughtUp] = []
    for event_id, match, received_at in recent:
        plan = MatchPlan.from_json(match)
        filed = set(plan.targets) & wanted
        if not filed:
            continue
        phrases = sorted(k for k, concepts in gained.items() if {CONCEPT_PREFIX + c for c in concepts} & filed)
        # Catch-ups of one event take turns (its row lock), so each sees the rows and renderings the
        # other committed.
        event = session.get(Event, event_id, with_for_update=True)
        assert event is not None
        before = int(session.scalar(select(func.max(Delivery.id)).where(Delivery.event_id == event_id)) or 0)
        count_before = int(session.scalar(select(func.count()).where(Delivery.event_id == event_id)) or 0)
        total = create_deliveries(
            session,
            event_id,
            SubscriptionKind.CONDITION,
            phrases,
            plan.dedupe_key,
            facts=plan.facts,
            confirmed_before=received_at,
        )
        if total == count_before:
            continue
        event.recipients = total
        contents.render_variants(session, event, render_for(event), after_id=before)
        done.append(CaughtUp(event_id, before, total - count_before))
    return done
